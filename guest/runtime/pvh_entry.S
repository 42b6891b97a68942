/*
 * PVH entry: every vCPU starts here in 32-bit flat protected mode, paging off,
 * with %ebx = guest-physical address of struct hvm_start_info.
 *
 * Every instruction before the iretq runs at CPL0, which some hosts emulate one
 * instruction at a time (~5 us each), so this stub does the minimum: take a ticket,
 * load the static GDT/IDT/page tables, enter long mode, load this vCPU's TSS and
 * drop to CPL3 with IOPL=3. Everything else happens at CPL3 in C.
 */
#include "asm_consts.h"

#define CR0_PE (1 << 0)
#define CR0_MP (1 << 1)
#define CR0_EM (1 << 2)
#define CR0_TS (1 << 3)
#define CR0_NE (1 << 5)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define CR4_OSFXSR (1 << 9)
#define CR4_OSXMMEXCPT (1 << 10)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)

    .section .text.boot32, "ax"
    .code32
    .globl us_pvh_start
us_pvh_start:
    cli
    mov     %ebx, %edi                  /* start_info survives into C as arg 0 */
    mov     $1, %esi
    lock xaddl %esi, us_vcpu_tickets    /* %esi = ticket: 0 is the boot vCPU */

    lgdt    us_gdt_ptr
    mov     %cr4, %eax
    or      $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
    mov     %eax, %cr4
    mov     $us_pml4, %eax
    mov     %eax, %cr3
    mov     $MSR_EFER, %ecx
    rdmsr
    or      $EFER_LME, %eax
    wrmsr
    mov     %cr0, %eax
    and     $~(CR0_EM | CR0_TS), %eax
    or      $(CR0_PG | CR0_MP | CR0_NE | CR0_PE), %eax
    mov     %eax, %cr0
    ljmp    $US_SEL_KCODE, $long_mode

    .code64
long_mode:
    mov     %edi, %edi                  /* upper halves are undefined after the switch */
    mov     %esi, %esi
    cmp     $US_ASM_MAX_VCPUS, %esi
    jae     park                        /* more vCPUs than stacks: never run them */
    mov     $US_SEL_KDATA, %eax
    mov     %eax, %ss
    lidt    us_idt_ptr(%rip)

    /* Build this vCPU's TSS descriptor (the base is split across fields, which
     * no relocation can express) and load it, so faults at CPL3 get a stack. */
    mov     %esi, %eax
    shl     $7, %eax                    /* * US_TSS_STRIDE */
    lea     us_tss(%rip), %rdx
    add     %rdx, %rax                  /* rax = TSS base */
    mov     %eax, %edx
    and     $0xffffff, %edx
    shl     $16, %rdx                   /* base[23:0] -> bits 16..39 */
    mov     %esi, %ecx
    shl     $7, %ecx
    neg     %ecx
    add     $US_TSS_LIMIT(0), %ecx      /* limit = US_TSS_LIMIT(ticket) < 64 KiB */
    or      %rcx, %rdx
    mov     %rax, %rcx
    shr     $24, %rcx
    shl     $56, %rcx                   /* base[31:24] -> bits 56..63 */
    or      %rcx, %rdx
    movabs  $(0x89 << 40), %rcx         /* present, available 64-bit TSS */
    or      %rcx, %rdx
    mov     %esi, %ecx
    shl     $4, %ecx
    lea     us_gdt + US_SEL_TSS0(%rip), %r8
    mov     %rdx, (%r8, %rcx)
    shr     $32, %rax
    mov     %rax, 8(%r8, %rcx)
    add     $US_SEL_TSS0, %ecx
    ltr     %cx

    /* iretq to CPL3: ss, rsp, rflags, cs, rip. The PVH entry state has no stack,
     * so the frame goes just below the top of this vCPU's own CPL3 stack. */
    lea     1(%rsi), %eax
    shl     $16, %rax                   /* * US_STACK_SIZE */
    lea     us_stacks(%rip), %rdx
    add     %rdx, %rax
    mov     %rax, %rsp
    pushq   $(US_SEL_UDATA | 3)
    push    %rax
    pushq   $US_USER_RFLAGS
    pushq   $(US_SEL_UCODE | 3)
    lea     us_user_entry(%rip), %rax
    push    %rax
    iretq

park:
    hlt
    jmp     park

    .text
/* First CPL3 instructions: %rdi = start_info, %esi = ticket. */
us_user_entry:
    fninit
    ldmxcsr us_default_mxcsr(%rip)
    xor     %ebp, %ebp
    call    us_runtime_start            /* does not return */
    ud2

    .section .rodata
    .balign 4
us_default_mxcsr:
    .long   0x1f80

    .data
    .balign 4
    .globl us_vcpu_tickets
us_vcpu_tickets:
    .long   0

    .bss
    .balign 4096
    .globl us_stacks
us_stacks:
    .skip   US_STACK_SIZE * US_ASM_MAX_VCPUS
    .globl us_stacks_end
us_stacks_end:
