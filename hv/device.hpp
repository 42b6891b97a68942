// A device model as the VM sees it: it registers its own I/O ranges when attached and
// keeps its save/restore code next to itself (plain, versioned DeviceState). Later
// issues add checkpoint hooks (postsuspend, preresume, commit) here, fanned out by the VM.
#pragma once

#include <string>

#include "common/error.hpp"
#include "hv/vcpu_state.hpp"

namespace understudy::hv {

class Vm;

class Device {
public:
    virtual ~Device() = default;
    // Unique within a VM; names the device's state in snapshots.
    virtual std::string name() const = 0;
    virtual Result<void> attach(Vm& vm) = 0;
    // Called with every vCPU paused.
    virtual DeviceState save() const = 0;
    // Called before the vCPUs first run (or while paused); refuses state it cannot use.
    virtual Result<void> restore(const DeviceState& s) = 0;
};

} // namespace understudy::hv
