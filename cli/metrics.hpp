// The live figures of one running instance (issue 6): role, protection state, checkpoint
// pauses, ACK times, dirty pages, bytes, lag, held output, failovers, heartbeats.
// Fed by the replicator's and the netbuffer's hooks (cli/protection.cpp,
// cli/backup_command.cpp, cli/network.cpp); read by the control socket (`understudy
// status`, docs/status.md) and the Prometheus endpoint (docs/metrics.md).
//
// Knows no KVM and no sockets. Everything called from the checkpoint path (on_captured,
// observe_hold, Histogram::observe) is a few relaxed atomic operations; on_acked and
// on_committed (once per checkpoint, off the pause) take one uncontended mutex for the
// rate window; snapshot() takes the same mutex briefly and copies.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace understudy::cli {

using MetricsClock = std::chrono::steady_clock;

enum class Role { primary, backup };
const char* role_name(Role r);

// docs/status.md, "state".
enum class ProtectionState {
    starting,    // primary: the VM runs, replication not yet started (connecting to the backup)
    syncing,     // primary: initial synchronization in progress
    protected_,  // primary: checkpoints are acknowledged; output waits for them
    unprotected, // primary: running without a backup (reason says why)
    waiting,     // backup: listening, no primary connected
    receiving,   // backup: a primary's session is open
    promoting,   // backup: the primary failed; building the VM from the last checkpoint
    stopped,     // the VM stopped or the instance is ending (reason says why)
};
const char* state_name(ProtectionState s);
constexpr std::array<ProtectionState, 8> kAllStates{ProtectionState::starting,    ProtectionState::syncing,
                                                    ProtectionState::protected_,  ProtectionState::unprotected,
                                                    ProtectionState::waiting,     ProtectionState::receiving,
                                                    ProtectionState::promoting,   ProtectionState::stopped};

// Why a backup took over (counted where the promotion happens) ...
// handover: a planned switchover (`understudy failover`), not a failure.
enum class FailoverReason { primary_silent, primary_connection_lost, handover };
constexpr std::array<FailoverReason, 3> kAllFailoverReasons{FailoverReason::primary_silent,
                                                             FailoverReason::primary_connection_lost,
                                                             FailoverReason::handover};
const char* failover_reason_name(FailoverReason r);
// ... and why a primary lost its backup.
enum class LossReason { backup_silent, backup_connection_lost, error };
constexpr std::array<LossReason, 3> kAllLossReasons{LossReason::backup_silent, LossReason::backup_connection_lost,
                                                    LossReason::error};
const char* loss_reason_name(LossReason r);

// A Prometheus-style histogram over unsigned integer observations (ns, pages), with fixed
// upper bounds, plus a ring of the most recent observations for exact recent quantiles.
// observe() is lock-free and wait-free; readers see each counter atomically, not the
// histogram as one consistent cut (the snapshot derives count from the buckets so that
// the +Inf bucket always equals the count).
class Histogram {
public:
    static constexpr size_t kRecent = 1024;
    // `bounds`: strictly increasing upper bounds in the observation's unit.
    explicit Histogram(std::vector<uint64_t> bounds);
    Histogram(const Histogram&) = delete;
    Histogram& operator=(const Histogram&) = delete;

    void observe(uint64_t v);

    struct Snapshot {
        std::vector<uint64_t> bounds;     // upper bounds (le)
        std::vector<uint64_t> cumulative; // bounds.size() + 1 entries; the last is +Inf == count
        uint64_t count = 0;
        uint64_t sum = 0;
    };
    Snapshot snapshot() const;
    uint64_t count() const { return next_.load(std::memory_order_relaxed); }
    std::optional<uint64_t> last() const;
    // The q-quantile (0..1, nearest rank) of the last kRecent observations; nullopt if none.
    std::optional<uint64_t> recent_quantile(double q) const;

private:
    std::vector<uint64_t> bounds_;
    std::unique_ptr<std::atomic<uint64_t>[]> buckets_; // bounds_.size() + 1 (non-cumulative)
    std::atomic<uint64_t> sum_{0};
    std::array<std::atomic<uint64_t>, kRecent> recent_{};
    std::atomic<uint64_t> next_{0}; // observations so far
};

// Upper bounds first x {1, 2.5, 5} x 10^k for k = 0 .. decades-1, then first x 10^decades.
std::vector<uint64_t> decade_bounds(uint64_t first, int decades);

// One acknowledged checkpoint, as the primary's hooks report it (replicator::EpochFigures
// without the parts the model does not use).
struct CheckpointFigures {
    uint64_t epoch = 0;
    uint64_t pause_ns = 0;
    uint64_t ack_ns = 0; // from resume to ACK
    uint64_t dirty_pages = 0;
    uint64_t raw_bytes = 0;
    uint64_t wire_bytes = 0;
};

struct OutputFigures {
    uint64_t held_packets = 0;
    uint64_t held_bytes = 0;
    uint64_t released_packets = 0;
    uint64_t released_bytes = 0;
    uint64_t stalls = 0;
};

struct HeartbeatFigures {
    uint64_t sent = 0;
    uint64_t received = 0;
    uint64_t max_gap_ns = 0;
};

// The last promotion of this process (a backup that took over), in wall-clock time (Unix
// seconds) so that a drill on another host can compare it with its own fault time.
struct FailoverTimes {
    std::string reason;                   // failover_reason_name()
    double detected_unix_s = 0;           // the session with the primary ended (the failure was detected)
    std::optional<double> running_unix_s; // the promoted VM left `promoting` (it runs); null until then
};

// The last completed online verification pass (replicator::VerifyReport, as status shows it).
struct VerifyPassFigures {
    static constexpr size_t kListed = 16; // differing pages named in status; the log names them all
    uint64_t pass = 0;
    std::string verdict; // match, mismatch, unanswered
    uint64_t first_checkpoint = 0, last_checkpoint = 0;
    uint64_t pages = 0;
    uint64_t differing_pages = 0;
    std::vector<uint64_t> first_differing; // page indices, at most kListed
    std::string state_differs;             // the parts of the state that differ ("vCPU 0, the VM clock"); empty: none
    double finished_unix_s = 0;
};
struct VerificationFigures {
    uint64_t match = 0, mismatch = 0, unanswered = 0; // passes, by verdict
    std::optional<VerifyPassFigures> last;
};

struct QuantileFigures {
    std::optional<double> last, p50, p99; // in the documented unit
    uint64_t count = 0;
};

// Everything `status` shows, at one instant (docs/status.md).
struct StatusSnapshot {
    std::string name;
    int64_t pid = 0;
    double uptime_s = 0;
    Role role = Role::primary;
    bool promoted = false;
    ProtectionState state = ProtectionState::starting;
    std::string reason;
    double state_age_s = 0;
    bool healthy = true;
    bool active_primary = false;

    uint64_t epoch_captured = 0, epoch_acknowledged = 0; // backup: committed in both
    double epoch_rate_per_s = 0;
    QuantileFigures pause_s, ack_s, dirty_pages;
    std::optional<double> initial_pause_s;
    unsigned sync_round = 0;
    uint64_t sync_bytes_sent = 0, sync_bytes_total = 0;

    uint64_t raw_bytes = 0, wire_bytes = 0; // checkpoints (backup: raw = page bytes applied, wire 0)
    double raw_bytes_per_s = 0, wire_bytes_per_s = 0;
    std::optional<uint64_t> lag_epochs;
    std::optional<double> lag_s;

    std::optional<OutputFigures> output;
    std::optional<double> hold_p99_s;
    uint64_t holds_observed = 0;

    std::optional<HeartbeatFigures> heartbeats;
    std::map<std::string, uint64_t> failovers;       // every FailoverReason, 0 included
    std::map<std::string, uint64_t> protection_lost; // every LossReason, 0 included
    uint64_t sessions = 0;                           // backup: sessions accepted
    std::optional<FailoverTimes> last_failover;      // null until this process promoted
    VerificationFigures verification;                // online verification passes completed here
};

// Clears a figure source (Metrics::set_*_source) when its owner goes.
class SourceGuard {
public:
    SourceGuard() = default;
    explicit SourceGuard(std::function<void()> clear) : clear_(std::move(clear)) {}
    SourceGuard(SourceGuard&& o) noexcept : clear_(std::exchange(o.clear_, nullptr)) {}
    SourceGuard& operator=(SourceGuard&& o) noexcept {
        if (this != &o) {
            if (clear_) clear_();
            clear_ = std::exchange(o.clear_, nullptr);
        }
        return *this;
    }
    ~SourceGuard() {
        if (clear_) clear_();
    }

private:
    std::function<void()> clear_;
};

class Metrics {
public:
    explicit Metrics(Role role, std::string name = {}, MetricsClock::time_point start = MetricsClock::now());
    void set_name(std::string name);
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    void set_role(Role r);
    Role role() const { return role_.load(); }
    void set_state(ProtectionState s, std::string reason = {}, MetricsClock::time_point now = MetricsClock::now());
    ProtectionState state() const { return state_.load(); }
    // /healthz answers 503 once this is false (a VM that stopped on a host error, ...).
    void set_healthy(bool h) { healthy_ = h; }
    // The fencing hook: an arbiter that cannot confirm the lease turns this false and
    // /primary answers 503 (default true: no arbiter, no fencing).
    void set_fenced_in(bool v) { fenced_in_ = v; }
    bool active_primary() const;

    // Primary. A new replication session (the first, or `understudy reprotect`'s): state
    // syncing, and the epoch, lag and rate figures and the last verification pass start
    // afresh, since its epochs and passes restart at 1. Counters stay monotonic.
    void on_session_start(MetricsClock::time_point now = MetricsClock::now());
    void on_sync_progress(unsigned round, uint64_t bytes_sent, uint64_t bytes_total);
    void on_captured(uint64_t epoch); // in the pause: one atomic store
    void on_acked(const CheckpointFigures& f, MetricsClock::time_point now = MetricsClock::now());
    void on_protection_lost(LossReason r, const std::string& why, MetricsClock::time_point now = MetricsClock::now());
    void observe_hold(MetricsClock::duration held); // per released packet, under the gate's lock
    // Backup. A session counts as open from the moment the session source (sessions
    // accepted so far) moves past its value at the last on_session_end(), or from its
    // first commit without a source.
    void on_session_end(std::string reason, MetricsClock::time_point now = MetricsClock::now());
    // `raw_bytes_total`: page bytes applied by the replica so far.
    void on_committed(uint64_t epoch, uint64_t raw_bytes_total, MetricsClock::time_point now = MetricsClock::now());
    void set_session_source(std::function<uint64_t()> fn);
    // Records last_failover: detected at the last on_session_end (else now); running when
    // set_state() next moves the state from `promoting` to a running one.
    void on_failover(FailoverReason r, MetricsClock::time_point now = MetricsClock::now());
    // Both roles: an online verification pass completed (counted by verdict; status shows the last).
    void on_verified(VerifyPassFigures pass);

    // Figures read at snapshot time from objects that live shorter than the instance.
    // A registration's owner must clear it (set to nullptr) before it goes away; the
    // mutex makes clearing wait for a snapshot that is reading it.
    void set_output_source(std::function<OutputFigures()> fn);
    void set_heartbeat_source(std::function<HeartbeatFigures()> fn);

    StatusSnapshot snapshot(MetricsClock::time_point now = MetricsClock::now()) const;

    const Histogram& pause_ns() const { return pause_ns_; }
    const Histogram& ack_ns() const { return ack_ns_; }
    const Histogram& dirty_pages() const { return dirty_pages_; }
    const Histogram& hold_ns() const { return hold_ns_; }

    static constexpr auto kRateWindow = std::chrono::seconds(10);

private:
    void set_state_locked(ProtectionState s, std::string reason, MetricsClock::time_point now);
    void reset_epoch_figures_locked(); // captured, acked, lag and rate: a new epoch numbering
    struct RatePoint {
        MetricsClock::time_point t;
        uint64_t raw, wire;
    };
    void push_rate_locked(MetricsClock::time_point now);

    const MetricsClock::time_point start_;
    std::atomic<Role> role_;
    std::atomic<ProtectionState> state_{ProtectionState::starting};
    std::atomic<bool> promoted_{false}, healthy_{true}, fenced_in_{true};

    Histogram pause_ns_, ack_ns_, dirty_pages_, hold_ns_;
    std::atomic<uint64_t> captured_{0}, acked_{0};
    std::atomic<uint64_t> raw_bytes_{0}, wire_bytes_{0};
    std::array<std::atomic<uint64_t>, kAllFailoverReasons.size()> failovers_{};
    std::array<std::atomic<uint64_t>, kAllLossReasons.size()> losses_{};
    std::atomic<uint64_t> sync_round_{0}, sync_sent_{0}, sync_total_{0};

    mutable std::mutex mu_; // guards the fields below
    std::string name_;
    std::string reason_;
    MetricsClock::time_point state_since_;
    std::optional<MetricsClock::time_point> last_state_point_; // capture time of the last ACKed / committed checkpoint
    std::optional<uint64_t> initial_pause_ns_;
    std::deque<RatePoint> rate_; // one per checkpoint, kRateWindow long
    std::function<OutputFigures()> output_source_;
    std::function<HeartbeatFigures()> heartbeat_source_;
    std::function<uint64_t()> session_source_;
    uint64_t sessions_at_wait_ = 0;
    double session_end_unix_s_ = 0; // wall time of the last on_session_end (0: none)
    std::optional<FailoverTimes> last_failover_;
    VerificationFigures verification_;
};

} // namespace understudy::cli
