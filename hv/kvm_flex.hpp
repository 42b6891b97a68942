// KVM's variable-length ioctl structures (kvm_cpuid2, kvm_msrs, kvm_msr_list,
// kvm_signal_mask, kvm_xsave) as C++ can use them. Debian 12's headers declare their arrays with
// __DECLARE_FLEX_ARRAY, which in C++ adds an empty member: sizeof grows and the array
// moves, so the ioctl numbers built from those structs are ones the kernel does not
// know (EINVAL). These headers have the kernel's real layout, checked below.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace understudy::hv {

struct KvmCountHeader64 { // kvm_cpuid2, kvm_msrs: u32 count, u32 padding, entries at 8
    uint32_t count;
    uint32_t padding;
};
struct KvmCountHeader32 { // kvm_msr_list, kvm_signal_mask: u32 count/len, entries at 4
    uint32_t count;
};
static_assert(sizeof(KvmCountHeader64) == 8 && sizeof(KvmCountHeader32) == 4);

inline constexpr unsigned long kKvmGetMsrIndexList = _IOWR(KVMIO, 0x02, KvmCountHeader32);
inline constexpr unsigned long kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, KvmCountHeader64);
inline constexpr unsigned long kKvmGetMsrs = _IOWR(KVMIO, 0x88, KvmCountHeader64);
inline constexpr unsigned long kKvmSetMsrs = _IOW(KVMIO, 0x89, KvmCountHeader64);
inline constexpr unsigned long kKvmSetSignalMask = _IOW(KVMIO, 0x8b, KvmCountHeader32);
inline constexpr unsigned long kKvmSetCpuid2 = _IOW(KVMIO, 0x90, KvmCountHeader64);

// kvm_xsave: 4096 bytes of region, then (with KVM_CAP_XSAVE2) a flexible tail.
struct KvmXsaveRegion {
    uint32_t region[1024];
};
static_assert(sizeof(KvmXsaveRegion) == 4096);
inline constexpr unsigned long kKvmGetXsave = _IOR(KVMIO, 0xa4, KvmXsaveRegion);
inline constexpr unsigned long kKvmSetXsave = _IOW(KVMIO, 0xa5, KvmXsaveRegion);
inline constexpr unsigned long kKvmGetXsave2 = _IOR(KVMIO, 0xcf, KvmXsaveRegion);

// A header followed by `count` entries, in one 8-byte-aligned buffer.
template <class Header, class Entry>
class KvmFlex {
public:
    explicit KvmFlex(size_t count) : words_((sizeof(Header) + count * sizeof(Entry) + 7) / 8, 0) {
        header()->count = static_cast<uint32_t>(count);
    }
    KvmFlex(const std::vector<Entry>& entries) : KvmFlex(entries.size()) {
        if (!entries.empty()) std::memcpy(data(), entries.data(), entries.size() * sizeof(Entry));
    }
    Header* header() { return reinterpret_cast<Header*>(words_.data()); }
    Entry* data() { return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(words_.data()) + sizeof(Header)); }
    uint32_t count() { return header()->count; }
    void* ptr() { return words_.data(); }

private:
    std::vector<uint64_t> words_;
};

using CpuidBuffer = KvmFlex<KvmCountHeader64, kvm_cpuid_entry2>;
using MsrBuffer = KvmFlex<KvmCountHeader64, kvm_msr_entry>;
using MsrListBuffer = KvmFlex<KvmCountHeader32, uint32_t>;

} // namespace understudy::hv
