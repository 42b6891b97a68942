/*
 * CPU exception entry. A fault at CPL3 lands here at CPL0 on the vCPU's TSS
 * stack; instead of handling it at CPL0 (slow, and C here would need a kernel
 * runtime) the handler rewrites the iret frame to "call" us_fault_user(vector,
 * error, rip, cr2, rsp) at CPL3, which reports it and stops the VM.
 * A fault at CPL0, or a second fault while reporting, triple-faults on purpose:
 * the VMM then sees a shutdown, which is the honest outcome.
 */
#include "asm_consts.h"

    .text
    .balign 16
    .globl us_trap_stubs
us_trap_stubs:                          /* 16 bytes per vector; traps.c relies on it */
    .set    v, 0
    .rept   US_IDT_VECTORS
    .balign 16
    .if (v == 8) || (v == 10) || (v == 11) || (v == 12) || (v == 13) || (v == 14) || (v == 17) || (v == 21) || (v == 29) || (v == 30)
    .else
    pushq   $0                          /* no CPU error code: keep the frame uniform */
    .endif
    pushq   $v
    jmp     us_trap_common
    .set    v, v + 1
    .endr

/* Stack: vector, error, rip, cs, rflags, rsp, ss. */
us_trap_common:
    testb   $3, 24(%rsp)
    jz      die
    mov     $1, %eax
    lock xaddl %eax, us_fault_depth(%rip)
    test    %eax, %eax
    jnz     die
    pop     %rdi                        /* vector */
    pop     %rsi                        /* error code */
    mov     (%rsp), %rdx                /* faulting rip */
    mov     %cr2, %rcx
    mov     24(%rsp), %r8               /* faulting rsp */
    lea     -256(%r8), %rax             /* leave the faulting frame readable */
    and     $-16, %rax
    sub     $8, %rax                    /* as if a call had pushed a return address */
    movq    $0, (%rax)
    mov     %rax, 24(%rsp)
    lea     us_fault_user(%rip), %rax
    mov     %rax, (%rsp)
    iretq

/* The VMM's stop reason lists the registers at the triple fault (docs/guest-abi.md):
 * leave the fault in them. rdi vector, rsi error code, rdx rip, rcx cr2, r8 rsp,
 * r9 cs, r10 us_fault_depth (CPL3 faults whose report had begun, this one included). */
die:
    mov     0(%rsp), %rdi
    mov     8(%rsp), %rsi
    mov     16(%rsp), %rdx
    mov     %cr2, %rcx
    mov     40(%rsp), %r8
    mov     24(%rsp), %r9
    mov     us_fault_depth(%rip), %r10d
    lidt    null_idt_ptr(%rip)
    ud2                                 /* #UD with no IDT: triple fault */

    .section .rodata
    .balign 4
null_idt_ptr:
    .word   0
    .quad   0

    .data
    .balign 4
    .globl us_fault_depth
us_fault_depth:
    .long   0
