/*
 * lwIP's compiler/platform header for the freestanding guest: types come from
 * the compiler's own stdint.h/stddef.h; there is no libc limits.h (GCC's
 * wants one underneath), inttypes.h, ctype.h, stdio.h or errno, so the few
 * limits and formats lwIP uses are given here, its own ctype helpers are
 * used, and diagnostics go to the runtime console.
 */
#ifndef US_LWIP_ARCH_CC_H
#define US_LWIP_ARCH_CC_H

#include <stdint.h>
#include "us/console.h"
#include "us/exit.h"

#define BYTE_ORDER LITTLE_ENDIAN

#define LWIP_NO_INTTYPES_H 1
#define X8_F "02x"
#define U16_F "u"
#define S16_F "d"
#define X16_F "x"
#define U32_F "u"
#define S32_F "d"
#define X32_F "x"
#define SZT_F "lu"

#define LWIP_NO_LIMITS_H 1
#define INT_MAX __INT_MAX__

#define LWIP_NO_CTYPE_H 1
#define LWIP_NO_UNISTD_H 1

#define LWIP_PLATFORM_DIAG(x) do { us_printf x; } while (0)
#define LWIP_PLATFORM_ASSERT(x) us_abort(__FILE__, __LINE__, (x))

/* A cheap, non-cryptographic source for lwIP's initial local ports (sys_arch.c). */
uint32_t us_lwip_rand(void);
#define LWIP_RAND() us_lwip_rand()

#endif
