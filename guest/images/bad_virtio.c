/*
 * bad_virtio: a hostile virtio-net driver for the crafted-guest suite
 * (tests/test_bad_virtio.cpp). attack=NAME breaks the virtio rules in one way
 * and kicks the device, reads Status and reports it; then it resets the device,
 * brings it up again and sends one valid frame, to show that it recovers.
 * Reports US_REPORT_VIRTIO_STATUS (layout in understudy_abi.h) and exits 0;
 * exits 2 for an unknown attack, 3 without a device, 4 if bring-up fails.
 *
 * Descriptor and queue attacks (the device must set NEEDS_RESET): loop, oob,
 * oobmmio, straddle, len32, len64wrap, idx, badhead, indirect, qaddr, and
 * rxloop (needs a received frame waiting on the host side). Register attack
 * (the device must ignore and count, and stay up): mmio.
 *
 * Its own rings, not guest/net's driver: a correct driver cannot be made to
 * write these.
 */
#include "us/guest.h"
#include "../virtio/virtio_mmio.h" /* register layout and ring structures */

#define QSIZE 8u
#define RXQ 0u
#define TXQ 1u
#define HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define FRAME_LEN 60u
#define DESC_F_NEXT 1
#define DESC_F_INDIRECT 4
#define STATUS_UP (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)
#define PAGE_ALIGNED __attribute__((aligned(4096)))

static struct virtq_desc desc[2][QSIZE] PAGE_ALIGNED;
static uint8_t avail_mem[2][4096] PAGE_ALIGNED;
static uint8_t used_mem[2][4096] PAGE_ALIGNED;
static uint8_t buf[4096] PAGE_ALIGNED;

static volatile uint8_t *mmio;
static const struct guest_boot *boot;

#define AVAIL(q) ((volatile struct virtq_avail *)avail_mem[q])
#define USED(q) ((volatile struct virtq_used *)used_mem[q])
#define BUF ((uint64_t)(uintptr_t)buf)

static uint32_t rd32(unsigned off) { return *(volatile uint32_t *)(mmio + off); }
static void wr32(unsigned off, uint32_t v) { *(volatile uint32_t *)(mmio + off) = v; }
static void wr64(unsigned lo, uint64_t v)
{
    wr32(lo, (uint32_t)v);
    wr32(lo + 4, (uint32_t)(v >> 32));
}

/* The first virtio-net device among the virtio_mmio.device=<size>@<base>:<irq> words. */
static int find_device(void)
{
    const char *pos = NULL, *v;
    size_t len;
    while ((v = us_cmdline_next("virtio_mmio.device", &pos, &len))) {
        size_t at = 0;
        while (at < len && v[at] != '@')
            at++;
        if (at == len)
            continue;
        uint64_t base = us_strtou64(v + at + 1, NULL);
        if (base == 0 || base % 4 || base + 0x1000 > boot->map_end)
            continue;
        mmio = (volatile uint8_t *)(uintptr_t)base;
        if (rd32(VMMIO_MAGIC) == VIRTIO_MMIO_MAGIC && rd32(VMMIO_VERSION) == 2 && rd32(VMMIO_DEVICE_ID) == VIRTIO_ID_NET)
            return 0;
    }
    return -1;
}

static void setup_queue(unsigned q)
{
    memset(desc[q], 0, sizeof desc[q]);
    memset(avail_mem[q], 0, sizeof avail_mem[q]);
    memset(used_mem[q], 0, sizeof used_mem[q]);
    wr32(VMMIO_QUEUE_SEL, q);
    wr32(VMMIO_QUEUE_NUM, QSIZE);
    wr64(VMMIO_QUEUE_DESC_LOW, (uintptr_t)desc[q]);
    wr64(VMMIO_QUEUE_DRIVER_LOW, (uintptr_t)avail_mem[q]);
    wr64(VMMIO_QUEUE_DEVICE_LOW, (uintptr_t)used_mem[q]);
    wr32(VMMIO_QUEUE_READY, 1);
}

/* Reset, ACKNOWLEDGE, DRIVER, VERSION_1|MAC, FEATURES_OK, both queues, DRIVER_OK. Returns Status. */
static uint32_t bring_up(void)
{
    wr32(VMMIO_STATUS, 0);
    wr32(VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    wr32(VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    wr32(VMMIO_DRIVER_FEATURES_SEL, 0);
    wr32(VMMIO_DRIVER_FEATURES, 1u << VIRTIO_NET_F_MAC);
    wr32(VMMIO_DRIVER_FEATURES_SEL, 1);
    wr32(VMMIO_DRIVER_FEATURES, 1u << (VIRTIO_F_VERSION_1 - 32));
    wr32(VMMIO_STATUS, STATUS_UP & ~VIRTIO_STATUS_DRIVER_OK);
    setup_queue(RXQ);
    setup_queue(TXQ);
    wr32(VMMIO_STATUS, STATUS_UP);
    return rd32(VMMIO_STATUS);
}

static void set_desc(unsigned q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    desc[q][i] = (struct virtq_desc){.addr = addr, .len = len, .flags = flags, .next = next};
}

/* Puts head in the next avail slot and publishes it. */
static void post(unsigned q, uint16_t head)
{
    volatile struct virtq_avail *a = AVAIL(q);
    a->ring[a->idx % QSIZE] = head;
    us_barrier(); /* the entry before the index (x86 keeps store order) */
    a->idx = (uint16_t)(a->idx + 1);
}

static void tx_one(uint64_t addr, uint32_t len, uint16_t flags)
{
    set_desc(TXQ, 0, addr, len, flags, 0);
    post(TXQ, 0);
}

static uint64_t ram_top(void)
{
    const struct us_mem_region *r = &boot->ram[boot->nr_ram - 1];
    return r->base + r->size;
}

static void a_loop(void)
{
    set_desc(TXQ, 0, BUF, HDR_LEN + FRAME_LEN, DESC_F_NEXT, 1);
    set_desc(TXQ, 1, BUF, HDR_LEN + FRAME_LEN, DESC_F_NEXT, 0);
    post(TXQ, 0);
}
static void a_oob(void) { tx_one(0xfffffffff000ull, HDR_LEN + FRAME_LEN, 0); }
static void a_oobmmio(void) { tx_one((uintptr_t)mmio, HDR_LEN + FRAME_LEN, 0); }
static void a_straddle(void) { tx_one(ram_top() - 16, HDR_LEN + FRAME_LEN, 0); } /* starts in RAM, ends past it */
static void a_len32(void) { tx_one(BUF, 0xffffffffu, 0); }
static void a_len64wrap(void) { tx_one(0xfffffffffffff000ull, 0x2000, 0); }
static void a_indirect(void) { tx_one(BUF, 16, DESC_F_INDIRECT); }

static void a_idx(void)
{
    set_desc(TXQ, 0, BUF, HDR_LEN + FRAME_LEN, 0, 0);
    AVAIL(TXQ)->idx = 1000;
}

static void a_badhead(void)
{
    set_desc(TXQ, 0, BUF, HDR_LEN + FRAME_LEN, 0, 0);
    post(TXQ, 4000);
}

/* Re-arms the TX queue with its descriptor table outside RAM. */
static void a_qaddr(void)
{
    wr32(VMMIO_QUEUE_SEL, TXQ);
    wr32(VMMIO_QUEUE_READY, 0);
    wr64(VMMIO_QUEUE_DESC_LOW, 0xfffffffff000ull);
    wr32(VMMIO_QUEUE_READY, 1);
}

/* The device walks the RX ring when it has a frame: the host queued one before boot. */
static void a_rxloop(void)
{
    set_desc(RXQ, 0, BUF, 2048, VIRTQ_DESC_F_WRITE | DESC_F_NEXT, 1);
    set_desc(RXQ, 1, BUF + 2048, 2048, VIRTQ_DESC_F_WRITE | DESC_F_NEXT, 0);
    post(RXQ, 0);
}

static void a_mmio(void)
{
    volatile uint32_t *past_device = (volatile uint32_t *)(uintptr_t)0xd0001000u;
    volatile uint32_t *window_end = (volatile uint32_t *)(uintptr_t)0xdfff0000u;
    (void)*(volatile uint8_t *)(mmio + VMMIO_STATUS);      /* registers take 32-bit accesses only */
    *(volatile uint16_t *)(mmio + VMMIO_QUEUE_SEL) = 1;
    (void)*(volatile uint64_t *)(mmio + VMMIO_MAGIC);
    (void)*(volatile uint32_t *)(mmio + VMMIO_STATUS + 2); /* unaligned */
    (void)rd32(0x0b0);                                     /* no register there */
    wr32(0x0b0, 1);
    (void)rd32(VMMIO_QUEUE_NOTIFY);                        /* write-only */
    wr32(VMMIO_MAGIC, 0);                                  /* read-only */
    wr32(VMMIO_CONFIG, 0);                                 /* configuration space is read-only */
    wr32(VMMIO_QUEUE_NOTIFY, 7);                           /* no such queue */
    wr32(VMMIO_STATUS, STATUS_UP | 0x100);                 /* unknown status bit */
    wr32(VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);         /* clears bits without a reset */
    (void)*(volatile uint64_t *)(mmio + 0xffc);            /* runs past the device window */
    (void)*past_device;
    *past_device = 0xdeadbeef;
    (void)*window_end;
    *window_end = 0xdeadbeef;
}

static const struct attack {
    const char *name;
    void (*run)(void);
    unsigned queue; /* notified afterwards */
} attacks[] = {
    {"loop", a_loop, TXQ},         {"oob", a_oob, TXQ},           {"oobmmio", a_oobmmio, TXQ},
    {"straddle", a_straddle, TXQ}, {"len32", a_len32, TXQ},       {"len64wrap", a_len64wrap, TXQ},
    {"idx", a_idx, TXQ},           {"badhead", a_badhead, TXQ},   {"indirect", a_indirect, TXQ},
    {"qaddr", a_qaddr, TXQ},       {"rxloop", a_rxloop, RXQ},     {"mmio", a_mmio, TXQ},
};

/* One broadcast frame of the local experimental EtherType 0x88b5, from the device's MAC. */
static void post_valid_frame(void)
{
    static const char text[] = "bad_virtio recovered";
    uint8_t *f = buf + HDR_LEN;
    memset(buf, 0, HDR_LEN + FRAME_LEN);
    memset(f, 0xff, 6);
    for (unsigned i = 0; i < 6; i++)
        f[6 + i] = mmio[VMMIO_CONFIG + i];
    f[12] = 0x88;
    f[13] = 0xb5;
    memcpy(f + 14, text, sizeof text - 1);
    tx_one(BUF, HDR_LEN + FRAME_LEN, 0);
}

void guest_main(const struct guest_boot *b)
{
    boot = b;
    char name[16];
    us_cmdline_str("attack", name, sizeof name, "");
    const struct attack *a = NULL;
    for (unsigned i = 0; i < sizeof attacks / sizeof attacks[0]; i++)
        if (strcmp(name, attacks[i].name) == 0)
            a = &attacks[i];
    if (!a) {
        us_printf("bad_virtio: unknown attack=%s; one of:", name);
        for (unsigned i = 0; i < sizeof attacks / sizeof attacks[0]; i++)
            us_printf(" %s", attacks[i].name);
        us_printf("\n");
        us_exit(2);
    }
    if (find_device() != 0) {
        us_printf("bad_virtio: no virtio-net device on the command line\n");
        us_exit(3);
    }
    uint32_t st = bring_up();
    if (st != STATUS_UP) {
        us_printf("bad_virtio: bring-up left status 0x%x\n", st);
        us_exit(4);
    }

    a->run();
    wr32(VMMIO_QUEUE_NOTIFY, a->queue);
    us_halt_until(us_now_ns() + 1000000); /* the device works during the notify; be generous */
    uint32_t attacked = rd32(VMMIO_STATUS) & 0xff;
    us_printf("bad_virtio: attack %s: status 0x%x\n", a->name, attacked);
    us_report(US_REPORT_VIRTIO_STATUS, attacked);

    /* Recovery: what a driver does on NEEDS_RESET. */
    bring_up();
    post_valid_frame();
    wr32(VMMIO_QUEUE_NOTIFY, TXQ);
    uint64_t deadline = us_now_ns() + 1000000000ull;
    while (USED(TXQ)->idx == 0 && us_now_ns() < deadline)
        us_halt_until(deadline);
    int consumed = USED(TXQ)->idx == 1 && USED(TXQ)->ring[0].id == 0;
    uint32_t recovered = rd32(VMMIO_STATUS) & 0xff;
    us_printf("bad_virtio: after reset: status 0x%x, valid frame %s\n", recovered, consumed ? "consumed" : "NOT consumed");
    us_report(US_REPORT_VIRTIO_STATUS, attacked | recovered << 8 | (uint32_t)consumed << 16 | 1u << 17);
    us_exit(0);
}
