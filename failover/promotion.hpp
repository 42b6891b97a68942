// Promotion: a backup whose primary failed builds the running VM from its last committed
// checkpoint (memory, vCPU, VM and device state), with dirty tracking armed from the
// first instant, and announces the guest's MAC so the network's switches learn its new
// port (QEMU's announce-self does the same with RARP frames).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/error.hpp"
#include "hv/snapshot.hpp"
#include "hv/vm.hpp"
#include "replicator/backup_replica.hpp"

namespace understudy::failover {

// `base` gives the host-side settings (dirty tracking, console); `attach` adds the
// devices the primary had (the checkpoint's device state is restored into them), its
// disks on the replica's disk files, which are closed for it first. The VM adopts the
// replica's memory without copying it, so the replica is consumed.
// Fails when there is no committed checkpoint or when the VM built here differs from
// the primary's configuration (hv::Vm::config_digest).
Result<std::unique_ptr<hv::Vm>> promote(std::unique_ptr<replicator::BackupReplica> replica, hv::VmConfig base,
                                        const hv::AttachDevicesFn& attach);

// A gratuitous RARP request from `mac` to the broadcast address (60 bytes, the minimum
// Ethernet frame without FCS): switches learn where the guest now is; hosts ignore it.
std::vector<uint8_t> announce_frame(const std::array<uint8_t, 6>& mac);

} // namespace understudy::failover
