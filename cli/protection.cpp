#include "cli/protection.hpp"

#include "cli/instrument.hpp"
#include "cli/operations.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

namespace understudy::cli {

using namespace std::chrono;

namespace {

double quantile_us(std::vector<uint64_t> ns, double q) {
    if (ns.empty()) return 0;
    std::sort(ns.begin(), ns.end());
    return double(ns[std::min(ns.size() - 1, size_t(q * double(ns.size())))]) / 1000.0;
}

void print_figures(const char* label, const std::vector<replicator::EpochFigures>& v, double seconds) {
    if (v.empty()) {
        std::printf("%s: no checkpoint acknowledged\n", label);
        return;
    }
    std::vector<uint64_t> pause, ack, stop, harvest, state, copy;
    uint64_t dirty = 0, raw = 0, wire = 0;
    for (const auto& f : v) {
        pause.push_back(f.pause_ns);
        stop.push_back(f.stop_ns);
        harvest.push_back(f.harvest_ns);
        state.push_back(f.state_ns);
        copy.push_back(f.copy_ns);
        ack.push_back(f.ack_ns);
        dirty += f.dirty_pages;
        raw += f.raw_bytes;
        wire += f.wire_bytes;
    }
    std::printf("%s: epoch %llu | %.1f ckpt/s | pause p50 %.0f us p99 %.0f us max %.0f us | %.0f dirty pages/ckpt | "
                "raw %.1f MB/s, wire %.1f MB/s (%.1f%%) | ACK p50 %.1f ms\n",
                label, (unsigned long long)v.back().epoch, double(v.size()) / seconds, quantile_us(pause, 0.5),
                quantile_us(pause, 0.99), quantile_us(pause, 1.0), double(dirty) / double(v.size()), double(raw) / seconds / 1e6,
                double(wire) / seconds / 1e6, raw ? 100.0 * double(wire) / double(raw) : 0.0, quantile_us(ack, 0.5) / 1000.0);
    std::printf("  pause parts p50/p99 (us): stop %.0f/%.0f, harvest %.0f/%.0f, state %.0f/%.0f, copy %.0f/%.0f\n",
                quantile_us(stop, 0.5), quantile_us(stop, 0.99), quantile_us(harvest, 0.5), quantile_us(harvest, 0.99),
                quantile_us(state, 0.5), quantile_us(state, 0.99), quantile_us(copy, 0.5), quantile_us(copy, 0.99));
    std::fflush(stdout);
}

} // namespace

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
    (*conn)->allow_bit_flip(); // `understudy drill corrupt-link` corrupts this stream, not the control connection
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
        self->window_.push_back(f);
        if (f.epoch == 1) return;
        if (self->all_.empty()) self->first_ack_ = steady_clock::now();
        self->last_ack_ = steady_clock::now();
        self->all_.push_back(f);
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
    std::vector<replicator::EpochFigures> w;
    {
        std::lock_guard lock(mu_);
        w.swap(window_);
    }
    if (!w.empty()) print_figures("checkpoints", w, 1.0);
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
    // After a handover the backup runs the VM: its session must not be retired.
    if (!primary_->handed_over()) run_unprotected();
    std::lock_guard lock(mu_);
    if (all_.size() > 1) print_figures("== protected run", all_, duration<double>(last_ack_ - first_ack_).count());
    return *finished_;
}

} // namespace understudy::cli
