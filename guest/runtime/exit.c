/* Ending the run: hypercalls under Understudy, print + shutdown elsewhere. */
#include "traps.h"
#include "us/guest.h"

#define QEMU_DEBUG_EXIT_PORT 0xf4

__attribute__((noreturn)) static void stop_elsewhere(uint32_t code)
{
    us_outl(QEMU_DEBUG_EXIT_PORT, code); /* QEMU exits with (code << 1) | 1 if configured */
    us_triple_fault();                    /* -no-reboot turns the reset into an exit */
}

void us_exit(uint64_t status)
{
    if (us_under_understudy()) {
        us_hc_exit(status);
        us_halt_forever(); /* the VMM stops the VM; other vCPUs may still be running */
    }
    us_printf("guest: exit(%lu)\n", status);
    stop_elsewhere((uint32_t)status);
}

void us_abort(const char *file, unsigned line, const char *msg)
{
    us_printf("guest: ABORT at %s:%u: %s\n", file, line, msg);
    if (us_under_understudy()) {
        us_hc_abort(file, line, msg);
        us_halt_forever();
    }
    stop_elsewhere(0x7f);
}

void us_panic(const char *fmt, ...)
{
    char msg[US_ABORT_STR_MAX];
    va_list ap;
    va_start(ap, fmt);
    us_vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    if (n && msg[n - 1] == '\n')
        msg[n - 1] = '\0';
    us_abort("panic", 0, msg);
}
