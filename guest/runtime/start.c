/*
 * First C code, at CPL3, on every vCPU. The first to arrive (ticket 0) probes for
 * Understudy, parses the PVH start info, installs the exception gates and calibrates
 * the TSC; the others wait for it, then every vCPU runs guest_main() on its own stack.
 */
#include "pvh.h"
#include "asm_consts.h"
#include "us/guest.h"
#include "smp.h"
#include "traps.h"

extern char us_image_start[], us_image_end[], us_stacks[];
extern volatile uint32_t us_vcpu_tickets;

static struct guest_boot boot_info;
static volatile int boot_ready;
static int understudy;

int us_under_understudy(void) { return understudy; }

unsigned us_vcpus_started(void) { return __atomic_load_n(&us_vcpu_tickets, __ATOMIC_ACQUIRE); }

unsigned us_this_vcpu(void)
{
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    return (unsigned)((sp - (uintptr_t)us_stacks) / US_STACK_SIZE);
}

static uint64_t page_up(uint64_t a) { return (a + 4095) & ~4095ull; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

const struct us_mem_region *us_ram_find(const struct guest_boot *b, uint64_t base, uint64_t size)
{
    for (uint32_t i = 0; i < b->nr_ram; i++) {
        const struct us_mem_region *r = &b->ram[i];
        if (base >= r->base && size <= r->size && base - r->base <= r->size - size)
            return r;
    }
    return NULL;
}

static void add_ram(struct guest_boot *b, uint64_t base, uint64_t size)
{
    if (size == 0 || b->nr_ram == US_MAX_RAM_REGIONS)
        return;
    uint32_t i = b->nr_ram++;
    while (i > 0 && b->ram[i - 1].base > base) { /* keep sorted */
        b->ram[i] = b->ram[i - 1];
        i--;
    }
    b->ram[i].base = base;
    b->ram[i].size = size;
}

static void parse_start_info(const struct pvh_start_info *si, struct guest_boot *b)
{
    if (si->magic != PVH_START_MAGIC)
        us_panic("boot: bad PVH start info magic %#x at %p\n", si->magic, (const void *)si);
    uint64_t boot_end = (uint64_t)(uintptr_t)si + sizeof(*si);
    b->cmdline = "";
    if (si->cmdline_paddr) {
        b->cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
        boot_end = max64(boot_end, si->cmdline_paddr + strlen(b->cmdline) + 1);
    }
    const struct pvh_module *mods = (const struct pvh_module *)(uintptr_t)si->modlist_paddr;
    for (uint32_t i = 0; mods && i < si->nr_modules; i++) {
        boot_end = max64(boot_end, si->modlist_paddr + (i + 1) * sizeof(*mods));
        boot_end = max64(boot_end, mods[i].paddr + mods[i].size);
    }
    if (si->version < 1 || si->memmap_entries == 0)
        us_panic("boot: PVH start info v%u has no memory map\n", si->version);
    const struct pvh_memmap_entry *mm = (const struct pvh_memmap_entry *)(uintptr_t)si->memmap_paddr;
    boot_end = max64(boot_end, si->memmap_paddr + si->memmap_entries * sizeof(*mm));
    for (uint32_t i = 0; i < si->memmap_entries; i++)
        if (mm[i].type == PVH_MEMMAP_RAM)
            add_ram(b, mm[i].addr, mm[i].size);

    b->image_start = (uint64_t)(uintptr_t)us_image_start;
    b->image_end = page_up((uint64_t)(uintptr_t)us_image_end);
    b->free_start = max64(b->image_end, page_up(boot_end));
    b->map_end = (uint64_t)US_MAP_GIB << 30;
}

static void print_boot(const struct guest_boot *b)
{
    us_printf("guest: %s, image %#lx..%#lx, free from %#lx, cmdline \"%s\"\n",
              b->understudy ? "Understudy ABI v1" : "no Understudy VMM (serial console)", b->image_start,
              b->image_end, b->free_start, b->cmdline);
    for (uint32_t i = 0; i < b->nr_ram; i++)
        us_printf("guest: ram %#lx..%#lx\n", b->ram[i].base, b->ram[i].base + b->ram[i].size);
}

__attribute__((noreturn)) void us_runtime_start(const struct pvh_start_info *si, uint32_t ticket);

void us_runtime_start(const struct pvh_start_info *si, uint32_t ticket)
{
    if (ticket == 0) {
        understudy = us_probe();
        us_traps_init();
        parse_start_info(si, &boot_info);
        us_cmdline_set(boot_info.cmdline);
        us_time_init(understudy);
        boot_info.tsc_hz = us_tsc_hz();
        boot_info.understudy = understudy;
        print_boot(&boot_info);
        if (!understudy) /* Understudy starts every vCPU itself; elsewhere only this one runs */
            us_smp_start_aps(si, &boot_info);
        __atomic_store_n(&boot_ready, 1, __ATOMIC_RELEASE);
    } else {
        while (!__atomic_load_n(&boot_ready, __ATOMIC_ACQUIRE))
            us_pause();
    }
    struct guest_boot mine = boot_info;
    uint32_t r[4];
    us_cpuid(1, 0, r);
    mine.apic_id = r[1] >> 24;
    /* Under Understudy every vCPU starts at once, in no fixed order, and the VMM numbers
     * them by initial APIC ID: an image's roles (vCPU 0 works, the others halt) and its
     * reports must follow that number, not who took the first ticket. */
    mine.vcpu = understudy ? mine.apic_id : ticket;
    if (mine.vcpu >= US_ASM_MAX_VCPUS)
        us_panic("boot: vCPU with APIC ID %u is beyond the %u this runtime supports\n", mine.apic_id,
                 US_ASM_MAX_VCPUS);
    guest_main(&mine);
    us_exit(0);
}
