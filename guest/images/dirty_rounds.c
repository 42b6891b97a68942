/*
 * dirty_rounds: exact dirty-tracking test guest, driven by the host.
 * Each round the host answers test hypercall US_HC_TEST_FIRST (op 1, "next
 * round") with arg[0] = GPA of a u64 list of page GPAs, arg[1] = count,
 * arg[2] = round; the guest writes the round number at offset round*8 % 4096
 * of each listed page and asks again. arg[1] == ~0 means exit(0).
 * Between hypercalls it writes nothing but those pages, its stack and `args`,
 * so the host knows exactly which pages must be dirty.
 * vCPU 0 only; others halt forever. No command-line keys.
 */
#include "us/guest.h"

#define OP_NEXT_ROUND 1

static struct us_hc_test args __attribute__((aligned(16)));

void guest_main(const struct guest_boot *boot)
{
    if (boot->vcpu != 0)
        us_halt_forever();
    if (!us_under_understudy()) {
        us_printf("dirty_rounds: needs the Understudy VMM's test hypercall\n");
        us_exit(2);
    }
    us_report(US_REPORT_LAYOUT, boot->free_start);
    us_printf("dirty_rounds: data pages may start at %#lx\n", boot->free_start);

    volatile struct us_hc_test *a = &args;
    for (;;) {
        a->op = OP_NEXT_ROUND;
        us_hc_test(US_HC_TEST_FIRST, &args);
        const uint64_t count = a->arg[1];
        if (count == ~0ull)
            us_exit(0);
        const volatile uint64_t *list = (const volatile uint64_t *)(uintptr_t)a->arg[0];
        const uint64_t round = a->arg[2];
        const uint64_t offset = (round * 8) % 4096;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t gpa = list[i];
            US_ASSERT((gpa & 4095) == 0 && gpa < boot->map_end);
            *(volatile uint64_t *)(uintptr_t)(gpa + offset) = round;
        }
    }
}
