// SIGINT and SIGTERM end a command in order (the VM stopped, figures printed, a backup's
// session closed) instead of killing the process. main() blocks both in every thread;
// the commands take them synchronously here.
#pragma once

#include <chrono>

namespace understudy::cli {

// Called once by main() before any thread starts.
void block_stop_signals();
// Returns SIGINT or SIGTERM if one arrives within `wait` (0: only if already pending), else 0.
int take_stop_signal(std::chrono::milliseconds wait = std::chrono::milliseconds(0));

} // namespace understudy::cli
