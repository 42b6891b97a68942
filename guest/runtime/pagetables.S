/*
 * Static identity map of 0..16 GiB with 2 MiB pages (qemu64 lacks 1 GiB pages),
 * every entry present, writable and user-accessible so the CPL3 workload can
 * touch all of RAM and MMIO. Built by the assembler, not by a loop at CPL0.
 */
#include "asm_consts.h"

#define PTE_P 0x1
#define PTE_RW 0x2
#define PTE_US 0x4
#define PTE_PS 0x80
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US)

    .section .data.pagetables, "aw"
    .balign 4096
    .globl us_pml4
us_pml4:
    .quad   us_pdpt + PTE_TABLE
    .fill   511, 8, 0

us_pdpt:
    .set    i, 0
    .rept   US_MAP_GIB
    .quad   us_pd + i * 4096 + PTE_TABLE
    .set    i, i + 1
    .endr
    .fill   512 - US_MAP_GIB, 8, 0

us_pd:
    .set    i, 0
    .rept   US_MAP_GIB * 512
    .quad   (i << 21) + (PTE_TABLE | PTE_PS)
    .set    i, i + 1
    .endr
