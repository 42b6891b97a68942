/* The printf engine behind us_printf/us_snprintf: one character at a time into a sink. */
#ifndef US_FORMAT_H
#define US_FORMAT_H
#include <stdarg.h>

typedef void (*us_sink_fn)(void *ctx, char c);

/* Returns the number of characters produced. */
int us_vformat(us_sink_fn put, void *ctx, const char *fmt, va_list ap);

#endif
