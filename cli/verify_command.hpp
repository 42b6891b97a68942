#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy verify-stream FILE`: checks a stream captured with `backup --capture`
// against docs/wire-format.md. Exit 0 valid (a torn tail is allowed), 1 a violation,
// 2 bad usage or an unreadable file, 3 a read error.
int verify_stream_command(const std::vector<std::string>& args);

} // namespace understudy::cli
