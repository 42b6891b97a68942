// The CPUID a vCPU sees: what KVM supports, with this vCPU's APIC IDs and, for the PC
// platform (a Linux guest), the hypervisor and TSC-deadline bits and a topology of its
// own. Without that, a guest reads the host's sockets, cores and threads (leaves 1, 4,
// 0xb, 0x1f, 0x80000008, 0x8000001d, 0x8000001e) next to an MADT with a handful of CPUs, and sizes
// its scheduler domains and caches for a machine it does not have. Pure: tested natively.
#pragma once

#include <linux/kvm.h>

#include <vector>

namespace understudy::hv {

struct CpuidOptions {
    unsigned index = 0;        // this vCPU: its initial APIC ID and x2APIC ID
    unsigned vcpus = 1;        // the VM's vCPUs: one socket of that many cores, one thread each
    bool pc_platform = false;  // the hypervisor bit and the topology
    bool tsc_deadline = false; // KVM emulates the TSC-deadline timer (PC platform only)
};

std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::vector<kvm_cpuid_entry2> supported, const CpuidOptions& o);

} // namespace understudy::hv
