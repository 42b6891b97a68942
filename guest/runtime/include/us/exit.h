/*
 * Stopping the guest. Under Understudy these are the EXIT and ABORT hypercalls.
 * Elsewhere the guest prints the status, tries QEMU's isa-debug-exit port (0xf4,
 * present only if configured) and then triple-faults, which stops QEMU when it
 * runs with -no-reboot.
 */
#ifndef US_EXIT_H
#define US_EXIT_H
#include <stdint.h>

__attribute__((noreturn)) void us_exit(uint64_t status);
__attribute__((noreturn)) void us_abort(const char *file, unsigned line, const char *msg);
__attribute__((noreturn, format(printf, 1, 2))) void us_panic(const char *fmt, ...);

#define US_ASSERT(cond)                                                   \
    do {                                                                  \
        if (!(cond))                                                      \
            us_abort(__FILE__, __LINE__, "assertion failed: " #cond);     \
    } while (0)

#endif
