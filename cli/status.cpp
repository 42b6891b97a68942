#include "cli/status.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "common/json.hpp"

namespace understudy::cli {


// ---------------------------------------------------------------------------------------
// Writing

void JsonWriter::sep(std::string_view key) {
    if (!first_) out_ += ',';
    first_ = false;
    if (!key.empty()) {
        out_ += json_quote(key);
        out_ += ':';
    }
}
JsonWriter& JsonWriter::begin_object(std::string_view key) {
    sep(key);
    out_ += '{';
    first_ = true;
    return *this;
}
JsonWriter& JsonWriter::end_object() {
    out_ += '}';
    first_ = false;
    return *this;
}
JsonWriter& JsonWriter::key(std::string_view k) {
    sep(k);
    first_ = true; // the value follows without a comma
    return *this;
}
JsonWriter& JsonWriter::string(std::string_view key, std::string_view v) {
    sep(key);
    out_ += json_quote(v);
    return *this;
}
JsonWriter& JsonWriter::boolean(std::string_view key, bool v) {
    sep(key);
    out_ += v ? "true" : "false";
    return *this;
}
JsonWriter& JsonWriter::integer(std::string_view key, uint64_t v) {
    sep(key);
    out_ += std::to_string(v);
    return *this;
}
JsonWriter& JsonWriter::integer(std::string_view key, int64_t v) {
    sep(key);
    out_ += std::to_string(v);
    return *this;
}
JsonWriter& JsonWriter::integer(std::string_view key, std::optional<uint64_t> v) {
    return v ? integer(key, *v) : null(key);
}
JsonWriter& JsonWriter::number(std::string_view key, double v) {
    if (!std::isfinite(v)) return null(key);
    sep(key);
    out_ += fmt::format("{}", v); // shortest round-trip form
    return *this;
}
JsonWriter& JsonWriter::number(std::string_view key, std::optional<double> v) { return v ? number(key, *v) : null(key); }
JsonWriter& JsonWriter::string_or_null(std::string_view key, const std::optional<std::string>& v) { return v ? string(key, *v) : null(key); }
JsonWriter& JsonWriter::null(std::string_view key) {
    sep(key);
    out_ += "null";
    return *this;
}
JsonWriter& JsonWriter::raw(std::string_view key, std::string_view json) {
    sep(key);
    out_ += json;
    return *this;
}

namespace {
void quantile_object(JsonWriter& w, std::string_view key, const QuantileFigures& q) {
    w.begin_object(key).number("last", q.last).number("p50", q.p50).number("p99", q.p99).integer("count", q.count).end_object();
}
void count_object(JsonWriter& w, std::string_view key, const std::map<std::string, uint64_t>& m) {
    w.begin_object(key);
    for (const auto& [k, v] : m) w.integer(k, v);
    w.end_object();
}
} // namespace

std::string status_to_json(const StatusSnapshot& s) {
    JsonWriter w;
    w.begin_object()
        .integer("format", int64_t(kStatusFormat))
        .string("name", s.name)
        .integer("pid", int64_t(s.pid))
        .number("uptime_s", s.uptime_s)
        .string("role", role_name(s.role))
        .boolean("promoted", s.promoted)
        .string("state", state_name(s.state))
        .string("reason", s.reason)
        .number("state_age_s", s.state_age_s)
        .boolean("healthy", s.healthy)
        .boolean("active_primary", s.active_primary);
    w.begin_object("epoch")
        .integer("captured", s.epoch_captured)
        .integer("acknowledged", s.epoch_acknowledged)
        .number("rate_per_s", s.epoch_rate_per_s)
        .end_object();
    w.begin_object("checkpoint");
    quantile_object(w, "pause_s", s.pause_s);
    quantile_object(w, "ack_s", s.ack_s);
    quantile_object(w, "dirty_pages", s.dirty_pages);
    w.number("initial_pause_s", s.initial_pause_s).end_object();
    w.begin_object("sync")
        .integer("round", uint64_t(s.sync_round))
        .integer("bytes_sent", s.sync_bytes_sent)
        .integer("bytes_total", s.sync_bytes_total)
        .end_object();
    w.begin_object("replication")
        .integer("raw_bytes", s.raw_bytes)
        .integer("wire_bytes", s.wire_bytes)
        .number("raw_bytes_per_s", s.raw_bytes_per_s)
        .number("wire_bytes_per_s", s.wire_bytes_per_s)
        .end_object();
    w.begin_object("lag").integer("epochs", s.lag_epochs).number("seconds", s.lag_s).end_object();
    if (s.output)
        w.begin_object("output")
            .integer("held_packets", s.output->held_packets)
            .integer("held_bytes", s.output->held_bytes)
            .integer("released_packets", s.output->released_packets)
            .integer("released_bytes", s.output->released_bytes)
            .integer("stalls", s.output->stalls)
            .number("hold_p99_s", s.hold_p99_s)
            .end_object();
    else
        w.null("output");
    if (s.heartbeats)
        w.begin_object("heartbeats")
            .integer("sent", s.heartbeats->sent)
            .integer("received", s.heartbeats->received)
            .number("max_gap_s", double(s.heartbeats->max_gap_ns) * 1e-9)
            .end_object();
    else
        w.null("heartbeats");
    count_object(w, "failovers", s.failovers);
    count_object(w, "protection_lost", s.protection_lost);
    w.integer("sessions", s.sessions);
    if (s.last_failover)
        w.begin_object("last_failover")
            .string("reason", s.last_failover->reason)
            .number("detected_unix_s", s.last_failover->detected_unix_s)
            .number("running_unix_s", s.last_failover->running_unix_s)
            .end_object();
    else
        w.null("last_failover");
    const auto& v = s.verification;
    w.begin_object("verification").integer("match", v.match).integer("mismatch", v.mismatch).integer("unanswered", v.unanswered);
    if (v.last) {
        std::string pages = "[";
        for (uint64_t p : v.last->first_differing) pages += (pages.size() > 1 ? "," : "") + std::to_string(p);
        w.begin_object("last")
            .integer("pass", v.last->pass)
            .string("verdict", v.last->verdict)
            .integer("first_checkpoint", v.last->first_checkpoint)
            .integer("last_checkpoint", v.last->last_checkpoint)
            .integer("pages", v.last->pages)
            .integer("differing_pages", v.last->differing_pages)
            .raw("first_differing", pages + "]")
            .string("state_differs", v.last->state_differs)
            .number("finished_unix_s", v.last->finished_unix_s)
            .end_object();
    } else {
        w.null("last");
    }
    w.end_object();
    w.end_object();
    return w.str();
}

// ---------------------------------------------------------------------------------------
// Reading

namespace {

class Reader {
public:
    explicit Reader(const Json& obj, std::string path = "status") : obj_(obj), path_(std::move(path)) {}

    Result<const Json*> member(std::string_view k, Json::Kind kind, bool nullable = false) const {
        const Json* v = obj_.find(k);
        if (!v) return bad(k, "is missing");
        if (nullable && v->kind == Json::Kind::null) return v;
        if (v->kind != kind) return bad(k, "has the wrong type");
        return v;
    }
    Result<Reader> object(std::string_view k) const {
        const Json* v = US_TRY(member(k, Json::Kind::object));
        return Reader(*v, path_ + "." + std::string(k));
    }
    Result<std::optional<Reader>> optional_object(std::string_view k) const {
        const Json* v = US_TRY(member(k, Json::Kind::object, true));
        if (v->kind == Json::Kind::null) return std::optional<Reader>();
        return std::optional<Reader>(Reader(*v, path_ + "." + std::string(k)));
    }
    Result<std::string> string(std::string_view k) const { return US_TRY(member(k, Json::Kind::string))->text; }
    Result<bool> boolean(std::string_view k) const { return US_TRY(member(k, Json::Kind::boolean))->boolean; }
    Result<uint64_t> u64(std::string_view k) const {
        const Json* v = US_TRY(member(k, Json::Kind::number));
        uint64_t n = 0;
        auto [end, ec] = std::from_chars(v->text.data(), v->text.data() + v->text.size(), n);
        if (ec != std::errc() || end != v->text.data() + v->text.size()) return bad(k, "is not an unsigned integer");
        return n;
    }
    Result<std::optional<uint64_t>> optional_u64(std::string_view k) const {
        const Json* v = US_TRY(member(k, Json::Kind::number, true));
        if (v->kind == Json::Kind::null) return std::optional<uint64_t>();
        return std::optional<uint64_t>(US_TRY(u64(k)));
    }
    Result<std::optional<double>> optional_number(std::string_view k) const {
        const Json* v = US_TRY(member(k, Json::Kind::number, true));
        if (v->kind == Json::Kind::null) return std::optional<double>();
        double d = 0;
        auto [end, ec] = std::from_chars(v->text.data(), v->text.data() + v->text.size(), d);
        if (ec != std::errc() || end != v->text.data() + v->text.size()) return bad(k, "is not a number");
        return std::optional<double>(d);
    }
    Result<double> number(std::string_view k) const {
        auto v = US_TRY(optional_number(k));
        if (!v) return bad(k, "is null");
        return *v;
    }
    Result<QuantileFigures> quantiles(std::string_view k) const {
        Reader r = US_TRY(object(k));
        QuantileFigures q;
        q.last = US_TRY(r.optional_number("last"));
        q.p50 = US_TRY(r.optional_number("p50"));
        q.p99 = US_TRY(r.optional_number("p99"));
        q.count = US_TRY(r.u64("count"));
        return q;
    }
    // An array of at most `limit` unsigned integers.
    Result<std::vector<uint64_t>> u64_array(std::string_view k, size_t limit) const {
        const Json* v = US_TRY(member(k, Json::Kind::array));
        if (v->items.size() > limit) return bad(k, "has more than " + std::to_string(limit) + " items");
        std::vector<uint64_t> out;
        for (const auto& item : v->items) {
            uint64_t n = 0;
            auto [end, ec] = std::from_chars(item.text.data(), item.text.data() + item.text.size(), n);
            if (item.kind != Json::Kind::number || ec != std::errc() || end != item.text.data() + item.text.size())
                return bad(k, "holds something other than unsigned integers");
            out.push_back(n);
        }
        return out;
    }
    template <size_t N, class E>
    Result<std::map<std::string, uint64_t>> counts(std::string_view k, const std::array<E, N>& all,
                                                   const char* (*name)(E)) const {
        Reader r = US_TRY(object(k));
        std::map<std::string, uint64_t> m;
        for (E e : all) m[name(e)] = US_TRY(r.u64(name(e)));
        return m;
    }

private:
    Error bad(std::string_view k, std::string_view what) const {
        return make_error(Errc::invalid_input, path_ + "." + std::string(k) + " " + std::string(what));
    }
    const Json& obj_;
    std::string path_;
};

template <class E, size_t N>
Result<E> enum_from(const std::string& text, const std::array<E, N>& all, const char* (*name)(E), const char* what) {
    for (E e : all)
        if (text == name(e)) return e;
    return make_error(Errc::invalid_input, std::string("status.") + what + " '" + text + "' is not one of the documented values");
}

} // namespace

Result<StatusSnapshot> status_from_json(std::string_view json) {
    auto doc = parse_json(json);
    if (!doc) return std::move(doc.error()).wrap("the status answer");
    if (doc->kind != Json::Kind::object) return make_error(Errc::invalid_input, "the status answer is not a JSON object");
    Reader r(*doc);
    uint64_t format = US_TRY(r.u64("format"));
    if (format != uint64_t(kStatusFormat))
        return make_error(Errc::unsupported, fmt::format("status format {} is not the format {} this program reads", format,
                                                         kStatusFormat));
    StatusSnapshot s;
    s.name = US_TRY(r.string("name"));
    s.pid = int64_t(US_TRY(r.u64("pid")));
    s.uptime_s = US_TRY(r.number("uptime_s"));
    s.role = US_TRY(enum_from(US_TRY(r.string("role")), std::array{Role::primary, Role::backup}, role_name, "role"));
    s.promoted = US_TRY(r.boolean("promoted"));
    s.state = US_TRY(enum_from(US_TRY(r.string("state")), kAllStates, state_name, "state"));
    s.reason = US_TRY(r.string("reason"));
    s.state_age_s = US_TRY(r.number("state_age_s"));
    s.healthy = US_TRY(r.boolean("healthy"));
    s.active_primary = US_TRY(r.boolean("active_primary"));
    Reader e = US_TRY(r.object("epoch"));
    s.epoch_captured = US_TRY(e.u64("captured"));
    s.epoch_acknowledged = US_TRY(e.u64("acknowledged"));
    s.epoch_rate_per_s = US_TRY(e.number("rate_per_s"));
    Reader c = US_TRY(r.object("checkpoint"));
    s.pause_s = US_TRY(c.quantiles("pause_s"));
    s.ack_s = US_TRY(c.quantiles("ack_s"));
    s.dirty_pages = US_TRY(c.quantiles("dirty_pages"));
    s.initial_pause_s = US_TRY(c.optional_number("initial_pause_s"));
    Reader sy = US_TRY(r.object("sync"));
    s.sync_round = unsigned(US_TRY(sy.u64("round")));
    s.sync_bytes_sent = US_TRY(sy.u64("bytes_sent"));
    s.sync_bytes_total = US_TRY(sy.u64("bytes_total"));
    Reader rep = US_TRY(r.object("replication"));
    s.raw_bytes = US_TRY(rep.u64("raw_bytes"));
    s.wire_bytes = US_TRY(rep.u64("wire_bytes"));
    s.raw_bytes_per_s = US_TRY(rep.number("raw_bytes_per_s"));
    s.wire_bytes_per_s = US_TRY(rep.number("wire_bytes_per_s"));
    Reader lag = US_TRY(r.object("lag"));
    s.lag_epochs = US_TRY(lag.optional_u64("epochs"));
    s.lag_s = US_TRY(lag.optional_number("seconds"));
    if (auto o = US_TRY(r.optional_object("output"))) {
        OutputFigures f;
        f.held_packets = US_TRY(o->u64("held_packets"));
        f.held_bytes = US_TRY(o->u64("held_bytes"));
        f.released_packets = US_TRY(o->u64("released_packets"));
        f.released_bytes = US_TRY(o->u64("released_bytes"));
        f.stalls = US_TRY(o->u64("stalls"));
        s.hold_p99_s = US_TRY(o->optional_number("hold_p99_s"));
        s.output = f;
    }
    if (auto h = US_TRY(r.optional_object("heartbeats"))) {
        HeartbeatFigures f;
        f.sent = US_TRY(h->u64("sent"));
        f.received = US_TRY(h->u64("received"));
        f.max_gap_ns = uint64_t(std::llround(US_TRY(h->number("max_gap_s")) * 1e9));
        s.heartbeats = f;
    }
    s.failovers = US_TRY(r.counts("failovers", kAllFailoverReasons, failover_reason_name));
    s.protection_lost = US_TRY(r.counts("protection_lost", kAllLossReasons, loss_reason_name));
    s.sessions = US_TRY(r.u64("sessions"));
    // Added within format 1: an older instance's object has no such member.
    if (doc->find("last_failover"))
        if (auto f = US_TRY(r.optional_object("last_failover"))) {
            FailoverTimes t;
            t.reason = US_TRY(f->string("reason"));
            t.detected_unix_s = US_TRY(f->number("detected_unix_s"));
            t.running_unix_s = US_TRY(f->optional_number("running_unix_s"));
            s.last_failover = t;
        }
    if (doc->find("verification")) {
        Reader v = US_TRY(r.object("verification"));
        s.verification.match = US_TRY(v.u64("match"));
        s.verification.mismatch = US_TRY(v.u64("mismatch"));
        s.verification.unanswered = US_TRY(v.u64("unanswered"));
        if (auto l = US_TRY(v.optional_object("last"))) {
            VerifyPassFigures p;
            p.pass = US_TRY(l->u64("pass"));
            p.verdict = US_TRY(l->string("verdict"));
            if (p.verdict != "match" && p.verdict != "mismatch" && p.verdict != "unanswered")
                return make_error(Errc::invalid_input, "status.verification.last.verdict '" + p.verdict + "' is not one of the documented values");
            p.first_checkpoint = US_TRY(l->u64("first_checkpoint"));
            p.last_checkpoint = US_TRY(l->u64("last_checkpoint"));
            p.pages = US_TRY(l->u64("pages"));
            p.differing_pages = US_TRY(l->u64("differing_pages"));
            p.first_differing = US_TRY(l->u64_array("first_differing", VerifyPassFigures::kListed));
            p.state_differs = US_TRY(l->string("state_differs"));
            p.finished_unix_s = US_TRY(l->number("finished_unix_s"));
            s.verification.last = p;
        }
    }
    return s;
}

// ---------------------------------------------------------------------------------------
// Text

namespace {
std::string secs(std::optional<double> s) {
    if (!s) return "-";
    double v = *s;
    if (v < 1e-3) return fmt::format("{:.0f} us", v * 1e6);
    if (v < 1) return fmt::format("{:.1f} ms", v * 1e3);
    return fmt::format("{:.2f} s", v);
}
std::string bytes(double b) {
    if (b < 1024) return fmt::format("{:.0f} B", b);
    if (b < 1024.0 * 1024) return fmt::format("{:.1f} KiB", b / 1024);
    if (b < 1024.0 * 1024 * 1024) return fmt::format("{:.1f} MiB", b / 1024 / 1024);
    return fmt::format("{:.2f} GiB", b / 1024 / 1024 / 1024);
}
} // namespace

std::string status_to_text(const StatusSnapshot& s) {
    std::string out;
    auto line = [&out](std::string_view label, const std::string& text) { out += fmt::format("{:<13}{}\n", label, text); };
    line("instance", fmt::format("{} (pid {}, up {:.0f} s)", s.name.empty() ? "-" : s.name, s.pid, s.uptime_s));
    line("role", std::string(role_name(s.role)) + (s.promoted ? " (promoted from backup)" : "") +
                     (s.active_primary ? ", active" : ""));
    line("state", fmt::format("{}{} for {:.1f} s{}", state_name(s.state), s.reason.empty() ? "" : ": " + s.reason,
                              s.state_age_s, s.healthy ? "" : " (UNHEALTHY)"));
    if (s.state == ProtectionState::syncing)
        line("sync", fmt::format("round {}, {} of {} sent", s.sync_round, bytes(double(s.sync_bytes_sent)),
                                 bytes(double(s.sync_bytes_total))));
    bool backup = s.role == Role::backup;
    line("epochs", fmt::format("{} {}, {:.1f}/s", backup ? "committed" : "acknowledged", s.epoch_acknowledged,
                               s.epoch_rate_per_s));
    if (!backup) {
        line("pause", fmt::format("last {}, p50 {}, p99 {} (initial {})", secs(s.pause_s.last), secs(s.pause_s.p50),
                                  secs(s.pause_s.p99), secs(s.initial_pause_s)));
        line("ACK", fmt::format("last {}, p99 {}", secs(s.ack_s.last), secs(s.ack_s.p99)));
        auto pages = [](std::optional<double> v) { return v ? fmt::format("{:.0f}", *v) : std::string("-"); };
        line("dirty pages", fmt::format("last {}, p99 {} per checkpoint", pages(s.dirty_pages.last), pages(s.dirty_pages.p99)));
    }
    std::string lag = s.lag_s ? secs(s.lag_s) : "-";
    if (s.lag_epochs) lag = fmt::format("{} epoch{}, {}", *s.lag_epochs, *s.lag_epochs == 1 ? "" : "s", lag);
    line(backup ? "last commit" : "backup lag", backup && s.lag_s ? lag + " ago" : lag);
    line("replication", backup ? fmt::format("{}/s of pages applied ({} total)", bytes(s.raw_bytes_per_s), bytes(double(s.raw_bytes)))
                               : fmt::format("{}/s on the wire, {}/s raw ({} / {} total)", bytes(s.wire_bytes_per_s),
                                             bytes(s.raw_bytes_per_s), bytes(double(s.wire_bytes)), bytes(double(s.raw_bytes))));
    if (s.output)
        line("output held", fmt::format("{} packets, {}; hold p99 {}; {} stalls", s.output->held_packets,
                                        bytes(double(s.output->held_bytes)), secs(s.hold_p99_s), s.output->stalls));
    if (s.heartbeats)
        line("heartbeats", fmt::format("sent {}, received {}, longest gap {}", s.heartbeats->sent, s.heartbeats->received,
                                       secs(double(s.heartbeats->max_gap_ns) * 1e-9)));
    std::string f;
    for (const auto& [k, v] : s.failovers)
        if (v) f += fmt::format("{}{} {}", f.empty() ? "" : ", ", v, k);
    for (const auto& [k, v] : s.protection_lost)
        if (v) f += fmt::format("{}{} backup lost ({})", f.empty() ? "" : ", ", v, k);
    if (s.last_failover)
        f += fmt::format("; last: {}, running {} after detection", s.last_failover->reason,
                         s.last_failover->running_unix_s
                             ? secs(*s.last_failover->running_unix_s - s.last_failover->detected_unix_s)
                             : std::string("not yet"));
    line("failovers", f.empty() ? "none" : f);
    const auto& v = s.verification;
    line("verification", v.last ? fmt::format("last {}; passes: {} match, {} mismatch, {} unanswered", verify_pass_text(*v.last),
                                              v.match, v.mismatch, v.unanswered)
                                : std::string("no pass completed"));
    return out;
}

std::string verify_pass_text(const VerifyPassFigures& p) {
    std::string t = fmt::format("pass {} (checkpoints {} .. {}, {} pages): ", p.pass, p.first_checkpoint, p.last_checkpoint, p.pages);
    if (p.verdict == "match") return t + "the replica matches the VM, every page and the state";
    if (p.verdict == "unanswered") return t + "the backup did not answer (it does not verify: an older version)";
    t += "MISMATCH:";
    if (p.differing_pages) {
        t += p.differing_pages == 1 ? " 1 page differs (page index" : fmt::format(" {} pages differ (page index", p.differing_pages);
        for (size_t i = 0; i < p.first_differing.size(); ++i) t += fmt::format("{}{}", i ? ", " : " ", p.first_differing[i]);
        t += p.differing_pages > p.first_differing.size() ? ", ...; the log names them all)" : ")";
    }
    if (!p.state_differs.empty()) t += std::string(p.differing_pages ? ";" : "") + " the state of " + p.state_differs + " differs";
    return t;
}

} // namespace understudy::cli
