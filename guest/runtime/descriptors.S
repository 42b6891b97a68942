/*
 * Static GDT, per-vCPU TSSes and IDT storage. All of it is plain data so the
 * CPL0 stub does no loops: the TSS descriptors (whose base is split across
 * fields) are written by the stub, the IDT gates by C code at CPL3 (traps.c;
 * every page is user-writable, and gates are only data until an exception).
 */
#include "asm_consts.h"

    .data
    .balign 16
    .globl us_gdt
us_gdt:
    .quad   0                           /* null */
    .quad   0x00af9a000000ffff          /* 0x08: kernel code, 64-bit */
    .quad   0x00cf92000000ffff          /* 0x10: kernel data */
    .quad   0x00affa000000ffff          /* 0x18: user code, 64-bit, DPL3 */
    .quad   0x00cff2000000ffff          /* 0x20: user data, DPL3 */
    .fill   2 * US_ASM_MAX_VCPUS, 8, 0  /* 0x28: TSS descriptors, filled by the stub */
us_gdt_end:

    .balign 4
    .globl us_gdt_ptr
us_gdt_ptr:                             /* loaded in 32-bit mode: 32-bit base */
    .word   us_gdt_end - us_gdt - 1
    .long   us_gdt

    .balign 4
    .globl us_idt_ptr
us_idt_ptr:
    .word   US_IDT_VECTORS * 16 - 1
    .quad   us_idt

    .balign 16
    .globl us_idt
us_idt:
    .fill   US_IDT_VECTORS * 2, 8, 0    /* gates written by us_traps_init() */

/*
 * TSS i: rsp0 = top of fault stack i; ist1 = top of double-fault stack i, so that
 * a #DF raised because the fault stack itself could not be used is still
 * delivered and reported (traps.S); and an I/O permission bitmap that allows
 * every port. IOPL=3 alone is enough on hardware virtualization, but KVM's PVM
 * backend (guest runs in hardware ring 3) emulates port I/O from CPL3 after a
 * #GP and, not seeing IOPL, consults the TSS bitmap. All TSSes share one
 * bitmap right after the array; its offset is relative to each TSS.
 */
    .balign 16
    .globl us_tss
us_tss:
    .set    i, 0
    .rept   US_ASM_MAX_VCPUS
    .long   0
    .quad   us_fault_stacks + (i + 1) * US_FAULT_STACK_SIZE    /* rsp0, offset 4 */
    .fill   24, 1, 0                                           /* rsp1, rsp2, reserved */
    .quad   us_double_fault_stacks + (i + 1) * US_FAULT_STACK_SIZE /* ist1, offset 36 */
    .fill   58, 1, 0                                           /* ist2-7, reserved */
    .word   (US_ASM_MAX_VCPUS - i) * US_TSS_STRIDE  /* I/O bitmap offset */
    .fill   US_TSS_STRIDE - 104, 1, 0
    .set    i, i + 1
    .endr
us_io_bitmap:
    .fill   US_IO_BITMAP_BYTES, 1, 0    /* 0 = allowed, for ports 0..0xffff */
    .byte   0xff                        /* required terminator byte */

    .bss
    .balign 4096
us_fault_stacks:
    .skip   US_FAULT_STACK_SIZE * US_ASM_MAX_VCPUS
us_double_fault_stacks:
    .skip   US_FAULT_STACK_SIZE * US_ASM_MAX_VCPUS
