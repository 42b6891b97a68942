// How the `understudy` command writes its log (docs/cli.md, "Logs"): human lines by
// default, or one JSON object per line for log collectors (--log-format json).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace understudy::cli {

enum class LogFormat { human, json };

Result<LogFormat> parse_log_format(std::string_view text);
// Installs the format on spdlog's default logger.
void set_log_format(LogFormat format);

// Takes the global `--log-format FORMAT` (or `--log-format=FORMAT`) out of `args`, where
// it may stand anywhere; nullopt when it is not there.
Result<std::optional<LogFormat>> take_log_format(std::vector<std::string>& args);

} // namespace understudy::cli
