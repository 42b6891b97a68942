/* Starting the application processors where the VMM does not (see smp.c). */
#ifndef US_SMP_H
#define US_SMP_H
#include "pvh.h"
#include "us/runtime.h"

/* Boot vCPU only, at CPL3, after the TSC is calibrated and when the probe said
 * we do not run under Understudy: starts the other vCPUs with INIT-SIPI-SIPI and
 * waits for them. Returns how many vCPUs have started, the boot vCPU included. */
unsigned us_smp_start_aps(const struct pvh_start_info *si, const struct guest_boot *b);

#endif
