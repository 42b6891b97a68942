/*
 * bad_hypercall: a hostile guest. case=NAME picks one malformed call; if the
 * VMM lets the guest continue, it prints "survived" and exits with status 3,
 * so the host can tell "rejected and continued" from "VM stopped".
 * With no case= (or an unknown one) it lists the cases and exits with 2.
 */
#include "traps.h"
#include "us/guest.h"

#define SURVIVED_STATUS 3

static const struct guest_boot *boot;
static const char msg[] = "bad_hypercall\n";

/* First byte above the highest RAM region. */
static uint64_t ram_top(void)
{
    const struct us_mem_region *r = &boot->ram[boot->nr_ram - 1];
    return r->base + r->size;
}

/* An args address below 4 GiB (the port value is 32 bits) that is not RAM. */
static uint32_t args_beyond_ram(void)
{
    uint64_t top = (ram_top() + 0xfff) & ~0xfffull;
    return top < 0xfffff000ull ? (uint32_t)top : 0xfffff000u;
}

static void console_raw(uint64_t gpa, uint64_t len)
{
    struct us_hc_console a = {.data_gpa = gpa, .len = len};
    us_hypercall(US_HC_CONSOLE, &a);
}

static void c_console_gpa_oob(void) { console_raw(ram_top() + (1ull << 30), sizeof(msg) - 1); }
static void c_console_gpa_straddle(void) { console_raw(ram_top() - 8, 64); }
static void c_console_len_4g1(void) { console_raw((uintptr_t)msg, (1ull << 32) + 1); }
static void c_console_len_max(void) { console_raw((uintptr_t)msg, ~0ull); }
static void c_console_len_over(void) { console_raw((uintptr_t)msg, US_CONSOLE_MAX + 1); }
static void c_console_wrap(void) { console_raw(~0ull - 15, 32); }
static void c_args_oob(void) { us_outl(US_HC_PORT_BASE + US_HC_CONSOLE, args_beyond_ram()); }
static void c_args_4g_edge(void) { us_outl(US_HC_PORT_BASE + US_HC_CONSOLE, 0xfffffff8u); }

static void c_args_misaligned(void)
{
    static struct us_hc_console a[2];
    a[0].data_gpa = (uintptr_t)msg;
    a[0].len = sizeof(msg) - 1;
    us_outl(US_HC_PORT_BASE + US_HC_CONSOLE, (uint32_t)(uintptr_t)a + 4);
}

static void c_time_args_oob(void) { us_outl(US_HC_PORT_BASE + US_HC_TIME, args_beyond_ram()); }

static void c_abort_file_oob(void)
{
    struct us_hc_abort a = {.file_gpa = ram_top() + (1ull << 30), .file_len = 8, .line = 1,
                            .msg_gpa = (uintptr_t)msg, .msg_len = 4};
    us_hypercall(US_HC_ABORT, &a);
}

static void c_abort_len_max(void)
{
    struct us_hc_abort a = {.file_gpa = (uintptr_t)msg, .file_len = ~0ull, .line = 1,
                            .msg_gpa = (uintptr_t)msg, .msg_len = ~0ull};
    us_hypercall(US_HC_ABORT, &a);
}

static void c_report_keys(void)
{
    /* Without a bound each new key would grow the host's table of reports. */
    for (uint64_t key = 0; key <= US_REPORT_KEY_LIMIT; ++key) {
        struct us_hc_report a = {.key = key, .value = key};
        us_hypercall(US_HC_REPORT, &a);
    }
}

static void c_hc_undefined(void)
{
    struct us_hc_test a = {0};
    us_hypercall(0x1f, &a);
}

static void c_port_outside(void) { us_outl(0x1234, 0x12345678); }
static void c_port_read_outside(void) { (void)us_inl(0x1234); }
static void c_mmio_read(void) { (void)*(volatile uint32_t *)(uintptr_t)0xd0000000u; }
static void c_mmio_write(void) { *(volatile uint32_t *)(uintptr_t)0xd0000000u = 0xdeadbeef; }

/* Not hypercalls, but hostile all the same: the runtime reports CPU exceptions
 * with an abort naming the vector, rip and cr2 (seen under KVM's PVM backend too). */
static void c_fault_ud2(void) { __asm__ volatile("ud2"); }
static void c_fault_pf(void) { (void)*(volatile uint64_t *)(uintptr_t)(boot->map_end + 4096); }
/* A fault while another is being reported: the runtime cannot report it at CPL3, so
 * it makes the FAULT hypercall at CPL0 (then triple-faults). */
static void c_fault_nested(void)
{
    us_fault_depth = 1;
    __asm__ volatile("ud2");
}
/* A fault whose delivery faults: vCPU 0's fault stack (its TSS's rsp0; every page
 * is user-writable) points at an unmapped page, so the #PF's frame cannot be pushed
 * and the CPU raises #DF, which runs on its own stack (IST1) and is reported with
 * the FAULT hypercall instead of ending in a silent triple fault. */
static void c_double_fault(void)
{
    extern char us_tss[];
    uint64_t unmapped = boot->map_end + 2 * 4096;
    memcpy(us_tss + 4, &unmapped, sizeof(unmapped));
    (void)*(volatile uint64_t *)(uintptr_t)(boot->map_end + 4096);
}
/* A triple fault with nothing said first: the VMM's stop reason carries the vCPU state. */
static void c_triple_fault(void) { us_triple_fault(); }
/* Not hostile: an ordinary failed assertion, which must reach the host with its place. */
static void c_assert_fail(void) { US_ASSERT(boot->vcpu == 12345); }

static const struct {
    const char *name;
    void (*run)(void);
} cases[] = {
    {"console_gpa_oob", c_console_gpa_oob},   {"console_gpa_straddle", c_console_gpa_straddle},
    {"console_len_4g1", c_console_len_4g1},   {"console_len_max", c_console_len_max},
    {"console_len_over", c_console_len_over}, {"console_wrap", c_console_wrap},
    {"args_oob", c_args_oob},                 {"args_4g_edge", c_args_4g_edge},
    {"args_misaligned", c_args_misaligned},   {"time_args_oob", c_time_args_oob},
    {"abort_file_oob", c_abort_file_oob},     {"abort_len_max", c_abort_len_max},
    {"report_keys", c_report_keys},           {"hc_undefined", c_hc_undefined},         {"port_outside", c_port_outside},
    {"port_read_outside", c_port_read_outside}, {"mmio_read", c_mmio_read},
    {"mmio_write", c_mmio_write},             {"fault_ud2", c_fault_ud2},
    {"fault_pf", c_fault_pf},                 {"assert_fail", c_assert_fail},
    {"fault_nested", c_fault_nested},         {"triple_fault", c_triple_fault},
    {"double_fault", c_double_fault},
};

void guest_main(const struct guest_boot *b)
{
    if (b->vcpu != 0)
        us_halt_forever();
    boot = b;
    char name[32];
    us_cmdline_str("case", name, sizeof(name), "");
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (strcmp(name, cases[i].name) != 0)
            continue;
        us_printf("bad_hypercall: case=%s\n", name);
        cases[i].run();
        us_printf("bad_hypercall: case=%s survived\n", name);
        us_exit(SURVIVED_STATUS);
    }
    us_printf("bad_hypercall: unknown case '%s'; cases:", name);
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        us_printf(" %s", cases[i].name);
    us_printf("\n");
    us_exit(2);
}
