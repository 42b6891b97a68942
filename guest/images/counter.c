/*
 * counter: a long, deterministic computation over guest memory. The digest
 * depends only on the command line, so a run that survives any number of
 * checkpoints and failovers must print the same digest as an undisturbed run.
 *
 * Keys: mib=M MiB of memory (64)  rounds=K mixing passes (48: ~1.5 s natively)
 *       seed=S PRNG seed (1)
 * Only vCPU 0 works; other vCPUs halt, reporting each moved event (US_REPORT_MOVED).
 */
#include "us/guest.h"

#define PAGE_WORDS 512u

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One pass: every page is rewritten from itself and a data-chosen partner page. */
static uint64_t mix_round(uint64_t *mem, uint64_t npages, uint64_t x)
{
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t *p = mem + i * PAGE_WORDS;
        const uint64_t *q = mem + ((x >> 17) % npages) * PAGE_WORDS;
        for (unsigned w = 0; w < PAGE_WORDS; w++) {
            x = (x ^ p[w]) * 0x2127599bf4325c37ull + q[(w * 7) & (PAGE_WORDS - 1)];
            x ^= x >> 29;
            p[w] += x;
        }
    }
    return x;
}

static uint64_t digest(const uint64_t *mem, uint64_t words, uint64_t x)
{
    uint64_t h = 0xcbf29ce484222325ull ^ x;
    for (uint64_t i = 0; i < words; i++) {
        h = (h ^ mem[i]) * 0x100000001b3ull;
        h ^= h >> 32;
    }
    return h;
}

void guest_main(const struct guest_boot *boot)
{
    if (boot->vcpu != 0) {
        /* Other vCPUs halt, counting the moved events they are told of (US_REPORT_MOVED). */
        uint64_t moved = 0;
        for (;;)
            if (us_halt_until(UINT64_MAX) == US_HALT_MOVED)
                us_report(US_REPORT_MOVED, ++moved);
    }
    const uint64_t mib = us_cmdline_u64("mib", 64);
    const uint64_t rounds = us_cmdline_u64("rounds", 48);
    uint64_t seed = us_cmdline_u64("seed", 1);
    const uint64_t bytes = mib << 20;
    const uint64_t base = boot->free_start;
    if (mib == 0 || mib > (1ull << 20) || !us_ram_find(boot, base, bytes) || base + bytes > boot->map_end)
        us_panic("counter: mib=%lu does not fit in RAM above %#lx\n", mib, base);

    us_report(US_REPORT_READY, 0);
    us_printf("counter: mib=%lu rounds=%lu seed=%lu at %#lx\n", mib, rounds, seed, base);
    uint64_t *mem = (uint64_t *)(uintptr_t)base;
    const uint64_t words = bytes / 8, npages = words / PAGE_WORDS;
    const uint64_t t0 = us_rdtsc();
    for (uint64_t i = 0; i < words; i++)
        mem[i] = splitmix64(&seed);
    uint64_t x = seed;
    for (uint64_t r = 0; r < rounds; r++)
        x = mix_round(mem, npages, x + r);
    const uint64_t d = digest(mem, words, x);
    const uint64_t ms = us_tsc_to_ns(us_rdtsc() - t0) / 1000000;

    us_report(US_REPORT_DIGEST, d);
    us_printf("counter: digest=%#018lx (%lu ms)\n", d, ms);
    us_exit(0);
}
