// Exit dispatch: devices register the port-I/O or MMIO ranges they own, and the vCPU
// loop looks the address up here. There is no central switch that grows per device.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <shared_mutex>
#include <span>
#include <string>

#include "common/error.hpp"

namespace understudy::hv {

class Vcpu;

// One guest access that exited to the VMM. For reads the handler fills `data`.
struct IoAccess {
    Vcpu* vcpu; // the vCPU that exited; the vCPU loop always passes one, unit tests pass none
    uint64_t addr;   // port number or guest-physical address
    uint64_t offset; // addr minus the start of the registered range
    std::span<uint8_t> data;
    bool is_write;
};

// An error from a handler stops the VM with that error as the reason (a guest fault).
using IoHandler = std::function<Result<void>(IoAccess&)>;

class IoBus {
public:
    explicit IoBus(std::string name) : name_(std::move(name)) {}

    // Fails if [base, base+len) overlaps a range already registered.
    Result<void> add(uint64_t base, uint64_t len, std::string owner, IoHandler h);
    // Dispatches to the owner of addr. Unclaimed accesses behave as on real hardware:
    // reads return all ones, writes are dropped; both are counted and logged (rate-limited).
    Result<void> dispatch(Vcpu* vcpu, uint64_t addr, std::span<uint8_t> data, bool is_write);
    uint64_t unclaimed_accesses() const { return unclaimed_; }

private:
    struct Range {
        uint64_t len;
        std::string owner;
        IoHandler handler;
    };
    std::string name_;
    mutable std::shared_mutex mu_;
    std::map<uint64_t, Range> ranges_; // keyed by base
    std::atomic<uint64_t> unclaimed_{0};
};

} // namespace understudy::hv
