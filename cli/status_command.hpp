#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy status --control-socket PATH [--json] [--watch [SECONDS]]` (docs/status.md).
int status_command(const std::vector<std::string>& args);

} // namespace understudy::cli
