/*
 * CPU exception entry. A fault at CPL3 lands here at CPL0 on the vCPU's TSS
 * stack; instead of handling it at CPL0 (slow, and C here would need a kernel
 * runtime) the handler rewrites the iret frame to "call" us_fault_user(vector,
 * error, rip, cr2, rsp) at CPL3, which reports it and stops the VM.
 * A fault at CPL0, a double fault (on its own stack, IST1), or a second fault
 * while reporting, is reported to the VMM with the FAULT hypercall, and then
 * triple-faults on purpose in case the VMM runs on.
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
    cmpq    $8, (%rsp)                  /* #DF: a fault's delivery failed; never resumable */
    je      die
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

/* Before the triple fault, tell the VMM what happened (FAULT hypercall): a triple
 * fault alone says nothing, since on AMD KVM resets the vCPU's registers at the
 * shutdown. struct us_hc_fault is built below the frame: the frame's seven words
 * (vector, error, rip, cs, rflags, rsp, ss) are its first seven fields. */
die:
    sub     $US_ASM_HC_FAULT_SIZE, %rsp
    .set    i, 0
    .rept   7
    mov     US_ASM_HC_FAULT_SIZE + i(%rsp), %rax
    mov     %rax, i(%rsp)
    .set    i, i + 8
    .endr
    mov     %cr2, %rax
    mov     %rax, 56(%rsp)
    mov     us_fault_depth(%rip), %eax
    mov     %rax, 64(%rsp)
    mov     %rsp, %rax                  /* identity-mapped: the address is the GPA */
    mov     $US_ASM_HC_FAULT_PORT, %dx
    outl    %eax, %dx
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
