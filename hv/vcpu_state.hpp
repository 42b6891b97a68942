// Plain, versioned vCPU and VM state, separate from the live objects that produce it.
// Kernel structures are kept as the kernel's fixed UAPI layouts; the encoding wraps
// each in a tagged field so that fields can be added without breaking old readers.
// Spec: docs/snapshot-format.md.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace understudy::hv {

struct MsrValue {
    uint32_t index;
    uint64_t value;
};

struct VcpuState {
    std::vector<kvm_cpuid_entry2> cpuid;
    kvm_mp_state mp_state{};
    kvm_regs regs{};
    kvm_sregs sregs{};
    std::vector<uint8_t> xsave; // KVM_GET_XSAVE2 size, at least 4096 bytes
    kvm_xcrs xcrs{};
    kvm_debugregs debugregs{};
    std::vector<MsrValue> msrs;
    kvm_vcpu_events events{};
    std::optional<kvm_lapic_state> lapic; // PC platform only (VmConfig::pc_platform)
    uint32_t tsc_khz = 0;                 // the guest's TSC frequency (KVM_GET_TSC_KHZ); 0: not recorded
};

// The in-kernel irqchip and PIT of the PC platform.
struct PlatformState {
    kvm_irqchip pic_master{};
    kvm_irqchip pic_slave{};
    kvm_irqchip ioapic{};
    kvm_pit_state2 pit{};
};

// State of one device, produced and consumed by the device's own save/restore hooks.
struct DeviceState {
    std::string name;
    uint32_t version = 0;
    std::vector<uint8_t> data;
};

struct VmState {
    uint64_t guest_time_ns = 0; // the hypercall clock at capture
    kvm_clock_data kvmclock{};
    std::optional<PlatformState> platform; // PC platform only
    std::vector<VcpuState> vcpus;
    std::vector<DeviceState> devices;
};

// Version 2 of both is the PC platform's state (a LAPIC per vCPU; the irqchip and PIT):
// a writer uses it only for such a VM, so a reader that predates it refuses that state
// instead of running a Linux guest without its interrupt controllers.
inline constexpr uint32_t kVcpuStateVersion = 1;
// A saved TSC frequency above this (100 GHz) is refused as malformed.
inline constexpr uint32_t kMaxTscKhz = 100'000'000;
inline constexpr uint32_t kVcpuStateVersionPc = 2;
inline constexpr uint32_t kVmStateVersion = 1;
inline constexpr uint32_t kVmStateVersionPc = 2;

void encode_vcpu_state(const VcpuState& s, std::vector<uint8_t>& out);
Result<VcpuState> decode_vcpu_state(std::span<const uint8_t> in);
// VM-wide part only (clock, and the PC platform's irqchip and PIT); vCPUs and devices travel in records of their own.
void encode_vm_clock(const VmState& s, std::vector<uint8_t>& out);
Result<void> decode_vm_clock(std::span<const uint8_t> in, VmState& s);
void encode_device_state(const DeviceState& d, std::vector<uint8_t>& out);
Result<DeviceState> decode_device_state(std::span<const uint8_t> in);
// A VM has at most this many devices (Vm::add_device refuses more), so a state from a
// peer or a file never lists more.
inline constexpr size_t kMaxDevices = 16;
// Appends a decoded device state to a VM state being read: each device once, at most
// kMaxDevices of them (Errc::invalid_input otherwise).
Result<void> add_device_state(std::vector<DeviceState>& devices, DeviceState dev);

} // namespace understudy::hv
