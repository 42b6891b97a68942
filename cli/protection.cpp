#include "cli/protection.hpp"

#include "cli/instrument.hpp"
#include "cli/operations.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

namespace understudy::cli {

using namespace std::chrono;

Result<std::unique_ptr<Protection>> Protection::start(hv::Vm& vm, const std::string& backup, replicator::PrimaryConfig cfg,
                                                     GuestNetwork* net, PrimaryRole* role) {
    auto ep = US_TRY(replicator::Endpoint::parse(backup));
    // The backup may still be starting: retry for a few seconds.
    Result<std::unique_ptr<replicator::Connection>> conn = make_error(Errc::timeout, "");
    for (int attempt = 0; attempt < 50; ++attempt) {
        conn = replicator::Connection::connect(ep, seconds(2));
        if (conn) break;
        std::this_thread::sleep_for(milliseconds(100));
    }
    if (!conn) return std::move(conn.error()).wrap("connecting to the backup at " + backup);
    // `understudy drill corrupt-link` corrupts this stream, not the control connection.
    auto flip = std::make_shared<replicator::BitFlip>();
    (*conn)->set_bit_flip(flip);
    set_drill_link(flip);
    auto p = std::make_unique<Protection>();
    Protection* self = p.get();
    p->net_ = net;
    p->role_ = role;
    replicator::PrimaryHooks hooks;
    if (net) hooks.on_capture = [net](uint64_t epoch, hv::Checkpointable&) { net->commit().captured(epoch); };
    // Without a backup nothing protects the output any more: release it now, not at the
    // next status line.
    hooks.on_failure = [self](const Error&) { self->run_unprotected(); };
    // Round 0 sends all of memory; each later round the pages dirtied meanwhile.
    hooks.on_sync_progress = [self, round = ~0u, round_start = uint64_t(0), last = uint64_t(0)](const replicator::SyncProgress& s) mutable {
        if (s.round != round) round = s.round, round_start = last;
        last = s.bytes_sent;
        self->sync_progress_.update(s.bytes_sent - round_start, s.pages_this_round * hv::kPageSize,
                                    "initial sync, round " + std::to_string(s.round));
    };
    hooks.on_acked = [self, net](const replicator::EpochFigures& f) {
        if (net) net->commit().acknowledged(f.epoch);
        std::lock_guard lock(self->mu_);
        if (f.epoch == 1) self->sync_progress_.finish();
        if (f.epoch == 1) std::printf("protected: initial checkpoint acknowledged (stop-and-copy pause %.1f ms)\n", double(f.pause_ns) / 1e6);
        self->window_.add(f);
        if (f.epoch == 1) return;
        if (self->all_.checkpoints == 0) self->first_ack_ = steady_clock::now();
        self->last_ack_ = steady_clock::now();
        self->all_.add(f);
    };
    // The control connection second: the backup accepts it after the stream's ACCEPT.
    instrument(hooks, instance_metrics()); // status and metrics (cli/operations.hpp)
    auto control = replicator::Connection::connect(ep, seconds(2));
    if (!control) return std::move(control.error()).wrap("opening the control connection to " + backup);
    p->primary_ = US_TRY(replicator::Primary::start(vm, std::move(*conn), cfg, hooks, std::move(*control)));
    p->heartbeat_source_ = watch_heartbeats(instance_metrics(), *p->primary_);
    p->session_id_ = p->primary_->session_id();
    if (net) net->set_checkpoint_request([primary = p->primary_.get()](steady_clock::time_point t) { primary->request_checkpoint(t); });
    return p;
}

std::optional<Error> Protection::failure() {
    auto f = primary_->failure();
    if (f) run_unprotected();
    return f;
}

void Protection::run_unprotected() {
    std::lock_guard lock(unprotect_mu_);
    // The backup's replica lacks what the held output came from: first make sure it can
    // never be promoted, or a client could see a reply whose state a failover then loses.
    if (role_ && !retired_) {
        if (session_id_ == 0) return; // still starting: the supervisor's next failure() retries
        auto r = role_->retire_session(session_id_);
        if (!r) {
            if (!retire_reported_)
                std::printf("UNPROTECTED: holding output: the arbiter could not record that the backup is stale (%s); "
                            "retrying\n", r.error().describe().c_str());
            retire_reported_ = true;
            std::fflush(stdout);
            return;
        }
        retired_ = true;
    }
    if (!net_) return;
    net_->set_checkpoint_request(nullptr);
    net_->commit().unprotect();
}

void Protection::print_window() {
    FigureSummary w;
    {
        std::lock_guard lock(mu_);
        std::swap(w, window_);
    }
    if (w.checkpoints == 0) return;
    std::fputs(w.lines("checkpoints", 1.0).c_str(), stdout);
    std::fflush(stdout);
}

Result<uint64_t> Protection::hand_over(std::chrono::milliseconds answer_limit) {
    return primary_->hand_over(
        [this]() -> Result<void> {
            uint64_t held = net_ ? net_->commit().stats().packets_held : 0;
            if (held == 0) return {};
            // Fenced: the lease does not allow their release. Handing over would lose them.
            return make_error(Errc::state, std::to_string(held) + " output frames are still held here (the arbiter's "
                                                                  "lease does not allow their release now)");
        },
        answer_limit);
}

void Protection::forget_role() {
    std::lock_guard lock(unprotect_mu_);
    role_ = nullptr;
}

Result<void> Protection::take_back(PrimaryRole* role) {
    {
        std::lock_guard lock(unprotect_mu_);
        role_ = role;
        retired_ = false;
        if (role_) US_TRYV(role_->retire_session(session_id_));
        retired_ = true;
    }
    run_unprotected();
    return {};
}

Result<void> Protection::finish() {
    if (finished_) return *finished_;
    primary_->stop();
    finished_ = primary_->wait();
    set_drill_link(nullptr);
    // After a handover the backup runs the VM: its session must not be retired.
    if (!primary_->handed_over()) run_unprotected();
    std::lock_guard lock(mu_);
    if (all_.checkpoints > 1) {
        std::fputs(all_.lines("== protected run", duration<double>(last_ack_ - first_ack_).count()).c_str(), stdout);
        std::fflush(stdout);
    }
    return *finished_;
}

} // namespace understudy::cli
