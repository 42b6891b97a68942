#include "failover/lease_keeper.hpp"

#include <thread>

#include "common/log.hpp"

namespace understudy::failover {

using namespace std::chrono;

Result<std::unique_ptr<LeaseKeeper>> LeaseKeeper::acquire(std::unique_ptr<Arbiter> arbiter, std::string holder,
                                                          LeaseKeeperHooks hooks, milliseconds patience) {
    if (!arbiter) return make_error(Errc::invalid_input, "lease keeper needs an arbiter");
    const auto deadline = Clock::now() + patience;
    for (;;) {
        auto lease = arbiter->acquire(holder);
        if (lease) break;
        // Taken by another holder, or the arbiter is slow or unreachable: worth waiting
        // for. A malformed answer or a bad setting is not.
        bool transient = lease.error().code == Errc::state || lease.error().code == Errc::timeout ||
                         lease.error().code == Errc::system;
        if (!transient || Clock::now() + arbiter->settings().renew_interval > deadline)
            return std::move(lease.error()).wrap("acquiring the primary role as '" + holder + "'");
        std::this_thread::sleep_for(std::min(arbiter->settings().renew_interval, milliseconds(100)));
    }
    std::unique_ptr<LeaseKeeper> k(new LeaseKeeper(std::move(arbiter), std::move(holder), std::move(hooks)));
    log::info("arbiter: holding the primary role: {}", k->describe());
    k->thread_ = std::thread([k = k.get()] { k->renew_loop(); });
    return k;
}

LeaseKeeper::~LeaseKeeper() { stop(); }

void LeaseKeeper::stop() {
    {
        std::lock_guard lock(mu_);
        if (stopped_) return;
        stopped_ = stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::lock_guard calls(calls_);
    arbiter_->release();
}

Result<void> LeaseKeeper::retire_session(uint64_t session) {
    std::lock_guard lock(calls_);
    return arbiter_->retire_session(session);
}

Result<bool> LeaseKeeper::session_retired(uint64_t session) {
    std::lock_guard lock(calls_);
    return arbiter_->session_retired(session);
}

void LeaseKeeper::renew_loop() {
    bool lapsed_reported = false;
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, arbiter_->settings().renew_interval, [this] { return stopping_; })) {
        lock.unlock();
        auto r = [this] {
            std::lock_guard calls(calls_);
            return arbiter_->renew();
        }();
        if (r) {
            if (lapsed_reported) log::warn("arbiter: lease renewed again: {}; releasing output", describe());
            lapsed_reported = false;
            if (hooks_.on_renewed) hooks_.on_renewed();
        } else if (r.error().code == Errc::state) {
            if (!recover(r.error())) return; // superseded: no more requests
        } else if (!valid_at(Clock::now()) && !lapsed_reported) {
            lapsed_reported = true;
            log::error("arbiter: FENCED: the lease could not be renewed ({}); holding output until it is",
                       r.error().describe());
        }
        lock.lock();
    }
}

bool LeaseKeeper::recover(const Error& lost) {
    auto again = [this] {
        std::lock_guard calls(calls_);
        return arbiter_->acquire(holder_);
    }();
    if (again) {
        log::warn("arbiter: the lease was lost ({}) but nobody else took the role; holding it again: {}",
                  lost.describe(), describe());
        if (hooks_.on_renewed) hooks_.on_renewed();
        return true;
    }
    if (again.error().code != Errc::state) return true; // unreachable now: the next renewal tries again
    log::error("arbiter: FENCED: another host holds the primary role: {}", again.error().describe());
    if (hooks_.on_lost) hooks_.on_lost(again.error());
    return false;
}

} // namespace understudy::failover
