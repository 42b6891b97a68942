/*
 * string_mmio: accesses that need the VMM more than once per instruction, for the
 * pause test (tests/test_pause_resume.cpp). Each round, against the test's pattern
 * device at mmio=ADDR (two pages):
 *   - `rep movsb` of 256 bytes out of the device across its page boundary (KVM
 *     emulates each byte as its own MMIO read and continues the instruction in the
 *     kernel between them);
 *   - an unaligned 8-byte read across the boundary (KVM splits it in two exits);
 *   - the same two as writes, of a running byte sequence the device checks.
 * Every byte read is checked against the device's pattern (a mismatch panics with the
 * offset); the device checks that the written bytes arrive once each, in order.
 * vCPU 0 reports US_REPORT_PROGRESS (rounds done) after each round, forever.
 */
#include "us/guest.h"

#define SPAN 256u
#define PAGE 4096u

/* The device's byte at offset off: tests/test_pause_resume.cpp computes the same. */
static uint8_t pattern(uint64_t off) { return (uint8_t)((off * 0x9d) ^ (off >> 8) ^ 0x5a); }

static void rep_movsb(volatile void *dst, const volatile void *src, uint64_t n)
{
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static uint8_t in[SPAN], out[SPAN];
static uint8_t next_out; /* the next byte of the written sequence */

static void check(const uint8_t *got, uint64_t off, uint64_t n, uint64_t round, const char *how)
{
    for (uint64_t i = 0; i < n; i++)
        if (got[i] != pattern(off + i))
            us_panic("string_mmio: round %lu, %s: byte at offset %#lx read %#x, the device holds %#x\n", round, how,
                     off + i, got[i], pattern(off + i));
}

void guest_main(const struct guest_boot *boot)
{
    if (boot->vcpu != 0)
        us_halt_forever();
    const uint64_t base = us_cmdline_u64("mmio", 0);
    if (base == 0 || base % PAGE != 0)
        us_panic("string_mmio: mmio=ADDR (page-aligned) is required\n");
    volatile uint8_t *dev = (volatile uint8_t *)(uintptr_t)base;
    const uint64_t span_off = PAGE - SPAN / 2, split_off = PAGE - 3;
    us_report(US_REPORT_READY, 0);
    for (uint64_t round = 1;; round++) {
        rep_movsb(in, dev + span_off, SPAN);
        check(in, span_off, SPAN, round, "rep movsb");

        uint64_t word = *(volatile uint64_t *)(dev + split_off);
        check((const uint8_t *)&word, split_off, 8, round, "split 8-byte read");

        for (unsigned i = 0; i < SPAN; i++)
            out[i] = next_out++;
        rep_movsb(dev + span_off, out, SPAN);

        uint8_t bytes[8];
        for (unsigned i = 0; i < 8; i++)
            bytes[i] = next_out++;
        memcpy(&word, bytes, 8);
        *(volatile uint64_t *)(dev + split_off) = word;

        us_report(US_REPORT_PROGRESS, round);
    }
}
