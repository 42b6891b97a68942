/*
 * What every virtio-mmio driver of the guest does the same way: find its
 * device among the command line's tokens, negotiate features, set up a split
 * queue, and go live. Rings are the caller's (guest-physical == virtual).
 */
#include "virtio_mmio.h"
#include "us/guest.h"

static void wr64(volatile uint8_t *mmio, unsigned lo, uint64_t v)
{
    vmmio_wr32(mmio, lo, (uint32_t)v);
    vmmio_wr32(mmio, lo + 4, (uint32_t)(v >> 32));
}

/* Linux's memparse suffixes: k/K, m/M, g/G. */
static uint64_t parse_size(const char *s, const char **end)
{
    uint64_t v = us_strtou64(s, end);
    switch (**end) {
    case 'k': case 'K': v <<= 10; (*end)++; break;
    case 'm': case 'M': v <<= 20; (*end)++; break;
    case 'g': case 'G': v <<= 30; (*end)++; break;
    }
    return v;
}

/* "<size>@<base>[:<irq>]" -> base; 0 if malformed or outside the identity map. */
static uint64_t parse_token(const char *tok, uint64_t map_end)
{
    const char *p;
    uint64_t size = parse_size(tok, &p);
    if (p == tok || *p != '@')
        return 0;
    const char *b = p + 1;
    uint64_t base = us_strtou64(b, &p);
    if (p == b || (*p && *p != ':') || size < VMMIO_CONFIG + 6 || base == 0 || base % 4 ||
        base > map_end || size > map_end - base)
        return 0;
    return base;
}

volatile uint8_t *vmmio_find(const struct guest_boot *boot, uint32_t device_id, const char *who)
{
    const char *pos = NULL, *v;
    size_t len;
    unsigned seen = 0;
    while ((v = us_cmdline_next("virtio_mmio.device", &pos, &len))) {
        char tok[64];
        seen++;
        size_t n = len < sizeof tok ? len : sizeof tok - 1;
        memcpy(tok, v, n);
        tok[n] = '\0';
        uint64_t base = n == len ? parse_token(tok, boot->map_end) : 0;
        if (!base) {
            us_printf("%s: ignoring malformed virtio_mmio.device=%s\n", who, tok);
            continue;
        }
        volatile uint8_t *mmio = (volatile uint8_t *)(uintptr_t)base;
        if (vmmio_rd32(mmio, VMMIO_MAGIC) != VIRTIO_MMIO_MAGIC || vmmio_rd32(mmio, VMMIO_DEVICE_ID) != device_id)
            continue;
        if (vmmio_rd32(mmio, VMMIO_VERSION) != 2) {
            us_printf("%s at %p: legacy (version 1) interface; only virtio 1.x is supported"
                      " (QEMU: -global virtio-mmio.force-legacy=false)\n", who, (void *)mmio);
            continue;
        }
        return mmio;
    }
    us_printf("%s: no usable device among %u virtio_mmio.device= tokens\n", who, seen);
    return NULL;
}

static uint64_t failed(volatile uint8_t *mmio, const char *who, const char *why)
{
    us_printf("%s at %p: %s\n", who, (void *)mmio, why);
    vmmio_wr32(mmio, VMMIO_STATUS, VIRTIO_STATUS_FAILED);
    return 0;
}

uint64_t vmmio_negotiate(volatile uint8_t *mmio, uint64_t wanted, const char *who)
{
    vmmio_wr32(mmio, VMMIO_STATUS, 0); /* reset */
    if (vmmio_rd32(mmio, VMMIO_STATUS) != 0)
        return failed(mmio, who, "does not reset");
    vmmio_wr32(mmio, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    vmmio_wr32(mmio, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    vmmio_wr32(mmio, VMMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t offered = vmmio_rd32(mmio, VMMIO_DEVICE_FEATURES);
    vmmio_wr32(mmio, VMMIO_DEVICE_FEATURES_SEL, 1);
    offered |= (uint64_t)vmmio_rd32(mmio, VMMIO_DEVICE_FEATURES) << 32;
    const uint64_t version1 = 1ull << VIRTIO_F_VERSION_1;
    if (!(offered & version1))
        return failed(mmio, who, "does not offer VIRTIO_F_VERSION_1");
    uint64_t accepted = offered & (wanted | version1);
    vmmio_wr32(mmio, VMMIO_DRIVER_FEATURES_SEL, 0);
    vmmio_wr32(mmio, VMMIO_DRIVER_FEATURES, (uint32_t)accepted);
    vmmio_wr32(mmio, VMMIO_DRIVER_FEATURES_SEL, 1);
    vmmio_wr32(mmio, VMMIO_DRIVER_FEATURES, (uint32_t)(accepted >> 32));
    vmmio_wr32(mmio, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(vmmio_rd32(mmio, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
        return failed(mmio, who, "refused our features");
    return accepted;
}

uint16_t vmmio_setup_queue(volatile uint8_t *mmio, unsigned queue, unsigned max, void *desc, void *avail, void *used,
                           const char *who)
{
    vmmio_wr32(mmio, VMMIO_QUEUE_SEL, queue);
    if (vmmio_rd32(mmio, VMMIO_QUEUE_READY)) {
        us_printf("%s: queue %u already ready after reset\n", who, queue);
        return (uint16_t)failed(mmio, who, "queue setup failed");
    }
    uint32_t dev_max = vmmio_rd32(mmio, VMMIO_QUEUE_NUM_MAX);
    if (dev_max == 0) {
        us_printf("%s: queue %u not available\n", who, queue);
        return (uint16_t)failed(mmio, who, "queue setup failed");
    }
    uint16_t size = 1;
    while (size * 2u <= dev_max && size * 2u <= max)
        size *= 2;
    vmmio_wr32(mmio, VMMIO_QUEUE_NUM, size);
    wr64(mmio, VMMIO_QUEUE_DESC_LOW, (uint64_t)(uintptr_t)desc);
    wr64(mmio, VMMIO_QUEUE_DRIVER_LOW, (uint64_t)(uintptr_t)avail);
    wr64(mmio, VMMIO_QUEUE_DEVICE_LOW, (uint64_t)(uintptr_t)used);
    vmmio_wr32(mmio, VMMIO_QUEUE_READY, 1);
    return size;
}

int vmmio_driver_ok(volatile uint8_t *mmio, const char *who)
{
    uint32_t st = vmmio_rd32(mmio, VMMIO_STATUS);
    vmmio_wr32(mmio, VMMIO_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
    if (vmmio_rd32(mmio, VMMIO_STATUS) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        failed(mmio, who, "device failed during set-up");
        return -1;
    }
    return 0;
}
