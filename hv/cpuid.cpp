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

// Leaves 0xb and 0x1f: subleaf 0 threads (one per core), 1 cores (all in one socket), 2
// the end. Written whole: KVM lists only the subleaves the host has, and a host without
// this topology (older AMD) lists just an empty subleaf 0, which rewritten alone would be
// a thread level with no core level above it: a package per vCPU.
void add_extended_topology(std::vector<kvm_cpuid_entry2>& entries, uint32_t function, unsigned n, unsigned index) {
    for (uint32_t sub = 0; sub < 3; ++sub) {
        kvm_cpuid_entry2 e{};
        e.function = function;
        e.index = sub;
        e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        e.edx = index; // x2APIC ID
        if (sub == 0) {
            e.ebx = 1;
            e.ecx = kLevelSmt << 8;
        } else if (sub == 1) {
            e.eax = id_bits(n);
            e.ebx = n;
            e.ecx = kLevelCore << 8 | 1;
        } else {
            e.ecx = sub; // level type 0: no such level
        }
        entries.push_back(e);
    }
}

// Cache sharing in leaf 4 (Intel) and 0x8000001d (AMD), EAX[25:14]: L1 and L2 per core,
// L3 per socket.
uint32_t cache_sharing(uint32_t eax, unsigned n) {
    const uint32_t level = (eax >> 5) & 7;
    return (eax & ~(0xfffu << 14)) | ((level >= 3 ? n - 1 : 0) << 14);
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
        case 4: // deterministic cache parameters, one subleaf per cache; EAX[31:26] cores - 1
            if (o.pc_platform && (e.eax & 0x1f) != 0) e.eax = (cache_sharing(e.eax, n) & 0x03ffffff) | ((n - 1) << 26);
            break;
        case 0x8000001d: // AMD's cache parameters
            if (o.pc_platform && (e.eax & 0x1f) != 0) e.eax = cache_sharing(e.eax, n);
            break;
        case 0xb:
        case 0x1f:
            e.edx = o.index; // x2APIC ID (a Linux guest's are replaced whole below)
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
    if (o.pc_platform) {
        uint32_t max_basic = 0;
        bool had_1f = false;
        for (const auto& e : entries) {
            if (e.function == 0) max_basic = e.eax;
            had_1f |= e.function == 0x1f;
        }
        std::erase_if(entries, [](const kvm_cpuid_entry2& e) { return e.function == 0xb || e.function == 0x1f; });
        if (max_basic >= 0xb) add_extended_topology(entries, 0xb, n, o.index);
        if (had_1f && max_basic >= 0x1f) add_extended_topology(entries, 0x1f, n, o.index);
    }
    return entries;
}

} // namespace understudy::hv
