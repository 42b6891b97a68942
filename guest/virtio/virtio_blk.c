/*
 * virtio-blk, polled (see virtio_blk.h). Request i of a batch owns descriptors
 * 3i (header), 3i+1 (data; absent for a flush) and 3i+2 (status), and header and
 * status slot i.
 */
#include "virtio_blk.h"
#include "virtio_mmio.h"
#include "us/guest.h"

#define QSIZE 128u
_Static_assert(3 * VBLK_BATCH <= QSIZE, "a batch fits the queue");

#define PAGE_ALIGNED __attribute__((aligned(4096)))
static struct virtq_desc desc[QSIZE] PAGE_ALIGNED;
static uint8_t avail_mem[4096] PAGE_ALIGNED;
static uint8_t used_mem[4096] PAGE_ALIGNED;
static struct virtio_blk_req_hdr hdrs[VBLK_BATCH];
static volatile uint8_t statuses[VBLK_BATCH];

static volatile uint8_t *mmio;
static volatile struct virtq_avail *avail;
static volatile struct virtq_used *used;
static uint16_t qsize, avail_idx, used_seen;
static unsigned queued;
static uint64_t capacity;
static int readonly;

int vblk_init(const struct guest_boot *boot)
{
    mmio = vmmio_find(boot, VIRTIO_ID_BLOCK, "virtio-blk");
    if (!mmio)
        return -1;
    uint64_t accepted = vmmio_negotiate(mmio, (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_FLUSH), "virtio-blk");
    if (accepted)
        qsize = vmmio_setup_queue(mmio, 0, QSIZE, desc, avail_mem, used_mem, "virtio-blk");
    if (accepted && qsize && qsize < 3 * VBLK_BATCH) {
        us_printf("virtio-blk: a queue of %u cannot hold a batch of %u requests\n", qsize, VBLK_BATCH);
        vmmio_wr32(mmio, VMMIO_STATUS, VIRTIO_STATUS_FAILED);
        qsize = 0;
    }
    avail = (volatile struct virtq_avail *)avail_mem;
    used = (volatile struct virtq_used *)used_mem;
    avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT; /* we poll */
    if (!accepted || !qsize || vmmio_driver_ok(mmio, "virtio-blk")) {
        mmio = NULL; /* vblk_run() then refuses */
        return -1;
    }
    capacity = (uint64_t)vmmio_rd32(mmio, VMMIO_CONFIG) | (uint64_t)vmmio_rd32(mmio, VMMIO_CONFIG + 4) << 32;
    readonly = (accepted >> VIRTIO_BLK_F_RO) & 1;
    us_printf("virtio-blk at %p: %lu sectors%s, queue %u\n", (void *)mmio, capacity, readonly ? ", read-only" : "", qsize);
    return 0;
}

uint64_t vblk_capacity(void) { return capacity; }
int vblk_readonly(void) { return readonly; }

static void set_desc(unsigned i, const volatile void *addr, uint32_t len, uint16_t flags)
{
    desc[i] = (struct virtq_desc){
        .addr = (uint64_t)(uintptr_t)addr,
        .len = len,
        .flags = flags,
        .next = (uint16_t)(i + 1),
    };
}

int vblk_queue(uint32_t type, uint64_t sector, void *buf, uint32_t bytes)
{
    if (queued == VBLK_BATCH)
        return -1;
    const unsigned i = queued++, d = 3 * i;
    hdrs[i] = (struct virtio_blk_req_hdr){.type = type, .sector = sector};
    statuses[i] = 0xff;
    set_desc(d, &hdrs[i], sizeof hdrs[i], VIRTQ_DESC_F_NEXT);
    unsigned last = d;
    if (bytes) {
        set_desc(d + 1, buf, bytes, (uint16_t)(VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0)));
        desc[d].next = (uint16_t)(d + 1);
        last = d + 1;
    }
    set_desc(d + 2, &statuses[i], 1, VIRTQ_DESC_F_WRITE);
    desc[last].next = (uint16_t)(d + 2);
    desc[d + 2].next = 0;
    avail->ring[avail_idx++ & (qsize - 1)] = (uint16_t)d;
    return 0;
}

int vblk_run(void)
{
    const unsigned n = queued;
    queued = 0;
    if (!mmio || n == 0)
        return mmio ? 0 : -1;
    us_barrier(); /* descriptors and ring entries before the index (x86 keeps store order) */
    avail->idx = avail_idx;
    __asm__ volatile("mfence" ::: "memory"); /* the index before the used flags' load */
    if (!(used->flags & VIRTQ_USED_F_NO_NOTIFY))
        vmmio_wr32(mmio, VMMIO_QUEUE_NOTIFY, 0);
    /* The device completes a batch within the notify; poll in case one ever does not. */
    while ((uint16_t)(used->idx - used_seen) < n) {
        if (vmmio_rd32(mmio, VMMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET) {
            us_printf("virtio-blk: the device needs a reset\n");
            return -1;
        }
        __asm__ volatile("pause");
    }
    us_barrier();
    int bad = 0;
    for (unsigned k = 0; k < n; k++, used_seen++) {
        struct virtq_used_elem e = used->ring[used_seen & (qsize - 1)];
        if (e.id != 3 * k) { /* this driver's device answers in order */
            us_printf("virtio-blk: used entry %u is chain %u, expected %u\n", k, e.id, 3 * k);
            return -1;
        }
        bad += statuses[k] != VIRTIO_BLK_S_OK;
    }
    return bad;
}

uint8_t vblk_status(unsigned i) { return i < VBLK_BATCH ? statuses[i] : 0xff; }
