/*
 * Exception gates. The IDT is plain user-writable data (every page is mapped
 * U/S=1), so its gates are written here at CPL3 instead of by a loop at CPL0;
 * the stub already loaded IDTR. Until this runs, an exception triple-faults.
 */
#include "asm_consts.h"
#include "traps.h"
#include "us/guest.h"

extern uint64_t us_idt[US_IDT_VECTORS * 2];
extern char us_trap_stubs[];

static const char *const names[US_IDT_VECTORS] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization", "#CP control protection",
};

void us_traps_init(void)
{
    for (unsigned v = 0; v < US_IDT_VECTORS; v++) {
        uint64_t h = (uint64_t)(uintptr_t)us_trap_stubs + 16 * v;
        uint64_t type = 0x8e; /* present, DPL0, 64-bit interrupt gate */
        /* #DF runs on its own stack (IST1, descriptors.S): it may be raised because
         * the fault stack could not take a #PF's frame. */
        uint64_t ist = v == 8 ? 1 : 0;
        us_idt[2 * v] = (h & 0xffff) | ((uint64_t)US_SEL_KCODE << 16) | (ist << 32) | (type << 40) |
                        ((h >> 16 & 0xffff) << 48);
        us_idt[2 * v + 1] = h >> 32;
    }
}

void us_triple_fault(void)
{
    memset(us_idt, 0, sizeof(us_idt));
    __asm__ volatile("" ::: "memory");
    for (;;)
        __asm__ volatile("ud2");
}

void us_fault_user(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2, uint64_t rsp)
{
    const char *name = vector < US_IDT_VECTORS && names[vector] ? names[vector] : "exception";
    char msg[160];
    us_snprintf(msg, sizeof(msg), "cpu exception %lu (%s) on the vCPU of ticket %u: rip=%#lx error=%#lx cr2=%#lx rsp=%#lx",
                vector, name, us_this_vcpu(), rip, error, cr2, rsp);
    us_abort("cpu", 0, msg);
}
