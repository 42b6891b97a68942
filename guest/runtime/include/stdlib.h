/* The freestanding guest's own <stdlib.h>: only the number parsing lwIP uses. */
#ifndef US_LIBC_STDLIB_H
#define US_LIBC_STDLIB_H
#include <stddef.h>

/* As in C11, base 0 or 2..36; out-of-range values clamp to LONG_MIN/LONG_MAX
 * (there is no errno). */
long strtol(const char *s, char **end, int base);
int atoi(const char *s);

#endif
