#include "cli/metrics.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace understudy::cli {

using namespace std::chrono;

const char* role_name(Role r) { return r == Role::primary ? "primary" : "backup"; }

const char* state_name(ProtectionState s) {
    switch (s) {
    case ProtectionState::starting: return "starting";
    case ProtectionState::syncing: return "syncing";
    case ProtectionState::protected_: return "protected";
    case ProtectionState::unprotected: return "unprotected";
    case ProtectionState::waiting: return "waiting";
    case ProtectionState::receiving: return "receiving";
    case ProtectionState::promoting: return "promoting";
    case ProtectionState::stopped: return "stopped";
    }
    return "unknown";
}

const char* failover_reason_name(FailoverReason r) {
    switch (r) {
    case FailoverReason::primary_silent: return "primary_silent";
    case FailoverReason::primary_connection_lost: return "primary_connection_lost";
    case FailoverReason::handover: return "handover";
    }
    return "unknown";
}

const char* loss_reason_name(LossReason r) {
    switch (r) {
    case LossReason::backup_silent: return "backup_silent";
    case LossReason::backup_connection_lost: return "backup_connection_lost";
    case LossReason::error: return "error";
    }
    return "unknown";
}

std::vector<uint64_t> decade_bounds(uint64_t first, int decades) {
    std::vector<uint64_t> b;
    uint64_t scale = first;
    for (int d = 0; d < decades; ++d, scale *= 10) {
        b.push_back(scale);
        if (scale * 5 / 2 > scale) b.push_back(scale * 5 / 2);
        b.push_back(scale * 5);
    }
    b.push_back(scale);
    b.erase(std::unique(b.begin(), b.end()), b.end());
    return b;
}

Histogram::Histogram(std::vector<uint64_t> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
    for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(uint64_t v) {
    size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin()); // le: v <= bound
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
    uint64_t n = next_.fetch_add(1, std::memory_order_relaxed);
    recent_[n % kRecent].store(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
    Snapshot s;
    s.bounds = bounds_;
    uint64_t acc = 0;
    for (size_t i = 0; i <= bounds_.size(); ++i) {
        acc += buckets_[i].load(std::memory_order_relaxed);
        s.cumulative.push_back(acc);
    }
    s.count = acc;
    s.sum = sum_.load(std::memory_order_relaxed);
    return s;
}

std::optional<uint64_t> Histogram::last() const {
    uint64_t n = next_.load(std::memory_order_relaxed);
    if (n == 0) return std::nullopt;
    return recent_[(n - 1) % kRecent].load(std::memory_order_relaxed);
}

std::optional<uint64_t> Histogram::recent_quantile(double q) const {
    uint64_t n = std::min<uint64_t>(next_.load(std::memory_order_relaxed), kRecent);
    if (n == 0) return std::nullopt;
    std::vector<uint64_t> v(n);
    for (uint64_t i = 0; i < n; ++i) v[i] = recent_[i].load(std::memory_order_relaxed);
    // Nearest rank: the smallest value with at least q of the observations at or below it.
    size_t rank = size_t(std::max<double>(1.0, std::ceil(std::clamp(q, 0.0, 1.0) * double(n))));
    std::nth_element(v.begin(), v.begin() + long(rank - 1), v.end());
    return v[rank - 1];
}

namespace {
QuantileFigures quantiles(const Histogram& h, double unit) {
    QuantileFigures f;
    auto scale = [unit](std::optional<uint64_t> v) -> std::optional<double> {
        if (!v) return std::nullopt;
        return double(*v) * unit;
    };
    f.last = scale(h.last());
    f.p50 = scale(h.recent_quantile(0.5));
    f.p99 = scale(h.recent_quantile(0.99));
    f.count = h.count();
    return f;
}
double seconds_between(MetricsClock::time_point a, MetricsClock::time_point b) { return duration<double>(b - a).count(); }
// Wall-clock time, Unix seconds (status.last_failover).
double unix_now_s() { return duration<double>(system_clock::now().time_since_epoch()).count(); }
} // namespace

// Pauses and ACKs: 10 us .. 100 s; dirty pages: 1 .. 10^7; output hold: 10 us .. 100 s.
Metrics::Metrics(Role role, std::string name, MetricsClock::time_point start)
    : start_(start), role_(role), pause_ns_(decade_bounds(10'000, 7)),
      ack_ns_(decade_bounds(10'000, 7)), dirty_pages_(decade_bounds(1, 7)), hold_ns_(decade_bounds(10'000, 7)),
      name_(std::move(name)), state_since_(start) {
    state_ = role == Role::primary ? ProtectionState::starting : ProtectionState::waiting;
}

void Metrics::set_role(Role r) { role_ = r; }

void Metrics::set_name(std::string name) {
    std::lock_guard lock(mu_);
    name_ = std::move(name);
}

void Metrics::set_state(ProtectionState s, std::string reason, MetricsClock::time_point now) {
    std::lock_guard lock(mu_);
    set_state_locked(s, std::move(reason), now);
}

void Metrics::set_state_locked(ProtectionState s, std::string reason, MetricsClock::time_point now) {
    if (state_.load() == ProtectionState::promoting && s != ProtectionState::promoting && s != ProtectionState::stopped &&
        last_failover_ && !last_failover_->running_unix_s)
        last_failover_->running_unix_s = unix_now_s();
    if (state_.load() != s) state_since_ = now;
    state_ = s;
    reason_ = std::move(reason);
}

bool Metrics::active_primary() const {
    auto s = state_.load();
    return role_.load() == Role::primary && healthy_.load() && fenced_in_.load() &&
           (s == ProtectionState::starting || s == ProtectionState::syncing || s == ProtectionState::protected_ ||
            s == ProtectionState::unprotected);
}

void Metrics::on_sync_progress(unsigned round, uint64_t bytes_sent, uint64_t bytes_total) {
    sync_round_ = round;
    sync_sent_ = bytes_sent;
    sync_total_ = bytes_total;
}

void Metrics::reset_epoch_figures_locked() {
    captured_ = 0;
    acked_ = 0;
    last_state_point_.reset();
    rate_.clear();
}

void Metrics::on_session_start(MetricsClock::time_point now) {
    std::lock_guard lock(mu_);
    reset_epoch_figures_locked();
    verification_.last.reset(); // pass numbers start again with the session (the counts carry on)
    set_state_locked(ProtectionState::syncing, {}, now);
}

void Metrics::on_captured(uint64_t epoch) { captured_.store(epoch, std::memory_order_relaxed); }

void Metrics::on_acked(const CheckpointFigures& f, MetricsClock::time_point now) {
    raw_bytes_.fetch_add(f.raw_bytes, std::memory_order_relaxed);
    wire_bytes_.fetch_add(f.wire_bytes, std::memory_order_relaxed);
    // Epoch 1 is the initial synchronization's stop-and-copy: reported on its own, kept
    // out of the steady-state histograms.
    if (f.epoch > 1) {
        pause_ns_.observe(f.pause_ns);
        ack_ns_.observe(f.ack_ns);
        dirty_pages_.observe(f.dirty_pages);
    }
    acked_.store(std::max(acked_.load(std::memory_order_relaxed), f.epoch), std::memory_order_relaxed);
    uint64_t c = captured_.load(std::memory_order_relaxed);
    if (c < f.epoch) captured_.store(f.epoch, std::memory_order_relaxed); // without a capture hook
    std::lock_guard lock(mu_);
    if (f.epoch == 1) initial_pause_ns_ = f.pause_ns;
    // The state the backup holds now was captured when the guest resumed after f's pause.
    last_state_point_ = now - nanoseconds(f.ack_ns);
    if (state_.load() == ProtectionState::syncing || state_.load() == ProtectionState::starting) {
        state_ = ProtectionState::protected_;
        state_since_ = now;
        reason_.clear();
    }
    push_rate_locked(now);
}

void Metrics::on_protection_lost(LossReason r, const std::string& why, MetricsClock::time_point now) {
    losses_[size_t(r)].fetch_add(1, std::memory_order_relaxed);
    set_state(ProtectionState::unprotected, "replication failed: " + why, now);
}

void Metrics::observe_hold(MetricsClock::duration held) {
    hold_ns_.observe(uint64_t(std::max<int64_t>(0, duration_cast<nanoseconds>(held).count())));
}

void Metrics::on_session_end(std::string reason, MetricsClock::time_point now) {
    std::lock_guard lock(mu_);
    session_end_unix_s_ = unix_now_s();
    if (state_.load() != ProtectionState::waiting) state_since_ = now;
    state_ = ProtectionState::waiting;
    reason_ = std::move(reason);
    sessions_at_wait_ = session_source_ ? session_source_() : 0;
}

void Metrics::on_committed(uint64_t epoch, uint64_t raw_bytes_total, MetricsClock::time_point now) {
    raw_bytes_.store(raw_bytes_total, std::memory_order_relaxed);
    captured_.store(epoch, std::memory_order_relaxed);
    acked_.store(epoch, std::memory_order_relaxed);
    std::lock_guard lock(mu_);
    last_state_point_ = now;
    push_rate_locked(now);
    if (state_.load() == ProtectionState::waiting) {
        state_ = ProtectionState::receiving;
        state_since_ = now;
        reason_.clear();
    }
}

void Metrics::set_session_source(std::function<uint64_t()> fn) {
    std::lock_guard lock(mu_);
    session_source_ = std::move(fn);
    sessions_at_wait_ = session_source_ ? session_source_() : 0;
}

void Metrics::on_failover(FailoverReason r, MetricsClock::time_point now) {
    failovers_[size_t(r)].fetch_add(1, std::memory_order_relaxed);
    promoted_ = true;
    // The figures of the replication this host received end here: the promoted VM's own
    // protection (if any) starts afresh. Counters stay monotonic.
    std::lock_guard lock(mu_);
    reset_epoch_figures_locked();
    state_ = ProtectionState::promoting;
    state_since_ = now;
    last_failover_ = FailoverTimes{failover_reason_name(r), session_end_unix_s_ > 0 ? session_end_unix_s_ : unix_now_s(),
                                   std::nullopt};
    reason_ = r == FailoverReason::handover ? std::string("the primary handed over (planned switchover)")
                                            : std::string("the primary failed: ") + failover_reason_name(r);
}

void Metrics::push_rate_locked(MetricsClock::time_point now) {
    rate_.push_back({now, raw_bytes_.load(), wire_bytes_.load()});
    while (!rate_.empty() && rate_.front().t < now - kRateWindow) rate_.pop_front();
}

void Metrics::set_output_source(std::function<OutputFigures()> fn) {
    std::lock_guard lock(mu_);
    output_source_ = std::move(fn);
}

void Metrics::set_heartbeat_source(std::function<HeartbeatFigures()> fn) {
    std::lock_guard lock(mu_);
    heartbeat_source_ = std::move(fn);
}

StatusSnapshot Metrics::snapshot(MetricsClock::time_point now) const {
    StatusSnapshot s;
    s.pid = ::getpid();
    s.uptime_s = seconds_between(start_, now);
    s.role = role_.load();
    s.promoted = promoted_.load();
    s.healthy = healthy_.load();
    s.active_primary = active_primary();
    s.epoch_captured = captured_.load();
    s.epoch_acknowledged = acked_.load();
    s.pause_s = quantiles(pause_ns_, 1e-9);
    s.ack_s = quantiles(ack_ns_, 1e-9);
    s.dirty_pages = quantiles(dirty_pages_, 1.0);
    if (auto p = hold_ns_.recent_quantile(0.99)) s.hold_p99_s = double(*p) * 1e-9;
    s.holds_observed = hold_ns_.count();
    s.sync_round = unsigned(sync_round_.load());
    s.sync_bytes_sent = sync_sent_.load();
    s.sync_bytes_total = sync_total_.load();
    s.raw_bytes = raw_bytes_.load();
    s.wire_bytes = wire_bytes_.load();
    for (auto r : kAllFailoverReasons) s.failovers[failover_reason_name(r)] = failovers_[size_t(r)].load();
    for (auto r : kAllLossReasons) s.protection_lost[loss_reason_name(r)] = losses_[size_t(r)].load();

    std::lock_guard lock(mu_);
    s.name = name_;
    s.state = state_.load();
    s.reason = reason_;
    s.state_age_s = seconds_between(state_since_, now);
    s.last_failover = last_failover_;
    s.verification = verification_;
    if (initial_pause_ns_) s.initial_pause_s = double(*initial_pause_ns_) * 1e-9;
    if (last_state_point_) {
        s.lag_s = std::max(0.0, seconds_between(*last_state_point_, now));
        if (s.role == Role::primary) s.lag_epochs = s.epoch_captured - std::min(s.epoch_captured, s.epoch_acknowledged);
    }
    // Rates over the checkpoints of the last kRateWindow, up to now: they fall to zero
    // when checkpoints stop.
    auto first = std::find_if(rate_.begin(), rate_.end(), [&](const RatePoint& p) { return p.t >= now - kRateWindow; });
    if (first != rate_.end()) {
        double span = seconds_between(first->t, now);
        size_t n = size_t(rate_.end() - first);
        if (span > 0 && n > 1) {
            s.epoch_rate_per_s = double(n - 1) / span;
            s.raw_bytes_per_s = double(rate_.back().raw - first->raw) / span;
            s.wire_bytes_per_s = double(rate_.back().wire - first->wire) / span;
        }
    }
    if (session_source_) {
        s.sessions = session_source_();
        // A session accepted since the last one ended is open (still synchronizing if
        // nothing committed yet).
        if (s.role == Role::backup && s.state == ProtectionState::waiting && s.sessions > sessions_at_wait_) {
            s.state = ProtectionState::receiving;
            s.reason.clear();
        }
    }
    if (output_source_) s.output = output_source_();
    if (heartbeat_source_) s.heartbeats = heartbeat_source_();
    return s;
}

void Metrics::on_verified(VerifyPassFigures pass) {
    std::lock_guard lock(mu_);
    auto& v = verification_;
    ++(pass.verdict == "match" ? v.match : pass.verdict == "mismatch" ? v.mismatch : v.unanswered);
    pass.finished_unix_s = unix_now_s();
    v.last = std::move(pass);
}

} // namespace understudy::cli
