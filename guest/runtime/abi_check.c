/* The assembly stub cannot include the ABI header; check its copies here. */
#include "understudy_abi.h"
#include "asm_consts.h"

_Static_assert(US_ASM_ABI_VERSION == UNDERSTUDY_ABI_VERSION, "notes.S carries the ABI version");
_Static_assert(US_ASM_ABI_VERSION == US_ELFNOTE_ABI_VERSION, "notes.S carries the ABI version");
_Static_assert(US_ASM_MAX_VCPUS == US_CHURN_MAX_VCPUS, "one stack per possible vCPU");
_Static_assert(US_TSS_STRIDE == 128 && US_STACK_SIZE == 0x10000, "pvh_entry.S shifts by 7 and 16");
_Static_assert(US_ASM_HC_FAULT_PORT == US_HC_PORT_BASE + US_HC_FAULT, "traps.S makes the FAULT hypercall");
_Static_assert(US_ASM_HC_FAULT_SIZE == sizeof(struct us_hc_fault), "traps.S builds struct us_hc_fault");
