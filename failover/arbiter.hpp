// Fencing (issue 5; DESIGN.md invariant 5, "one active primary"): an Arbiter decides which
// host is the active primary, the one host allowed to release the guest's network
// output. Holding the role is a lease: acquire() takes it, renew() extends it, release()
// gives it up, and valid_at(t) answers "may I still release output at time t?".
//
// The lease arithmetic (docs/failover.md, "Fencing: arbiters"): a lease the server grants
// or extends for TTL seconds in answer to a request SENT at time s cannot expire on the
// server before s + TTL, whenever the answer arrives. The holder trusts it only until
//
//     valid_until = s + TTL - margin
//
// so that it stops releasing output at least `margin` before any other host can win the
// role. The time the answer ARRIVED never enters the arithmetic: a slow answer shortens
// the usable part of the lease, it never lengthens it.
//
// Two implementations:
//   - NoneArbiter (kind "none"): always grants. NO FENCING: if the backup loses contact
//     with a primary that is still alive (a partition, a hung but not dead primary), the
//     backup promotes and BOTH hosts release output: split brain, as in Remus's two-node
//     design. Use it only where such a partition cannot happen or does not matter.
//   - EtcdArbiter (kind "etcd", failover/etcd_arbiter.hpp): a lease-backed key in etcd.
//
// Intended use (the integration in the primary/backup):
//   - one thread (the lease keeper) calls acquire() once, then renew() every
//     settings().renew_interval, and release() at an orderly stop;
//   - the output path calls valid_at(Clock::now()) before releasing each batch and holds
//     the batch while it is false. valid_at() and describe() may be called from any
//     thread at any time; acquire(), renew() and release() from one thread at a time.
//   - the backup promotes only after its own acquire() has succeeded.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.hpp"

namespace understudy::failover {

using Clock = std::chrono::steady_clock;

struct ArbiterSettings {
    // Lease length on the server. etcd counts leases in whole seconds, so this must be a
    // whole number of seconds; the server may grant longer (etcd's minimum is ~2 s at its
    // default election timeout) and the granted value is what the arithmetic uses.
    std::chrono::milliseconds ttl{2000};
    // How often the holder should call renew().
    std::chrono::milliseconds renew_interval{500};
    // The holder stops releasing output this long before the lease can expire on the
    // server: covers clock-rate differences between hosts and output already on its way.
    std::chrono::milliseconds margin{500};
    // The longest one request to the arbiter may take (connect, send, answer); acquire()
    // makes up to four requests, renew() one.
    std::chrono::milliseconds request_timeout{500};
};

// Refuses settings under which a healthy holder could lose validity between two renewals
// or a hung server could block a renewal past the lease's safe part: requires whole-second
// ttl >= 1 s, margin >= 50 ms and < ttl, renew_interval >= 10 ms, request_timeout >= 10 ms,
// and renew_interval + request_timeout <= ttl - margin.
Result<void> validate(const ArbiterSettings& s);

// The lease arithmetic above, on its own: the last instant at which output may be
// released for a lease of `ttl` whose request was sent at `request_sent`.
Clock::time_point lease_valid_until(Clock::time_point request_sent, std::chrono::milliseconds ttl,
                                    std::chrono::milliseconds margin);

// What acquire() and renew() report.
struct Lease {
    std::string holder;             // our holder id
    std::int64_t id = 0;            // the server's lease id (0 for "none")
    std::chrono::seconds ttl{0};    // TTL granted by the server (0 for "none")
    Clock::time_point valid_until;  // release output only strictly before this instant
    std::chrono::microseconds round_trip{0}; // time the request(s) took, for status lines
};

// Error categories the caller can act on:
//   Errc::state         the role is held by another holder (acquire), the lease was lost
//                       (renew), or the call is out of order (renew without a lease);
//   Errc::timeout       the server did not answer within request_timeout;
//   Errc::system        connecting or talking to the server failed (sys_errno says why);
//   Errc::invalid_input the server answered something malformed or unexpected.
// A failed renew() that did not report the lease lost (timeout, system, invalid_input)
// leaves the current validity in place: the lease is still good until valid_until, and a
// later renew() that succeeds extends it.
class Arbiter {
public:
    virtual ~Arbiter() = default;

    // Become the active primary as `holder_id` (unique per host, printable, <= 128 bytes).
    // Succeeds only if nobody holds the role, or it is already held under this holder id
    // (then the existing lease is adopted and extended).
    virtual Result<Lease> acquire(std::string holder_id) = 0;
    // Extend the lease. Fails with Errc::state once the lease is lost; valid_at() is then
    // false from that moment on.
    virtual Result<Lease> renew() = 0;
    // Stop being the primary: valid_at() turns false first, then the lease is given up on
    // the server (best effort: if the server is unreachable the lease simply expires).
    virtual void release() = 0;
    // True only while a lease is held and t < its valid_until. Thread-safe.
    virtual bool valid_at(Clock::time_point t) const = 0;
    // Replication session `session` is retired: its backup lacks state behind output the
    // primary is about to release unprotected, so that backup must never promote. Recorded
    // only while this holder still holds the role (Errc::state otherwise); the primary
    // releases unacknowledged output only after this succeeded.
    virtual Result<void> retire_session(uint64_t session) = 0;
    // Was `session` retired? A backup asks after acquire(), before promoting.
    virtual Result<bool> session_retired(uint64_t session) = 0;
    // One line for logs and status output. Thread-safe.
    virtual std::string describe() const = 0;
    virtual const ArbiterSettings& settings() const = 0;
};

// See the header comment: always grants, provides no fencing.
class NoneArbiter final : public Arbiter {
public:
    explicit NoneArbiter(ArbiterSettings s = {}) : settings_(s) {}
    Result<Lease> acquire(std::string holder_id) override;
    Result<Lease> renew() override;
    void release() override;
    bool valid_at(Clock::time_point t) const override;
    // Nothing is recorded: with no arbiter a backup promotes whatever it holds (Remus).
    Result<void> retire_session(uint64_t) override { return {}; }
    Result<bool> session_retired(uint64_t) override { return false; }
    std::string describe() const override;
    const ArbiterSettings& settings() const override { return settings_; }

private:
    ArbiterSettings settings_;
    std::atomic<bool> held_{false};
    mutable std::mutex mu_; // guards holder_
    std::string holder_;
};

// What the command line gives: `kind` is "none" or "etcd"; `endpoint` (etcd only) is
// "IP:port" of an etcd client URL; `key` (etcd only) names the role, see default_key().
struct ArbiterConfig {
    std::string kind = "none";
    std::string endpoint;
    std::string key;
    ArbiterSettings settings;
};

// "/understudy/<vm_name>/primary": one key per protected VM.
std::string default_key(const std::string& vm_name);

// Validates the configuration and settings and builds the arbiter; makes no request.
Result<std::unique_ptr<Arbiter>> make_arbiter(const ArbiterConfig& c);

} // namespace understudy::failover
