/*
 * Console output: the console hypercall under Understudy, COM1 (16550,
 * polled) elsewhere. One us_printf() call is sent as one hypercall when it
 * fits in 512 bytes, so lines from different vCPUs do not interleave.
 */
#ifndef US_CONSOLE_H
#define US_CONSOLE_H
#include <stdarg.h>
#include <stddef.h>

void us_console_write(const char *s, size_t len);
void us_puts(const char *s); /* no newline added */

/* Formats: %s %c %d %i %u %x %X %p %%, flags '-' '0', width, '*', and the
 * length modifiers l, ll, z. Returns the length the full output would have. */
int us_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int us_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int us_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
