/* The kernel command line as space-separated key=value words. */
#ifndef US_CMDLINE_H
#define US_CMDLINE_H
#include <stddef.h>
#include <stdint.h>

/* Parses an unsigned decimal or 0x-hex number with an optional K/M/G suffix
 * (powers of 1024). Sets *end past the digits. Returns 0 if there are none. */
uint64_t us_strtou64(const char *s, const char **end);

/* The value of key= as a number, or def when absent; aborts on a malformed value. */
uint64_t us_cmdline_u64(const char *key, uint64_t def);

/* Copies the value of key= into buf (NUL-terminated, truncated to size-1).
 * Returns 1 if present, 0 if absent (buf then holds def). */
int us_cmdline_str(const char *key, char *buf, size_t size, const char *def);

/* Iterates over every key= word, for keys that may repeat (virtio_mmio.device=).
 * Start with *pos = NULL; each call returns the next value (not NUL-terminated:
 * its length is in *len) and advances *pos, or returns NULL when none is left. */
const char *us_cmdline_next(const char *key, const char **pos, size_t *len);

/* Runtime internal: set once by the boot vCPU. */
void us_cmdline_set(const char *cmdline);

#endif
