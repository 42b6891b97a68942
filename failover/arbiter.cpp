#include "failover/arbiter.hpp"

#include <string>

#include "failover/etcd_arbiter.hpp"

namespace understudy::failover {

namespace {
std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }
} // namespace

Result<void> validate(const ArbiterSettings& s) {
    if (s.ttl < std::chrono::seconds(1) || s.ttl.count() % 1000 != 0)
        return make_error(Errc::invalid_input, "arbiter TTL " + ms(s.ttl) +
                                                   " must be a whole number of seconds, at least 1 s "
                                                   "(etcd leases count in seconds)");
    if (s.margin < std::chrono::milliseconds(50))
        return make_error(Errc::invalid_input, "arbiter safety margin " + ms(s.margin) +
                                                   " is below 50 ms; it must cover clock-rate "
                                                   "differences and output already on its way");
    if (s.margin >= s.ttl)
        return make_error(Errc::invalid_input, "arbiter safety margin " + ms(s.margin) +
                                                   " must be shorter than the TTL " + ms(s.ttl) +
                                                   "; no part of the lease would be usable");
    if (s.renew_interval < std::chrono::milliseconds(10))
        return make_error(Errc::invalid_input,
                          "arbiter renew interval " + ms(s.renew_interval) + " is below 10 ms");
    if (s.request_timeout < std::chrono::milliseconds(10))
        return make_error(Errc::invalid_input,
                          "arbiter request timeout " + ms(s.request_timeout) + " is below 10 ms");
    const auto usable = s.ttl - s.margin;
    if (s.renew_interval >= usable)
        return make_error(Errc::invalid_input, "arbiter renew interval " + ms(s.renew_interval) +
                                                   " must be shorter than TTL - margin (" + ms(usable) +
                                                   "); the lease would lapse between renewals");
    if (s.renew_interval + s.request_timeout > usable)
        return make_error(Errc::invalid_input,
                          "arbiter renew interval " + ms(s.renew_interval) + " plus request timeout " +
                              ms(s.request_timeout) + " exceeds TTL - margin (" + ms(usable) +
                              "); one slow renewal would stop output on a healthy primary");
    return {};
}

Clock::time_point lease_valid_until(Clock::time_point request_sent, std::chrono::milliseconds ttl,
                                    std::chrono::milliseconds margin) {
    return request_sent + ttl - margin;
}

Result<Lease> NoneArbiter::acquire(std::string holder_id) {
    if (holder_id.empty()) return make_error(Errc::invalid_input, "arbiter holder id is empty");
    {
        std::lock_guard lk(mu_);
        holder_ = std::move(holder_id);
    }
    held_.store(true);
    return renew();
}

Result<Lease> NoneArbiter::renew() {
    if (!held_.load()) return make_error(Errc::state, "arbiter none: renew without acquire");
    std::lock_guard lk(mu_);
    return Lease{.holder = holder_, .id = 0, .ttl = {}, .valid_until = Clock::time_point::max()};
}

void NoneArbiter::release() { held_.store(false); }

bool NoneArbiter::valid_at(Clock::time_point) const { return held_.load(); }

std::string NoneArbiter::describe() const {
    std::lock_guard lk(mu_);
    return std::string("arbiter none (NO fencing: after a partition both hosts may release output): ") +
           (held_.load() ? "held by '" + holder_ + "'" : "not held");
}

std::string default_key(const std::string& vm_name) { return "/understudy/" + vm_name + "/primary"; }

Result<std::unique_ptr<Arbiter>> make_arbiter(const ArbiterConfig& c) {
    US_TRYV(validate(c.settings));
    if (c.kind == "none") {
        if (!c.endpoint.empty() || !c.key.empty())
            return make_error(Errc::invalid_input, "arbiter none takes no endpoint or key");
        return std::unique_ptr<Arbiter>(std::make_unique<NoneArbiter>(c.settings));
    }
    if (c.kind == "etcd") {
        auto a = US_TRY(EtcdArbiter::create(EtcdOptions{.endpoint = c.endpoint, .key = c.key, .settings = c.settings}));
        return std::unique_ptr<Arbiter>(std::move(a));
    }
    return make_error(Errc::invalid_input, "unknown arbiter kind '" + c.kind + "' (expected none or etcd)");
}

} // namespace understudy::failover
