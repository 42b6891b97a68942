#include "hv/kvm.hpp"

#include "hv/cpuid.hpp"
#include "hv/kvm_flex.hpp"

#include <fcntl.h>

#include <cstring>

namespace understudy::hv {

Result<Kvm> Kvm::open(const char* path) {
    Kvm k;
    k.fd_ = UniqueFd(::open(path, O_RDWR | O_CLOEXEC));
    if (!k.fd_.valid()) return sys_error(std::string("opening ") + path);
    int version = US_TRY(kvm_ioctl(k.fd(), KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION"));
    if (version != KVM_API_VERSION)
        return make_error(Errc::unsupported, "KVM API version " + std::to_string(version) + ", need " +
                                                 std::to_string(KVM_API_VERSION));
    for (long cap : {KVM_CAP_USER_MEMORY, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_EXT_CPUID, KVM_CAP_MP_STATE,
                     KVM_CAP_VCPU_EVENTS, KVM_CAP_XSAVE, KVM_CAP_XCRS, KVM_CAP_DEBUGREGS}) {
        if (k.check(cap) <= 0)
            return make_error(Errc::unsupported, "KVM lacks capability " + std::to_string(cap));
    }
    k.vcpu_mmap_size_ = US_TRY(kvm_ioctl(k.fd(), KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE"));

    // Supported CPUID: grow the buffer until KVM stops answering E2BIG.
    for (size_t n = 64; n <= 4096 && k.cpuid_.empty(); n *= 2) {
        CpuidBuffer c(n);
        if (::ioctl(k.fd(), kKvmGetSupportedCpuid, c.ptr()) == 0) {
            k.cpuid_.assign(c.data(), c.data() + c.count());
            break;
        }
        if (errno != E2BIG) return sys_error("KVM_GET_SUPPORTED_CPUID");
    }
    if (k.cpuid_.empty()) return make_error(Errc::unsupported, "KVM_GET_SUPPORTED_CPUID returned nothing");

    MsrListBuffer probe(0);
    if (::ioctl(k.fd(), kKvmGetMsrIndexList, probe.ptr()) < 0 && errno != E2BIG) return sys_error("KVM_GET_MSR_INDEX_LIST");
    MsrListBuffer list(probe.count());
    US_TRYV(kvm_ioctl(k.fd(), kKvmGetMsrIndexList, list.ptr(), "KVM_GET_MSR_INDEX_LIST"));
    k.msrs_.assign(list.data(), list.data() + list.count());
    return k;
}

int Kvm::check(long cap) const {
    int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

bool kvm_available(std::string* why) {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (why) *why = std::string("/dev/kvm cannot be opened: ") + strerror(errno);
        return false;
    }
    ::close(fd);
    return true;
}

std::vector<kvm_cpuid_entry2> Kvm::cpuid_for_vcpu(unsigned index, unsigned vcpus, bool pc_platform) const {
    const bool tsc_deadline = pc_platform && check(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    return vcpu_cpuid(cpuid_, {index, vcpus, pc_platform, tsc_deadline});
}

} // namespace understudy::hv
