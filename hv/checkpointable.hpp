// What the replicator needs of a VM, and no more (shared/DESIGN.md, "The guest model"):
// pause and resume it, harvest the pages written since the last harvest (by vCPUs or by
// the VMM), capture its state, and read its memory. hv::Vm implements it with KVM;
// tests/support/fake_vm.hpp implements it with threads writing guest memory, so that the
// epoch engine is tested where /dev/kvm is missing.
#pragma once

#include <optional>
#include <vector>

#include "common/bitmap.hpp"
#include "common/error.hpp"
#include "hv/guest_memory.hpp"
#include "hv/replicated_disk.hpp"
#include "hv/vcpu_state.hpp"
#include "hv/vm_stop.hpp"

namespace understudy::hv {

class Checkpointable {
public:
    virtual ~Checkpointable() = default;

    virtual GuestMemory& memory() = 0;
    virtual unsigned vcpu_count() const = 0;
    // Digest of what a VM must share with this one to run its state (hv::Vm::config_digest).
    virtual uint64_t config_digest() const = 0;

    // Returns once no vCPU runs guest code; the memory and state hold still until resume_all().
    virtual void pause_all() = 0;
    virtual void resume_all() = 0;
    // Whether harvest_dirty() sees the vCPUs' writes (a VM made with --dirty none does not).
    virtual bool tracks_dirty() const = 0;
    // Every page written since the previous harvest, ORed into out (page indices).
    virtual Result<void> harvest_dirty(Bitmap& out) = 0;
    // The disks checkpoints carry with memory, in the guest's order (empty: none).
    virtual std::vector<ReplicatedDisk*> disks() = 0;
    // Whole-VM state except memory and disks; only while paused.
    virtual Result<VmState> save_state() = 0;
    // Why the VM stopped, once it has.
    virtual std::optional<VmStop> stop_reason() const = 0;
};

} // namespace understudy::hv
