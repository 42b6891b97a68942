/* One function per hypercall in understudy_abi.h. */
#include "us/guest.h"

int us_probe(void) { return us_inl(US_HC_PORT_BASE + US_HC_PROBE) == US_ABI_PROBE_MAGIC; }

void us_hc_console(const void *data, uint64_t len)
{
    struct us_hc_console a = {.data_gpa = (uintptr_t)data, .len = len};
    us_hypercall(US_HC_CONSOLE, &a);
}

uint64_t us_hc_time(void)
{
    struct us_hc_time a = {0};
    us_hypercall(US_HC_TIME, &a);
    return a.now_ns;
}

uint64_t us_hc_halt(uint64_t deadline_ns)
{
    struct us_hc_halt a = {.deadline_ns = deadline_ns, .reason = US_HALT_SPURIOUS};
    us_hypercall(US_HC_HALT, &a);
    return a.reason;
}

void us_hc_exit(uint64_t status)
{
    struct us_hc_exit a = {.status = status};
    us_hypercall(US_HC_EXIT, &a);
}

static uint64_t bounded_len(const char *s)
{
    uint64_t n = 0;
    while (s[n] && n < US_ABORT_STR_MAX)
        n++;
    return n;
}

void us_hc_abort(const char *file, uint64_t line, const char *msg)
{
    struct us_hc_abort a = {
        .file_gpa = (uintptr_t)file,
        .file_len = bounded_len(file),
        .line = line,
        .msg_gpa = (uintptr_t)msg,
        .msg_len = bounded_len(msg),
    };
    us_hypercall(US_HC_ABORT, &a);
}

void us_hc_report(uint64_t key, uint64_t value)
{
    struct us_hc_report a = {.key = key, .value = value};
    us_hypercall(US_HC_REPORT, &a);
}

void us_hc_test(unsigned nr, struct us_hc_test *args) { us_hypercall(nr, args); }

void us_report(uint64_t key, uint64_t value)
{
    if (us_under_understudy())
        us_hc_report(key, value);
}
