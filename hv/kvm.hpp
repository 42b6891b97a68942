// The KVM system handle: /dev/kvm, its API version and capabilities, and the one place
// that turns a failed ioctl into an Error.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/unique_fd.hpp"

namespace understudy::hv {

// ioctl() with EINTR retried; failure becomes an Error naming the request.
template <class Arg>
Result<int> kvm_ioctl(int fd, unsigned long request, Arg arg, const char* what) {
    int r;
    do {
        r = ::ioctl(fd, request, arg);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return sys_error(std::string(what));
    return r;
}

class Kvm {
public:
    static Result<Kvm> open(const char* path = "/dev/kvm");

    int fd() const { return fd_.get(); }
    // KVM_CHECK_EXTENSION on the system fd; 0 when absent.
    int check(long cap) const;
    int vcpu_mmap_size() const { return vcpu_mmap_size_; }
    const std::vector<kvm_cpuid_entry2>& supported_cpuid() const { return cpuid_; }
    // What vCPU `index` sees: the supported CPUID with its own APIC IDs. KVM fills those
    // fields from whichever host CPU answered the query, so only this form is stable.
    // For the PC platform it also sets what a Linux guest looks for and KVM leaves to the
    // VMM: the hypervisor bit (so the guest finds KVM's leaves and uses kvmclock) and the
    // TSC-deadline timer, which the in-kernel LAPIC provides, and a topology of `vcpus`
    // cores in one socket (hv/cpuid.hpp).
    std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(unsigned index, unsigned vcpus, bool pc_platform) const;
    // MSRs that KVM lists for save/restore, filtered to those this host can read.
    const std::vector<uint32_t>& msr_indices() const { return msrs_; }
    void set_msr_indices(std::vector<uint32_t> v) { msrs_ = std::move(v); }

private:
    UniqueFd fd_;
    int vcpu_mmap_size_ = 0;
    std::vector<kvm_cpuid_entry2> cpuid_;
    std::vector<uint32_t> msrs_;
};

// True when this process can use KVM at all; `why` says what is missing otherwise.
bool kvm_available(std::string* why);

} // namespace understudy::hv
