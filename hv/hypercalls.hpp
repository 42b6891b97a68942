// The guest ABI's hypercalls (guest/abi/understudy_abi.h, docs/guest-abi.md), as a device
// on the port-I/O bus. Each call is a handler registered by number; the core calls are
// installed by the VM, tests and later devices add their own. Every argument struct is
// read through GuestMemory's checked accessors.
#pragma once

#include <array>
#include <functional>
#include <mutex>

#include "common/error.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/guest_memory.hpp"
#include "hv/io_bus.hpp"

namespace understudy::hv {

class Vm;

using HypercallHandler = std::function<Result<void>(Vcpu&, Gpa args)>;

class Hypercalls {
public:
    // Registers the port range and the core calls on vm.
    static Result<std::unique_ptr<Hypercalls>> install(Vm& vm);
    Result<void> add(unsigned nr, HypercallHandler h);

private:
    explicit Hypercalls(Vm& vm) : vm_(vm) {}
    Result<void> on_port(IoAccess& a);
    Result<void> add_core();

    Vm& vm_;
    std::mutex mu_;
    std::array<HypercallHandler, 64> handlers_;
};

// The stop reason for a FAULT hypercall: the exception, in words and numbers.
std::string describe_guest_fault(unsigned vcpu, const abi::us_hc_fault& f);

} // namespace understudy::hv
