/*
 * virtio-net over virtio-mmio, polled. Rings and buffers are static, page
 * aligned arrays: guest-physical == virtual, so their addresses go to the
 * device as they are. Queue 0 is RX, queue 1 is TX; each descriptor owns one
 * 2 KiB buffer holding the 12-byte header and a whole frame, so no chains.
 *
 * MMIO costs an exit per access, so the hot path touches only QueueNotify,
 * and only when the device has not set VIRTQ_USED_F_NO_NOTIFY.
 */
#include "virtio_net.h"
#include "../virtio/virtio_mmio.h"
#include "us/guest.h"

#define QSIZE_MAX 256u
#define BUF_SIZE 2048u
#define HDR_LEN sizeof(struct virtio_net_hdr)
#define RXQ 0u
#define TXQ 1u
_Static_assert(HDR_LEN + VNET_FRAME_MAX <= BUF_SIZE, "buffer size");

struct vq {
    struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
    uint8_t *bufs;
    uint16_t size;      /* a power of two */
    uint16_t avail_idx; /* next avail slot, published on avail->idx */
    uint16_t used_seen; /* used entries consumed */
    unsigned queue;
    int unkicked;       /* avail->idx moved since the last notify */
};

#define PAGE_ALIGNED __attribute__((aligned(4096)))
static struct virtq_desc desc_mem[2][QSIZE_MAX] PAGE_ALIGNED;
static uint8_t avail_mem[2][4096] PAGE_ALIGNED;
static uint8_t used_mem[2][4096] PAGE_ALIGNED;
static uint8_t buf_mem[2][QSIZE_MAX * BUF_SIZE] PAGE_ALIGNED;
_Static_assert(sizeof(struct virtq_avail) + 2 * QSIZE_MAX + 2 <= 4096, "avail ring fits a page");
_Static_assert(sizeof(struct virtq_used) + 8 * QSIZE_MAX + 2 <= 4096, "used ring fits a page");

static volatile uint8_t *mmio;
static struct vq rxq, txq;
static uint16_t tx_free[QSIZE_MAX]; /* stack of free TX descriptor ids */
static unsigned tx_nfree;
static int broken;

static uint32_t rd32(unsigned off) { return vmmio_rd32(mmio, off); }
static void wr32(unsigned off, uint32_t v) { vmmio_wr32(mmio, off, v); }

/* Orders the avail->idx store before the used->flags load (x86 may reorder a
 * store with a later load); without it a NO_NOTIFY change could be missed. */
static void full_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static int setup_queue(struct vq *q, unsigned queue)
{
    uint16_t size = vmmio_setup_queue(mmio, queue, QSIZE_MAX, desc_mem[queue], avail_mem[queue], used_mem[queue],
                                      "virtio-net");
    if (!size)
        return -1;
    *q = (struct vq){
        .desc = desc_mem[queue],
        .avail = (volatile struct virtq_avail *)avail_mem[queue],
        .used = (volatile struct virtq_used *)used_mem[queue],
        .bufs = buf_mem[queue],
        .size = size,
        .queue = queue,
    };
    for (unsigned i = 0; i < size; i++)
        q->desc[i] = (struct virtq_desc){
            .addr = (uint64_t)(uintptr_t)(q->bufs + i * BUF_SIZE),
            .len = BUF_SIZE,
            .flags = queue == RXQ ? VIRTQ_DESC_F_WRITE : 0,
        };
    /* We poll: completions need no interrupt (and a TX completion no HALT wake-up). */
    q->avail->flags = queue == TXQ ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0;
    return 0;
}

static void publish(struct vq *q)
{
    us_barrier(); /* ring entries before the index (x86 keeps store order) */
    q->avail->idx = q->avail_idx;
    q->unkicked = 1;
}

static void notify(struct vq *q)
{
    if (!q->unkicked)
        return;
    q->unkicked = 0;
    full_barrier();
    if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
        wr32(VMMIO_QUEUE_NOTIFY, q->queue);
}

static int init_device(uint8_t mac[6])
{
    uint64_t accepted = vmmio_negotiate(mmio, 1ull << VIRTIO_NET_F_MAC, "virtio-net");
    if (!accepted) {
        mmio = NULL;
        return -1;
    }
    const int lo = (accepted & (1ull << VIRTIO_NET_F_MAC)) != 0;

    if (setup_queue(&rxq, RXQ) || setup_queue(&txq, TXQ)) {
        mmio = NULL;
        return -1;
    }

    if (lo) {
        for (unsigned i = 0; i < 6; i++)
            mac[i] = mmio[VMMIO_CONFIG + i];
    } else { /* locally administered, unicast, from the TSC */
        uint64_t t = us_rdtsc();
        uint8_t m[6] = {0x02, 0x55, (uint8_t)(t >> 24), (uint8_t)(t >> 16), (uint8_t)(t >> 8), (uint8_t)t};
        memcpy(mac, m, 6);
    }

    for (uint16_t i = 0; i < rxq.size; i++)
        rxq.avail->ring[i] = i;
    rxq.avail_idx = rxq.size;
    publish(&rxq);
    for (uint16_t i = 0; i < txq.size; i++)
        tx_free[i] = i;
    tx_nfree = txq.size;

    if (vmmio_driver_ok(mmio, "virtio-net")) {
        mmio = NULL;
        return -1;
    }
    notify(&rxq);
    us_printf("virtio-net at %p: rx %u tx %u descriptors, mac %s\n", (void *)mmio, rxq.size, txq.size,
              lo ? "from device" : "generated");
    return 0;
}

int vnet_init(const struct guest_boot *boot, uint8_t mac[6])
{
    mmio = vmmio_find(boot, VIRTIO_ID_NET, "virtio-net");
    return mmio ? init_device(mac) : -1;
}

unsigned vnet_rx_poll(vnet_deliver_fn deliver, void *ctx)
{
    struct vq *q = &rxq;
    if (!mmio || broken)
        return 0;
    uint16_t end = q->used->idx;
    if (end == q->used_seen)
        return 0;
    us_barrier(); /* the entries after the index (x86 keeps load order) */
    unsigned n = 0;
    for (; q->used_seen != end; q->used_seen++, n++) {
        struct virtq_used_elem e = q->used->ring[q->used_seen & (q->size - 1)];
        if (e.id >= q->size || e.len > BUF_SIZE) {
            us_printf("virtio-net: bad RX used entry id %u len %u; device ignored from now on\n", e.id, e.len);
            broken = 1;
            return n;
        }
        if (e.len > HDR_LEN)
            deliver(q->bufs + e.id * BUF_SIZE + HDR_LEN, e.len - HDR_LEN, ctx);
        q->avail->ring[q->avail_idx++ & (q->size - 1)] = (uint16_t)e.id;
    }
    publish(q);
    notify(q);
    return n;
}

uint8_t *vnet_tx_buffer(void)
{
    struct vq *q = &txq;
    if (!mmio || broken)
        return NULL;
    if (tx_nfree == 0) { /* reclaim lazily: only when out of descriptors */
        uint16_t end = q->used->idx;
        us_barrier();
        for (; q->used_seen != end; q->used_seen++) {
            uint32_t id = q->used->ring[q->used_seen & (q->size - 1)].id;
            if (id >= q->size || tx_nfree == q->size) {
                us_printf("virtio-net: bad TX used entry id %u; device ignored from now on\n", id);
                broken = 1;
                return NULL;
            }
            tx_free[tx_nfree++] = (uint16_t)id;
        }
        if (tx_nfree == 0)
            return NULL;
    }
    return q->bufs + tx_free[tx_nfree - 1] * BUF_SIZE + HDR_LEN;
}

void vnet_tx_post(uint8_t *buf, size_t len)
{
    struct vq *q = &txq;
    uint16_t id = tx_free[--tx_nfree];
    US_ASSERT(buf == q->bufs + id * BUF_SIZE + HDR_LEN && len <= VNET_FRAME_MAX);
    memset(buf - HDR_LEN, 0, HDR_LEN);
    q->desc[id].len = (uint32_t)(HDR_LEN + len);
    q->avail->ring[q->avail_idx++ & (q->size - 1)] = id;
    publish(q);
}

void vnet_kick(void)
{
    if (mmio && !broken)
        notify(&txq);
}

int vnet_check_broken(void)
{
    if (!mmio)
        return 1;
    if (!broken && (rd32(VMMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)) {
        us_printf("virtio-net at %p: device says DEVICE_NEEDS_RESET; no longer used\n", (void *)mmio);
        broken = 1;
    }
    return broken;
}
