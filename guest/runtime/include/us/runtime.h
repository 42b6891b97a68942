/*
 * What the runtime hands each vCPU's guest_main(): the parsed PVH start info
 * plus where free RAM begins. The runtime calls guest_main() once per vCPU, at
 * CPL3, after vCPU 0 has parsed the start info and calibrated the TSC.
 */
#ifndef US_RUNTIME_H
#define US_RUNTIME_H
#include <stdint.h>

#define US_MAX_RAM_REGIONS 16

struct us_mem_region {
    uint64_t base;
    uint64_t size;
};

struct guest_boot {
    uint32_t vcpu;              /* this vCPU's index, < 8: under Understudy the VMM's own vCPU number
                                   (= apic_id); elsewhere arrival order, 0 the boot vCPU */
    uint32_t apic_id;           /* initial APIC ID (CPUID 1), the VMM's own vCPU number */
    uint32_t nr_ram;            /* RAM (E820 type 1) regions, sorted by base */
    struct us_mem_region ram[US_MAX_RAM_REGIONS];
    const char *cmdline;        /* never NULL; "" when none was given */
    uint64_t image_start;       /* first byte of the loaded image (1 MiB) */
    uint64_t image_end;         /* page-aligned end of image, bss and stacks */
    uint64_t free_start;        /* page-aligned; above the image and all boot data */
    uint64_t map_end;           /* end of the identity map: nothing above is usable */
    uint64_t tsc_hz;            /* calibrated once, by the first vCPU to arrive */
    int understudy;             /* the probe said we run under Understudy */
};

/* Provided by each image. Returning means us_exit(0) (from any vCPU). */
void guest_main(const struct guest_boot *boot);

/* The calling vCPU's ticket (arrival order), derived from its stack pointer (no exit, no TLS). */
unsigned us_this_vcpu(void);

/* Cached result of the probe made at boot. */
int us_under_understudy(void);

/* The RAM region containing [base, base+size), or NULL. */
const struct us_mem_region *us_ram_find(const struct guest_boot *boot, uint64_t base, uint64_t size);

/* vCPUs that have started so far (each takes a ticket at entry). */
unsigned us_vcpus_started(void);

#endif
