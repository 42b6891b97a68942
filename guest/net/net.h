/*
 * The guest's network: virtio-net under lwIP (NO_SYS, raw API), run by one
 * polling loop on vCPU 0. Command-line keys: net.ip=A.B.C.D/len (required),
 * net.gw=A.B.C.D (optional), net.spin_us= how long to keep polling after the
 * last frame before halting (200; under Understudy only).
 */
#ifndef US_NET_NET_H
#define US_NET_NET_H
#include "us/runtime.h"

struct netif;

/* Brings up the device and the stack; aborts with a clear message if either
 * cannot be configured. Returns the (default) interface. */
struct netif *net_init(const struct guest_boot *boot);

/* One round: received frames into lwIP, lwIP's timers, queued frames out.
 * Returns nonzero if anything was received or sent. */
int net_poll(void);

/* Polls forever. Under Understudy, halts when idle until lwIP's next timer
 * (at most 50 ms) or until the VMM reports a received frame; elsewhere the
 * HALT hypercall does not exist, so it keeps polling. */
__attribute__((noreturn)) void net_run(void);

#endif
