#include "cli/drill_monitor.hpp"

#include "cli/status_command.hpp"

namespace understudy::cli {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kPollEvery = std::chrono::milliseconds(5);
constexpr auto kStatusTimeout = std::chrono::milliseconds(1000);

// The first time each condition was seen.
void mark(std::optional<Clock::time_point>& slot, bool seen, Clock::time_point t) {
    if (seen && !slot) slot = t;
}
} // namespace

void PairMonitor::start() {
    thread_ = std::thread([this] { run(); });
}

void PairMonitor::stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

Observed PairMonitor::observed() const {
    std::lock_guard lock(mu_);
    return seen_;
}

void PairMonitor::run() {
    while (!stop_) {
        auto next = Clock::now() + kPollEvery;
        if (poll_backup_) {
            auto s = fetch_status(backup_, kStatusTimeout);
            auto t = Clock::now();
            std::lock_guard lock(mu_);
            mark(seen_.backup_unreachable, !s, t);
            if (s) {
                mark(seen_.backup_promoting, s->state == ProtectionState::promoting || s->promoted, t);
                mark(seen_.backup_active, s->promoted && s->active_primary, t);
                mark(seen_.backup_waiting, s->role == Role::backup && s->state == ProtectionState::waiting, t);
                seen_.backup_last = std::move(*s);
            }
        }
        if (poll_primary_) {
            auto s = fetch_status(primary_, kStatusTimeout);
            auto t = Clock::now();
            std::lock_guard lock(mu_);
            mark(seen_.primary_unreachable, !s, t);
            if (s) {
                mark(seen_.primary_unprotected, s->state == ProtectionState::unprotected, t);
                seen_.primary_last = std::move(*s);
            }
        }
        std::this_thread::sleep_until(next);
    }
}

} // namespace understudy::cli
