// A device model as the VM sees it: it registers its own I/O ranges when attached and
// keeps its save/restore code next to itself (plain, versioned DeviceState), and has the
// checkpoint hooks of Xen's Remus device layer (postsuspend, preresume), fanned out by the VM.
#pragma once

#include <optional>
#include <string>

#include "common/error.hpp"
#include "hv/vcpu_state.hpp"

namespace understudy::hv {

class ReplicatedDisk;
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
    // The disk whose contents the device keeps outside guest memory and save(), which
    // checkpoints carry block by block (hv/replicated_disk.hpp), or nullptr.
    virtual ReplicatedDisk* replicated_disk() { return nullptr; }
    // Called once every vCPU is parked (Remus's postsuspend): until resume(), the device
    // must not touch guest memory, so the page copy and save() see one consistent moment.
    virtual void suspend() {}
    // Called before the vCPUs run again (Remus's preresume).
    virtual void resume() {}
};

} // namespace understudy::hv
