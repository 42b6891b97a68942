#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy run IMAGE` and `understudy restore SNAPSHOT`: run a VM until it stops.
int run_command(const std::vector<std::string>& args);
int restore_command(const std::vector<std::string>& args);

} // namespace understudy::cli
