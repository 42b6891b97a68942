// What a vCPU looked like when the guest stopped for a fault (a triple fault, KVM
// failing to enter, an internal error): general, segment and descriptor-table
// registers, control registers and pending events, in one line each, so that a stop
// reason can be read without a debugger. Read from the vCPU's fd after the exit.
#pragma once

#include <linux/kvm.h>

#include <string>

namespace understudy::hv {

// The vCPU state read at a fault exit, formatted (registers that could not be read are
// named as such; this never fails).
std::string describe_fault_state(int vcpu_fd);

// The formatting alone, for tests.
std::string format_fault_state(const kvm_regs& r, const kvm_sregs& s, const kvm_vcpu_events& e);

} // namespace understudy::hv
