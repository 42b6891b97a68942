/*
 * Constants shared by the assembly stub and C. Assembly cannot include the ABI
 * header (it has C declarations), so the values it needs live here and
 * abi_check.c asserts they agree with guest/abi/understudy_abi.h.
 */
#ifndef US_ASM_CONSTS_H
#define US_ASM_CONSTS_H

#define US_ASM_ABI_VERSION 1          /* == UNDERSTUDY_ABI_VERSION */
#define US_ASM_MAX_VCPUS 8            /* == US_CHURN_MAX_VCPUS */

#define US_ASM_HC_FAULT_PORT 0x507     /* == US_HC_PORT_BASE + US_HC_FAULT */
#define US_ASM_HC_FAULT_SIZE 72        /* == sizeof(struct us_hc_fault) */

#define US_STACK_SIZE 0x10000         /* CPL3 stack per vCPU (64 KiB) */
#define US_FAULT_STACK_SIZE 0x1000    /* CPL0 stack per vCPU, used only on exceptions */

/* GDT selectors. Kernel entries first, user entries after, TSS descriptors last. */
#define US_SEL_KCODE 0x08
#define US_SEL_KDATA 0x10
#define US_SEL_UCODE 0x18
#define US_SEL_UDATA 0x20
#define US_SEL_TSS0 0x28              /* 16-byte descriptors, one per vCPU */
#define US_GDT_ENTRIES (5 + 2 * US_ASM_MAX_VCPUS)

#define US_TSS_STRIDE 128             /* a 64-bit TSS is 104 bytes */
#define US_IO_BITMAP_BYTES 8192        /* one bit per port */
/* TSS i limit: its fixed part, the TSSes after it, and the shared bitmap. */
#define US_TSS_LIMIT(i) ((US_ASM_MAX_VCPUS - (i)) * US_TSS_STRIDE + US_IO_BITMAP_BYTES)
#define US_IDT_VECTORS 32             /* CPU exceptions only: nothing else is delivered */

/* RFLAGS for CPL3: bit 1 is reserved-one, IOPL=3 (bits 12-13), IF=0. */
#define US_USER_RFLAGS 0x3002

/* Identity map: 2 MiB pages over 0..16 GiB (qemu64 has no 1 GiB pages). */
#define US_MAP_GIB 16

#endif
