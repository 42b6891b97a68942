/*
 * The parts of the virtio 1.x specification the guest uses: the virtio-mmio
 * register layout (modern, version 2), device status bits, split virtqueue
 * structures and the net and block device headers. Written from the
 * specification (OASIS virtio 1.1, sections 2.1, 2.6, 4.2.2, 5.1 and 5.2);
 * the bring-up steps every driver shares are in virtio_mmio.c.
 */
#ifndef US_VIRTIO_MMIO_H
#define US_VIRTIO_MMIO_H
#include <stdint.h>

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */

enum virtio_mmio_reg {
    VMMIO_MAGIC = 0x000,
    VMMIO_VERSION = 0x004,
    VMMIO_DEVICE_ID = 0x008,
    VMMIO_VENDOR_ID = 0x00c,
    VMMIO_DEVICE_FEATURES = 0x010,
    VMMIO_DEVICE_FEATURES_SEL = 0x014,
    VMMIO_DRIVER_FEATURES = 0x020,
    VMMIO_DRIVER_FEATURES_SEL = 0x024,
    VMMIO_QUEUE_SEL = 0x030,
    VMMIO_QUEUE_NUM_MAX = 0x034,
    VMMIO_QUEUE_NUM = 0x038,
    VMMIO_QUEUE_READY = 0x044,
    VMMIO_QUEUE_NOTIFY = 0x050,
    VMMIO_STATUS = 0x070,
    VMMIO_QUEUE_DESC_LOW = 0x080,
    VMMIO_QUEUE_DESC_HIGH = 0x084,
    VMMIO_QUEUE_DRIVER_LOW = 0x090,
    VMMIO_QUEUE_DRIVER_HIGH = 0x094,
    VMMIO_QUEUE_DEVICE_LOW = 0x0a0,
    VMMIO_QUEUE_DEVICE_HIGH = 0x0a4,
    VMMIO_CONFIG = 0x100,
};

enum virtio_status {
    VIRTIO_STATUS_ACKNOWLEDGE = 1,
    VIRTIO_STATUS_DRIVER = 2,
    VIRTIO_STATUS_DRIVER_OK = 4,
    VIRTIO_STATUS_FEATURES_OK = 8,
    VIRTIO_STATUS_NEEDS_RESET = 0x40,
    VIRTIO_STATUS_FAILED = 0x80,
};

#define VIRTIO_ID_NET 1u
#define VIRTIO_ID_BLOCK 2u
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_NET_F_MAC 5

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2 /* device writes (RX buffers, read data, status) */

struct virtq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct virtq_used {
    uint16_t flags;
    uint16_t idx;
    struct virtq_used_elem ring[];
};
#define VIRTQ_USED_F_NO_NOTIFY 1

/* Every frame travels behind this header (12 bytes with VIRTIO_F_VERSION_1). */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
_Static_assert(sizeof(struct virtio_net_hdr) == 12, "virtio_net_hdr");

/* virtio-blk (5.2): the request header, and the status byte at the chain's end. */
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_IN 0u
#define VIRTIO_BLK_T_OUT 1u
#define VIRTIO_BLK_T_FLUSH 4u
#define VIRTIO_BLK_S_OK 0u
struct virtio_blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector; /* 512-byte units */
};
_Static_assert(sizeof(struct virtio_blk_req_hdr) == 16, "virtio_blk_req_hdr");

struct guest_boot;
/* The first modern (version 2) device of `device_id` among the command line's
 * virtio_mmio.device=<size>@<base>[:<irq>] tokens; NULL, after saying why
 * (prefixed with `who`), if there is none. */
volatile uint8_t *vmmio_find(const struct guest_boot *boot, uint32_t device_id, const char *who);
/* Reset, ACKNOWLEDGE, DRIVER, then the offered features masked by `wanted`
 * (VERSION_1 always) and FEATURES_OK. Returns the features accepted, or 0 after
 * marking the device FAILED and saying why. */
uint64_t vmmio_negotiate(volatile uint8_t *mmio, uint64_t wanted, const char *who);
/* Sets up queue `queue` with the largest power-of-two size up to `max` the
 * device takes; returns it, or 0 after saying why. */
uint16_t vmmio_setup_queue(volatile uint8_t *mmio, unsigned queue, unsigned max, void *desc, void *avail, void *used,
                           const char *who);
/* DRIVER_OK; 0, or -1 after marking the device FAILED if it reports a failure. */
int vmmio_driver_ok(volatile uint8_t *mmio, const char *who);

static inline uint32_t vmmio_rd32(volatile uint8_t *mmio, unsigned off) { return *(volatile uint32_t *)(mmio + off); }
static inline void vmmio_wr32(volatile uint8_t *mmio, unsigned off, uint32_t v) { *(volatile uint32_t *)(mmio + off) = v; }

#endif
