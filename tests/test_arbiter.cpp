// The fencing arbiters (failover/arbiter.hpp, failover/etcd_arbiter.hpp).
//
// Untagged cases: settings validation, the lease arithmetic with an injected clock, the
// `none` arbiter, the JSON and base64 pieces, and the etcd arbiter against a fake HTTP
// server on loopback (scripted answers, garbage, HTTP errors, bad JSON, missing fields,
// a server that never answers).
// [etcd] cases: a real etcd started on loopback for each case (random ports, a temporary
// data directory) and stopped again, also when the case fails. ctest runs them as a suite
// of their own that exits 77 (skipped) where the `etcd` binary is missing.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli/fencing.hpp"
#include "failover/arbiter.hpp"
#include "common/base64.hpp"
#include "failover/etcd_arbiter.hpp"
#include "failover/http_client.hpp"
#include "tests/support/ports.hpp"
#include "failover/lease_keeper.hpp"

using namespace understudy;
using namespace understudy::failover;
using namespace std::chrono_literals;


namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------------------
// A fake HTTP server on loopback: one thread, one connection at a time; the handler
// returns the raw bytes to answer with, or kHang (keep the connection open, say nothing)
// or kClose (close without answering).
const std::string kHang = "\x01hang";
const std::string kClose = "\x01close";

std::string http_answer(int status, const std::string& body, const std::string& reason = "X") {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n\r\n" + body;
}
std::string ok(const std::string& body) { return http_answer(200, body, "OK"); }

class FakeHttp {
public:
    using Handler = std::function<std::string(const std::string& target, const std::string& body)>;

    explicit FakeHttp(Handler h) : handler_(std::move(h)) {
        lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(lfd_ >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(lfd_, 16) == 0);
        socklen_t len = sizeof a;
        REQUIRE(::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { loop(); });
    }
    ~FakeHttp() {
        stop_ = true;
        thread_.join();
        for (int fd : held_) ::close(fd);
        ::close(lfd_);
    }
    std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
    std::vector<std::string> targets() const {
        std::lock_guard lk(mu_);
        return targets_;
    }
    std::vector<std::string> bodies() const {
        std::lock_guard lk(mu_);
        return bodies_;
    }

private:
    void loop() {
        while (!stop_) {
            pollfd p{lfd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            timeval tv{2, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            std::string req, target, body;
            if (!read_request(fd, req, target, body)) {
                ::close(fd);
                continue;
            }
            {
                std::lock_guard lk(mu_);
                targets_.push_back(target);
                bodies_.push_back(body);
            }
            const std::string answer = handler_(target, body);
            if (answer == kHang) {
                held_.push_back(fd);
                continue;
            }
            if (answer != kClose) {
                size_t off = 0;
                while (off < answer.size()) {
                    ssize_t n = ::send(fd, answer.data() + off, answer.size() - off, MSG_NOSIGNAL);
                    if (n <= 0) break;
                    off += size_t(n);
                }
            }
            ::shutdown(fd, SHUT_WR);
            ::close(fd);
        }
    }
    static bool read_request(int fd, std::string& req, std::string& target, std::string& body) {
        char buf[4096];
        size_t header_end;
        while ((header_end = req.find("\r\n\r\n")) == std::string::npos) {
            ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return false;
            req.append(buf, size_t(n));
        }
        const size_t sp1 = req.find(' '), sp2 = req.find(' ', sp1 + 1);
        target = req.substr(sp1 + 1, sp2 - sp1 - 1);
        size_t length = 0;
        std::string lower = req.substr(0, header_end);
        std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
        if (auto p = lower.find("content-length:"); p != std::string::npos)
            length = std::stoul(lower.substr(p + 15));
        body = req.substr(header_end + 4);
        while (body.size() < length) {
            ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return false;
            body.append(buf, size_t(n));
        }
        return true;
    }

    Handler handler_;
    int lfd_ = -1;
    unsigned port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::vector<int> held_;
    mutable std::mutex mu_;
    std::vector<std::string> targets_, bodies_;
};

// Canned etcd answers, shaped like etcd 3.4.23's gateway output.
const std::string kHeader = R"("header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2","raft_term":"2"})";
std::string grant_answer(const std::string& id = "7587", const std::string& ttl = "2") {
    return "{" + kHeader + R"(,"ID":")" + id + R"(","TTL":")" + ttl + "\"}";
}
std::string txn_won() { return "{" + kHeader + R"(,"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]})"; }
std::string txn_held(const std::string& holder, const std::string& lease) {
    return "{" + kHeader + R"(,"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":")" +
           base64_encode("/understudy/t/primary") +
           R"(","create_revision":"2","mod_revision":"2","version":"1","value":")" +
           base64_encode(holder) + R"(","lease":")" + lease + R"("}],"count":"1"}}]})";
}
std::string keepalive_answer(const std::string& id = "7587", const std::string& ttl = "2") {
    return R"({"result":{)" + kHeader + R"(,"ID":")" + id + "\"" + (ttl.empty() ? "" : R"(,"TTL":")" + ttl + "\"") + "}}";
}
std::string revoke_answer() { return "{" + kHeader + "}"; }

// A healthy fake etcd; `tweak` may replace the answer for one target.
FakeHttp::Handler fake_etcd(std::function<std::string(const std::string&)> tweak = {}) {
    return [tweak](const std::string& target, const std::string&) -> std::string {
        if (tweak) {
            std::string t = tweak(target);
            if (!t.empty()) return t;
        }
        if (target == "/v3/lease/grant") return ok(grant_answer());
        if (target == "/v3/kv/txn") return ok(txn_won());
        if (target == "/v3/lease/keepalive") return ok(keepalive_answer());
        if (target == "/v3/lease/revoke") return ok(revoke_answer());
        return http_answer(404, "{}");
    };
}

ArbiterSettings defaults() { return ArbiterSettings{}; }

std::unique_ptr<EtcdArbiter> make_etcd(const std::string& endpoint, ArbiterSettings s = defaults(),
                                       std::function<Clock::time_point()> clock = {}) {
    EtcdOptions o{.endpoint = endpoint, .key = "/understudy/t/primary", .settings = s};
    if (clock) o.clock = std::move(clock);
    auto a = EtcdArbiter::create(std::move(o));
    REQUIRE(a);
    return std::move(*a);
}

// The error of acquire() against a fake server answering `answer` to the lease grant.
Error grant_error(const std::string& answer) {
    FakeHttp srv(fake_etcd([&](const std::string& t) { return t == "/v3/lease/grant" ? answer : ""; }));
    auto a = make_etcd(srv.endpoint());
    auto r = a->acquire("A");
    REQUIRE_FALSE(r);
    CHECK_FALSE(a->valid_at(Clock::now()));
    INFO(r.error().describe());
    return r.error();
}

} // namespace

// ---------------------------------------------------------------------------------------
// Settings and arithmetic

TEST_CASE("arbiter settings: the defaults are valid, unsafe settings are refused with reasons") {
    REQUIRE(validate(defaults()));
    auto refused = [](ArbiterSettings s, const std::string& word) {
        auto r = validate(s);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::invalid_input);
        INFO(r.error().message);
        CHECK(contains(r.error().message, word));
    };
    ArbiterSettings s;
    s.margin = 2000ms;
    refused(s, "margin 2000 ms must be shorter than the TTL");
    s = {};
    s.margin = 3000ms;
    refused(s, "margin");
    s = {};
    s.renew_interval = 1500ms;
    refused(s, "must be shorter than TTL - margin (1500 ms)");
    s = {};
    s.renew_interval = 1000ms;
    s.request_timeout = 600ms;
    refused(s, "one slow renewal would stop output");
    s = {};
    s.ttl = 2500ms;
    refused(s, "whole number of seconds");
    s = {};
    s.ttl = 0ms;
    refused(s, "at least 1 s");
    s = {};
    s.margin = 10ms;
    refused(s, "below 50 ms");
    s = {};
    s.renew_interval = 0ms;
    refused(s, "renew interval 0 ms is below 10 ms");
    s = {};
    s.request_timeout = 0ms;
    refused(s, "request timeout 0 ms");
    s = {.ttl = 5000ms, .renew_interval = 1000ms, .margin = 1000ms, .request_timeout = 1000ms};
    CHECK(validate(s));
}

TEST_CASE("lease arithmetic: valid until request-sent + TTL - margin") {
    const Clock::time_point sent(10s);
    CHECK(lease_valid_until(sent, 2000ms, 500ms) == Clock::time_point(11500ms));
    CHECK(lease_valid_until(sent, 5000ms, 1000ms) == Clock::time_point(14s));
}

TEST_CASE("none arbiter: always grants, and says it does not fence") {
    NoneArbiter a;
    CHECK_FALSE(a.valid_at(Clock::now()));
    auto r0 = a.renew();
    REQUIRE_FALSE(r0);
    CHECK(r0.error().code == Errc::state);
    auto l = a.acquire("host-a");
    REQUIRE(l);
    CHECK(l->valid_until == Clock::time_point::max());
    CHECK(a.valid_at(Clock::now() + 1000h));
    CHECK(a.renew());
    CHECK(contains(a.describe(), "NO fencing"));
    CHECK(contains(a.describe(), "host-a"));
    NoneArbiter b; // a second "primary": none lets it, which is the documented risk
    CHECK(b.acquire("host-b"));
    a.release();
    CHECK_FALSE(a.valid_at(Clock::now()));
    CHECK_FALSE(a.acquire(""));
}

TEST_CASE("make_arbiter: kinds, endpoints and keys are checked before any request") {
    CHECK(make_arbiter({.kind = "none"}));
    auto bad_kind = make_arbiter({.kind = "zookeeper"});
    REQUIRE_FALSE(bad_kind);
    CHECK(contains(bad_kind.error().message, "unknown arbiter kind 'zookeeper'"));
    auto no_ep = make_arbiter({.kind = "etcd", .key = default_key("kv")});
    REQUIRE_FALSE(no_ep);
    CHECK(contains(no_ep.error().message, "needs an endpoint"));
    auto host = make_arbiter({.kind = "etcd", .endpoint = "localhost:2379", .key = default_key("kv")});
    REQUIRE_FALSE(host);
    CHECK(contains(host.error().message, "not an IP address"));
    auto port = make_arbiter({.kind = "etcd", .endpoint = "127.0.0.1:99999", .key = default_key("kv")});
    REQUIRE_FALSE(port);
    CHECK(contains(port.error().message, "bad port"));
    auto nokey = make_arbiter({.kind = "etcd", .endpoint = "127.0.0.1:2379"});
    REQUIRE_FALSE(nokey);
    CHECK(contains(nokey.error().message, "arbiter key is empty"));
    CHECK(make_arbiter({.kind = "etcd", .endpoint = "[::1]:2379", .key = default_key("kv")}));
    auto a = make_arbiter({.kind = "etcd", .endpoint = "127.0.0.1:2379", .key = default_key("kv")});
    REQUIRE(a);
    CHECK(contains((*a)->describe(), "/understudy/kv/primary: not held"));
    auto bad_settings = make_arbiter({.kind = "none", .settings = {.margin = 5s}});
    CHECK_FALSE(bad_settings);
}

// ---------------------------------------------------------------------------------------
// JSON, base64, integers

TEST_CASE("JSON reader: etcd's answers parse, malformed documents are refused") {
    auto doc = parse_json(R"( {"a":[1,-2.5e3,true,false,null],"s":"x\"\\\/\n\u00e9\ud83d\ude00","o":{}} )");
    REQUIRE(doc);
    REQUIRE(doc->find("a"));
    CHECK(doc->find("a")->items.size() == 5);
    CHECK(doc->find("a")->items[1].text == "-2.5e3");
    CHECK(doc->find("s")->text == "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(doc->find("missing") == nullptr);
    for (const char* bad : {"", "{", "{\"a\":1,}", "[1,]", "{\"a\":1}x", "{\"a\":1,\"a\":2}", "\"\\x\"", "\"a\nb\"",
                            "01", "-", "1.", "1e", "\"\\ud800\"", "\"\\udc00\"", "{a:1}", "tru", "\"abc",
                            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"}) {
        auto r = parse_json(bad);
        INFO(bad);
        CHECK_FALSE(r);
        if (!r) CHECK(contains(r.error().message, "malformed JSON"));
    }
    CHECK(json_quote("a\"b\\c\x01") == "\"a\\\"b\\\\c\\u0001\"");
}

TEST_CASE("base64 and int64 fields") {
    for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\0\xff\x80", 3)}) {
        auto d = base64_decode(base64_encode(s));
        REQUIRE(d);
        CHECK(*d == s);
    }
    CHECK(base64_encode("/understudy/vm/primary") == "L3VuZGVyc3R1ZHkvdm0vcHJpbWFyeQ==");
    for (const char* bad : {"A", "AB=C", "A===", "Zm9v!", "Zg==Zg==", "Zh=="})
        CHECK_FALSE(base64_decode(bad));
    auto num = [](const char* text) { return *parse_json(text); };
    CHECK(*json_int64(num("\"4111120161753633542\""), "ID") == 4111120161753633542);
    CHECK(*json_int64(num("7"), "TTL") == 7);
    CHECK(*json_int64(num("\"-1\""), "TTL") == -1);
    for (const char* bad : {"\"\"", "\"12a\"", "\"15118495548433857066\"", "1.5", "1e3", "\"007\"", "true", "{}", "\" 1\""})
        CHECK_FALSE(json_int64(num(bad), "x"));
}

// ---------------------------------------------------------------------------------------
// The etcd arbiter against a fake server

TEST_CASE("etcd arbiter (fake server): validity counts from the time each request was sent") {
    // The fake clock moves 300 ms while the server "thinks": an answer arrives 300 ms
    // after its request was sent, and only the send time may count.
    std::atomic<std::int64_t> now_ms{100'000};
    auto clock = [&] { return Clock::time_point(std::chrono::milliseconds(now_ms.load())); };
    FakeHttp srv(fake_etcd([&](const std::string&) {
        now_ms += 300;
        return std::string();
    }));
    auto a = make_etcd(srv.endpoint(), defaults(), clock);
    CHECK_FALSE(a->valid_at(clock()));

    auto l = a->acquire("A");
    REQUIRE(l);
    // grant sent at 100.000 s; the txn went out at 100.300 s and came back at 100.600 s.
    CHECK(l->valid_until == Clock::time_point(100'000ms + 2000ms - 500ms));
    CHECK(l->id == 7587);
    CHECK(l->ttl == 2s);
    CHECK(l->round_trip == 600ms);
    CHECK(now_ms == 100'600);
    CHECK(a->valid_at(Clock::time_point(101'499ms)));
    CHECK_FALSE(a->valid_at(Clock::time_point(101'500ms)));
    CHECK(srv.targets() == std::vector<std::string>{"/v3/lease/grant", "/v3/kv/txn"});
    // The transaction: create_revision == 0 on the base64 key, put with our lease.
    const std::string txn = srv.bodies()[1];
    CHECK(contains(txn, R"("compare":[{"key":"L3VuZGVyc3R1ZHkvdC9wcmltYXJ5","target":"CREATE","result":"EQUAL","create_revision":"0"}])"));
    CHECK(contains(txn, R"("request_put":{"key":"L3VuZGVyc3R1ZHkvdC9wcmltYXJ5","value":"QQ==","lease":"7587"})"));

    auto r = a->renew(); // sent at 100.600 s
    REQUIRE(r);
    CHECK(r->valid_until == Clock::time_point(100'600ms + 1500ms));
    CHECK(a->valid_at(Clock::time_point(102'099ms)));
    CHECK_FALSE(a->valid_at(Clock::time_point(102'100ms)));
    CHECK(srv.bodies().back() == R"({"ID":"7587"})");
    CHECK(contains(a->describe(), "held by 'A', lease 1da3"));

    // acquire again as the same holder: a renewal.
    CHECK(a->acquire("A"));
    CHECK(srv.targets().back() == "/v3/lease/keepalive");
    auto other = a->acquire("B");
    REQUIRE_FALSE(other);
    CHECK(other.error().code == Errc::state);

    a->release();
    CHECK_FALSE(a->valid_at(Clock::time_point(100'000ms)));
    CHECK(srv.targets().back() == "/v3/lease/revoke");
    CHECK(contains(a->describe(), "not held"));
}

TEST_CASE("etcd arbiter (fake server): a server-granted TTL longer than asked is what counts") {
    std::atomic<std::int64_t> now_ms{0};
    auto clock = [&] { return Clock::time_point(std::chrono::milliseconds(now_ms.load())); };
    FakeHttp srv(fake_etcd([](const std::string& t) { return t == "/v3/lease/grant" ? ok(grant_answer("7587", "5")) : ""; }));
    auto a = make_etcd(srv.endpoint(), defaults(), clock);
    auto l = a->acquire("A");
    REQUIRE(l);
    CHECK(l->ttl == 5s);
    CHECK(l->valid_until == Clock::time_point(4500ms));
    CHECK(contains(srv.bodies()[0], R"("TTL":"2")"));
}

TEST_CASE("etcd arbiter (fake server): a lost lease ends validity at once") {
    std::atomic<bool> lost{false};
    FakeHttp srv(fake_etcd([&](const std::string& t) {
        return t == "/v3/lease/keepalive" && lost ? ok(keepalive_answer("7587", "")) : "";
    }));
    auto a = make_etcd(srv.endpoint());
    REQUIRE(a->acquire("A"));
    CHECK(a->valid_at(Clock::now()));
    lost = true;
    auto r = a->renew();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::state);
    CHECK(contains(r.error().message, "lease 1da3 is lost"));
    CHECK_FALSE(a->valid_at(Clock::now()));
    CHECK_FALSE(a->valid_at(Clock::now() - 10s));
    CHECK(contains(a->describe(), "not held"));
    auto again = a->renew();
    REQUIRE_FALSE(again);
    CHECK(contains(again.error().message, "acquire first"));

    lost = false;
    FakeHttp ttl0(fake_etcd([](const std::string& t) { return t == "/v3/lease/keepalive" ? ok(keepalive_answer("7587", "0")) : ""; }));
    auto b = make_etcd(ttl0.endpoint());
    REQUIRE(b->acquire("B"));
    auto rb = b->renew();
    REQUIRE_FALSE(rb);
    CHECK(rb.error().code == Errc::state);
    CHECK_FALSE(b->valid_at(Clock::now()));
}

TEST_CASE("etcd arbiter (fake server): a role held by another holder is refused, ours is adopted") {
    {
        FakeHttp srv(fake_etcd([](const std::string& t) { return t == "/v3/kv/txn" ? ok(txn_held("host-b", "999")) : ""; }));
        auto a = make_etcd(srv.endpoint());
        auto r = a->acquire("host-a");
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::state);
        CHECK(contains(r.error().message, "held by 'host-b' (lease 3e7)"));
        CHECK_FALSE(a->valid_at(Clock::now()));
        // The lease granted for the attempt is given back.
        CHECK(srv.targets().back() == "/v3/lease/revoke");
        CHECK(srv.bodies().back() == R"({"ID":"7587"})");
    }
    {
        FakeHttp srv(fake_etcd([](const std::string& t) { return t == "/v3/kv/txn" ? ok(txn_held("host-a", "999")) : t == "/v3/lease/keepalive" ? ok(keepalive_answer("999", "2")) : ""; }));
        auto a = make_etcd(srv.endpoint());
        auto r = a->acquire("host-a");
        REQUIRE(r);
        CHECK(r->id == 999);
        CHECK(a->valid_at(Clock::now()));
        CHECK(srv.targets() == std::vector<std::string>{"/v3/lease/grant", "/v3/kv/txn", "/v3/lease/keepalive", "/v3/lease/revoke"});
        CHECK(srv.bodies()[3] == R"({"ID":"7587"})");
    }
    {
        FakeHttp srv(fake_etcd([](const std::string& t) { return t == "/v3/kv/txn" ? ok(txn_held("host-b", "0")) : ""; }));
        auto r = make_etcd(srv.endpoint())->acquire("host-a");
        REQUIRE_FALSE(r);
        CHECK(contains(r.error().message, "with no lease"));
    }
}

TEST_CASE("etcd arbiter (fake server): malformed and unexpected answers give clear errors") {
    auto check = [](const std::string& answer, Errc code, const std::string& words) {
        Error e = grant_error(answer);
        INFO(e.describe() << "\nexpected: " << words);
        CHECK(e.code == code);
        CHECK(contains(e.message, words));
        CHECK(contains(e.message, "acquiring /understudy/t/primary in etcd 127.0.0.1:"));
    };
    check("hello, this is not HTTP\r\n\r\n", Errc::invalid_input, "malformed or truncated HTTP answer");
    check("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"trunc", Errc::invalid_input, "malformed or truncated HTTP answer");
    check(kClose, Errc::invalid_input, "malformed or truncated HTTP answer");
    check(http_answer(500, R"({"error":"etcdserver: too many requests","message":"etcdserver: too many requests","code":8})"),
          Errc::invalid_input, "HTTP status 500: etcdserver: too many requests");
    check(http_answer(503, "<html>gateway down</html>"), Errc::invalid_input, "HTTP status 503: <html>gateway down</html>");
    check(ok("{\"ID\":\"1\",\"TTL\":"), Errc::invalid_input, "malformed JSON");
    check(ok("[1,2]"), Errc::invalid_input, "not a JSON object");
    check(ok("{" + kHeader + R"(,"TTL":"2"})"), Errc::invalid_input, "field \"ID\" is missing");
    check(ok("{" + kHeader + R"(,"ID":"7587"})"), Errc::invalid_input, "field \"TTL\" is missing");
    check(ok("{" + kHeader + R"(,"ID":{"x":1},"TTL":"2"})"), Errc::invalid_input, "ID is not an integer");
    check(ok("{" + kHeader + R"(,"ID":"12abc","TTL":"2"})"), Errc::invalid_input, "not an integer in int64 range");
    check(ok("{" + kHeader + R"(,"ID":"-5","TTL":"2"})"), Errc::invalid_input, "is not positive");
    check(ok("{" + kHeader + R"(,"ID":"7587","TTL":"0"})"), Errc::invalid_input, "granted TTL 0 is not positive");
    check(ok(R"({"ID":"7587","TTL":"2"})"), Errc::invalid_input, "field \"header\" is missing");
    check(ok(R"({"header":{"cluster_id":"x"},"ID":"7587","TTL":"2"})"), Errc::invalid_input, "cluster_id is not a decimal");
    check(ok("{" + kHeader + R"(,"ID":"7587","TTL":"2","error":"etcdserver: lease TTL too large"})"), Errc::invalid_input,
          "etcd reports an error: etcdserver: lease TTL too large");
    check(ok(std::string(70 * 1024, ' ') + "{}"), Errc::invalid_input, "body limit");

    // Later answers: a txn without responses, a keepalive for another lease, an answer
    // from another cluster, a streaming error.
    auto acquire_with = [](const std::string& target, const std::string& answer) {
        FakeHttp srv(fake_etcd([&](const std::string& t) { return t == target ? answer : ""; }));
        auto a = make_etcd(srv.endpoint());
        auto r = a->acquire("A");
        if (r) r = a->renew();
        CHECK_FALSE(a->valid_at(Clock::now() + 1600ms));
        return r;
    };
    auto r1 = acquire_with("/v3/kv/txn", ok("{" + kHeader + R"(,"succeeded":true})"));
    REQUIRE_FALSE(r1);
    CHECK(contains(r1.error().message, "field \"responses\" is missing"));
    auto r2 = acquire_with("/v3/kv/txn", ok("{" + kHeader + R"(,"succeeded":"yes","responses":[]})"));
    REQUIRE_FALSE(r2);
    CHECK(contains(r2.error().message, "\"succeeded\" is not a boolean"));
    auto r3 = acquire_with("/v3/kv/txn", ok("{" + kHeader + R"(,"responses":[{"response_range":{}}]})"));
    REQUIRE_FALSE(r3);
    CHECK(contains(r3.error().message, "holds no single key-value"));
    auto r4 = acquire_with("/v3/lease/keepalive", ok(keepalive_answer("1234", "2")));
    REQUIRE_FALSE(r4);
    CHECK(contains(r4.error().message, "lease 4d2 instead of 1da3"));
    CHECK(r4.error().code == Errc::invalid_input);
    auto r5 = acquire_with("/v3/kv/txn", ok(R"({"header":{"cluster_id":"42"},"succeeded":true,"responses":[{"response_put":{}}]})"));
    REQUIRE_FALSE(r5);
    CHECK(contains(r5.error().message, "answer from cluster 42, but our leases live in cluster 15118495548433857066"));
    auto r6 = acquire_with("/v3/lease/keepalive", ok(R"({"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}})"));
    REQUIRE_FALSE(r6);
    CHECK(contains(r6.error().message, "etcd reports an error: etcdserver: no leader"));
}

TEST_CASE("etcd arbiter (fake server): a silent server times out within the request timeout") {
    std::atomic<bool> hang{false};
    FakeHttp srv(fake_etcd([&](const std::string&) { return hang ? kHang : std::string(); }));
    ArbiterSettings s = defaults();
    s.request_timeout = 300ms;
    auto a = make_etcd(srv.endpoint(), s);
    auto l = a->acquire("A");
    REQUIRE(l);
    hang = true;
    const auto t0 = Clock::now();
    auto r = a->renew();
    const auto took = Clock::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::timeout);
    CHECK(contains(r.error().message, "no answer within 300 ms (answer)"));
    CHECK(took >= 290ms);
    CHECK(took < 450ms);
    // Not known lost: validity stays until the last confirmed lease's safe end.
    CHECK(a->valid_at(l->valid_until - 1ms));
    CHECK_FALSE(a->valid_at(l->valid_until));
    CHECK(contains(a->describe(), "no answer within 300 ms"));

    // Nothing listening: refused at once.
    auto b = make_etcd("127.0.0.1:" + std::to_string(test::free_loopback_port()));
    auto rb = b->acquire("B");
    REQUIRE_FALSE(rb);
    CHECK(rb.error().code == Errc::system);
    CHECK(rb.error().sys_errno == ECONNREFUSED);
    CHECK(contains(rb.error().message, "connect failed"));
}

// ---------------------------------------------------------------------------------------
// A real etcd

namespace {

std::string find_etcd() {
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "/usr/bin:/bin";
    size_t start = 0;
    while (start <= p.size()) {
        size_t end = p.find(':', start);
        if (end == std::string::npos) end = p.size();
        std::string candidate = p.substr(start, end - start) + "/etcd";
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        start = end + 1;
    }
    return {};
}

// etcd on loopback for one test case: started on random free ports with a temporary data
// directory, stopped (and resumed first, if it was stopped) and removed by the destructor.
class EtcdServer {
public:
    EtcdServer() {
        const std::string bin = find_etcd();
        if (bin.empty()) {
            std::printf("SKIPPED: the etcd binary is not on PATH (Debian package etcd-server)\n");
            std::fflush(stdout);
            std::exit(77);
        }
        char tmpl[] = "/tmp/us-arbiter-etcd-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir_ = tmpl;
        for (int attempt = 0; attempt < 3 && !healthy_; ++attempt) start(bin);
        REQUIRE(healthy_);
    }
    ~EtcdServer() {
        stop();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    const std::string& endpoint() const { return endpoint_; }
    // kill() returns before every thread of the Go process has stopped: a thread still
    // running could answer one more request. Wait until each thread shows state 'T'.
    void signal(int sig) {
        ::kill(pid_, sig);
        if (sig != SIGSTOP) return;
        for (int i = 0; i < 1000 && !all_threads_stopped(); ++i) std::this_thread::sleep_for(1ms);
        REQUIRE(all_threads_stopped());
    }
    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGCONT);
        ::kill(pid_, SIGTERM);
        for (int i = 0; i < 100; ++i) {
            if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
                pid_ = -1;
                return;
            }
            std::this_thread::sleep_for(50ms);
        }
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }

private:
    bool all_threads_stopped() const {
        const std::string tasks = "/proc/" + std::to_string(pid_) + "/task";
        std::error_code ec;
        for (const auto& t : std::filesystem::directory_iterator(tasks, ec)) {
            std::ifstream in(t.path() / "stat");
            std::string line;
            std::getline(in, line);
            const auto paren = line.rfind(')');  // the command name may hold spaces
            if (paren == std::string::npos || paren + 2 >= line.size()) return false;
            if (line[paren + 2] != 'T' && line[paren + 2] != 't') return false;
        }
        return !ec;
    }
    void start(const std::string& bin) {
        const unsigned cport = test::free_loopback_port(), pport = test::free_loopback_port();
        endpoint_ = "127.0.0.1:" + std::to_string(cport);
        const std::string curl = "http://" + endpoint_, purl = "http://127.0.0.1:" + std::to_string(pport);
        const std::string data = dir_ + "/data", log = dir_ + "/etcd.log";
        std::vector<std::string> args = {bin, "--name", "t", "--data-dir", data, "--listen-client-urls", curl,
                                         "--advertise-client-urls", curl, "--listen-peer-urls", purl,
                                         "--initial-advertise-peer-urls", purl, "--initial-cluster", "t=" + purl};
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                ::dup2(fd, 1);
                ::dup2(fd, 2);
            }
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(bin.c_str(), argv.data());
            ::_exit(127);
        }
        const auto deadline = Clock::now() + 15s;
        while (Clock::now() < deadline) {
            if (::waitpid(pid_, nullptr, WNOHANG) == pid_) { // died: ports taken? try again
                pid_ = -1;
                std::error_code ec;
                std::filesystem::remove_all(data, ec);
                return;
            }
            auto r = http_request(endpoint_, "GET", "/health", "", 500ms);
            if (r && r->status == 200 && contains(r->body, "\"health\":\"true\"")) {
                healthy_ = true;
                return;
            }
            std::this_thread::sleep_for(50ms);
        }
        stop();
    }

    std::string dir_, endpoint_;
    pid_t pid_ = -1;
    bool healthy_ = false;
};

double ms_of(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Polls acquire() for `who` every 20 ms until it succeeds or `limit` passes; returns the
// time of the first success (or nullopt).
std::optional<Clock::time_point> acquire_when_free(EtcdArbiter& who, const std::string& id, Clock::duration limit) {
    const auto end = Clock::now() + limit;
    while (Clock::now() < end) {
        auto r = who.acquire(id);
        if (r) return Clock::now();
        // A busy or just-resumed etcd may time out; anything else is a failure.
        if (r.error().code != Errc::state && r.error().code != Errc::timeout)
            FAIL("unexpected error: " << r.error().describe());
        std::this_thread::sleep_for(20ms);
    }
    return std::nullopt;
}

} // namespace

TEST_CASE("etcd: one holder at a time; release frees the role at once", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    auto b = make_etcd(etcd.endpoint());
    auto la = a->acquire("host-a");
    REQUIRE(la);
    CHECK(a->valid_at(Clock::now()));
    CHECK(la->ttl == 2s);

    // While A renews, B never gets the role (3 s: longer than a TTL).
    const auto end = Clock::now() + 3s;
    auto next_renew = Clock::now();
    int refusals = 0;
    while (Clock::now() < end) {
        if (Clock::now() >= next_renew) {
            auto r = a->renew();
            REQUIRE(r);
            next_renew += a->settings().renew_interval;
        }
        CHECK(a->valid_at(Clock::now()));
        auto rb = b->acquire("host-b");
        REQUIRE_FALSE(rb);
        CHECK(rb.error().code == Errc::state);
        CHECK(contains(rb.error().message, "held by 'host-a'"));
        CHECK_FALSE(b->valid_at(Clock::now()));
        ++refusals;
        std::this_thread::sleep_for(100ms);
    }
    CHECK(refusals >= 20);

    // A restarted A (same holder id, new object) adopts its own lease.
    auto a2 = make_etcd(etcd.endpoint());
    auto la2 = a2->acquire("host-a");
    REQUIRE(la2);
    CHECK(la2->id == la->id);

    const auto t_release = Clock::now();
    a->release();
    CHECK_FALSE(a->valid_at(Clock::now()));
    auto got = acquire_when_free(*b, "host-b", 1s);
    REQUIRE(got);
    std::printf("etcd: B acquired %.1f ms after A released\n", ms_of(*got - t_release));
    CHECK(b->valid_at(Clock::now()));
    // A's renew after losing the role: lost, and never valid again.
    auto ra = a2->renew();
    REQUIRE_FALSE(ra);
    CHECK(ra.error().code == Errc::state);
    CHECK_FALSE(a2->valid_at(Clock::now()));
    b->release();
}

TEST_CASE("etcd: only the holder can retire a session, and a later holder sees it retired", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    auto b = make_etcd(etcd.endpoint());
    REQUIRE(a->acquire("host-a"));
    auto nobody = b->retire_session(7); // b holds nothing
    REQUIRE_FALSE(nobody);
    CHECK(nobody.error().code == Errc::state);
    REQUIRE(*b->session_retired(7) == false);
    REQUIRE(a->retire_session(7));
    CHECK(*b->session_retired(7));
    CHECK_FALSE(*b->session_retired(8));
    a->release();
    REQUIRE(acquire_when_free(*b, "host-b", 1s));
    CHECK(*b->session_retired(7)); // survives the handover: the retired backup never promotes
    b->release();

    // A holder that stopped renewing, still believing it holds the role, is refused by
    // etcd itself once another holder has the key.
    auto c = make_etcd(etcd.endpoint());
    auto d = make_etcd(etcd.endpoint());
    REQUIRE(c->acquire("host-c"));
    REQUIRE(acquire_when_free(*d, "host-d", 5s)); // c's lease expired
    auto stale = c->retire_session(9);
    REQUIRE_FALSE(stale);
    CHECK(stale.error().code == Errc::state);
    CHECK(contains(stale.error().message, "no longer attached"));
    CHECK_FALSE(*d->session_retired(9));
    d->release();
}

TEST_CASE("etcd: a holder that stops renewing loses the role after the TTL, validity ends >= margin earlier", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    auto b = make_etcd(etcd.endpoint());
    REQUIRE(a->acquire("host-a"));
    auto la = a->renew();
    REQUIRE(la);
    // A stops renewing now. B polls.
    auto got = acquire_when_free(*b, "host-b", 5s);
    REQUIRE(got);
    const auto gap = *got - la->valid_until;
    std::printf("etcd: A's validity ended %.1f ms before B won the key (margin %lld ms)\n", ms_of(gap),
                static_cast<long long>(a->settings().margin.count()));
    // From outside: B could not win the key before A's validity plus the margin.
    CHECK(gap >= a->settings().margin);
    CHECK_FALSE(a->valid_at(*got));
    auto ra = a->renew();
    REQUIRE_FALSE(ra);
    CHECK(ra.error().code == Errc::state);
    CHECK(contains(ra.error().message, "is lost"));
    CHECK_FALSE(a->valid_at(Clock::now()));
    CHECK(contains(a->describe(), "not held"));
    auto rb = b->renew();
    CHECK(rb);
}

TEST_CASE("etcd: a hung etcd (SIGSTOP) fails renewals within the timeout; validity ends before expiry", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    auto b = make_etcd(etcd.endpoint());
    REQUIRE(a->acquire("host-a"));
    auto la = a->renew();
    REQUIRE(la);
    const auto t_stop = Clock::now();
    etcd.signal(SIGSTOP);
    const auto timeout = a->settings().request_timeout;
    int failures = 0;
    Clock::duration worst{};
    while (a->valid_at(Clock::now())) {
        const auto t0 = Clock::now();
        auto r = a->renew();
        const auto took = Clock::now() - t0;
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::timeout);
        worst = std::max(worst, took);
        ++failures;
        std::this_thread::sleep_for(50ms);
    }
    const auto stopped_valid = Clock::now();
    std::printf("etcd stopped: %d renewals failed, slowest %.1f ms (timeout %lld ms); validity ran out %.1f ms "
                "after SIGSTOP (seen by the renew loop after %.1f ms)\n",
                failures, ms_of(worst), static_cast<long long>(timeout.count()), ms_of(la->valid_until - t_stop),
                ms_of(stopped_valid - t_stop));
    CHECK(failures >= 2);
    CHECK(worst < timeout + 150ms);
    CHECK(stopped_valid >= la->valid_until);
    CHECK(stopped_valid < la->valid_until + 200ms);
    // Resume etcd: the lease runs out on its own clock; B cannot win before A's validity + margin.
    etcd.signal(SIGCONT);
    auto got = acquire_when_free(*b, "host-b", 6s);
    REQUIRE(got);
    std::printf("etcd resumed: B won the key %.1f ms after A's validity ended\n", ms_of(*got - la->valid_until));
    CHECK(*got - la->valid_until >= a->settings().margin);
    CHECK_FALSE(a->valid_at(Clock::now()));
}

TEST_CASE("etcd: a killed etcd fails renewals at once; validity still ends on time", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    REQUIRE(a->acquire("host-a"));
    auto la = a->renew();
    REQUIRE(la);
    etcd.stop();
    const auto t0 = Clock::now();
    auto r = a->renew();
    const auto took = Clock::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::system);
    CHECK(took < a->settings().request_timeout);
    CHECK(a->valid_at(la->valid_until - 1ms));
    CHECK_FALSE(a->valid_at(la->valid_until));
    std::printf("etcd killed: renew failed in %.2f ms: %s\n", ms_of(took), r.error().describe().c_str());
}

TEST_CASE("etcd: request latencies", "[etcd]") {
    EtcdServer etcd;
    auto a = make_etcd(etcd.endpoint());
    std::vector<double> acq, ren, rel;
    for (int i = 0; i < 10; ++i) {
        auto t0 = Clock::now();
        auto l = a->acquire("host-a");
        REQUIRE(l);
        acq.push_back(ms_of(Clock::now() - t0));
        for (int j = 0; j < 20; ++j) {
            auto r = a->renew();
            REQUIRE(r);
            ren.push_back(r->round_trip.count() / 1000.0);
        }
        t0 = Clock::now();
        a->release();
        rel.push_back(ms_of(Clock::now() - t0));
    }
    auto report = [](const char* what, std::vector<double> v) {
        std::sort(v.begin(), v.end());
        std::printf("etcd latency %-32s n=%3zu p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", what, v.size(), v[v.size() / 2],
                    v[std::min(v.size() - 1, v.size() * 99 / 100)], v.back());
    };
    report("acquire (grant + txn)", acq);
    report("renew (keepalive)", ren);
    report("release (revoke)", rel);
    std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------
// The lease keeper over a scripted arbiter

namespace {

// Answers acquire() and renew() as the test sets: `owner` empty means the role is free.
class ScriptedArbiter final : public Arbiter {
public:
    explicit ScriptedArbiter(ArbiterSettings s) : settings_(s) {}
    Result<Lease> acquire(std::string holder) override {
        std::lock_guard lock(mu);
        ++acquires;
        if (unreachable) return make_error(Errc::timeout, "scripted: no answer");
        if (!owner.empty() && owner != holder) return make_error(Errc::state, "held by '" + owner + "'");
        owner = holder;
        valid = true;
        return Lease{.holder = holder};
    }
    Result<Lease> renew() override {
        std::lock_guard lock(mu);
        ++renewals;
        if (unreachable) {
            valid = false; // as if the safe part of the lease had run out meanwhile
            return make_error(Errc::timeout, "scripted: no answer");
        }
        if (owner.empty() || !valid) {
            valid = false;
            return make_error(Errc::state, "lease lost");
        }
        return Lease{.holder = owner};
    }
    void release() override {
        std::lock_guard lock(mu);
        released = true;
        valid = false;
    }
    bool valid_at(Clock::time_point) const override {
        std::lock_guard lock(mu);
        return valid;
    }
    Result<void> retire_session(uint64_t session) override {
        std::lock_guard lock(mu);
        if (!valid) return make_error(Errc::state, "scripted: not held");
        retired = session;
        return {};
    }
    Result<bool> session_retired(uint64_t session) override {
        std::lock_guard lock(mu);
        return retired == session;
    }
    std::string describe() const override { return "scripted"; }
    const ArbiterSettings& settings() const override { return settings_; }

    // Another host takes over after our lease expired.
    void expire_and_hand_to(const std::string& other) {
        std::lock_guard lock(mu);
        valid = false;
        owner = other;
    }

    mutable std::mutex mu;
    std::string owner;
    bool valid = false, unreachable = false, released = false;
    int acquires = 0, renewals = 0;
    uint64_t retired = 0;

private:
    ArbiterSettings settings_;
};

ArbiterSettings quick() { return {.ttl = 1000ms, .renew_interval = 20ms, .margin = 100ms, .request_timeout = 100ms}; }

template <class F>
bool eventually(F f, Clock::duration limit = 3s) {
    for (auto end = Clock::now() + limit; Clock::now() < end; std::this_thread::sleep_for(5ms))
        if (f()) return true;
    return f();
}

} // namespace

TEST_CASE("lease keeper: renews, reports renewals, and gives the role up when stopped", "[fencing]") {
    auto owned = std::make_unique<ScriptedArbiter>(quick());
    auto* a = owned.get();
    std::atomic<int> renewed{0};
    auto k = LeaseKeeper::acquire(std::move(owned), "h1", {.on_renewed = [&] { ++renewed; }, .on_lost = {}});
    REQUIRE(k);
    CHECK((*k)->valid_at(Clock::now()));
    CHECK(eventually([&] { return renewed >= 3; }));
    (*k)->stop();
    CHECK(a->released);
    CHECK_FALSE((*k)->valid_at(Clock::now()));
}

TEST_CASE("lease keeper: a role held by another host is waited for, then refused with the holder's name", "[fencing]") {
    auto owned = std::make_unique<ScriptedArbiter>(quick());
    owned->owner = "other";
    auto* a = owned.get();
    auto t0 = Clock::now();
    auto k = LeaseKeeper::acquire(std::move(owned), "h1", {}, 300ms);
    REQUIRE_FALSE(k);
    CHECK(k.error().code == Errc::state);
    CHECK(contains(k.error().describe(), "other"));
    CHECK(Clock::now() - t0 >= 200ms); // it did wait
    (void)a;

    // ... and taken once the previous holder's lease expires within the patience.
    auto owned2 = std::make_unique<ScriptedArbiter>(quick());
    owned2->owner = "old";
    auto* a2 = owned2.get();
    std::thread expiry([a2] {
        std::this_thread::sleep_for(150ms);
        a2->expire_and_hand_to("");
    });
    auto k2 = LeaseKeeper::acquire(std::move(owned2), "h2", {}, 2s);
    expiry.join();
    REQUIRE(k2);
    CHECK(a2->owner == "h2");
}

TEST_CASE("lease keeper: a lost lease nobody took is taken again; one another host took ends in on_lost", "[fencing]") {
    auto owned = std::make_unique<ScriptedArbiter>(quick());
    auto* a = owned.get();
    std::atomic<int> lost{0}, renewed{0};
    std::string why;
    std::mutex why_mu;
    auto k = LeaseKeeper::acquire(std::move(owned), "h1",
                                  {.on_renewed = [&] { ++renewed; },
                                   .on_lost = [&](const Error& e) {
                                       std::lock_guard lock(why_mu);
                                       why = e.describe();
                                       ++lost;
                                   }});
    REQUIRE(k);
    a->expire_and_hand_to(""); // lapsed, role free: recovered
    CHECK(eventually([&] { return (*k)->valid_at(Clock::now()) && renewed > 0; }));
    CHECK(lost == 0);
    {
        std::lock_guard lock(a->mu);
        a->unreachable = true; // cut off from the arbiter: validity lapses, nothing is lost yet
    }
    CHECK(eventually([&] { return !(*k)->valid_at(Clock::now()); }));
    CHECK(lost == 0);
    a->expire_and_hand_to("h2"); // meanwhile the backup won the role
    {
        std::lock_guard lock(a->mu);
        a->unreachable = false;
    }
    CHECK(eventually([&] { return lost == 1; }));
    {
        std::lock_guard lock(why_mu);
        CHECK(contains(why, "h2"));
    }
    CHECK_FALSE((*k)->valid_at(Clock::now()));
    auto renewals = [a] {
        std::lock_guard lock(a->mu);
        return a->renewals;
    };
    int before = renewals();
    std::this_thread::sleep_for(100ms);
    CHECK(renewals() == before); // superseded: no more renewals
}

TEST_CASE("etcd: a planned switchover hands the role to the backup, or takes it back", "[etcd]") {
    EtcdServer etcd;
    cli::FencingOptions a;
    a.kind = "etcd";
    a.endpoint = etcd.endpoint();
    a.key = "/understudy/handover-test/primary";
    a.holder = "host-a";
    a.ttl_ms = 1000;
    a.margin_ms = 300;
    a.renew_ms = 200;
    cli::FencingOptions b = a;
    b.holder = "host-b";

    SECTION("the backup takes the role as soon as it is given up") {
        auto taken = cli::PrimaryRole::take(a);
        REQUIRE(taken);
        std::unique_ptr<cli::PrimaryRole> role = std::move(*taken);
        // The backup waits for the role, as a promoting backup does after HANDOVER_ACCEPT.
        auto backup = std::async(std::launch::async, [&] { return cli::PrimaryRole::take(b, cli::promotion_patience(b)); });
        auto handed = cli::hand_role_over(role, a);
        INFO((handed ? std::string("ok") : handed.error().describe()));
        CHECK(handed);
        CHECK(!role);
        auto b_role = backup.get();
        REQUIRE(b_role);
        CHECK((*b_role)->holds_now());
    }
    SECTION("nobody takes it: this host holds it again") {
        auto taken = cli::PrimaryRole::take(a);
        REQUIRE(taken);
        std::unique_ptr<cli::PrimaryRole> role = std::move(*taken);
        auto handed = cli::hand_role_over(role, a);
        REQUIRE(!handed);
        CHECK(handed.error().code == Errc::state);
        REQUIRE(role);
        CHECK(role->holds_now());
        // And the backup, late, finds it held.
        auto late = cli::PrimaryRole::take(b);
        REQUIRE(!late);
        CHECK(late.error().code == Errc::state);
    }
    SECTION("the arbiter cannot be asked: no answer either way (the old primary stops, exit 6)") {
        auto taken = cli::PrimaryRole::take(a);
        REQUIRE(taken);
        std::unique_ptr<cli::PrimaryRole> role = std::move(*taken);
        etcd.stop();
        auto handed = cli::hand_role_over(role, a);
        REQUIRE(!handed);
        CHECK(handed.error().code != Errc::state);
        CHECK_THAT(handed.error().describe(), Catch::Contains("checking that the backup took the primary role"));
        CHECK(!role);
    }
    SECTION("no arbiter decides: nothing to hand over") {
        cli::FencingOptions none;
        auto taken = cli::PrimaryRole::take(none);
        REQUIRE(taken);
        std::unique_ptr<cli::PrimaryRole> role = std::move(*taken);
        CHECK(cli::hand_role_over(role, none));
        CHECK(role); // kept until the process ends
    }
}
