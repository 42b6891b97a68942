#include "cli/fencing.hpp"

#include <unistd.h>

#include <thread>

namespace understudy::cli {

namespace po = boost::program_options;
using namespace std::chrono;

void add_fencing_options(po::options_description& d, FencingOptions& o) {
    d.add_options()
        ("arbiter", po::value(&o.kind)->default_value(o.kind),
         "who decides the active primary: none (no fencing: a partition can leave two hosts releasing "
         "output) or etcd (a lease-backed key; output is released only while the lease is valid)")
        ("arbiter-endpoint", po::value(&o.endpoint), "etcd: IP:PORT of an etcd client URL")
        ("arbiter-key", po::value(&o.key), "etcd: the key naming the primary (default /understudy/default/primary); "
                                            "one per protected VM, the same on primary and backup")
        ("arbiter-holder", po::value(&o.holder), "this host's name in the arbiter (default: the host name)")
        ("lease-ttl-ms", po::value(&o.ttl_ms)->default_value(o.ttl_ms), "etcd lease length, whole seconds in ms")
        ("lease-margin-ms", po::value(&o.margin_ms)->default_value(o.margin_ms),
         "stop releasing output this long before the lease can expire")
        ("lease-renew-ms", po::value(&o.renew_ms)->default_value(o.renew_ms), "renew the lease this often")
        ("arbiter-timeout-ms", po::value(&o.request_timeout_ms)->default_value(o.request_timeout_ms),
         "the longest one request to the arbiter may take");
}

Result<std::unique_ptr<PrimaryRole>> PrimaryRole::take(const FencingOptions& o, milliseconds patience) {
    failover::ArbiterConfig c;
    c.kind = o.kind;
    c.endpoint = o.endpoint;
    if (o.kind == "etcd") c.key = o.key.empty() ? failover::default_key("default") : o.key;
    c.settings = {.ttl = milliseconds(o.ttl_ms), .renew_interval = milliseconds(o.renew_ms),
                  .margin = milliseconds(o.margin_ms), .request_timeout = milliseconds(o.request_timeout_ms)};
    if (o.kind == "etcd" && o.endpoint.empty())
        return make_error(Errc::invalid_input, "--arbiter etcd needs --arbiter-endpoint IP:PORT");
    auto arbiter = US_TRY(failover::make_arbiter(c));
    std::string holder = o.holder;
    if (holder.empty()) {
        char name[256] = {};
        if (::gethostname(name, sizeof name - 1) < 0) return sys_error("reading the host name for --arbiter-holder");
        holder = name;
    }
    std::unique_ptr<PrimaryRole> role(new PrimaryRole());
    PrimaryRole* self = role.get();
    failover::LeaseKeeperHooks hooks;
    hooks.on_renewed = [self] {
        if (auto* c = self->commit_.load()) c->retry_release();
    };
    hooks.on_lost = [self](const Error& e) {
        std::lock_guard lock(self->mu_);
        self->lost_ = e.describe();
    };
    role->keeper_ = US_TRY(failover::LeaseKeeper::acquire(std::move(arbiter), holder, std::move(hooks), patience));
    return role;
}

PrimaryRole::~PrimaryRole() {
    // The role is given up: the commit it guards must release nothing more, and must not
    // keep a permit that points into this object.
    if (auto* c = commit_.load()) c->set_release_permit([](netbuffer::Clock::time_point) { return false; });
    if (keeper_) keeper_->stop();
}

void PrimaryRole::guard(netbuffer::OutputCommit& commit) {
    commit.set_release_permit([k = keeper_.get()](netbuffer::Clock::time_point t) { return k->valid_at(t); });
    commit_ = &commit;
}

std::optional<std::string> PrimaryRole::lost() const {
    std::lock_guard lock(mu_);
    return lost_;
}

milliseconds promotion_patience(const FencingOptions& o) { return 2 * milliseconds(o.ttl_ms); }

Result<void> hand_role_over(std::unique_ptr<PrimaryRole>& role, const FencingOptions& o) {
    if (!role || o.kind == "none") return {};
    role.reset(); // the lease is revoked: the backup, retrying every 100 ms, takes the key
    std::this_thread::sleep_for(milliseconds(o.ttl_ms));
    auto again = PrimaryRole::take(o);
    if (!again) {
        if (again.error().code == Errc::state) return {}; // held by another host: the backup
        return std::move(again.error()).wrap("checking that the backup took the primary role");
    }
    role = std::move(*again);
    return make_error(Errc::state, "nobody took the primary role within " + std::to_string(o.ttl_ms) +
                                       " ms of the handover; this host holds it again");
}

} // namespace understudy::cli
