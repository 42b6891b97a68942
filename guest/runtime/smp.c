/*
 * Starting the application processors where the VMM does not.
 *
 * Under Understudy (the probe answered) the VMM starts every vCPU at the PVH
 * entry itself; nothing to do. Every other PVH loader (QEMU microvm, ...) starts
 * only the boot vCPU and leaves the others waiting for INIT-SIPI-SIPI, as a
 * firmware would. Then the boot vCPU, at CPL3 (every page is user-accessible,
 * so the local APIC's MMIO page is too):
 *   1. asks QEMU's fw_cfg how many vCPUs there are (ports 0x510/0x511); without
 *      fw_cfg it starts whatever answers and waits a fixed time;
 *   2. checks that the local APIC is in xAPIC mode at 0xfee00000 (what a PVH
 *      boot leaves; x2APIC would need WRMSR, i.e. CPL0);
 *   3. copies ap_trampoline.S to a free page below 1 MiB;
 *   4. broadcasts INIT, then SIPI (twice) to all but itself through the ICR;
 *   5. waits for the APs' tickets (pvh_entry.S) to arrive.
 * The APs run about a dozen trampoline instructions, then the same CPL0 stub and
 * CPL3 entry as under Understudy.
 */
#include "pvh.h"
#include "smp.h"
#include "us/guest.h"

extern const char us_ap_trampoline[], us_ap_trampoline_end[], us_ap_trampoline_gdt_ptr[];

#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_NB_CPUS 0x05

#define XAPIC_BASE 0xfee00000ull
#define XAPIC_VERSION 0x030
#define XAPIC_ICR_LOW 0x300
#define XAPIC_ICR_HIGH 0x310
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_BUSY (1u << 12)
#define ICR_ASSERT (1u << 14)
#define ICR_ALL_BUT_SELF (3u << 18)

#define PAGE 4096ull
#define LOW_MEM_END 0x100000ull

static void fw_cfg_select(uint16_t key) { __asm__ volatile("outw %0, %1" ::"a"(key), "Nd"((uint16_t)FW_CFG_PORT_SEL)); }

/* vCPUs according to QEMU's fw_cfg, or 0 when there is no fw_cfg. */
static unsigned fw_cfg_cpus(void)
{
    fw_cfg_select(FW_CFG_SIGNATURE);
    char sig[4];
    for (int i = 0; i < 4; i++)
        sig[i] = (char)us_inb(FW_CFG_PORT_DATA);
    if (memcmp(sig, "QEMU", 4) != 0)
        return 0;
    fw_cfg_select(FW_CFG_NB_CPUS);
    unsigned lo = us_inb(FW_CFG_PORT_DATA), hi = us_inb(FW_CFG_PORT_DATA);
    return lo | hi << 8;
}

static volatile uint32_t *xapic(unsigned reg) { return (volatile uint32_t *)(uintptr_t)(XAPIC_BASE + reg); }

static int send_ipi(uint32_t icr_low)
{
    *xapic(XAPIC_ICR_HIGH) = 0; /* the shorthand ignores the destination */
    *xapic(XAPIC_ICR_LOW) = icr_low;
    for (int i = 0; i < 1000; i++) {
        if (!(*xapic(XAPIC_ICR_LOW) & ICR_BUSY))
            return 1;
        us_sleep_ns(1000);
    }
    return 0;
}

static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return blen && a < b + blen && b < a + alen;
}

/* Whether [page, page + 4 KiB) holds any of the boot data the runtime still reads. */
static int page_busy(const struct pvh_start_info *si, uint64_t page)
{
    if (overlaps(page, PAGE, (uintptr_t)si, sizeof(*si)))
        return 1;
    if (si->cmdline_paddr && overlaps(page, PAGE, si->cmdline_paddr, strlen((const char *)(uintptr_t)si->cmdline_paddr) + 1))
        return 1;
    if (overlaps(page, PAGE, si->memmap_paddr, (uint64_t)si->memmap_entries * sizeof(struct pvh_memmap_entry)))
        return 1;
    const struct pvh_module *mods = (const struct pvh_module *)(uintptr_t)si->modlist_paddr;
    for (uint32_t i = 0; mods && i < si->nr_modules; i++)
        if (overlaps(page, PAGE, si->modlist_paddr + i * sizeof(*mods), sizeof(*mods)) ||
            overlaps(page, PAGE, mods[i].paddr, mods[i].size))
            return 1;
    return 0;
}

/* A RAM page below 1 MiB for the trampoline (SIPI vectors 0xa0-0xbf are reserved;
 * that range is never RAM anyway), or 0. Page 0 (real-mode IVT) is left alone. */
static uint64_t trampoline_page(const struct pvh_start_info *si, const struct guest_boot *b)
{
    for (uint64_t page = 0x8000; page < LOW_MEM_END; page += PAGE) {
        if (page >= 0xa0000 && page < 0xc0000)
            continue;
        if (us_ram_find(b, page, PAGE) && !page_busy(si, page))
            return page;
    }
    for (uint64_t page = PAGE; page < 0x8000; page += PAGE)
        if (us_ram_find(b, page, PAGE) && !page_busy(si, page))
            return page;
    return 0;
}

unsigned us_smp_start_aps(const struct pvh_start_info *si, const struct guest_boot *b)
{
    const unsigned max = US_CHURN_MAX_VCPUS;
    unsigned want = fw_cfg_cpus();
    if (want == 1)
        return 1;
    uint32_t r[4];
    us_cpuid(1, 0, r);
    if (!(r[3] & (1u << 9))) {
        us_printf("smp: no local APIC; running on the boot vCPU only\n");
        return us_vcpus_started();
    }
    uint32_t version = *xapic(XAPIC_VERSION);
    if (version == 0xffffffffu || (version & 0xf0) != 0x10) {
        us_printf("smp: no xAPIC at %#llx (version register %#x; x2APIC mode?); running on the boot vCPU only\n",
                  XAPIC_BASE, version);
        return us_vcpus_started();
    }
    uint64_t page = trampoline_page(si, b);
    size_t len = (size_t)(us_ap_trampoline_end - us_ap_trampoline);
    if (!page || len > PAGE) {
        us_printf("smp: no free page below 1 MiB for the AP trampoline; running on the boot vCPU only\n");
        return us_vcpus_started();
    }
    char *dst = (char *)(uintptr_t)page;
    memcpy(dst, us_ap_trampoline, len);
    uint32_t *gdt_base = (uint32_t *)(dst + (us_ap_trampoline_gdt_ptr - us_ap_trampoline) + 2);
    *gdt_base += (uint32_t)page;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    const uint32_t vector = (uint32_t)(page >> 12);
    const uint64_t t0 = us_rdtsc();
    /* INIT, 10 ms, SIPI, 200 us, SIPI: the MP specification's sequence. KVM needs no
     * delays, but they cost the boot vCPU (native, at CPL3) nothing worth saving. */
    int ok = send_ipi(ICR_INIT | ICR_ASSERT | ICR_ALL_BUT_SELF);
    us_sleep_ns(10000000);
    ok = ok && send_ipi(ICR_STARTUP | ICR_ASSERT | ICR_ALL_BUT_SELF | vector);
    us_sleep_ns(200000);
    if (ok && (!want || us_vcpus_started() < want))
        ok = send_ipi(ICR_STARTUP | ICR_ASSERT | ICR_ALL_BUT_SELF | vector);
    if (!ok)
        us_printf("smp: the local APIC did not accept an IPI; waiting anyway\n");

    /* Each AP runs ~100 emulated CPL0 instructions (well under 10 ms even on PVM).
     * With a count to wait for, wait for it (up to 2 s); without, 100 ms. */
    const uint64_t hz = us_tsc_hz();
    const uint64_t deadline = t0 + (want ? 2 * hz : hz / 10);
    while ((int64_t)(us_rdtsc() - deadline) < 0) {
        if (want && us_vcpus_started() >= want)
            break;
        us_pause();
    }
    unsigned got = us_vcpus_started();
    uint64_t us = us_tsc_to_ns(us_rdtsc() - t0) / 1000;
    if (want)
        us_printf("smp: %u of %u vCPUs started by INIT-SIPI-SIPI in %lu us (trampoline at %#lx)%s\n", got, want,
                  us, page, got < want ? ": the others did not come up" : "");
    else
        us_printf("smp: no fw_cfg; %u vCPU(s) answered INIT-SIPI-SIPI in %lu us (trampoline at %#lx)\n", got, us,
                  page);
    if (got > max)
        us_printf("smp: only %u vCPUs are supported; the other %u stay halted\n", max, got - max);
    return got;
}
