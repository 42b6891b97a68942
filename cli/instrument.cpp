#include "cli/instrument.hpp"

#include <algorithm>

#include "hv/guest_memory.hpp"

namespace understudy::cli {

using namespace std::chrono;

FailoverReason failover_reason(const Error& e) {
    return e.code == Errc::timeout ? FailoverReason::primary_silent : FailoverReason::primary_connection_lost;
}

LossReason loss_reason(const Error& e) {
    if (e.code == Errc::timeout) return LossReason::backup_silent;
    if (e.code == Errc::system) return LossReason::backup_connection_lost;
    return LossReason::error;
}

HeartbeatFigures heartbeat_figures(const replicator::HeartbeatStats& s) { return {s.sent, s.received, s.max_gap_ns}; }

namespace {
VerifyPassFigures pass_figures(const replicator::VerifyReport& r) {
    VerifyPassFigures p;
    p.pass = r.pass;
    p.verdict = r.verdict();
    p.first_checkpoint = r.first_epoch;
    p.last_checkpoint = r.last_epoch;
    p.pages = r.pages_checked;
    p.differing_pages = r.differing_pages.size();
    p.first_differing.assign(r.differing_pages.begin(),
                             r.differing_pages.begin() + std::min(r.differing_pages.size(), VerifyPassFigures::kListed));
    p.state_differs = replicator::state_parts(r.state_differs);
    return p;
}
} // namespace

void instrument(replicator::PrimaryHooks& hooks, Metrics& m) {
    m.on_session_start();
    hooks.on_verified = [&m, next = std::move(hooks.on_verified)](const replicator::VerifyReport& r) {
        m.on_verified(pass_figures(r));
        if (next) next(r);
    };
    hooks.on_capture = [&m, next = std::move(hooks.on_capture)](uint64_t epoch, hv::Checkpointable& vm) {
        m.on_captured(epoch); // in the pause: one atomic store
        if (next) next(epoch, vm);
    };
    hooks.on_sync_progress = [&m, next = std::move(hooks.on_sync_progress)](const replicator::SyncProgress& s) {
        m.on_sync_progress(s.round, s.bytes_sent, s.bytes_total);
        if (next) next(s);
    };
    hooks.on_acked = [&m, next = std::move(hooks.on_acked)](const replicator::EpochFigures& f) {
        m.on_acked({f.epoch, f.pause_ns, f.ack_ns, f.dirty_pages, f.raw_bytes, f.wire_bytes});
        if (next) next(f);
    };
    hooks.on_failure = [&m, next = std::move(hooks.on_failure)](const Error& e) {
        m.on_protection_lost(loss_reason(e), e.describe());
        if (next) next(e);
    };
}

void instrument(replicator::BackupHooks& hooks, Metrics& m) {
    // on_receive is left alone: setting it makes the backup frame every record a second
    // time. Sessions are seen through watch_backup().
    hooks.on_commit = [&m, next = std::move(hooks.on_commit)](uint64_t epoch, const replicator::BackupReplica& r) {
        m.on_committed(epoch, r.stats().pages_applied * hv::kPageSize);
        if (next) next(epoch, r);
    };
    hooks.on_verified = [&m, next = std::move(hooks.on_verified)](const replicator::VerifyReport& r) {
        m.on_verified(pass_figures(r));
        if (next) next(r);
    };
}

SourceGuard watch_heartbeats(Metrics& m, const replicator::Primary& p) {
    m.set_heartbeat_source([&p] { return heartbeat_figures(p.heartbeats()); });
    return SourceGuard([&m] { m.set_heartbeat_source(nullptr); });
}

SourceGuard watch_backup(Metrics& m, const replicator::BackupServer& s) {
    m.set_heartbeat_source([&s] { return heartbeat_figures(s.heartbeats()); });
    m.set_session_source([&s] { return s.sessions_started(); });
    return SourceGuard([&m] {
        m.set_heartbeat_source(nullptr);
        m.set_session_source(nullptr);
    });
}

SourceGuard watch_output(Metrics& m, const netbuffer::OutputCommit& c) {
    m.set_output_source([&c] {
        auto b = c.stats();
        return OutputFigures{b.packets_held, b.bytes_held, b.packets_released, b.bytes_released, b.stalls};
    });
    return SourceGuard([&m] { m.set_output_source(nullptr); });
}

HoldTimer::Accept HoldTimer::transmit(std::span<const uint8_t> frame) {
    {
        std::lock_guard lock(mu_);
        sent_.push_back(MetricsClock::now());
    }
    // The gate may release this very frame (and call released()) before it returns.
    Accept a = gate_.transmit(frame);
    if (a == Accept::full) {
        std::lock_guard lock(mu_);
        if (!sent_.empty()) sent_.pop_back(); // refused: the device keeps it and retries
    }
    return a;
}

void HoldTimer::released() {
    MetricsClock::time_point t;
    {
        std::lock_guard lock(mu_);
        if (sent_.empty()) return;
        t = sent_.front();
        sent_.pop_front();
    }
    if (m_.state() == ProtectionState::protected_) m_.observe_hold(MetricsClock::now() - t);
}

} // namespace understudy::cli
