// Feeds the process's Metrics (cli/operations.hpp) from the replicator's and the
// netbuffer's hooks: each instrument() wraps the hooks already set, calling the metrics
// first and then what was there.
#pragma once

#include <deque>
#include <mutex>

#include "cli/metrics.hpp"
#include "hv/virtio/net_backend.hpp"
#include "netbuffer/output_commit.hpp"
#include "replicator/backup.hpp"
#include "replicator/primary.hpp"

namespace understudy::cli {

void instrument(replicator::PrimaryHooks& hooks, Metrics& m);
void instrument(replicator::BackupHooks& hooks, Metrics& m);

// Why a session or a replication ended, as the metrics label it.
FailoverReason failover_reason(const Error& e);
LossReason loss_reason(const Error& e);
HeartbeatFigures heartbeat_figures(const replicator::HeartbeatStats& s);

// Sources that live shorter than the instance; the guard clears them.
SourceGuard watch_heartbeats(Metrics& m, const replicator::Primary& p);
// The backup server's heartbeats and sessions.
SourceGuard watch_backup(Metrics& m, const replicator::BackupServer& s);
SourceGuard watch_output(Metrics& m, const netbuffer::OutputCommit& c);

// Sits between the guest NIC and the output-commit gate and times each frame from the
// guest's transmit to its release to the wire (frames leave the gate in order). Held
// times are observed while the instance is protected or syncing; frames that pass
// straight through an unprotected gate are not observed.
class HoldTimer final : public hv::virtio::EgressSink {
public:
    HoldTimer(hv::virtio::EgressSink& gate, Metrics& m) : gate_(gate), m_(m) {}
    Accept transmit(std::span<const uint8_t> frame) override;
    // The gate released one frame (its `wire` hook).
    void released();

private:
    hv::virtio::EgressSink& gate_;
    Metrics& m_;
    std::mutex mu_;
    std::deque<MetricsClock::time_point> sent_;
};

} // namespace understudy::cli
