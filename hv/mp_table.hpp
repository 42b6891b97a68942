// The Intel MultiProcessor Specification (1.4) table that tells a Linux guest without
// ACPI where its CPUs and IOAPIC are, and how the ISA interrupts reach the IOAPIC: one
// processor entry per vCPU (APIC ID = vCPU index, vCPU 0 the BSP), the IOAPIC at
// 0xfec00000 with ISA IRQ n on pin n (KVM's default routing), the PIC on LINT0 and NMI
// on LINT1. Linux finds it by scanning the last KiB of base memory.
#pragma once

#include <cstdint>

#include "common/error.hpp"
#include "hv/guest_memory.hpp"

namespace understudy::hv {

inline constexpr uint64_t kMpTableGpa = 0x9fc00;
inline constexpr uint64_t kMpTableEnd = 0xa0000;

Result<void> write_mp_table(GuestMemory& mem, unsigned vcpus);

} // namespace understudy::hv
