/* CPU exceptions at CPL3 become a report plus an abort (see traps.S). */
#ifndef US_TRAPS_H
#define US_TRAPS_H
#include <stdint.h>

void us_traps_init(void);

/* Reached by iretq from traps.S, at CPL3, on the faulting vCPU's stack. */
__attribute__((noreturn)) void us_fault_user(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cr2,
                                             uint64_t rsp);

/* Faults at CPL3 whose report has begun (traps.S): a fault while it is nonzero is
 * not reported at CPL3 but with the FAULT hypercall. */
extern volatile uint32_t us_fault_depth;

/* Makes the next exception a triple fault (VM shutdown): zeroes every gate. */
__attribute__((noreturn)) void us_triple_fault(void);

#endif
