// The etcd arbiter: the active primary is whoever holds a key in etcd that is attached
// to a lease (etcd v3, through its JSON gateway over HTTP/1.1, one connection per
// request). The key, by default /understudy/<vm-name>/primary, holds the holder id.
//
//   acquire(h): POST /v3/lease/grant {"TTL":ttl}                  (request sent at s)
//               POST /v3/kv/txn  if create_revision(key) == 0
//                                then put key=h with the lease, else get key
//               won            -> valid_until = s + granted TTL - margin
//               held by h      -> adopt that lease: keepalive it (sent at s'),
//                                 valid_until = s' + TTL - margin; revoke the new lease
//               held by other  -> revoke the new lease, Errc::state naming the holder
//   renew():    POST /v3/lease/keepalive {"ID":id}                (request sent at s)
//               TTL > 0        -> valid_until = s + TTL - margin
//               TTL 0 / absent -> lost: valid_at() false from now, Errc::state
//   release():  validity dropped first, then POST /v3/lease/revoke {"ID":id}, which
//               deletes the key with the lease. The key is never deleted by name: if our
//               lease was lost, the key may be someone else's by now.
//
// Every request is bounded by settings.request_timeout (connect, send and answer
// together); every field used from an answer is checked, and every answer's
// header.cluster_id must match the first one seen (an endpoint that starts answering for
// another cluster has none of our leases). The endpoint is an IP address and port, not a
// host name: name resolution cannot be bounded by a deadline.
//
// Not covered: somebody deleting the key by hand while our lease lives lets another
// host acquire the role; revoke the lease instead (etcdctl lease revoke).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.hpp"
#include "failover/arbiter.hpp"

namespace understudy::failover {

struct EtcdOptions {
    std::string endpoint;  // "127.0.0.1:2379" or "[::1]:2379"
    std::string key;       // e.g. default_key("kv")
    ArbiterSettings settings;
    // Where "now" comes from; tests inject a fake clock. Read just before each request's
    // connection is opened, so it is never later than the time the request was sent.
    std::function<Clock::time_point()> clock = [] { return Clock::now(); };
};

class EtcdArbiter final : public Arbiter {
public:
    // Validates the options (settings, endpoint syntax, key); makes no request.
    static Result<std::unique_ptr<EtcdArbiter>> create(EtcdOptions o);
    // Makes no request: a holder that is destroyed without release() keeps the role on
    // the server until its lease expires (one TTL at most).
    ~EtcdArbiter() override = default;

    Result<Lease> acquire(std::string holder_id) override;
    Result<Lease> renew() override;
    void release() override;
    bool valid_at(Clock::time_point t) const override;
    // KEY/retired holds the id of the last retired session, put in a transaction whose
    // compare requires KEY to be attached to our lease.
    Result<void> retire_session(uint64_t session) override;
    Result<bool> session_retired(uint64_t session) override;
    std::string describe() const override;
    const ArbiterSettings& settings() const override { return opts_.settings; }

private:
    explicit EtcdArbiter(EtcdOptions o) : opts_(std::move(o)) {}
    struct Keepalive;
    Result<Keepalive> keepalive(std::int64_t id);
    void revoke(std::int64_t id);
    // Checks `reply`'s header.cluster_id against the first one seen.
    Result<void> check_cluster(std::string_view where, const Json& reply);
    void set_valid_until(Clock::time_point t);
    void drop_validity();

    EtcdOptions opts_;
    // Clock ticks since Clock's epoch; the minimum while no lease is held.
    std::atomic<Clock::rep> valid_until_{std::numeric_limits<Clock::rep>::min()};
    mutable std::mutex mu_;                // guards the fields below
    bool held_ = false;
    std::string holder_;
    std::int64_t lease_id_ = 0;
    std::chrono::seconds granted_ttl_{0};
    std::chrono::microseconds last_rtt_{0};
    std::string last_error_;
    std::optional<std::string> cluster_id_;
};

} // namespace understudy::failover
