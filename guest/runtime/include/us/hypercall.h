/*
 * Wrappers for the Understudy hypercalls (guest/abi/understudy_abi.h). Each is
 * one outl of the argument struct's address; argument structs live on the
 * caller's stack or in statics, both below 4 GiB and identity mapped.
 * Only meaningful when us_under_understudy(); elsewhere the port write is ignored.
 */
#ifndef US_HYPERCALL_H
#define US_HYPERCALL_H
#include <stdint.h>
#include "understudy_abi.h"
#include "us/io.h"

/* Raw call: args must be 8-byte aligned and below 4 GiB. */
static inline void us_hypercall(unsigned nr, void *args)
{
    us_outl((uint16_t)(US_HC_PORT_BASE + nr), (uint32_t)(uintptr_t)args);
}

/* True when the VMM answers the probe port with the Understudy magic (one exit). */
int us_probe(void);

void us_hc_console(const void *data, uint64_t len);
uint64_t us_hc_time(void);
uint64_t us_hc_halt(uint64_t deadline_ns); /* returns enum us_halt_reason */
void us_hc_exit(uint64_t status);
void us_hc_abort(const char *file, uint64_t line, const char *msg);
void us_hc_report(uint64_t key, uint64_t value);
void us_hc_test(unsigned nr, struct us_hc_test *args);

/* Publish a value to the host; a no-op when not under Understudy. */
void us_report(uint64_t key, uint64_t value);

#endif
