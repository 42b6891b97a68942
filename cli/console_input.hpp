// Feeds this process's standard input to a Linux guest's serial console (COM1), so that
// the console works both ways: `understudy run --kernel ...` typed at, or given a pipe.
// A thread polls stdin and stops with this object; end of input just ends the feeding.
#pragma once

#include <atomic>
#include <thread>

#include "hv/legacy/uart.hpp"

namespace understudy::cli {

class ConsoleInput {
public:
    explicit ConsoleInput(hv::Uart* uart); // null: nothing to feed (a PVH guest)
    ~ConsoleInput();
    ConsoleInput(const ConsoleInput&) = delete;
    ConsoleInput& operator=(const ConsoleInput&) = delete;

private:
    void feed(hv::Uart* uart);
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace understudy::cli
