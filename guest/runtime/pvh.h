/*
 * The PVH boot ABI's start info (Xen's public arch-x86/hvm/start_info.h,
 * written here from its documented layout). The loader passes its physical
 * address in %ebx. Version 1 added the memory map.
 */
#ifndef US_PVH_H
#define US_PVH_H
#include <stdint.h>

#define PVH_START_MAGIC 0x336ec578u
#define PVH_MEMMAP_RAM 1u /* E820 type 1 */

struct pvh_start_info {
    uint32_t magic;          /* 0 */
    uint32_t version;        /* 4 */
    uint32_t flags;          /* 8 */
    uint32_t nr_modules;     /* 12 */
    uint64_t modlist_paddr;  /* 16: array of struct pvh_module */
    uint64_t cmdline_paddr;  /* 24: NUL-terminated */
    uint64_t rsdp_paddr;     /* 32 */
    uint64_t memmap_paddr;   /* 40: version >= 1; array of struct pvh_memmap_entry */
    uint32_t memmap_entries; /* 48 */
    uint32_t reserved;       /* 52 */
};
_Static_assert(sizeof(struct pvh_start_info) == 56, "pvh");

struct pvh_module {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};
_Static_assert(sizeof(struct pvh_module) == 32, "pvh");

struct pvh_memmap_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};
_Static_assert(sizeof(struct pvh_memmap_entry) == 24, "pvh");

#endif
