// `--arbiter none|etcd` and its settings (docs/failover.md, "Fencing"): which arbiter
// decides the active primary, and taking the role before this host releases any output.
#pragma once

#include <boost/program_options.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "failover/lease_keeper.hpp"
#include "netbuffer/output_commit.hpp"

namespace understudy::cli {

struct FencingOptions {
    std::string kind = "none";
    std::string endpoint;  // etcd: IP:PORT of a client URL
    std::string key;       // etcd: empty means failover::default_key("default")
    std::string holder;    // empty means this host's name
    unsigned ttl_ms = 2000, margin_ms = 500, renew_ms = 500, request_timeout_ms = 500;
};

void add_fencing_options(boost::program_options::options_description& d, FencingOptions& o);

// This host's hold on the active-primary role while it runs the VM.
class PrimaryRole {
public:
    // Takes the role through the configured arbiter, waiting up to `patience` for a
    // previous holder's lease to expire (Errc::state naming the holder if it does not).
    static Result<std::unique_ptr<PrimaryRole>> take(const FencingOptions& o,
                                                     std::chrono::milliseconds patience = {});
    ~PrimaryRole(); // gives the role up; the OutputCommit it guards releases nothing after

    // From now on `commit` releases the guest's frames only while the lease is valid.
    void guard(netbuffer::OutputCommit& commit);
    // Set once another host holds the role: this VM must stop. Thread-safe.
    std::optional<std::string> lost() const;
    // May this host release output now (the lease is valid)? Thread-safe.
    bool holds_now() const { return keeper_->valid_at(failover::Clock::now()); }
    std::string describe() const { return keeper_->describe(); }
    // The backup of replication session `session` fell behind output about to be released
    // unprotected: record that it must never promote (failover::Arbiter::retire_session).
    Result<void> retire_session(uint64_t session) { return keeper_->retire_session(session); }
    Result<bool> session_retired(uint64_t session) { return keeper_->session_retired(session); }

private:
    PrimaryRole() = default;
    std::atomic<netbuffer::OutputCommit*> commit_{nullptr};
    mutable std::mutex mu_;
    std::optional<std::string> lost_;
    std::unique_ptr<failover::LeaseKeeper> keeper_; // last: its thread uses the members above
};

// How long a backup waits for a failed primary's lease to expire before concluding that
// the primary is alive and still holds the role: two TTLs.
std::chrono::milliseconds promotion_patience(const FencingOptions& o);

// A planned switchover's last step on the old primary, once the backup accepted: gives
// the role up at once (`role` is released) so that the backup can take it, waits one TTL
// and checks that it did. Ok: another host holds the role now, or no arbiter decides
// (`none`). Errc::state: nobody took it and this host holds it again (`role` is the new
// hold): the backup did not promote and the VM must run on here. Any other error: the
// arbiter cannot say, and the VM must not run here.
Result<void> hand_role_over(std::unique_ptr<PrimaryRole>& role, const FencingOptions& o);

} // namespace understudy::cli
