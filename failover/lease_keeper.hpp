// Holding the active-primary role (failover/arbiter.hpp) while this host runs the VM.
//
// A LeaseKeeper acquires the role, renews it every settings().renew_interval on its own
// thread, and gives it up when stopped. The output path asks valid_at(now) before each
// release (netbuffer's release permit), so a primary cut off from the arbiter stops
// releasing `margin` before its lease can expire on the server, and releases again after
// a renewal succeeds (on_renewed). If the lease is lost and another host holds the role,
// this host has been superseded: on_lost is called once and the keeper stops renewing —
// the caller must stop the VM (docs/failover.md, "Fencing").
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "failover/arbiter.hpp"

namespace understudy::failover {

struct LeaseKeeperHooks {
    std::function<void()> on_renewed;          // validity extended: held output may go now
    std::function<void(const Error&)> on_lost; // another host holds the role now
};

class LeaseKeeper {
public:
    // Acquires the role as `holder`, retrying for up to `patience` while another holder
    // has it (a failed primary's lease must expire first) or the arbiter does not answer.
    // Fails with Errc::state naming the holder if the role is still taken after that.
    static Result<std::unique_ptr<LeaseKeeper>> acquire(std::unique_ptr<Arbiter> arbiter, std::string holder,
                                                        LeaseKeeperHooks hooks,
                                                        std::chrono::milliseconds patience = {});
    ~LeaseKeeper(); // stop()

    // May this host release output at `t`? Thread-safe.
    bool valid_at(Clock::time_point t) const { return arbiter_->valid_at(t); }
    std::string describe() const { return arbiter_->describe(); }
    // Arbiter::retire_session / session_retired, serialized with the renewals.
    Result<void> retire_session(uint64_t session);
    Result<bool> session_retired(uint64_t session);
    // Stops renewing and gives the role up (output stops being permitted first).
    void stop();

private:
    LeaseKeeper(std::unique_ptr<Arbiter> a, std::string holder, LeaseKeeperHooks hooks)
        : arbiter_(std::move(a)), holder_(std::move(holder)), hooks_(std::move(hooks)) {}
    void renew_loop();
    // A renewal found the lease lost: takes the role again if nobody else has it.
    // Returns false once another holder has it (on_lost called).
    bool recover(const Error& lost);

    std::unique_ptr<Arbiter> arbiter_;
    std::string holder_;
    LeaseKeeperHooks hooks_;
    std::mutex calls_; // one arbiter request at a time (Arbiter's threading contract)
    std::mutex mu_;    // guards stopping_, stopped_
    std::condition_variable cv_;
    bool stopping_ = false;
    bool stopped_ = false;
    std::thread thread_;
};

} // namespace understudy::failover
