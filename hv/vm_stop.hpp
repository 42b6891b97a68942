// Why a VM stopped: the kind, the guest's status where it gave one, and words.
#pragma once

#include <cstdint>
#include <string>

namespace understudy::hv {

enum class VmStopKind {
    exited,      // the guest called EXIT; status is its status
    aborted,     // the guest called ABORT (assertion failure)
    guest_fault, // the guest did something illegal (bad hypercall, triple fault, ...)
    host_error,  // the VMM failed (a KVM call, ...)
    stopped,     // the host asked the VM to stop
};
const char* vm_stop_kind_name(VmStopKind k);

struct VmStop {
    VmStopKind kind;
    uint64_t status = 0;
    std::string message;
};

} // namespace understudy::hv
