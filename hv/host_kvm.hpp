// What kind of KVM this host offers: the vendor module, the CPU's name, and whether the
// module runs guests on nested paging. One hazard is known and reported: KVM inside
// QEMU's emulator (TCG) with nested paging on, where guests triple-fault and stall
// under load (docs/testing.md, "Nested paging under QEMU's emulator"); the nested
// runner avoids it with kvm_amd npt=0.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace understudy::hv {

struct HostKvm {
    std::string backend = "none";       // the vendor module behind /dev/kvm: "pvm", "intel", "amd" or "none"
    std::string cpu = "unknown";        // the first "model name" of /proc/cpuinfo
    std::optional<bool> nested_paging;  // kvm_amd's npt or kvm_intel's ept, where the module says
    bool emulated_cpu() const;          // the CPU is QEMU's emulator (TCG), not hardware
};

// Reads /dev/kvm's presence, /sys/module and /proc/cpuinfo; what cannot be read stays at its default.
HostKvm probe_host_kvm();
// The probe, made once per process.
const HostKvm& this_host_kvm();

// The parts of the probe, on text already read, for tests. `param` is a module
// parameter's file ("Y", "N", "1" or "0" and a newline); anything else is unknown.
std::string cpu_model_from_cpuinfo(std::string_view cpuinfo);
std::optional<bool> parse_module_flag(std::string_view param);

// A line for the operator when this host's KVM is known to misbehave, else nothing.
std::optional<std::string> host_kvm_hazard(const HostKvm& h);

} // namespace understudy::hv
