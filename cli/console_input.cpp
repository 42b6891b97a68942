#include "cli/console_input.hpp"

#include <poll.h>
#include <csignal>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <string_view>

#include "common/log.hpp"

namespace understudy::cli {

ConsoleInput::ConsoleInput(hv::Uart* uart) {
    if (!uart) return;
    if (::isatty(STDIN_FILENO)) {
        // A terminal that another job owns (understudy started with `&`): reading it would
        // stop the whole process with SIGTTIN, vCPUs and heartbeats too. Leave it alone,
        // and should the job be sent to the background later, let read() fail instead.
        if (::tcgetpgrp(STDIN_FILENO) != ::getpgrp()) return;
        ::signal(SIGTTIN, SIG_IGN);
    }
    thread_ = std::thread([this, uart] { feed(uart); });
}

ConsoleInput::~ConsoleInput() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

void ConsoleInput::feed(hv::Uart* uart) {
    char buf[256];
    std::string_view pending;
    while (!stop_) {
        if (!pending.empty()) { // the guest has not read what it was given: wait, never drop typed input
            pending.remove_prefix(uart->receive(pending));
            if (!pending.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            continue;
        }
        pollfd p{STDIN_FILENO, POLLIN, 0};
        int r = ::poll(&p, 1, 100); // the bound on how long stopping waits
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            log::warn("console input: poll on stdin failed: {}", strerror(errno));
            return;
        }
        if (r == 0) continue;
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return; // end of input (or stdin closed): the console stays output-only
        pending = {buf, static_cast<size_t>(n)};
    }
}

} // namespace understudy::cli
