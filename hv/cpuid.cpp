#include "hv/cpuid.hpp"

#include <cstdint>

namespace understudy::hv {

namespace {

constexpr uint32_t kEdxHtt = 1u << 28;       // leaf 1: EBX[23:16] is valid
constexpr uint32_t kEcxTscDeadline = 1u << 24; // leaf 1
constexpr uint32_t kEcxHypervisor = 1u << 31;  // leaf 1
constexpr uint32_t kLevelSmt = 1, kLevelCore = 2; // leaf 0xb/0x1f ECX[15:8]

// Bits of an APIC ID that number `n` things: the shift to the next topology level.
uint32_t id_bits(unsigned n) {
    uint32_t bits = 0;
    while ((1u << bits) < n) ++bits;
    return bits;
}

// Leaves 0xb and 0x1f: level 0 threads (one per core), level 1 cores (all in one socket).
void extended_topology(kvm_cpuid_entry2& e, const CpuidOptions& o) {
    e.edx = o.index;
    if (e.index == 0) {
        e.eax = 0;
        e.ebx = 1;
        e.ecx = kLevelSmt << 8;
    } else if (e.index == 1) {
        e.eax = id_bits(o.vcpus);
        e.ebx = o.vcpus;
        e.ecx = kLevelCore << 8 | 1;
    } else {
        e.eax = e.ebx = 0;
        e.ecx = e.index; // level type 0: no such level
    }
}

} // namespace

std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::vector<kvm_cpuid_entry2> entries, const CpuidOptions& o) {
    const unsigned n = o.vcpus == 0 ? 1 : o.vcpus;
    for (auto& e : entries) {
        switch (e.function) {
        case 1:
            e.ebx = (e.ebx & 0x00ffffff) | (o.index << 24); // initial APIC ID
            if (o.pc_platform) {
                e.ecx |= kEcxHypervisor;
                e.ebx = (e.ebx & 0xff00ffff) | (n << 16); // logical processors in the package
                e.edx |= kEdxHtt;
            }
            if (o.pc_platform && o.tsc_deadline) e.ecx |= kEcxTscDeadline;
            break;
        case 4: // deterministic cache parameters, one subleaf per cache
            if (o.pc_platform && (e.eax & 0x1f) != 0) {
                const uint32_t level = (e.eax >> 5) & 7;
                const uint32_t sharing = level >= 3 ? n - 1 : 0; // L1 and L2 per core, L3 per socket
                e.eax = (e.eax & 0x00003fff) | (sharing << 14) | ((n - 1) << 26);
            }
            break;
        case 0xb:
        case 0x1f:
            if (o.pc_platform) extended_topology(e, o);
            else e.edx = o.index; // x2APIC ID
            break;
        case 0x80000008: // AMD: ECX[7:0] cores - 1, ECX[15:12] APIC ID bits for the core
            if (o.pc_platform) e.ecx = (e.ecx & ~0xf0ffu) | (id_bits(n) << 12) | (n - 1);
            break;
        case 0x8000001e: // AMD: extended APIC ID, core ID, threads per core - 1, node
            if (o.pc_platform) {
                e.eax = o.index;
                e.ebx = (e.ebx & ~0xffffu) | (o.index & 0xff);
                e.ecx = e.ecx & ~0x7ffu; // node 0, one node per socket
            }
            break;
        default: break;
        }
    }
    return entries;
}

} // namespace understudy::hv
