/*
 * ELF notes read by loaders: Xen's PVH entry note (QEMU, Firecracker, Cloud
 * Hypervisor and Understudy all use it to find the 32-bit entry point) and the
 * Understudy ABI version note, which the VMM checks before running the image.
 */
#include "asm_consts.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define US_NOTE_ABI_VERSION 1

    .section .note.understudy, "a", @note
    .balign 4
    .long   4                           /* namesz: "Xen\0" */
    .long   4                           /* descsz */
    .long   XEN_ELFNOTE_PHYS32_ENTRY
    .asciz  "Xen"
    .balign 4
    .long   us_pvh_start

    .balign 4
    .long   11                          /* namesz: "Understudy\0" */
    .long   4
    .long   US_NOTE_ABI_VERSION
    .asciz  "Understudy"
    .balign 4
    .long   US_ASM_ABI_VERSION
