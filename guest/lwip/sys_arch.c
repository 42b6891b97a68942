/*
 * The little lwIP needs from the platform in NO_SYS mode: a millisecond clock
 * and a random number. Both come from the TSC, which never exits to the VMM
 * (us_now_ns() would cost one exit per call under Understudy).
 */
#include "us/guest.h"
#include "lwip/sys.h"

u32_t sys_now(void)
{
    return (u32_t)(us_tsc_to_ns(us_rdtsc()) / 1000000u);
}

uint32_t us_lwip_rand(void)
{
    static uint64_t state;
    if (!state)
        state = us_rdtsc() | 1;
    state ^= state << 13; /* xorshift64 */
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state >> 32);
}
