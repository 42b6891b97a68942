#include "cli/stop_signals.hpp"

#include <csignal>
#include <ctime>

namespace understudy::cli {

namespace {
sigset_t stop_set() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}
} // namespace

void block_stop_signals() {
    sigset_t set = stop_set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int take_stop_signal(std::chrono::milliseconds wait) {
    sigset_t set = stop_set();
    auto s = std::chrono::duration_cast<std::chrono::seconds>(wait);
    timespec t{static_cast<time_t>(s.count()), static_cast<long>((wait - s).count() * 1000000)};
    int sig = sigtimedwait(&set, nullptr, &t);
    return sig > 0 ? sig : 0;
}

} // namespace understudy::cli
