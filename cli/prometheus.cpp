#include "cli/prometheus.hpp"

#include <fmt/format.h>

#include <cmath>

namespace understudy::cli {

namespace {

// Label values are escaped as the format requires: backslash, double quote, newline.
std::string escape(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    return fmt::format("{}", v);
}

class Out {
public:
    void head(std::string_view name, std::string_view type, std::string_view help) {
        s_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    void sample(std::string_view name, double v, std::string_view labels = {}) {
        s_ += fmt::format("{}{}{}{} {}\n", name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", value(v));
    }
    void gauge(std::string_view name, std::string_view help, double v) {
        head(name, "gauge", help);
        sample(name, v);
    }
    void counter(std::string_view name, std::string_view help, double v) {
        head(name, "counter", help);
        sample(name, v);
    }
    // `per_unit` observations make one exported unit (1e9 for ns to seconds): dividing
    // keeps bounds like 1e5 ns printing as 0.0001, not 0.00010000000000000002.
    void histogram(std::string_view name, std::string_view help, const Histogram& h, double per_unit) {
        head(name, "histogram", help);
        auto snap = h.snapshot();
        for (size_t i = 0; i < snap.bounds.size(); ++i)
            sample(fmt::format("{}_bucket", name), double(snap.cumulative[i]),
                   fmt::format("le=\"{}\"", value(double(snap.bounds[i]) / per_unit)));
        sample(fmt::format("{}_bucket", name), double(snap.count), "le=\"+Inf\"");
        sample(fmt::format("{}_sum", name), double(snap.sum) / per_unit);
        sample(fmt::format("{}_count", name), double(snap.count));
    }
    std::string s_;
};

} // namespace

std::string prometheus_text(const Metrics& m, MetricsClock::time_point now) {
    auto s = m.snapshot(now);
    Out o;
    o.head("understudy_instance_info", "gauge", "always 1; the instance's name (--instance-name) as a label");
    o.sample("understudy_instance_info", 1, fmt::format("name=\"{}\"", escape(s.name)));
    o.head("understudy_role", "gauge", "1 for the instance's current role, 0 for the other");
    for (Role r : {Role::primary, Role::backup})
        o.sample("understudy_role", s.role == r ? 1 : 0, fmt::format("role=\"{}\"", role_name(r)));
    o.head("understudy_protection_state", "gauge", "1 for the current protection state, 0 for the others (docs/status.md)");
    for (auto st : kAllStates)
        o.sample("understudy_protection_state", s.state == st ? 1 : 0, fmt::format("state=\"{}\"", state_name(st)));
    o.gauge("understudy_promoted", "1 once this instance, started as a backup, has been promoted", s.promoted ? 1 : 0);
    o.gauge("understudy_healthy", "1 while the instance is healthy (what /healthz answers)", s.healthy ? 1 : 0);
    o.gauge("understudy_active_primary", "1 on the active primary (what /primary answers)", s.active_primary ? 1 : 0);
    o.gauge("understudy_uptime_seconds", "seconds since the instance started", s.uptime_s);
    o.gauge("understudy_epoch_captured", "newest checkpoint captured (backup: committed)", double(s.epoch_captured));
    o.gauge("understudy_epoch_acknowledged", "newest checkpoint acknowledged by the backup (backup: committed)",
            double(s.epoch_acknowledged));
    o.gauge("understudy_checkpoints_per_second", "checkpoints acknowledged (backup: committed) per second over the last 10 s",
            s.epoch_rate_per_s);
    o.histogram("understudy_checkpoint_pause_seconds", "time the guest's vCPUs were stopped for one checkpoint",
                m.pause_ns(), 1e9);
    o.histogram("understudy_checkpoint_ack_seconds", "time from a checkpoint's resume to the backup's ACK", m.ack_ns(), 1e9);
    o.histogram("understudy_dirty_pages_per_epoch", "distinct guest pages in one checkpoint", m.dirty_pages(), 1.0);
    if (s.initial_pause_s)
        o.gauge("understudy_initial_checkpoint_pause_seconds", "stop-and-copy pause that ended the initial synchronization",
                *s.initial_pause_s);
    o.gauge("understudy_sync_round", "pre-copy round of the initial synchronization (0 before it starts)", double(s.sync_round));
    o.gauge("understudy_sync_sent_bytes", "guest memory sent so far by the initial synchronization", double(s.sync_bytes_sent));
    o.gauge("understudy_sync_total_bytes", "guest memory the initial synchronization covers", double(s.sync_bytes_total));
    o.head("understudy_replication_bytes_total", "counter",
           "checkpoint bytes: raw = page bytes before encoding (backup: page bytes applied), wire = encoded bytes sent (primary only)");
    o.sample("understudy_replication_bytes_total", double(s.raw_bytes), "kind=\"raw\"");
    if (s.role == Role::primary) o.sample("understudy_replication_bytes_total", double(s.wire_bytes), "kind=\"wire\"");
    o.head("understudy_replication_bandwidth_bytes_per_second", "gauge", "replication bytes per second over the last 10 s");
    o.sample("understudy_replication_bandwidth_bytes_per_second", s.raw_bytes_per_s, "kind=\"raw\"");
    if (s.role == Role::primary)
        o.sample("understudy_replication_bandwidth_bytes_per_second", s.wire_bytes_per_s, "kind=\"wire\"");
    if (s.lag_s)
        o.gauge("understudy_replication_lag_seconds",
                "age of the newest state the backup holds (primary: since its capture; backup: since its commit)", *s.lag_s);
    if (s.lag_epochs)
        o.gauge("understudy_replication_lag_epochs", "checkpoints captured but not yet acknowledged", double(*s.lag_epochs));
    if (s.output) {
        o.gauge("understudy_output_held_packets", "guest packets held until their checkpoint is acknowledged",
                double(s.output->held_packets));
        o.gauge("understudy_output_held_bytes", "bytes of guest packets held", double(s.output->held_bytes));
        o.counter("understudy_output_released_packets_total", "held packets released to the wire",
                  double(s.output->released_packets));
        o.counter("understudy_output_released_bytes_total", "bytes of held packets released", double(s.output->released_bytes));
        o.counter("understudy_output_stalls_total", "times the guest's transmit queue waited for room in the buffer",
                  double(s.output->stalls));
    }
    o.histogram("understudy_output_hold_seconds", "time each released packet was held", m.hold_ns(), 1e9);
    o.head("understudy_failovers_total", "counter", "promotions of this backup, by why the primary was declared failed");
    for (const auto& [k, v] : s.failovers) o.sample("understudy_failovers_total", double(v), fmt::format("reason=\"{}\"", escape(k)));
    o.head("understudy_protection_lost_total", "counter", "times this primary lost its backup, by reason");
    for (const auto& [k, v] : s.protection_lost)
        o.sample("understudy_protection_lost_total", double(v), fmt::format("reason=\"{}\"", escape(k)));
    if (s.heartbeats) {
        o.counter("understudy_heartbeats_sent_total", "heartbeats sent on the control connection", double(s.heartbeats->sent));
        o.counter("understudy_heartbeats_received_total", "heartbeats received on the control connection",
                  double(s.heartbeats->received));
        o.gauge("understudy_heartbeat_max_gap_seconds", "longest silence between two heartbeats received in this session",
                double(s.heartbeats->max_gap_ns) * 1e-9);
    }
    o.counter("understudy_backup_sessions_total", "sessions accepted from a primary (backup)", double(s.sessions));
    const auto& v = s.verification;
    o.head("understudy_verify_passes_total", "counter", "online verification passes completed, by verdict");
    for (const auto& [verdict, n] : {std::pair{"match", v.match}, {"mismatch", v.mismatch}, {"unanswered", v.unanswered}})
        o.sample("understudy_verify_passes_total", double(n), fmt::format("verdict=\"{}\"", verdict));
    o.gauge("understudy_verify_differing_pages", "pages the last verification pass found different (0: none, or no pass yet)",
            v.last ? double(v.last->differing_pages) : 0.0);
    return o.s_;
}

} // namespace understudy::cli
