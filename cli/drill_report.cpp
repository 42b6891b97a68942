#include "cli/drill_report.hpp"

#include <cmath>
#include <ctime>

#include <fmt/format.h>

#include "cli/status.hpp" // JsonWriter
#include "common/json.hpp"

namespace understudy::cli {

const char* drill_kind_name(DrillKind k) {
    for (auto [kind, name] : kDrillKinds)
        if (kind == k) return name;
    return "?";
}

namespace {
std::string ms_text(std::optional<double> v) { return v ? fmt::format("{:.1f} ms", *v) : std::string("-"); }
} // namespace

std::string iso_utc(double unix_s) {
    std::time_t secs = std::time_t(std::floor(unix_s));
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    return fmt::format("{}.{:03d}Z", buf, int((unix_s - double(secs)) * 1000));
}

std::string report_json(const DrillReport& r) {
    JsonWriter w;
    w.begin_object()
        .string("kind", drill_kind_name(r.kind))
        .string("fault", r.fault)
        .number("fault_unix_s", r.fault_unix_s)
        .number("detection_ms", r.detection_ms)
        .number("promotion_ms", r.promotion_ms)
        .string("detection_source", r.detection_source)
        .number("outage_ms", r.outage_ms)
        .integer("writes_acknowledged", r.acknowledged)
        .integer("writes_lost", r.lost)
        .integer("writes_missing", r.missing)
        .integer("writes_wrong", r.wrong)
        .integer("writes_in_doubt", r.in_doubt)
        .string_or_null("readback_error", r.readback_error)
        .integer("connections", uint64_t(r.connections))
        .integer("connections_broken", r.broken)
        .integer("reconnects", r.reconnects)
        .boolean("connections_survived", r.connections_survived)
        .string("survivor", r.survivor)
        .string("survivor_socket", r.survivor_socket)
        .string("survivor_state", r.survivor_state)
        .number("watched_s", r.watched_s)
        .string_or_null("service_stopped", r.service_stopped)
        .string_or_null("selfcheck", r.selfcheck)
        .string_or_null("verification", r.verification)
        .string_or_null("verification_verdict", r.verification_verdict)
        .string("verdict", r.pass ? "pass" : "fail");
    std::string reasons = "[", notes = "[";
    for (const auto& s : r.reasons) reasons += (reasons.size() > 1 ? "," : "") + json_quote(s);
    for (const auto& s : r.notes) notes += (notes.size() > 1 ? "," : "") + json_quote(s);
    w.raw("reasons", reasons + "]").raw("notes", notes + "]");
    w.end_object();
    return w.str();
}

std::string report_text(const DrillReport& r) {
    std::string out = fmt::format("drill {}: {}\n", drill_kind_name(r.kind), r.pass ? "PASS" : "FAIL");
    auto line = [&](const char* k, const std::string& v) { out += fmt::format("  {:<13}{}\n", k, v); };
    line("fault", fmt::format("{} at {}", r.fault, iso_utc(r.fault_unix_s)));
    line("detection", ms_text(r.detection_ms) + (r.detection_ms ? " (" + r.detection_source + ")" : ""));
    line("promotion", ms_text(r.promotion_ms) + (r.promotion_ms ? " (detected -> the promoted VM runs)" : ""));
    line("outage", ms_text(r.outage_ms) + (r.outage_ms ? " (longest gap between successful replies)" : ""));
    line("writes", fmt::format("{} acknowledged, {} lost{}", r.acknowledged, r.lost,
                               r.readback_error ? " (read-back failed: " + *r.readback_error + ")"
                                                : r.lost ? fmt::format(" ({} missing, {} wrong)", r.missing, r.wrong)
                                                         : std::string(" (every one read back)")));
    line("connections", fmt::format("{} {}", r.connections,
                                    r.connections_survived ? "survived (no reconnect)"
                                                           : fmt::format("did not all survive ({} broken, {} reconnects)", r.broken, r.reconnects)));
    line("survivor", r.survivor == "none" ? std::string("none") : fmt::format("{} ({}): {}", r.survivor, r.survivor_socket, r.survivor_state));
    line("watched", r.service_stopped ? fmt::format("{:.1f} s, then: {}", r.watched_s, *r.service_stopped)
                                      : fmt::format("{:.1f} s, served throughout", r.watched_s));
    line("self-check", r.selfcheck ? *r.selfcheck : std::string("-"));
    line("verified", r.verification ? "before the fault, " + *r.verification : std::string("-"));
    for (const auto& s : r.reasons) line("FAILED", s);
    for (const auto& s : r.notes) line("note", s);
    return out;
}

std::string state_text(const StatusSnapshot& s) {
    return fmt::format("{}{}, {}{}", role_name(s.role), s.promoted ? " (promoted)" : "", state_name(s.state),
                       s.reason.empty() ? "" : " (" + s.reason + ")");
}

} // namespace understudy::cli
