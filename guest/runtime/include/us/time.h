/*
 * Time. us_now_ns() is the guest monotonic clock: the TIME hypercall under
 * Understudy (one exit), the calibrated TSC elsewhere. Hot loops should use
 * us_rdtsc() with us_tsc_hz()/us_ns_to_tsc(), which never exit.
 */
#ifndef US_TIME_H
#define US_TIME_H
#include <stdint.h>
#include "us/io.h"

uint64_t us_tsc_hz(void);
uint64_t us_tsc_to_ns(uint64_t ticks);
uint64_t us_ns_to_tsc(uint64_t ns);
uint64_t us_now_ns(void);

/* Sleep until deadline_ns (us_now_ns() clock) at the latest; may return early
 * (returns enum us_halt_reason). Spins with pause when not under Understudy. */
uint64_t us_halt_until(uint64_t deadline_ns);

/* Waits for ns to pass, halting when the wait is long and spinning otherwise. */
void us_sleep_ns(uint64_t ns);

/* Never returns: halt forever (vCPUs with nothing to do). */
__attribute__((noreturn)) void us_halt_forever(void);

/* Runtime internal: vCPU 0 calibrates once at boot. */
void us_time_init(int understudy);

#endif
