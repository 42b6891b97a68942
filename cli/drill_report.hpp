// What a drill found, for people (a table) and for tools (one JSON object, docs/cli.md).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli/metrics.hpp" // StatusSnapshot

namespace understudy::cli {

enum class DrillKind { kill_primary, hang_primary, kill_backup, partition, corrupt_link };
inline constexpr std::array<std::pair<DrillKind, const char*>, 5> kDrillKinds{{{DrillKind::kill_primary, "kill-primary"},
                                                                              {DrillKind::hang_primary, "hang-primary"},
                                                                              {DrillKind::kill_backup, "kill-backup"},
                                                                              {DrillKind::partition, "partition"},
                                                                              {DrillKind::corrupt_link, "corrupt-link"}}};
const char* drill_kind_name(DrillKind k);
// The kinds whose fault takes the primary away: the backup must take over.
inline bool primary_fails(DrillKind k) { return k == DrillKind::kill_primary || k == DrillKind::hang_primary; }

struct DrillReport {
    DrillKind kind = DrillKind::kill_primary;
    std::string fault; // what was done, for people
    double fault_unix_s = 0;
    std::optional<double> detection_ms, promotion_ms, outage_ms;
    std::string detection_source;
    uint64_t acknowledged = 0, lost = 0, missing = 0, wrong = 0, in_doubt = 0;
    std::optional<std::string> readback_error;
    std::vector<std::string> lost_examples;
    unsigned connections = 0;
    uint64_t broken = 0, reconnects = 0; // connections given up; re-opened
    bool connections_survived = true;
    std::string survivor;        // "primary", "backup" or "none"
    std::string survivor_socket; // its control socket
    std::string survivor_state;  // role, state (reason)
    double watched_s = 0;                      // the survivor watched while serving
    std::optional<std::string> service_stopped; // why the watch ended early, if it did
    std::optional<std::string> selfcheck;       // the service's SELFCHECK reply, if it has one
    // Online verification before the fault: the pass and its verdict in words, and the
    // verdict (match, mismatch, unanswered); null when the primary does not verify.
    std::optional<std::string> verification, verification_verdict;
    bool pass = false;
    std::vector<std::string> reasons; // why not pass
    std::vector<std::string> notes;
};

std::string report_json(const DrillReport& r);
std::string report_text(const DrillReport& r);
// "role (promoted), state (reason)" of a status.
std::string state_text(const StatusSnapshot& s);
// ISO 8601 UTC with milliseconds.
std::string iso_utc(double unix_s);

} // namespace understudy::cli
