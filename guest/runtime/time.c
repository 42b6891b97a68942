/*
 * Clocks. The TSC is calibrated once, by vCPU 0 at boot:
 *  - under Understudy against the TIME hypercall across a ~15 ms HALT;
 *  - elsewhere from CPUID (0x15 crystal ratio, 0x16 base MHz, or the
 *    hypervisor leaf 0x40000010 in kHz) when present, else against ~10 ms of
 *    PIT channel 2 read back by latch (QEMU microvm has a PIT, and -cpu
 *    qemu64 has none of those leaves), else an assumed 2 GHz with a warning.
 * Conversions use 32.32 fixed point so no 128-bit division (libgcc) is needed.
 */
#include "us/guest.h"

#define NS_PER_S 1000000000ull

static uint64_t tsc_hz = 2000000000ull;
static uint64_t tsc_base;
static uint64_t ns_per_tick_fp;  /* ns per tick << 32 */
static uint64_t ticks_per_ns_fp; /* ticks per ns << 32 */

uint64_t us_tsc_hz(void) { return tsc_hz; }

uint64_t us_tsc_to_ns(uint64_t ticks) { return (uint64_t)(((unsigned __int128)ticks * ns_per_tick_fp) >> 32); }

uint64_t us_ns_to_tsc(uint64_t ns) { return (uint64_t)(((unsigned __int128)ns * ticks_per_ns_fp) >> 32); }

uint64_t us_now_ns(void)
{
    if (us_under_understudy())
        return us_hc_time();
    return us_tsc_to_ns(us_rdtsc() - tsc_base);
}

uint64_t us_halt_until(uint64_t deadline_ns)
{
    if (us_under_understudy())
        return us_hc_halt(deadline_ns);
    while (us_now_ns() < deadline_ns)
        us_pause();
    return US_HALT_TIMEOUT;
}

void us_sleep_ns(uint64_t ns)
{
    if (us_under_understudy() && ns > 1000000) { /* long enough to be worth two exits */
        uint64_t deadline = us_hc_time() + ns;
        while (us_hc_time() < deadline)
            us_hc_halt(deadline);
        return;
    }
    uint64_t end = us_rdtsc() + us_ns_to_tsc(ns);
    while ((int64_t)(us_rdtsc() - end) < 0)
        us_pause();
}

void us_halt_forever(void)
{
    for (;;) {
        if (us_under_understudy())
            us_hc_halt(UINT64_MAX);
        else
            us_pause();
    }
}

static uint64_t hz_from_ticks(uint64_t ticks, uint64_t ns)
{
    if (ns == 0)
        return 0;
    if (ticks < UINT64_MAX / NS_PER_S)
        return ticks * NS_PER_S / ns;
    return ticks / (ns / 1000) * 1000000;
}

static uint64_t calibrate_understudy(void)
{
    uint64_t a = us_rdtsc(), t0 = us_hc_time(), b = us_rdtsc();
    uint64_t c, t1, d;
    do { /* HALT may wake early (or be unimplemented): loop on the clock */
        us_hc_halt(t0 + 15000000);
        c = us_rdtsc();
        t1 = us_hc_time();
        d = us_rdtsc();
    } while (t1 < t0 + 10000000);
    return hz_from_ticks((c + d) / 2 - (a + b) / 2, t1 - t0);
}

static uint64_t calibrate_cpuid(const char **src)
{
    uint32_t r[4];
    us_cpuid(0, 0, r);
    uint32_t max = r[0];
    if (max >= 0x15) {
        us_cpuid(0x15, 0, r);
        if (r[0] && r[1] && r[2]) {
            *src = "cpuid 0x15";
            return (uint64_t)r[2] * r[1] / r[0];
        }
    }
    if (max >= 0x16) {
        us_cpuid(0x16, 0, r);
        if (r[0]) {
            *src = "cpuid 0x16";
            return (uint64_t)r[0] * 1000000;
        }
    }
    us_cpuid(1, 0, r);
    if (r[2] & (1u << 31)) { /* running under a hypervisor */
        us_cpuid(0x40000000, 0, r);
        if (r[0] >= 0x40000010) {
            us_cpuid(0x40000010, 0, r);
            if (r[0]) {
                *src = "cpuid 0x40000010";
                return (uint64_t)r[0] * 1000;
            }
        }
    }
    return 0;
}

/* Reads PIT channel 2's current count (latch command, then low and high byte). */
static uint32_t pit2_count(uint64_t *tsc)
{
    uint64_t a = us_rdtsc();
    us_outb(0x43, 0x80);
    uint64_t b = us_rdtsc();
    uint32_t lo = us_inb(0x42), hi = us_inb(0x42);
    *tsc = a + (b - a) / 2; /* the latch happened during the outb */
    return lo | hi << 8;
}

/* Counts TSC ticks over ~10 ms of PIT channel 2 (1.193182 MHz) by reading its
 * count back. QEMU microvm has a PIT but no port 0x61, so the classic "poll
 * OUT2 through port 0x61" does not work there; reading the count does. */
static uint64_t calibrate_pit(void)
{
    const uint64_t pit_hz = 1193182;
    const uint32_t window = pit_hz / 100;
    us_outb(0x43, 0xb0); /* channel 2, lo/hi byte, mode 0 */
    us_outb(0x42, 0xff);
    us_outb(0x42, 0xff);
    uint64_t t0, t1;
    uint32_t c0 = pit2_count(&t0), c1 = c0;
    for (uint32_t polls = 0; polls < 200000; polls++) {
        c1 = pit2_count(&t1);
        if (c1 > c0) /* not counting down: no usable PIT */
            return 0;
        if (c0 - c1 >= window)
            return (t1 - t0) * pit_hz / (c0 - c1);
    }
    return 0;
}

static void set_hz(uint64_t hz)
{
    tsc_hz = hz;
    ns_per_tick_fp = (NS_PER_S << 32) / hz;
    ticks_per_ns_fp = ((hz / NS_PER_S) << 32) + ((hz % NS_PER_S) << 32) / NS_PER_S;
}

void us_time_init(int understudy)
{
    tsc_base = us_rdtsc();
    const char *src = "TIME hypercall";
    uint64_t hz = 0;
    if (understudy) {
        hz = calibrate_understudy();
    } else {
        hz = calibrate_cpuid(&src);
        if (!hz) {
            src = "PIT channel 2";
            hz = calibrate_pit();
        }
    }
    if (hz < 100000000ull || hz > 20000000000ull) {
        us_printf("time: calibration (%s) gave %lu Hz; assuming 2 GHz\n", src, hz);
        hz = 2000000000ull;
        src = "assumed";
    }
    set_hz(hz);
    us_printf("time: tsc %lu kHz (%s)\n", hz / 1000, src);
}
