// ACPI tables for a Linux guest, hardware-reduced as Firecracker writes them: RSDP, XSDT,
// FADT (no SCI, no PM timer; the reset register is the i8042's port 0x64 with 0xfe, and
// the sleep control register is a port whose S5 write powers the VM off), MADT (a LAPIC
// per vCPU, the IOAPIC, ISA IRQs identity-mapped), and a DSDT that names COM1 and each
// virtio-mmio device (_HID "LNRO0005", its window and interrupt): Debian's kernel finds
// virtio-mmio devices only this way. Spec: ACPI 6.4; layout: docs/linux-guests.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "hv/guest_memory.hpp"

namespace understudy::hv {

// The tables live in [kAcpiGpa, kAcpiEnd), which the e820 map reserves; the RSDP is at
// its start, where Linux also looks for it (the BIOS area from 0xe0000).
inline constexpr uint64_t kAcpiGpa = 0xe0000;
inline constexpr uint64_t kAcpiEnd = 0x100000;
// The sleep control register (FADT, hardware-reduced ACPI): a write with SLP_EN set is
// the guest powering off.
inline constexpr uint16_t kSleepControlPort = 0x3c0;

// A device the DSDT describes: an MMIO window and an edge-triggered interrupt.
struct AcpiMmioDevice {
    uint64_t base;
    uint64_t size;
    uint32_t irq;
};

// Writes every table; returns the RSDP's address.
Result<uint64_t> write_acpi_tables(GuestMemory& mem, unsigned vcpus, const std::vector<AcpiMmioDevice>& devices);

// The AML of the DSDT's body (exposed for tests): \_SB with COM1 and the devices, and \_S5.
std::vector<uint8_t> dsdt_aml(const std::vector<AcpiMmioDevice>& devices);

} // namespace understudy::hv
