/* Port I/O and a few CPU instructions, all usable at CPL3 with IOPL=3. */
#ifndef US_IO_H
#define US_IO_H
#include <stdint.h>

static inline void us_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline void us_outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline uint8_t us_inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
static inline uint32_t us_inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline uint64_t us_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void us_pause(void) { __asm__ volatile("pause" ::: "memory"); }

/* Stops the compiler from moving memory accesses across it (x86 keeps store order). */
static inline void us_barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline void us_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

#endif
