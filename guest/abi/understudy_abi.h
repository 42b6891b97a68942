/*
 * The Understudy guest ABI: how a guest image talks to the VMM.
 * Shared, unchanged, by the freestanding guest (C) and the VMM (C++).
 * Spec: docs/guest-abi.md. Bump UNDERSTUDY_ABI_VERSION on any incompatible change.
 *
 * A hypercall is one 32-bit port write:  outl(US_HC_PORT_BASE + nr, gpa_of_args)
 * where gpa_of_args is the guest-physical address (below 4 GiB, 8-byte aligned) of
 * the argument struct for that call. The VMM reads the struct, acts, writes any
 * outputs back into it, and resumes the guest after the OUT instruction.
 * A 32-bit port read of US_HC_PORT_BASE (the probe) returns US_ABI_PROBE_MAGIC
 * under Understudy; under other VMMs it returns something else (QEMU: all ones).
 */
#ifndef UNDERSTUDY_ABI_H
#define UNDERSTUDY_ABI_H

#ifdef __cplusplus
#include <cstdint>
#define US_STATIC_ASSERT(c, m) static_assert(c, m)
namespace understudy::abi {
extern "C" {
#else
#include <stdint.h>
#define US_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

#define UNDERSTUDY_ABI_VERSION 1u

/* ELF note that every guest image carries: name "Understudy", type 1, desc = u32 version. */
#define US_ELFNOTE_NAME "Understudy"
#define US_ELFNOTE_ABI_VERSION 1u

/* PVH entry note (Xen's convention): name "Xen", type 18, desc = u32 entry address. */
#define US_XEN_ELFNOTE_PHYS32_ENTRY 18u

#define US_HC_PORT_BASE 0x500u
#define US_HC_PORT_COUNT 0x40u
#define US_ABI_PROBE_MAGIC (0x55530000u | UNDERSTUDY_ABI_VERSION) /* "US" << 16 | version */

enum us_hypercall {
    US_HC_PROBE = 0,   /* inl only: returns US_ABI_PROBE_MAGIC */
    US_HC_CONSOLE = 1, /* struct us_hc_console */
    US_HC_TIME = 2,    /* struct us_hc_time */
    US_HC_HALT = 3,    /* struct us_hc_halt */
    US_HC_EXIT = 4,    /* struct us_hc_exit: the guest is done; the VM stops */
    US_HC_ABORT = 5,   /* struct us_hc_abort: assertion failure; the VM stops */
    US_HC_REPORT = 6,  /* struct us_hc_report: publish a named 64-bit value to the host */
    US_HC_FAULT = 7,   /* struct us_hc_fault: an exception the runtime cannot report at CPL3; the VM stops.
                        * Made at CPL0 just before the runtime triple-faults on purpose (an older VMM
                        * stops the VM on the undefined call instead: the same outcome, less said) */
    /* 0x20..0x3f: reserved for test harnesses, which register their own handlers. */
    US_HC_TEST_FIRST = 0x20,
    US_HC_TEST_LAST = 0x3f,
};

/* Largest console write the VMM accepts in one call. */
#define US_CONSOLE_MAX 4096u
/* Largest file or message string in an abort. */
#define US_ABORT_STR_MAX 256u

struct us_hc_console {
    uint64_t data_gpa; /* 0: guest-physical address of the bytes */
    uint64_t len;      /* 8: at most US_CONSOLE_MAX */
};
US_STATIC_ASSERT(sizeof(struct us_hc_console) == 16, "abi");

struct us_hc_time {
    uint64_t now_ns; /* 0 (out): guest monotonic nanoseconds; continues across snapshot/restore */
};
US_STATIC_ASSERT(sizeof(struct us_hc_time) == 8, "abi");

enum us_halt_reason {
    US_HALT_TIMEOUT = 0,  /* the deadline passed */
    US_HALT_EVENT = 1,    /* a device has something for the guest */
    US_HALT_SPURIOUS = 2, /* woken for the VMM's own reasons (pause, snapshot); check and halt again */
    US_HALT_MOVED = 3,    /* the VM was moved to another host (failover), once per vCPU: peers lost what
                           * the old host sent after the last checkpoint, so prod them now (e.g. make TCP
                           * peers retransmit) instead of waiting for their timers */
};

struct us_hc_halt {
    uint64_t deadline_ns; /* 0: guest monotonic time to wake at the latest */
    uint64_t reason;      /* 8 (out): enum us_halt_reason */
};
US_STATIC_ASSERT(sizeof(struct us_hc_halt) == 16, "abi");

struct us_hc_exit {
    uint64_t status; /* 0: 0 is success */
};
US_STATIC_ASSERT(sizeof(struct us_hc_exit) == 8, "abi");

struct us_hc_abort {
    uint64_t file_gpa; /* 0 */
    uint64_t file_len; /* 8: at most US_ABORT_STR_MAX */
    uint64_t line;     /* 16 */
    uint64_t msg_gpa;  /* 24 */
    uint64_t msg_len;  /* 32: at most US_ABORT_STR_MAX */
};
US_STATIC_ASSERT(sizeof(struct us_hc_abort) == 40, "abi");

struct us_hc_report {
    uint64_t key;   /* 0: see enum us_report_key */
    uint64_t value; /* 8 */
};
US_STATIC_ASSERT(sizeof(struct us_hc_report) == 16, "abi");

/* The CPU's exception frame as the runtime's trap entry saw it, then cr2 and the depth. */
struct us_hc_fault {
    uint64_t vector; /* 0 */
    uint64_t error;  /* 8: the CPU's error code, 0 for vectors without one */
    uint64_t rip;    /* 16 */
    uint64_t cs;     /* 24 */
    uint64_t rflags; /* 32 */
    uint64_t rsp;    /* 40 */
    uint64_t ss;     /* 48 */
    uint64_t cr2;    /* 56 */
    uint64_t depth;  /* 64: faults at CPL3 whose report had begun (0: the fault was at CPL0) */
};
US_STATIC_ASSERT(sizeof(struct us_hc_fault) == 72, "abi");

enum us_report_key {
    US_REPORT_DIGEST = 1,    /* counter: the final digest */
    US_REPORT_PROGRESS = 2,  /* churn: iterations completed by this vCPU */
    US_REPORT_READY = 3,     /* workload started; value = vCPU index */
    US_REPORT_LAYOUT = 4,    /* churn: guest-physical address of its struct us_churn_header */
    US_REPORT_VIRTIO_STATUS = 5, /* bad_virtio: bits 0-7 Status after the attack, 8-15 after the recovery,
                                    bit 16 recovery frame consumed, bit 17 recovery finished */
    US_REPORT_MOVED = 6,     /* counter: moved events seen by this (halting) vCPU so far */
};
/* Keys are below this; a larger key stops the guest (the host keeps one value per key). */
#define US_REPORT_KEY_LIMIT 64u

/* Argument struct of the test hypercalls (US_HC_TEST_FIRST..LAST). */
struct us_hc_test {
    uint64_t op;      /* 0 */
    uint64_t arg[6];  /* 8 (in/out) */
};
US_STATIC_ASSERT(sizeof(struct us_hc_test) == 56, "abi");

/*
 * churn's shared layout, so the host can check stamps without parsing the console.
 * Every page churn writes starts with a struct us_churn_stamp; the header lives in its
 * own page at the address reported with US_REPORT_LAYOUT.
 */
#define US_CHURN_MAX_VCPUS 8u
#define US_CHURN_MAGIC 0x6e7275684353555full /* "_USChurn" */

struct us_churn_vcpu {
    uint64_t ws_gpa;      /* 0: first page of this vCPU's working set */
    uint64_t ws_pages;    /* 8: pages in it */
    uint64_t iteration;   /* 16: current pass over the working set (starts at 1) */
    uint64_t cursor;      /* 24: pages of the current pass already stamped */
};
US_STATIC_ASSERT(sizeof(struct us_churn_vcpu) == 32, "abi");

struct us_churn_header {
    uint64_t magic;       /* 0: US_CHURN_MAGIC */
    uint64_t nr_vcpus;    /* 8: vCPUs that have started */
    uint64_t rate;        /* 16: target pages per second per vCPU (0 = as fast as possible) */
    uint64_t reserved;    /* 24 */
    struct us_churn_vcpu vcpu[US_CHURN_MAX_VCPUS]; /* 32 */
};
US_STATIC_ASSERT(sizeof(struct us_churn_header) == 32 + 32 * US_CHURN_MAX_VCPUS, "abi");

struct us_churn_stamp {
    uint64_t iteration; /* 0: the pass that last wrote this page */
    uint64_t gpa;       /* 8: the page's own address (catches misplaced pages) */
    uint64_t vcpu;      /* 16 */
    uint64_t check;     /* 24: iteration ^ gpa ^ US_CHURN_MAGIC */
};
US_STATIC_ASSERT(sizeof(struct us_churn_stamp) == 32, "abi");

#ifdef __cplusplus
} /* extern "C" */
} /* namespace understudy::abi */
#endif
#endif
