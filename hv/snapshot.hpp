// A whole VM to and from a file: header, VM clock, vCPU and device state, then guest
// memory as runs of non-zero pages, then an END record. Spec: docs/snapshot-format.md.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/error.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

// Version 2 is written only for a VM with the PC platform (a Linux guest), whose header
// says so (flag 1); a reader of version 1 refuses it rather than restore a Linux guest
// without its interrupt controllers. This build reads both.
inline constexpr uint32_t kSnapshotVersion = 1;
inline constexpr uint32_t kSnapshotVersionPc = 2;

struct SnapshotInfo {
    uint64_t memory_bytes = 0;
    unsigned vcpus = 0;
    uint64_t pages_written = 0; // non-zero pages stored
    uint64_t file_bytes = 0;
};

// Called as memory is written or read: (bytes done, bytes total).
using ProgressFn = std::function<void(uint64_t, uint64_t)>;

// The VM must be paused. The file appears under `path` only once complete.
Result<SnapshotInfo> save_snapshot(Vm& vm, const std::string& path, const ProgressFn& progress = {});
// The same from memory and state held elsewhere (a backup's committed replica).
Result<SnapshotInfo> write_snapshot(const GuestMemory& mem, const VmState& state, const std::string& path,
                                    const ProgressFn& progress = {});
// XXH3-64 of the RAM regions' (gpa, size) pairs: two VMs with equal digests lay memory out alike.
uint64_t memory_layout_digest(const GuestMemory& mem);

// Attaches the devices a restored VM needs before their state is restored.
using AttachDevicesFn = std::function<Result<void>(Vm&)>;

// Builds a new VM from a snapshot; `base` supplies host-side settings (console, dirty
// tracking); memory size and vCPU count come from the file. The VM is returned paused
// and not started: call start() to continue the guest.
Result<std::unique_ptr<Vm>> restore_snapshot(const std::string& path, VmConfig base, SnapshotInfo* info = nullptr,
                                             const ProgressFn& progress = {}, const AttachDevicesFn& attach = {});
// The same from memory and state held in this process (a backup's committed replica,
// on promotion): the VM adopts the memory as it is (no copy), the state is restored.
Result<std::unique_ptr<Vm>> restore_vm(GuestMemory mem, const VmState& state, VmConfig base,
                                       const AttachDevicesFn& attach = {});

} // namespace understudy::hv
