// Live status and metrics (issue 6), without KVM: the metrics model, the status object of
// docs/status.md read back, the Prometheus text of docs/metrics.md parsed back, the
// control socket's permissions and bounds, and the HTTP endpoint's answers.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "cli/control_socket.hpp"
#include "cli/figure_summary.hpp"
#include "cli/progress.hpp"
#include "cli/http_endpoint.hpp"
#include "cli/metrics.hpp"
#include "cli/operations.hpp"
#include "cli/prometheus.hpp"
#include "cli/status.hpp"
#include "common/unique_fd.hpp"
#include "replicator/transport.hpp"

using namespace understudy;
using namespace understudy::cli;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {

// A fresh directory for sockets, removed at the end.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/us-status-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

// A primary that synchronized, then acknowledged `n` checkpoints 25 ms apart.
Metrics& feed_primary(Metrics& m, MetricsClock::time_point t0, int n) {
    m.set_state(ProtectionState::syncing, {}, t0);
    m.on_sync_progress(2, 64 << 20, 128 << 20);
    m.on_captured(1);
    m.on_acked({1, 5'000'000, 2'000'000, 30000, 30000ull * 4096, 1 << 20}, t0);
    for (int i = 0; i < n; ++i) {
        uint64_t e = uint64_t(i) + 2;
        m.on_captured(e);
        // pause 100 us + i us, ACK 3 ms, 10 + i dirty pages, 4 KiB raw and 1 KiB wire per page
        m.on_acked({e, 100'000 + uint64_t(i) * 1000, 3'000'000, 10 + uint64_t(i), (10 + uint64_t(i)) * 4096,
                    (10 + uint64_t(i)) * 1024},
                   t0 + milliseconds(25 * (i + 1)));
    }
    return m;
}

struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value;
};

// A strict-enough reader of the text format: HELP and TYPE before a family's samples,
// `name{k="v",...} value` lines, nothing else.
struct Exposition {
    std::map<std::string, std::string> types;
    std::vector<Sample> samples;

    static Exposition parse(const std::string& text) {
        Exposition e;
        std::istringstream in(text);
        std::string line;
        std::string help_for;
        while (std::getline(in, line)) {
            INFO("line: " << line);
            REQUIRE(!line.empty());
            if (line.rfind("# HELP ", 0) == 0) {
                help_for = line.substr(7, line.find(' ', 7) - 7);
                continue;
            }
            if (line.rfind("# TYPE ", 0) == 0) {
                std::istringstream t(line.substr(7));
                std::string name, type;
                t >> name >> type;
                REQUIRE(name == help_for);
                REQUIRE((type == "gauge" || type == "counter" || type == "histogram"));
                REQUIRE(e.types.count(name) == 0);
                e.types[name] = type;
                continue;
            }
            Sample s;
            size_t i = 0;
            while (i < line.size() && (std::isalnum(static_cast<unsigned char>(line[i])) || line[i] == '_')) ++i;
            s.name = line.substr(0, i);
            REQUIRE(!s.name.empty());
            if (line[i] == '{') {
                ++i;
                while (line[i] != '}') {
                    size_t eq = line.find('=', i);
                    REQUIRE(eq != std::string::npos);
                    std::string k = line.substr(i, eq - i);
                    REQUIRE(line[eq + 1] == '"');
                    std::string v;
                    size_t j = eq + 2;
                    for (; line[j] != '"'; ++j) {
                        if (line[j] == '\\') ++j;
                        v += line[j];
                    }
                    s.labels[k] = v;
                    i = j + 1;
                    if (line[i] == ',') ++i;
                }
                ++i;
            }
            REQUIRE(line[i] == ' ');
            std::string v = line.substr(i + 1);
            s.value = v == "+Inf" ? INFINITY : v == "NaN" ? NAN : std::stod(v);
            // The family: the name itself, or a histogram's name before _bucket/_sum/_count.
            std::string family = s.name;
            for (const char* suffix : {"_bucket", "_sum", "_count"})
                if (!e.types.count(family) && family.size() > std::strlen(suffix) &&
                    family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
                    family = family.substr(0, family.size() - std::strlen(suffix));
            REQUIRE(e.types.count(family));
            e.samples.push_back(s);
        }
        return e;
    }
    std::optional<double> value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
        for (const auto& s : samples)
            if (s.name == name && s.labels == labels) return s.value;
        return std::nullopt;
    }
    // A histogram's buckets are cumulative, end in +Inf, and +Inf equals _count.
    void check_histogram(const std::string& name) const {
        INFO(name);
        REQUIRE(types.at(name) == "histogram");
        double prev_le = -1, prev = 0;
        bool inf = false;
        for (const auto& s : samples) {
            if (s.name != name + "_bucket") continue;
            REQUIRE(!inf);
            double le = s.labels.at("le") == "+Inf" ? INFINITY : std::stod(s.labels.at("le"));
            CHECK(le > prev_le);
            CHECK(s.value >= prev);
            prev_le = le;
            prev = s.value;
            inf = std::isinf(le);
        }
        REQUIRE(inf);
        CHECK(value(name + "_count") == prev);
        REQUIRE(value(name + "_sum"));
    }
};

// Sends `data` on a connection to the UNIX socket and reads until newline or close.
std::string unix_exchange(int fd, const std::string& data) {
    if (!data.empty()) REQUIRE(::send(fd, data.data(), data.size(), MSG_NOSIGNAL) == ssize_t(data.size()));
    std::string in;
    char buf[4096];
    while (in.find('\n') == std::string::npos) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.append(buf, size_t(n));
    }
    return in;
}

UniqueFd unix_connect(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

// One HTTP/1.1 request to 127.0.0.1:port; returns the whole answer (the server closes).
std::string http_exchange(uint16_t port, const std::string& request) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    REQUIRE(::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) == ssize_t(request.size()));
    std::string in;
    char buf[65536];
    for (ssize_t n; (n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0;) in.append(buf, size_t(n));
    return in;
}
std::string http_get(uint16_t port, const std::string& target) {
    return http_exchange(port, "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}
int http_status(const std::string& answer) {
    REQUIRE(answer.rfind("HTTP/1.1 ", 0) == 0);
    return std::stoi(answer.substr(9, 3));
}
std::string http_body(const std::string& answer) {
    auto at = answer.find("\r\n\r\n");
    REQUIRE(at != std::string::npos);
    return answer.substr(at + 4);
}

} // namespace

TEST_CASE("histogram: cumulative buckets, sum, count, last and recent quantiles", "[status]") {
    Histogram h({10, 100, 1000});
    CHECK(!h.last());
    CHECK(!h.recent_quantile(0.99));
    for (uint64_t v : {5, 10, 11, 100, 999, 5000}) h.observe(v);
    auto s = h.snapshot();
    REQUIRE(s.cumulative.size() == 4);
    CHECK(s.cumulative == std::vector<uint64_t>{2, 4, 5, 6}); // le=10 holds 5 and 10 (le is inclusive)
    CHECK(s.count == 6);
    CHECK(s.sum == 5 + 10 + 11 + 100 + 999 + 5000);
    CHECK(h.last() == 5000u);

    Histogram q(decade_bounds(1, 3));
    for (uint64_t v = 1; v <= 100; ++v) q.observe(v);
    CHECK(q.recent_quantile(0.5) == 50u);
    CHECK(q.recent_quantile(0.99) == 99u);
    CHECK(q.recent_quantile(1.0) == 100u);
    // Only the last kRecent observations count for quantiles; the buckets keep everything.
    for (size_t i = 0; i < Histogram::kRecent; ++i) q.observe(7);
    CHECK(q.recent_quantile(0.99) == 7u);
    CHECK(q.snapshot().count == 100 + Histogram::kRecent);

    CHECK(decade_bounds(10, 2) == std::vector<uint64_t>{10, 25, 50, 100, 250, 500, 1000});
}

TEST_CASE("metrics model: a primary from syncing to protected to unprotected", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::primary, "kv", t0 - 1s);
    CHECK(m.snapshot(t0).state == ProtectionState::starting);
    CHECK(m.active_primary());
    feed_primary(m, t0, 100); // epochs 2..101, the last ACKed at t0 + 2.5 s
    auto now = t0 + milliseconds(2500);
    m.on_captured(103); // two captured beyond the last ACK
    auto s = m.snapshot(now);
    CHECK(s.name == "kv");
    CHECK(s.state == ProtectionState::protected_);
    CHECK(s.reason.empty());
    CHECK(s.epoch_captured == 103);
    CHECK(s.epoch_acknowledged == 101);
    CHECK(s.lag_epochs == 2u);
    // The last ACK came at `now` for a checkpoint resumed 3 ms before.
    REQUIRE(s.lag_s);
    CHECK(*s.lag_s == Approx(0.003).margin(1e-6));
    // 101 ACKs (epoch 1 included) spread over 2.5 s: 100 intervals.
    CHECK(s.epoch_rate_per_s == Approx(100 / 2.5).epsilon(0.01));
    CHECK(s.pause_s.count == 100);
    CHECK(*s.pause_s.last == Approx(199e-6));
    CHECK(*s.pause_s.p99 == Approx(198e-6));
    CHECK(*s.pause_s.p50 == Approx(149e-6));
    CHECK(*s.ack_s.p99 == Approx(0.003));
    CHECK(*s.dirty_pages.last == Approx(109));
    CHECK(*s.initial_pause_s == Approx(0.005));
    uint64_t pages = 0;
    for (int i = 0; i < 100; ++i) pages += 10 + uint64_t(i);
    CHECK(s.raw_bytes == 30000ull * 4096 + pages * 4096);
    CHECK(s.wire_bytes == (1u << 20) + pages * 1024);
    CHECK(s.sync_round == 2);
    CHECK(!s.output);
    CHECK(!s.heartbeats);
    // Rates fall to zero once checkpoints stop for longer than the window.
    CHECK(m.snapshot(now + Metrics::kRateWindow + 1s).epoch_rate_per_s == 0);
    CHECK(*m.snapshot(now + 5s).lag_s == Approx(5.003).margin(1e-6));

    {
        SourceGuard g;
        m.set_output_source([] { return OutputFigures{3, 1500, 10, 9000, 1}; });
        m.set_heartbeat_source([] { return HeartbeatFigures{100, 99, 15'000'000}; });
        g = SourceGuard([&m] {
            m.set_output_source(nullptr);
            m.set_heartbeat_source(nullptr);
        });
        m.observe_hold(20ms);
        auto o = m.snapshot(now);
        REQUIRE(o.output);
        CHECK(o.output->held_packets == 3);
        CHECK(o.heartbeats->max_gap_ns == 15'000'000);
        CHECK(*o.hold_p99_s == Approx(0.020));
    }
    CHECK(!m.snapshot(now).output); // the guard cleared the sources

    m.on_protection_lost(LossReason::backup_silent, "backup: no heartbeat for 100 ms", now);
    s = m.snapshot(now);
    CHECK(s.state == ProtectionState::unprotected);
    CHECK(s.reason.find("no heartbeat") != std::string::npos);
    CHECK(s.protection_lost.at("backup_silent") == 1);
    CHECK(s.protection_lost.at("error") == 0);
    CHECK(s.active_primary);
    m.set_fenced_in(false);
    CHECK(!m.snapshot(now).active_primary);
}

TEST_CASE("metrics model: a new session after reprotect numbers its epochs afresh", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::primary, "kv", t0 - 1s);
    feed_primary(m, t0, 100); // session 1: epochs 1..101 acknowledged
    auto lost = t0 + 3s;
    m.on_protection_lost(LossReason::backup_silent, "backup: no heartbeat for 100 ms", lost);
    const auto before = m.snapshot(lost);
    // `understudy reprotect`: session 2 starts at epoch 1 again.
    m.on_session_start(lost + 1s);
    auto s = m.snapshot(lost + 1s);
    CHECK(s.state == ProtectionState::syncing);
    CHECK(s.reason.empty());
    CHECK(s.epoch_captured == 0);
    CHECK(s.epoch_acknowledged == 0);
    CHECK(!s.lag_s);
    CHECK(s.epoch_rate_per_s == 0);
    CHECK(s.raw_bytes == before.raw_bytes); // counters stay monotonic
    CHECK(s.protection_lost.at("backup_silent") == 1);
    for (uint64_t e = 1; e <= 3; ++e) m.on_captured(e);
    m.on_acked({1, 5'000'000, 2'000'000, 30000, 4096, 1024}, lost + 2s);
    s = m.snapshot(lost + 2s);
    CHECK(s.state == ProtectionState::protected_);
    CHECK(s.epoch_captured == 3);
    CHECK(s.epoch_acknowledged == 1); // not session 1's 101
    CHECK(s.lag_epochs == 2u);        // the backup really is two behind
}

TEST_CASE("metrics model: a backup waits, receives, and is promoted", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::backup, "", t0);
    uint64_t sessions = 0;
    m.set_session_source([&sessions] { return sessions; });
    CHECK(m.snapshot(t0).state == ProtectionState::waiting);
    CHECK(!m.snapshot(t0).active_primary);
    sessions = 1; // a primary connected and is synchronizing
    CHECK(m.snapshot(t0).state == ProtectionState::receiving);
    for (int i = 1; i <= 41; ++i) m.on_committed(uint64_t(i), uint64_t(i) * 4096 * 10, t0 + milliseconds(25 * i));
    auto s = m.snapshot(t0 + milliseconds(25 * 41 + 10));
    CHECK(s.state == ProtectionState::receiving);
    CHECK(s.epoch_acknowledged == 41);
    CHECK(s.raw_bytes == 41 * 4096 * 10);
    CHECK(!s.lag_epochs);
    CHECK(*s.lag_s == Approx(0.010).margin(1e-6));
    CHECK(s.epoch_rate_per_s == Approx(40.0 / (25 * 40 + 10) * 1000).epsilon(0.01));
    CHECK(s.sessions == 1);
    m.on_session_end("session ended: peer closed", t0 + 2s);
    s = m.snapshot(t0 + 2s);
    CHECK(s.state == ProtectionState::waiting);
    CHECK(s.reason == "session ended: peer closed");
    m.on_failover(FailoverReason::primary_silent, t0 + 3s);
    s = m.snapshot(t0 + 3s);
    CHECK(s.state == ProtectionState::promoting);
    CHECK(s.promoted);
    CHECK(s.failovers.at("primary_silent") == 1);
    CHECK(s.failovers.at("primary_connection_lost") == 0);
    // The backup's replication figures end with the promotion; counters stay.
    CHECK(!s.lag_s);
    CHECK(s.epoch_acknowledged == 0);
    CHECK(s.epoch_rate_per_s == 0);
    CHECK(s.raw_bytes == 41 * 4096 * 10);
    m.set_role(Role::primary);
    m.set_state(ProtectionState::unprotected, "no backup configured");
    CHECK(m.snapshot().active_primary);
}

TEST_CASE("metrics model: a handover is counted apart from failures", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::backup, "", t0);
    m.on_failover(FailoverReason::handover, t0 + 1s);
    auto s = m.snapshot(t0 + 1s);
    CHECK(s.state == ProtectionState::promoting);
    CHECK(s.promoted);
    CHECK(s.reason == "the primary handed over (planned switchover)");
    CHECK(s.failovers.at("handover") == 1);
    CHECK(s.failovers.at("primary_silent") + s.failovers.at("primary_connection_lost") == 0);
}

TEST_CASE("status.last_failover: wall-clock detection and running times of a promotion", "[status]") {
    using std::chrono::system_clock;
    auto unix_now = [] { return std::chrono::duration<double>(system_clock::now().time_since_epoch()).count(); };
    auto t0 = MetricsClock::now();
    Metrics m(Role::backup, "", t0);
    CHECK(!m.snapshot().last_failover);
    const double before = unix_now();
    m.on_session_end("session ended: the primary fell silent", t0 + 1s);
    std::this_thread::sleep_for(20ms); // the promotion starts later than the detection
    m.on_failover(FailoverReason::primary_silent, t0 + 2s);
    auto s = m.snapshot();
    REQUIRE(s.last_failover);
    CHECK(s.last_failover->reason == "primary_silent");
    CHECK(s.last_failover->detected_unix_s >= before);
    CHECK(s.last_failover->detected_unix_s <= unix_now() - 0.015); // the session's end, not the call
    CHECK(!s.last_failover->running_unix_s);
    m.set_role(Role::primary);
    m.set_state(ProtectionState::unprotected, "no backup configured");
    s = m.snapshot();
    REQUIRE(s.last_failover->running_unix_s);
    CHECK(*s.last_failover->running_unix_s >= s.last_failover->detected_unix_s + 0.015);
    const double running = *s.last_failover->running_unix_s;
    m.set_state(ProtectionState::protected_); // later states leave it alone
    CHECK(*m.snapshot().last_failover->running_unix_s == running);
    CHECK_THAT(status_to_text(m.snapshot()), Catch::Contains("1 primary_silent; last: primary_silent, running ") &&
                                                  Catch::Contains(" ms after detection"));
    // JSON: round-trips, and an object without the member (an older instance) still reads.
    std::string json = status_to_json(m.snapshot());
    auto b = status_from_json(json);
    REQUIRE(b);
    REQUIRE(b->last_failover);
    CHECK(b->last_failover->detected_unix_s == s.last_failover->detected_unix_s);
    CHECK(b->last_failover->running_unix_s == running);
    auto at = json.find(",\"last_failover\":");
    REQUIRE(at != std::string::npos);
    auto older = status_from_json(json.substr(0, at) + "}");
    REQUIRE(older);
    CHECK(!older->last_failover);
    CHECK(!status_from_json(json.substr(0, at) + ",\"last_failover\":{\"reason\":\"x\"}}"));
    CHECK(status_to_json(Metrics(Role::backup).snapshot()).find("\"last_failover\":null") != std::string::npos);
}

TEST_CASE("status.verification: passes by verdict and the last one, in JSON, text and Prometheus", "[status]") {
    Metrics m(Role::primary);
    CHECK(!m.snapshot().verification.last);
    CHECK_THAT(status_to_text(m.snapshot()), Catch::Contains("no pass completed"));
    VerifyPassFigures ok{1, "match", 10, 17, 4096, 0, {}, "", 0};
    m.on_verified(ok);
    VerifyPassFigures bad{2, "mismatch", 18, 25, 4096, 3, {7, 9, 4000}, "vCPU 1", 0};
    m.on_verified(bad);
    auto s = m.snapshot();
    CHECK(s.verification.match == 1);
    CHECK(s.verification.mismatch == 1);
    REQUIRE(s.verification.last);
    CHECK(s.verification.last->finished_unix_s > 0);
    CHECK_THAT(status_to_text(s), Catch::Contains("pass 2 (checkpoints 18 .. 25, 4096 pages): MISMATCH: 3 pages differ "
                                                  "(page index 7, 9, 4000); the state of vCPU 1 differs") &&
                                      Catch::Contains("1 match, 1 mismatch, 0 unanswered"));
    const std::string json = status_to_json(s);
    auto b = status_from_json(json);
    REQUIRE(b);
    REQUIRE(b->verification.last);
    CHECK(b->verification.last->first_differing == std::vector<uint64_t>{7, 9, 4000});
    CHECK(b->verification.last->state_differs == "vCPU 1");
    CHECK(b->verification.mismatch == 1);
    CHECK(status_to_json(*b) == json);
    auto with = [&json](const std::string& from, const std::string& to) {
        auto at = json.find(from);
        REQUIRE(at != std::string::npos);
        return json.substr(0, at) + to + json.substr(at + from.size());
    };
    CHECK(!status_from_json(with("\"verdict\":\"mismatch\"", "\"verdict\":\"maybe\"")));
    CHECK(!status_from_json(with("[7,9,4000]", "[7,\"9\"]")));
    // An older instance's object has no such member.
    auto at = json.find(",\"verification\":");
    REQUIRE(at != std::string::npos);
    auto older = status_from_json(json.substr(0, at) + "}");
    REQUIRE(older);
    CHECK(!older->verification.last);
    CHECK_THAT(prometheus_text(m), Catch::Contains("understudy_verify_passes_total{verdict=\"mismatch\"} 1") &&
                                       Catch::Contains("understudy_verify_differing_pages 3"));
    // A new session (reprotect) numbers its passes from 1 again: the last pass is forgotten,
    // so that `understudy verify` never takes an old pass for the one it started.
    m.on_session_start();
    CHECK(!m.snapshot().verification.last);
    CHECK(m.snapshot().verification.mismatch == 1);
}

TEST_CASE("control socket: the drill action is checked before anything is armed", "[status][drill]") {
    Metrics m(Role::primary);
    auto refused = [&m](const std::string& line, const std::string& why) {
        std::string a = handle_control_request(m, line);
        INFO(a);
        CHECK(a.rfind("{\"ok\":false", 0) == 0);
        CHECK(a.find(why) != std::string::npos);
    };
    refused(R"({"cmd":"drill"})", "no \\\"fault\\\" string");
    refused(R"({"cmd":"drill","fault":"meteor"})", "unknown fault 'meteor'");
    m.set_state(ProtectionState::unprotected, "no backup configured");
    refused(R"({"cmd":"drill","fault":"corrupt-link"})", "needs a protected primary; this instance is primary, unprotected");
    Metrics b(Role::backup);
    std::string a = handle_control_request(b, R"({"cmd":"drill","fault":"corrupt-link"})");
    CHECK(a.find("this instance is backup, waiting") != std::string::npos);
    // A protected primary without a checkpoint stream (none here): refused at once.
    m.set_state(ProtectionState::protected_);
    a = handle_control_request(m, R"({"cmd":"drill","fault":"corrupt-link"})");
    CHECK(a.find("this primary has no checkpoint stream") != std::string::npos);
    // One whose stream sends nothing: refused after the wait, disarmed.
    auto flip = std::make_shared<replicator::BitFlip>();
    set_drill_link(flip);
    a = handle_control_request(m, R"({"cmd":"drill","fault":"corrupt-link"})");
    set_drill_link(nullptr);
    CHECK(a.find("sent no checkpoint stream bytes within 2 s") != std::string::npos);
    CHECK(!flip->disarm());
    CHECK(flip->done() == 0);
}

TEST_CASE("status JSON: every documented field round-trips; bad objects are refused", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::primary, "kv \"one\"", t0 - 2s);
    feed_primary(m, t0, 50);
    m.set_output_source([] { return OutputFigures{2, 128, 7, 900, 0}; });
    m.set_heartbeat_source([] { return HeartbeatFigures{10, 9, 12'000'000}; });
    m.observe_hold(3ms);
    auto a = m.snapshot(t0 + 2s);
    std::string json = status_to_json(a);
    INFO(json);
    CHECK(json.find('\n') == std::string::npos);
    CHECK(json.rfind("{\"format\":1,", 0) == 0);
    auto b = status_from_json(json);
    REQUIRE(b);
    CHECK(b->name == a.name);
    CHECK(b->pid == a.pid);
    CHECK(b->uptime_s == a.uptime_s);
    CHECK(b->role == a.role);
    CHECK(b->state == a.state);
    CHECK(b->epoch_captured == a.epoch_captured);
    CHECK(b->epoch_acknowledged == a.epoch_acknowledged);
    CHECK(b->epoch_rate_per_s == a.epoch_rate_per_s);
    CHECK(b->pause_s.last == a.pause_s.last);
    CHECK(b->pause_s.p99 == a.pause_s.p99);
    CHECK(b->ack_s.p50 == a.ack_s.p50);
    CHECK(b->dirty_pages.count == a.dirty_pages.count);
    CHECK(b->initial_pause_s == a.initial_pause_s);
    CHECK(b->raw_bytes == a.raw_bytes);
    CHECK(b->wire_bytes_per_s == a.wire_bytes_per_s);
    CHECK(b->lag_epochs == a.lag_epochs);
    CHECK(b->lag_s == a.lag_s);
    REQUIRE(b->output);
    CHECK(b->output->released_bytes == 900);
    CHECK(b->hold_p99_s == a.hold_p99_s);
    REQUIRE(b->heartbeats);
    CHECK(b->heartbeats->max_gap_ns == 12'000'000);
    CHECK(b->failovers == a.failovers);
    CHECK(b->protection_lost == a.protection_lost);
    CHECK(status_to_json(*b) == json); // stable: what we read we write the same way

    // Unknown values, missing fields, wrong types and other formats are refused.
    auto refused = [](std::string text) {
        auto r = status_from_json(text);
        INFO(text);
        CHECK(!r);
    };
    auto with = [&json](const std::string& from, const std::string& to) {
        auto at = json.find(from);
        REQUIRE(at != std::string::npos);
        return json.substr(0, at) + to + json.substr(at + from.size());
    };
    refused(with("\"format\":1", "\"format\":2"));
    refused(with("\"role\":\"primary\"", "\"role\":\"observer\""));
    refused(with("\"state\":\"protected\"", "\"state\":\"fine\""));
    refused(with("\"captured\":", "\"kaptured\":"));
    refused(with("\"pid\":", "\"pid\":\"1\",\"x\":"));
    refused(with("\"primary_silent\":0", "\"primary_silent\":-1"));
    refused(json.substr(0, json.size() - 1));
    refused("[]");
    // A snapshot with nothing measured yet: nulls where documented.
    Metrics fresh(Role::backup);
    auto f = status_from_json(status_to_json(fresh.snapshot()));
    REQUIRE(f);
    CHECK(!f->pause_s.last);
    CHECK(!f->lag_s);
    CHECK(!f->output);
    CHECK(f->state == ProtectionState::waiting);
    CHECK(status_to_text(*f).find("waiting") != std::string::npos);
}

TEST_CASE("Prometheus text: parses back, histograms are consistent, values match the model", "[status]") {
    auto t0 = MetricsClock::now();
    Metrics m(Role::primary, "kv", t0 - 1s);
    feed_primary(m, t0, 200);
    m.set_output_source([] { return OutputFigures{4, 2048, 100, 50000, 2}; });
    m.set_heartbeat_source([] { return HeartbeatFigures{500, 498, 30'000'000}; });
    for (int i = 0; i < 10; ++i) m.observe_hold(milliseconds(i + 1));
    auto now = t0 + milliseconds(25 * 200);
    auto text = prometheus_text(m, now);
    INFO(text);
    auto e = Exposition::parse(text);
    for (const char* h : {"understudy_checkpoint_pause_seconds", "understudy_checkpoint_ack_seconds",
                          "understudy_dirty_pages_per_epoch", "understudy_output_hold_seconds"})
        e.check_histogram(h);
    CHECK(e.value("understudy_checkpoint_pause_seconds_count") == 200);
    double pause_sum = 0;
    for (int i = 0; i < 200; ++i) pause_sum += (100'000 + i * 1000) * 1e-9;
    CHECK(*e.value("understudy_checkpoint_pause_seconds_sum") == Approx(pause_sum));
    // 100..299 us: nothing at or below 100 us but the first, all at or below 500 us.
    CHECK(e.value("understudy_checkpoint_pause_seconds_bucket", {{"le", "0.0001"}}) == 1);
    CHECK(e.value("understudy_checkpoint_pause_seconds_bucket", {{"le", "0.0005"}}) == 200);
    CHECK(e.value("understudy_checkpoint_ack_seconds_bucket", {{"le", "0.0025"}}) == 0);
    CHECK(e.value("understudy_checkpoint_ack_seconds_bucket", {{"le", "0.005"}}) == 200);
    CHECK(e.value("understudy_output_hold_seconds_count") == 10);
    CHECK(e.value("understudy_protection_state", {{"state", "protected"}}) == 1);
    CHECK(e.value("understudy_protection_state", {{"state", "syncing"}}) == 0);
    CHECK(e.value("understudy_role", {{"role", "primary"}}) == 1);
    CHECK(e.value("understudy_role", {{"role", "backup"}}) == 0);
    CHECK(e.value("understudy_active_primary") == 1);
    CHECK(e.value("understudy_instance_info", {{"name", "kv"}}) == 1);
    auto s = m.snapshot(now);
    CHECK(e.value("understudy_replication_bytes_total", {{"kind", "raw"}}) == double(s.raw_bytes));
    CHECK(e.value("understudy_replication_bytes_total", {{"kind", "wire"}}) == double(s.wire_bytes));
    CHECK(e.value("understudy_replication_lag_epochs") == 0);
    CHECK(*e.value("understudy_replication_lag_seconds") == Approx(0.003).margin(1e-6));
    CHECK(e.value("understudy_output_held_packets") == 4);
    CHECK(e.value("understudy_output_held_bytes") == 2048);
    CHECK(e.value("understudy_failovers_total", {{"reason", "primary_silent"}}) == 0);
    CHECK(e.value("understudy_heartbeats_received_total") == 498);
    CHECK(*e.value("understudy_heartbeat_max_gap_seconds") == Approx(0.030));
    CHECK(e.types.at("understudy_replication_bytes_total") == "counter");
    CHECK(e.types.at("understudy_output_held_packets") == "gauge");
    // A backup has no wire bytes to report (docs/metrics.md), and an unknown lag is absent.
    Metrics b(Role::backup);
    auto eb = Exposition::parse(prometheus_text(b));
    CHECK(!eb.value("understudy_replication_bytes_total", {{"kind", "wire"}}));
    CHECK(eb.value("understudy_replication_bytes_total", {{"kind", "raw"}}) == 0);
    CHECK(!eb.value("understudy_replication_lag_seconds"));
    CHECK(eb.value("understudy_protection_state", {{"state", "waiting"}}) == 1);
}

TEST_CASE("control socket: mode 0600 whatever the umask; status, errors and bounds", "[status]") {
    TempDir dir;
    std::string path = dir.path + "/ctl.sock";
    Metrics m(Role::primary, "kv");
    mode_t old = ::umask(0); // the socket must not depend on the caller's umask
    ControlSocketLimits limits;
    limits.max_connections = 3;
    limits.max_request = 256;
    auto sock = ControlSocket::start(path, [&m](std::string_view l) { return handle_control_request(m, l); }, limits);
    ::umask(old);
    REQUIRE(sock);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);

    auto reply = control_request(path, R"({"cmd":"status"})");
    REQUIRE(reply);
    CHECK(reply->rfind("{\"ok\":true,\"status\":{\"format\":1,", 0) == 0);
    auto metrics = control_request(path, R"({"cmd":"metrics"})");
    REQUIRE(metrics);
    CHECK(metrics->find("understudy_checkpoint_pause_seconds_bucket") != std::string::npos);

    // Malformed requests get a JSON error and the connection stays usable.
    {
        auto fd = unix_connect(path);
        for (std::string bad : {"garbage", "{\"cmd\":", "[1,2]", "{\"cmd\":7}", "{\"cmd\":\"reboot\"}", "", "\x01\xff{}"}) {
            INFO("request: " << bad);
            auto r = unix_exchange(fd.get(), bad + "\n");
            CHECK(r.rfind("{\"ok\":false,\"error\":\"", 0) == 0);
            CHECK(r.back() == '\n');
        }
        // An action needs a VM: a process without one (a backup) says so at once.
        CHECK(unix_exchange(fd.get(), "{\"cmd\":\"failover\"}\n") ==
              "{\"ok\":false,\"error\":\"failover: this instance runs no VM (a backup has none until it promotes)\"}\n");
        CHECK(unix_exchange(fd.get(), "{\"cmd\":\"ping\"}\n") == "{\"ok\":true}\n");
        // Two requests in one write: two answers, in order.
        auto two = unix_exchange(fd.get(), "{\"cmd\":\"ping\"}\n{\"cmd\":\"ping\"}\n");
        while (std::count(two.begin(), two.end(), '\n') < 2) two += unix_exchange(fd.get(), "");
        CHECK(two == "{\"ok\":true}\n{\"ok\":true}\n");
    }
    // Over the size bound: an error, then the connection is closed.
    {
        auto fd = unix_connect(path);
        auto r = unix_exchange(fd.get(), std::string(300, 'x'));
        CHECK(r == "{\"ok\":false,\"error\":\"request too long (limit 256 bytes)\"}\n");
        char c;
        CHECK(::recv(fd.get(), &c, 1, 0) == 0);
    }
    // Over the connection bound: the extra client is told and closed; the others work on.
    {
        std::vector<UniqueFd> held;
        for (int i = 0; i < 3; ++i) {
            held.push_back(unix_connect(path));
            CHECK(unix_exchange(held.back().get(), "{\"cmd\":\"ping\"}\n") == "{\"ok\":true}\n");
        }
        auto extra = unix_connect(path);
        CHECK(unix_exchange(extra.get(), "") == "{\"ok\":false,\"error\":\"too many connections (limit 3)\"}\n");
        CHECK(unix_exchange(held[0].get(), "{\"cmd\":\"ping\"}\n") == "{\"ok\":true}\n");
        held.clear();
        // Once they are gone there is room again.
        bool served = false;
        for (int i = 0; i < 50 && !served; ++i) {
            auto again = control_request(path, R"({"cmd":"ping"})");
            served = again && *again == R"({"ok":true})";
            if (!served) std::this_thread::sleep_for(20ms);
        }
        CHECK(served);
    }
    // A second instance cannot take a live socket; a stale one is replaced.
    auto second = ControlSocket::start(path, [](std::string_view) { return std::string("{}"); });
    REQUIRE(!second);
    CHECK(second.error().message.find("in use") != std::string::npos);
    sock->reset();
    CHECK(!std::filesystem::exists(path)); // removed on the way out
    {
        UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
        REQUIRE(::bind(stale.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0); // bound, never listening
    }
    auto third = ControlSocket::start(path, [](std::string_view) { return std::string("{\"ok\":true}"); });
    REQUIRE(third);
    CHECK(control_request(path, "x") == std::string("{\"ok\":true}"));
    third->reset();
    std::ofstream(dir.path + "/file") << "not a socket";
    auto on_file = ControlSocket::start(dir.path + "/file", [](std::string_view) { return std::string(); });
    REQUIRE(!on_file);
    CHECK(on_file.error().message.find("not a socket") != std::string::npos);
    CHECK(!ControlSocket::start(dir.path + "/" + std::string(120, 'a'), [](std::string_view) { return std::string(); }));
}

TEST_CASE("HTTP endpoint: /metrics, /healthz and /primary by role and state", "[status]") {
    Metrics m(Role::primary, "kv");
    auto http = HttpEndpoint::start("127.0.0.1:0", [&m](std::string_view t) { return handle_http(m, t); });
    REQUIRE(http);
    uint16_t port = (*http)->port();
    REQUIRE(port != 0);
    auto metrics = http_get(port, "/metrics");
    CHECK(http_status(metrics) == 200);
    CHECK(metrics.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    auto e = Exposition::parse(http_body(metrics));
    CHECK(e.value("understudy_role", {{"role", "primary"}}) == 1);
    CHECK(http_status(http_get(port, "/healthz")) == 200);
    CHECK(http_status(http_get(port, "/primary")) == 200);
    CHECK(http_status(http_get(port, "/primary?verbose=1")) == 200);
    CHECK(http_status(http_get(port, "/nothing")) == 404);
    CHECK(http_status(http_exchange(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")) == 405);
    auto head = http_exchange(port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(http_status(head) == 200);
    CHECK(http_body(head).empty());
    // Garbage and a client that sends nothing are dropped without harming the server.
    CHECK(http_exchange(port, "\x16\x03\x01 not http\r\n\r\n").find("HTTP/1.1 200") == std::string::npos);
    m.set_role(Role::backup);
    m.set_state(ProtectionState::receiving);
    CHECK(http_status(http_get(port, "/primary")) == 503);
    CHECK(http_status(http_get(port, "/healthz")) == 200);
    m.set_role(Role::primary);
    m.set_state(ProtectionState::stopped, "the VM stopped");
    CHECK(http_status(http_get(port, "/healthz")) == 503);
    CHECK(http_status(http_get(port, "/primary")) == 503);
    CHECK(!HttpEndpoint::start("nonsense", [](std::string_view) { return HttpAnswer{}; }));
    CHECK(!HttpEndpoint::start("127.0.0.1:99999", [](std::string_view) { return HttpAnswer{}; }));
    CHECK(!HttpEndpoint::start("example.com:80", [](std::string_view) { return HttpAnswer{}; }));
}

TEST_CASE("progress: a line with rate and ETA; throttled on a terminal and in a journal", "[progress]") {
    CHECK(Progress::line("restoring x", 512ull << 20, 1ull << 30, 2.0) ==
          "restoring x: 512.0 MiB of 1.0 GiB (50%), 268 MB/s, ETA 2.0 s");
    CHECK(Progress::line("w", 3ull << 20, 3ull << 20, 1.5) == "w: 3.0 MiB of 3.0 MiB (100%), 2 MB/s, 1.5 s");
    CHECK(Progress::line("w", 0, 0, 0) == "w: 0.0 MiB of 0.0 MiB (100%)");

    auto t = Progress::Clock::time_point{};
    auto clock = [&t] { return t; };
    std::string out;
    auto sink = [&out](std::string_view s) { out += s; };
    const uint64_t total = 100ull << 20;

    SECTION("not a terminal: a line when 2 s and 10 % have both passed, and a final line") {
        Progress p("sync", {false, sink}, clock);
        for (int ms = 0; ms <= 10000; ms += 100) {
            t = Progress::Clock::time_point{} + std::chrono::milliseconds(ms);
            p.update(total * uint64_t(ms) / 10000, total); // 1 % per 100 ms
        }
        p.finish();
        p.update(1, total); // ignored after finish
        // t=0 (first), 2 s (20 %), 4 s, 6 s, 8 s, 10 s, then the final line.
        CHECK(std::count(out.begin(), out.end(), '\n') == 7);
        CHECK(out.find('\r') == std::string::npos);
        CHECK_THAT(out, Catch::StartsWith("sync: 0.0 MiB of 100.0 MiB (0%)\n") && Catch::EndsWith("(100%), 10 MB/s, 10.0 s\n"));
    }
    SECTION("slow progress in a journal: 2 s apart is not enough without 10 %") {
        Progress p("sync", {false, sink}, clock);
        for (int s = 0; s <= 20; ++s) {
            t = Progress::Clock::time_point{} + std::chrono::seconds(s);
            p.update(total * uint64_t(s) / 100, total); // 1 % per second
        }
        CHECK(std::count(out.begin(), out.end(), '\n') == 3); // 0 %, 10 %, 20 %
    }
    SECTION("a terminal: redrawn in place at most every 100 ms, padded, newline at the end") {
        Progress p("sync", {true, sink}, clock);
        for (int ms = 0; ms < 1000; ms += 10) {
            t = Progress::Clock::time_point{} + std::chrono::milliseconds(ms);
            p.update(total * uint64_t(ms) / 1000, total, ms < 500 ? "initial sync, round 0" : "round 1");
        }
        p.finish();
        CHECK(std::count(out.begin(), out.end(), '\r') == 11); // every 100 ms, plus the final redraw
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
        CHECK(out.back() == '\n');
        // The first line with the shorter label is padded over the longer one before it.
        auto first = out.find("\rround 1: ");
        REQUIRE(first != std::string::npos);
        auto segment = out.substr(first, out.find('\r', first + 1) - first);
        CHECK_THAT(segment, Catch::EndsWith("            "));
        CHECK_THAT(out.substr(out.rfind('\r')), Catch::StartsWith("\rround 1: "));
    }
    SECTION("nothing shown, nothing finished") {
        Progress p("sync", {true, sink}, clock);
        p.finish();
        CHECK(out.empty());
    }
}

TEST_CASE("checkpoint figures are summarized in constant memory, quantiles within 3.2 % below the exact ones", "[status]") {
    std::mt19937_64 rng(20261205); // fixed: a failure replays
    std::vector<uint64_t> pauses;
    FigureSummary s;
    static_assert(sizeof(FigureSummary) < 128 * 1024); // whatever the run's length
    for (uint64_t e = 2; e < 200'002; ++e) {
        replicator::EpochFigures f;
        f.epoch = e;
        // Log-uniform from 1 us to 1 s, as pauses spread on a loaded host.
        f.pause_ns = uint64_t(std::exp(std::log(1e3) + std::ldexp(double(rng() >> 11), -53) * std::log(1e6)));
        f.ack_ns = f.pause_ns * 3;
        f.dirty_pages = 10;
        f.raw_bytes = 40960;
        f.wire_bytes = 4096;
        s.add(f);
        pauses.push_back(f.pause_ns);
    }
    std::sort(pauses.begin(), pauses.end());
    for (double q : {0.0, 0.1, 0.5, 0.9, 0.99, 0.999}) {
        const double exact = double(pauses[std::min(pauses.size() - 1, size_t(q * double(pauses.size())))]) / 1000.0;
        INFO("q " << q << ": exact " << exact << " us, summary " << s.pause.quantile_us(q) << " us");
        CHECK(s.pause.quantile_us(q) <= exact);
        CHECK(s.pause.quantile_us(q) >= exact * (1 - 1.0 / 32));
    }
    CHECK(s.pause.quantile_us(1.0) == double(pauses.back()) / 1000.0);
    CHECK(s.checkpoints == 200'000);
    CHECK(s.last_epoch == 200'001);
    const std::string text = s.lines("== protected run", 100.0);
    CHECK_THAT(text, Catch::StartsWith("== protected run: epoch 200001 | 2000.0 ckpt/s") && Catch::Contains("10 dirty pages/ckpt") &&
                         Catch::Contains("(10.0%)"));
}
