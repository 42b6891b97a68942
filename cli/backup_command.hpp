#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy backup --listen HOST:PORT`: receive and commit checkpoints.
int backup_command(const std::vector<std::string>& args);

} // namespace understudy::cli
