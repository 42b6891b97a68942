#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy config check FILE...`: every problem of each config file, one line each.
int config_command(const std::vector<std::string>& args);

} // namespace understudy::cli
