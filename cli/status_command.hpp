#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "common/error.hpp"

namespace understudy::cli {

// `understudy status --control-socket PATH [--json] [--watch [SECONDS]]` (docs/status.md).
int status_command(const std::vector<std::string>& args);

// One {"cmd":"status"} request to the control socket at `path`; the answer checked
// against docs/status.md (Errc::invalid_input or unsupported when it does not conform).
Result<StatusSnapshot> fetch_status(const std::string& path, std::chrono::milliseconds timeout = std::chrono::seconds(5));

} // namespace understudy::cli
