/*
 * Application-processor trampoline, for VMMs that start only the boot vCPU
 * (QEMU and every other PVH loader except Understudy, which starts all vCPUs at
 * the PVH entry itself). smp.c copies this blob to a free 4 KiB page below
 * 1 MiB, patches the GDT pointer and sends INIT-SIPI-SIPI with that page as
 * the vector; each AP then starts here in real mode with CS = page >> 4, IP = 0.
 *
 * It does the least that reproduces the PVH entry state (32-bit flat protected
 * mode, CS = 0x08, data = 0x10, paging off) and jumps to us_pvh_start, so an AP
 * started this way takes a ticket and reaches CPL3 by the same path as under
 * Understudy. About a dozen instructions, all at CPL0 (emulated on PVM hosts).
 * The blob is position independent except for the GDT pointer's base.
 */
#define AP_SEL_CODE32 0x08 /* the PVH entry's CS selector */
#define AP_SEL_DATA32 0x10
#define CR0_PE 0x1
#define CR0_CD_NW 0x60000000 /* set by INIT; leaving them set would disable caching */

    .section .rodata.ap_trampoline, "a"
    .balign 16
    .globl us_ap_trampoline
us_ap_trampoline:
    .code16
    cli
    cld
    mov     %cs, %ax
    mov     %ax, %ds
    lgdtl   ap_gdt_ptr - us_ap_trampoline
    mov     %cr0, %eax
    and     $~CR0_CD_NW, %eax
    or      $CR0_PE, %eax
    mov     %eax, %cr0
    mov     $AP_SEL_DATA32, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    xor     %ebx, %ebx                  /* no start info: only the boot vCPU reads it */
    ljmpl   $AP_SEL_CODE32, $us_pvh_start

    .balign 8
ap_gdt:
    .quad   0
    .quad   0x00cf9a000000ffff          /* 0x08: 32-bit code, base 0, 4 GiB */
    .quad   0x00cf92000000ffff          /* 0x10: data, base 0, 4 GiB */
ap_gdt_end:
    .globl us_ap_trampoline_gdt_ptr
us_ap_trampoline_gdt_ptr:
ap_gdt_ptr:
    .word   ap_gdt_end - ap_gdt - 1
    .long   ap_gdt - us_ap_trampoline   /* smp.c adds the page's address */
    .globl us_ap_trampoline_end
us_ap_trampoline_end:
    .code64
