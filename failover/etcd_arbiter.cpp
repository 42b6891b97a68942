#include "failover/etcd_arbiter.hpp"

#include <cstdio>

#include "common/base64.hpp"
#include "common/json.hpp"
#include "failover/http_client.hpp"

namespace understudy::failover {

// ---------------------------------------------------------------------------------------
// The arbiter

using namespace std::chrono_literals;

namespace {

Error bad_answer(std::string_view where, const std::string& what) {
    return make_error(Errc::invalid_input, "etcd answer to " + std::string(where) + ": " + what);
}

// A printable excerpt of an unexpected body for error messages.
std::string excerpt(std::string_view body) {
    std::string out;
    for (char c : body.substr(0, 160)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    if (body.size() > 160) out += "...";
    return out.empty() ? "(empty body)" : out;
}

// POST a JSON body; the answer must be HTTP 200 with a JSON object.
Result<Json> post(const EtcdOptions& o, std::string_view target, const std::string& body) {
    auto reply = US_TRY(http_request(o.endpoint, "POST", target, body, o.settings.request_timeout));
    auto doc = parse_json(reply.body);
    if (reply.status != 200) {
        std::string msg = excerpt(reply.body);
        if (doc)
            if (const Json* m = doc->find("message"); m && m->kind == Json::Kind::string) msg = m->text;
        return bad_answer(target, "HTTP status " + std::to_string(reply.status) + ": " + msg);
    }
    if (!doc) return bad_answer(target, doc.error().message + " in: " + excerpt(reply.body));
    if (doc->kind != Json::Kind::object) return bad_answer(target, "not a JSON object: " + excerpt(reply.body));
    return std::move(*doc);
}

Result<const Json*> member(const Json& obj, std::string_view name, Json::Kind kind, std::string_view where) {
    const Json* m = obj.find(name);
    if (!m) return bad_answer(where, "field \"" + std::string(name) + "\" is missing");
    if (m->kind != kind) return bad_answer(where, "field \"" + std::string(name) + "\" has the wrong type");
    return m;
}

Result<std::int64_t> int_member(const Json& obj, std::string_view name, std::string_view where) {
    const Json* m = obj.find(name);
    if (!m) return bad_answer(where, "field \"" + std::string(name) + "\" is missing");
    auto v = json_int64(*m, name);
    if (!v) return bad_answer(where, v.error().message);
    return *v;
}

// LeaseGrantResponse and friends carry an "error" string; non-empty means failure.
Result<void> no_error_field(const Json& obj, std::string_view where) {
    if (const Json* e = obj.find("error")) {
        if (e->kind == Json::Kind::string && e->text.empty()) return {};
        std::string msg = e->kind == Json::Kind::string ? e->text : "(non-string error)";
        if (e->kind == Json::Kind::object)
            if (const Json* m = e->find("message"); m && m->kind == Json::Kind::string) msg = m->text;
        return bad_answer(where, "etcd reports an error: " + msg);
    }
    return {};
}

std::string lease_hex(std::int64_t id) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(id));
    return buf;
}

std::string printable_check(std::string_view s, std::string_view what, size_t max_len) {
    if (s.empty()) return std::string(what) + " is empty";
    if (s.size() > max_len) return std::string(what) + " is longer than " + std::to_string(max_len) + " bytes";
    for (char c : s)
        if (c < 0x20 || c > 0x7e) return std::string(what) + " has a non-printable character";
    return {};
}

} // namespace

struct EtcdArbiter::Keepalive {
    std::chrono::seconds ttl{0};
    Clock::time_point sent;
};

Result<std::unique_ptr<EtcdArbiter>> EtcdArbiter::create(EtcdOptions o) {
    US_TRYV(validate(o.settings));
    if (o.endpoint.empty())
        return make_error(Errc::invalid_input, "arbiter etcd needs an endpoint (IP:port of an etcd client URL)");
    // Parsed now so that a bad endpoint is refused at start-up, not at failover.
    US_TRYV(check_endpoint(o.endpoint));
    if (auto why = printable_check(o.key, "arbiter key", 1024); !why.empty())
        return make_error(Errc::invalid_input, why);
    if (!o.clock) return make_error(Errc::invalid_input, "arbiter etcd: no clock");
    return std::unique_ptr<EtcdArbiter>(new EtcdArbiter(std::move(o)));
}

Result<void> EtcdArbiter::check_cluster(std::string_view where, const Json& reply) {
    const Json* header = US_TRY(member(reply, "header", Json::Kind::object, where));
    const Json* cid = US_TRY(member(*header, "cluster_id", Json::Kind::string, where));
    // A uint64 as a decimal string (it does not fit int64).
    if (cid->text.empty() || cid->text.size() > 20 || cid->text.find_first_not_of("0123456789") != std::string::npos)
        return bad_answer(where, "header.cluster_id is not a decimal number");
    std::lock_guard lk(mu_);
    if (!cluster_id_) cluster_id_ = cid->text;
    else if (*cluster_id_ != cid->text)
        return bad_answer(where, "answer from cluster " + cid->text + ", but our leases live in cluster " +
                                     *cluster_id_ + " (endpoint now points at another etcd?)");
    return {};
}

void EtcdArbiter::set_valid_until(Clock::time_point t) { valid_until_.store(t.time_since_epoch().count()); }

void EtcdArbiter::drop_validity() { valid_until_.store(std::numeric_limits<Clock::rep>::min()); }

bool EtcdArbiter::valid_at(Clock::time_point t) const {
    return t.time_since_epoch().count() < valid_until_.load();
}

Result<EtcdArbiter::Keepalive> EtcdArbiter::keepalive(std::int64_t id) {
    constexpr std::string_view where = "/v3/lease/keepalive";
    Keepalive k;
    k.sent = opts_.clock();
    const Json reply = US_TRY(post(opts_, where, "{\"ID\":\"" + std::to_string(id) + "\"}"));
    // A streaming call through the gateway: {"result":{...}} or {"error":{...}}.
    US_TRYV(no_error_field(reply, where));
    const Json* result = US_TRY(member(reply, "result", Json::Kind::object, where));
    US_TRYV(check_cluster(where, *result));
    const std::int64_t rid = US_TRY(int_member(*result, "ID", where));
    if (rid != id) return bad_answer(where, "lease " + lease_hex(rid) + " instead of " + lease_hex(id));
    std::int64_t ttl = 0;
    if (result->find("TTL")) ttl = US_TRY(int_member(*result, "TTL", where));
    if (ttl <= 0)
        return make_error(Errc::state, "lease " + lease_hex(id) + " is lost: etcd says it expired or was revoked");
    k.ttl = std::chrono::seconds(ttl);
    return k;
}

void EtcdArbiter::revoke(std::int64_t id) {
    constexpr std::string_view where = "/v3/lease/revoke";
    auto r = post(opts_, where, "{\"ID\":\"" + std::to_string(id) + "\"}");
    if (r) {
        if (auto c = check_cluster(where, *r); !c) r = std::move(c.error());
    }
    if (!r) {
        std::lock_guard lk(mu_);
        last_error_ = "revoking lease " + lease_hex(id) + ": " + r.error().describe() + " (it expires by itself)";
    }
}

Result<Lease> EtcdArbiter::acquire(std::string holder_id) {
    if (auto why = printable_check(holder_id, "arbiter holder id", 128); !why.empty())
        return make_error(Errc::invalid_input, why);
    bool already = false;
    {
        std::lock_guard lk(mu_);
        if (held_ && holder_ != holder_id)
            return make_error(Errc::state, "arbiter: already holding the role as '" + holder_ + "', not '" + holder_id + "'");
        already = held_;
    }
    if (already) return renew(); // already ours: acquiring again is a renewal
    const std::string context = "acquiring " + opts_.key + " in etcd " + opts_.endpoint;
    auto fail = [&](Error e) -> Error {
        e = std::move(e).wrap(context);
        std::lock_guard lk(mu_);
        last_error_ = e.describe();
        return e;
    };

    // 1. A fresh lease.
    const Clock::time_point t0 = opts_.clock();
    constexpr std::string_view grant_at = "/v3/lease/grant";
    const auto ttl_s = std::chrono::duration_cast<std::chrono::seconds>(opts_.settings.ttl).count();
    auto grant = post(opts_, grant_at, "{\"TTL\":\"" + std::to_string(ttl_s) + "\"}");
    if (!grant) return fail(std::move(grant.error()));
    if (auto c = check_cluster(grant_at, *grant); !c) return fail(std::move(c.error()));
    if (auto c = no_error_field(*grant, grant_at); !c) return fail(std::move(c.error()));
    auto id = int_member(*grant, "ID", grant_at);
    if (!id) return fail(std::move(id.error()));
    if (*id <= 0) return fail(bad_answer(grant_at, "lease ID " + std::to_string(*id) + " is not positive"));
    auto granted = int_member(*grant, "TTL", grant_at);
    if (!granted) {
        revoke(*id);
        return fail(std::move(granted.error()));
    }
    if (*granted <= 0) {
        revoke(*id);
        return fail(bad_answer(grant_at, "granted TTL " + std::to_string(*granted) + " is not positive"));
    }
    const std::int64_t lease = *id;

    // 2. The key, if nobody has it; otherwise who has it.
    constexpr std::string_view txn_at = "/v3/kv/txn";
    const std::string k64 = base64_encode(opts_.key);
    const std::string body = "{\"compare\":[{\"key\":\"" + k64 +
                             "\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
                             "\"success\":[{\"request_put\":{\"key\":\"" + k64 + "\",\"value\":\"" +
                             base64_encode(holder_id) + "\",\"lease\":\"" + std::to_string(lease) +
                             "\"}}],\"failure\":[{\"request_range\":{\"key\":\"" + k64 + "\"}}]}";
    auto txn = [&]() -> Result<Lease> {
        const Json reply = US_TRY(post(opts_, txn_at, body));
        US_TRYV(check_cluster(txn_at, reply));
        bool succeeded = false; // proto3 JSON leaves false out
        if (const Json* s = reply.find("succeeded")) {
            if (s->kind != Json::Kind::boolean) return bad_answer(txn_at, "field \"succeeded\" is not a boolean");
            succeeded = s->boolean;
        }
        const Json* responses = US_TRY(member(reply, "responses", Json::Kind::array, txn_at));
        if (responses->items.size() != 1)
            return bad_answer(txn_at, std::to_string(responses->items.size()) + " responses instead of 1");
        const Json& r0 = responses->items[0];
        if (r0.kind != Json::Kind::object) return bad_answer(txn_at, "responses[0] is not an object");
        if (succeeded) {
            US_TRYV(member(r0, "response_put", Json::Kind::object, txn_at));
            return Lease{.holder = holder_id, .id = lease, .ttl = std::chrono::seconds(*granted),
                         .valid_until = lease_valid_until(t0, std::chrono::seconds(*granted), opts_.settings.margin)};
        }
        // Held already: by whom?
        const Json* range = US_TRY(member(r0, "response_range", Json::Kind::object, txn_at));
        const Json* kvs = range->find("kvs");
        if (!kvs || kvs->kind != Json::Kind::array || kvs->items.size() != 1 || kvs->items[0].kind != Json::Kind::object)
            return bad_answer(txn_at, "the compare failed but the range holds no single key-value");
        const Json& kv = kvs->items[0];
        const Json* key = US_TRY(member(kv, "key", Json::Kind::string, txn_at));
        auto key_raw = base64_decode(key->text);
        if (!key_raw || *key_raw != opts_.key) return bad_answer(txn_at, "the range returned another key");
        std::string owner;
        if (const Json* v = kv.find("value")) { // an empty value is left out
            if (v->kind != Json::Kind::string) return bad_answer(txn_at, "value is not a string");
            auto raw = base64_decode(v->text);
            if (!raw) return bad_answer(txn_at, "value: " + raw.error().message);
            owner = std::move(*raw);
        }
        std::int64_t their_lease = 0;
        if (kv.find("lease")) their_lease = US_TRY(int_member(kv, "lease", txn_at));
        const std::string shown = "'" + excerpt(owner) + "'";
        if (their_lease == 0)
            return make_error(Errc::state, "the role is held by " + shown +
                                               " with no lease (put by hand?); it never expires: delete the key");
        if (owner != holder_id)
            return make_error(Errc::state, "the role is held by " + shown + " (lease " + lease_hex(their_lease) +
                                               "); it is free once that holder releases it or stops renewing "
                                               "for its TTL");
        // Ours already (an earlier run of this holder): adopt that lease if it is alive.
        auto k = keepalive(their_lease);
        if (!k) {
            if (k.error().code == Errc::state)
                return make_error(Errc::state, "the role is held under our holder id by lease " +
                                                   lease_hex(their_lease) + ", which is expiring; retry");
            return std::move(k.error());
        }
        return Lease{.holder = holder_id, .id = their_lease, .ttl = k->ttl,
                     .valid_until = lease_valid_until(k->sent, k->ttl, opts_.settings.margin)};
    }();
    if (!txn) {
        revoke(lease); // it would expire by itself; revoking frees it sooner
        return fail(std::move(txn.error()));
    }
    if (txn->id != lease) revoke(lease); // adopted the earlier lease
    txn->round_trip = std::chrono::duration_cast<std::chrono::microseconds>(opts_.clock() - t0);
    {
        std::lock_guard lk(mu_);
        held_ = true;
        holder_ = holder_id;
        lease_id_ = txn->id;
        granted_ttl_ = txn->ttl;
        last_rtt_ = txn->round_trip;
        last_error_.clear();
    }
    set_valid_until(txn->valid_until);
    return txn;
}

Result<Lease> EtcdArbiter::renew() {
    std::int64_t id;
    std::string holder;
    {
        std::lock_guard lk(mu_);
        if (!held_) return make_error(Errc::state, "arbiter etcd: renew without a lease (acquire first)");
        id = lease_id_;
        holder = holder_;
    }
    auto k = keepalive(id);
    if (!k) {
        Error e = std::move(k.error()).wrap("renewing " + opts_.key + " in etcd " + opts_.endpoint);
        if (e.code == Errc::state) drop_validity(); // lost: stop releasing now
        std::lock_guard lk(mu_);
        if (e.code == Errc::state) held_ = false;
        last_error_ = e.describe();
        return e;
    }
    const auto until = lease_valid_until(k->sent, k->ttl, opts_.settings.margin);
    set_valid_until(until);
    const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(opts_.clock() - k->sent);
    {
        std::lock_guard lk(mu_);
        granted_ttl_ = k->ttl;
        last_rtt_ = rtt;
        last_error_.clear();
    }
    return Lease{.holder = holder, .id = id, .ttl = k->ttl, .valid_until = until, .round_trip = rtt};
}

void EtcdArbiter::release() {
    drop_validity(); // output stops before the lease is given up
    std::int64_t id = 0;
    {
        std::lock_guard lk(mu_);
        if (held_) id = lease_id_;
        held_ = false;
    }
    if (id) revoke(id);
}

Result<void> EtcdArbiter::retire_session(uint64_t session) {
    std::int64_t id;
    {
        std::lock_guard lk(mu_);
        if (!held_) return make_error(Errc::state, "arbiter etcd: retiring a session without holding the role");
        id = lease_id_;
    }
    constexpr std::string_view txn_at = "/v3/kv/txn";
    const std::string k64 = base64_encode(opts_.key);
    const std::string body = "{\"compare\":[{\"key\":\"" + k64 + "\",\"target\":\"LEASE\",\"result\":\"EQUAL\",\"lease\":\"" +
                             std::to_string(id) + "\"}],\"success\":[{\"request_put\":{\"key\":\"" +
                             base64_encode(opts_.key + "/retired") + "\",\"value\":\"" +
                             base64_encode(std::to_string(session)) + "\"}}]}";
    auto reply = post(opts_, txn_at, body);
    if (!reply) return std::move(reply.error()).wrap("retiring replication session in etcd " + opts_.endpoint);
    US_TRYV(check_cluster(txn_at, *reply));
    const Json* ok = reply->find("succeeded"); // proto3 JSON leaves false out
    if (ok && ok->kind != Json::Kind::boolean) return bad_answer(txn_at, "field \"succeeded\" is not a boolean");
    if (!ok || !ok->boolean)
        return make_error(Errc::state, "arbiter etcd: " + opts_.key + " is no longer attached to our lease " +
                                           lease_hex(id) + "; another host may hold the role");
    return {};
}

Result<bool> EtcdArbiter::session_retired(uint64_t session) {
    constexpr std::string_view range_at = "/v3/kv/range";
    auto reply = post(opts_, range_at, "{\"key\":\"" + base64_encode(opts_.key + "/retired") + "\"}");
    if (!reply) return std::move(reply.error()).wrap("reading retired sessions in etcd " + opts_.endpoint);
    US_TRYV(check_cluster(range_at, *reply));
    const Json* kvs = reply->find("kvs"); // absent when the key does not exist
    if (!kvs) return false;
    if (kvs->kind != Json::Kind::array || kvs->items.size() != 1 || kvs->items[0].kind != Json::Kind::object)
        return bad_answer(range_at, "kvs is not a single key-value");
    const Json* v = kvs->items[0].find("value");
    if (!v) return false; // an empty value is left out
    if (v->kind != Json::Kind::string) return bad_answer(range_at, "value is not a string");
    auto raw = base64_decode(v->text);
    if (!raw) return bad_answer(range_at, "value: " + raw.error().message);
    return *raw == std::to_string(session);
}

std::string EtcdArbiter::describe() const {
    const auto now = opts_.clock();
    const auto until = Clock::time_point(Clock::duration(valid_until_.load()));
    std::lock_guard lk(mu_);
    std::string s = "arbiter etcd " + opts_.endpoint + " key " + opts_.key + ": ";
    if (held_) {
        s += "held by '" + holder_ + "', lease " + lease_hex(lease_id_) + " (TTL " +
             std::to_string(granted_ttl_.count()) + " s, margin " + std::to_string(opts_.settings.margin.count()) + " ms), ";
        if (until > now)
            s += "output allowed for " +
                 std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count()) + " ms more";
        else
            s += "output NOT allowed (lease not confirmed in time)";
        char rtt[32];
        std::snprintf(rtt, sizeof rtt, ", last round trip %.2f ms", last_rtt_.count() / 1000.0);
        s += rtt;
    } else {
        s += "not held";
    }
    if (!last_error_.empty()) s += "; last error: " + last_error_;
    return s;
}

} // namespace understudy::failover
