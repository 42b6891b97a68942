// The control connection: heartbeats both ways, a silent or vanished peer declared
// failed (never earlier than the timeout), hello checks, and a backup that ends a
// session whose primary falls silent while keeping its committed checkpoint.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include "hv/guest_memory.hpp"
#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"
#include "replicator/control_link.hpp"
#include "replicator/wire.hpp"
#include "support/link_key.hpp"
#include "support/loopback.hpp"
#include "support/stream_builder.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace std::chrono;
using namespace std::chrono_literals;
using test::connected_pair;

namespace {

// Collects the one failure a link may report, with the time it arrived.
struct FailureProbe {
    std::promise<std::pair<Error, steady_clock::time_point>> promise;
    std::future<std::pair<Error, steady_clock::time_point>> future = promise.get_future();
    HeartbeatLink::OnFailure callback() {
        return [this](Error e) { promise.set_value({std::move(e), steady_clock::now()}); };
    }
};

// kFast where a failure must be detected; kPatient where none may be: a loaded 2-core
// machine can starve a heartbeat thread for more than 60 ms.
const replicator::DetectorConfig kFast{10ms, 60ms};
const replicator::DetectorConfig kPatient{10ms, 1000ms};

// A stand-in primary that opens a session with a control connection: the stream header
// (flag set) and its ACCEPT, then the control connection's hello naming `hello_session`.
struct StandIn {
    std::unique_ptr<Connection> data, control;
};
StandIn open_session(const BackupServer& server, uint64_t session, uint64_t hello_session,
                     const replicator::DetectorConfig& cfg) {
    constexpr uint64_t kMem = 16 * hv::kMiB;
    auto data = Connection::connect(server.local(), 5s);
    REQUIRE(data);
    REQUIRE(secure_client(**data, *test::shared_link_key(), LinkChannel::stream));
    auto mem = hv::GuestMemory::create(kMem);
    REQUIRE(mem);
    auto h = make_stream_header(kMem, 1, hv::memory_layout_digest(*mem), 1, session, kStreamFlagControl);
    std::span<const uint8_t> hs(reinterpret_cast<const uint8_t*>(&h), sizeof h);
    REQUIRE((*data)->send({&hs, 1}));
    auto accept = (*data)->recv_record();
    REQUIRE(accept);
    REQUIRE(accept->type == kAccept);
    auto control = Connection::connect(server.local(), 5s);
    REQUIRE(control);
    REQUIRE(secure_client(**control, *test::shared_link_key(), LinkChannel::control));
    auto hello = make_control_hello(hello_session, cfg);
    std::span<const uint8_t> he(reinterpret_cast<const uint8_t*>(&hello), sizeof hello);
    REQUIRE((*control)->send({&he, 1}));
    return {std::move(*data), std::move(*control)};
}

} // namespace

TEST_CASE("two links exchange heartbeats and neither reports a failure", "[control]") {
    auto [a, b] = connected_pair();
    FailureProbe fa, fb;
    auto la = HeartbeatLink::start(std::move(a), kPatient, fa.callback());
    auto lb = HeartbeatLink::start(std::move(b), kPatient, fb.callback());
    REQUIRE(la);
    REQUIRE(lb);
    std::this_thread::sleep_for(300ms);
    CHECK(fa.future.wait_for(0s) == std::future_status::timeout);
    CHECK(fb.future.wait_for(0s) == std::future_status::timeout);
    auto sa = (*la)->stats(), sb = (*lb)->stats();
    CHECK(sa.sent >= 5);
    CHECK(sa.received >= 5);
    CHECK(sb.received >= 5);
    CHECK((*la)->peer_state() == replicator::PeerState::alive);
    // A deliberate stop reports nothing on its own side.
    (*la)->stop();
    CHECK(fa.future.wait_for(0s) == std::future_status::timeout);
}

TEST_CASE("a peer that never sends is failed after the timeout, not before", "[control]") {
    auto [a, silent] = connected_pair();
    FailureProbe f;
    auto start = steady_clock::now();
    auto link = HeartbeatLink::start(std::move(a), kFast, f.callback());
    REQUIRE(link);
    REQUIRE(f.future.wait_for(5s) == std::future_status::ready);
    auto [err, at] = f.future.get();
    CHECK(err.code == Errc::timeout);
    CHECK_THAT(err.message, Catch::Contains("no heartbeat from"));
    CHECK(at - start >= kFast.timeout);
    CHECK((*link)->peer_state() == replicator::PeerState::failed);
}

TEST_CASE("a peer that falls silent after heartbeating is failed", "[control]") {
    auto [a, b] = connected_pair();
    FailureProbe fa, fb;
    auto la = HeartbeatLink::start(std::move(a), kFast, fa.callback());
    auto lb = HeartbeatLink::start(std::move(b), kFast, fb.callback());
    REQUIRE(la);
    REQUIRE(lb);
    std::this_thread::sleep_for(100ms);
    REQUIRE((*la)->stats().received > 0);
    (*lb)->stop(); // b goes away: its socket is shut down, so a sees a close or silence
    REQUIRE(fa.future.wait_for(5s) == std::future_status::ready);
    auto [err, at] = fa.future.get();
    CHECK((err.code == Errc::timeout || err.code == Errc::system));
    CHECK(fb.future.wait_for(0s) == std::future_status::timeout);
}

TEST_CASE("a malformed heartbeat or an unexpected mandatory record fails the link", "[control]") {
    for (auto [type, body] : {std::pair<uint32_t, std::vector<uint8_t>>{kHeartbeat, {1, 2, 3}},
                              std::pair<uint32_t, std::vector<uint8_t>>{kAck, encode_u64s({1})}}) {
        auto [a, peer] = connected_pair();
        FailureProbe f;
        auto link = HeartbeatLink::start(std::move(a), replicator::DetectorConfig{10ms, 2000ms}, f.callback());
        REQUIRE(link);
        REQUIRE(peer->send_record(type, body));
        REQUIRE(f.future.wait_for(5s) == std::future_status::ready);
        auto [err, at] = f.future.get();
        CHECK(err.code == Errc::invalid_input);
        CHECK_THAT(err.message, Catch::Contains("control connection"));
    }
}

TEST_CASE("settings shorter than three heartbeats are refused", "[control]") {
    auto [a, b] = connected_pair();
    auto link = HeartbeatLink::start(std::move(a), replicator::DetectorConfig{10ms, 20ms}, nullptr);
    REQUIRE(!link);
    CHECK_THAT(link.error().message, Catch::Contains("shorter than three heartbeats"));
}

TEST_CASE("the control hello is checked field by field", "[control]") {
    auto good = make_control_hello(77, kFast);
    CHECK(check_control_hello(good, 77));
    CHECK(is_control_magic(std::span<const uint8_t, 8>(reinterpret_cast<const uint8_t*>(good.magic), 8)));
    auto expect_bad = [](ControlHello h, uint64_t session, const char* what) {
        auto r = check_control_hello(h, session);
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().message, Catch::Contains(what));
    };
    expect_bad(good, 78, "another session");
    auto h = good;
    h.magic[0] = 'X';
    expect_bad(h, 77, "bad magic");
    h = good;
    h.version = 99;
    expect_bad(h, 77, "version 99");
    h = good;
    h.flags = 4;
    expect_bad(h, 77, "unknown flags");
    h = good;
    h.reserved[2] = 1;
    expect_bad(h, 77, "reserved");
}

TEST_CASE("a backup ends the session of a primary that falls silent and keeps its checkpoint", "[control]") {
    BackupConfig cfg;
    cfg.heartbeat = kFast;
    cfg.security = test::link_security();
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, cfg);
    REQUIRE(server);
    auto session = std::async(std::launch::async, [&] { return (*server)->serve_one(10s); });
    // The control connection says hello and then nothing: a hung primary.
    auto primary = open_session(**server, 99, 99, kFast);
    // The backup's heartbeats reach us while it waits.
    auto hb = primary.control->recv_record();
    REQUIRE(hb);
    CHECK(hb->type == kHeartbeat);

    REQUIRE(session.wait_for(5s) == std::future_status::ready);
    auto r = session.get();
    REQUIRE(!r);
    CHECK(r.error().code == Errc::timeout);
    CHECK_THAT(r.error().describe(), Catch::Contains("primary") && Catch::Contains("no heartbeat"));
    REQUIRE((*server)->replica());
    CHECK(!(*server)->replica()->has_committed());
}

TEST_CASE("a backup refuses a control connection with another session's id", "[control]") {
    BackupConfig cfg;
    cfg.security = test::link_security();
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, cfg);
    REQUIRE(server);
    auto session = std::async(std::launch::async, [&] { return (*server)->serve_one(10s); });
    auto primary = open_session(**server, 5, 6, kFast);
    REQUIRE(session.wait_for(5s) == std::future_status::ready);
    auto r = session.get();
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("another session"));
}

TEST_CASE("a goodbye ends the link on both sides without a failure", "[control]") {
    auto [a, b] = connected_pair();
    FailureProbe fa, fb;
    auto la = HeartbeatLink::start(std::move(a), kPatient, fa.callback());
    auto lb = HeartbeatLink::start(std::move(b), kPatient, fb.callback());
    REQUIRE(la);
    REQUIRE(lb);
    std::this_thread::sleep_for(50ms);
    (*la)->goodbye();
    CHECK((*lb)->wait_end(2s) == LinkEnd::goodbye);
    std::this_thread::sleep_for(200ms); // b's sends now fail: still no failure after a goodbye
    CHECK(fb.future.wait_for(0s) == std::future_status::timeout);
    CHECK(fa.future.wait_for(0s) == std::future_status::timeout);
}

namespace {
// A session whose stand-in primary heartbeats through a real link, then ends with or
// without GOODBYE.
Result<SessionEnd> session_ending(bool say_goodbye) {
    BackupConfig cfg;
    cfg.heartbeat = kPatient;
    cfg.security = test::link_security();
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, cfg);
    REQUIRE(server);
    auto session = std::async(std::launch::async, [&] { return (*server)->serve_one(10s); });
    auto primary = open_session(**server, 11, 11, kPatient);
    auto link = HeartbeatLink::start(std::move(primary.control), kPatient, nullptr);
    REQUIRE(link);
    std::this_thread::sleep_for(50ms);
    if (say_goodbye) (*link)->goodbye();
    else (*link)->stop(); // as a dying process: both sockets close, no goodbye
    primary.data->shutdown();
    primary.data.reset();
    REQUIRE(session.wait_for(5s) == std::future_status::ready);
    return session.get();
}
} // namespace

TEST_CASE("a backup counts a closed stream as an orderly end only after a goodbye", "[control]") {
    auto orderly = session_ending(true);
    REQUIRE(orderly);
    CHECK(*orderly == SessionEnd::goodbye);
    auto r = session_ending(false);
    REQUIRE(!r);
    INFO(r.error().describe());
    CHECK((r.error().message.find("without a goodbye") != std::string::npos ||
           r.error().message.find("control connection") != std::string::npos));
}

namespace {
// Two links; the backup's answers a HANDOVER from another thread, as BackupServer does once
// its stream stopped, after `delay`, naming the checkpoint asked for plus `skew`.
struct AnsweringPair {
    FailureProbe fa, fb;
    std::promise<uint64_t> asked;
    std::unique_ptr<HeartbeatLink> primary, backup;
    std::future<uint64_t> answer;
    std::atomic<bool> delivered{false}; // the answer reached the primary's TCP
    explicit AnsweringPair(uint64_t skew, milliseconds delay = 0ms) {
        auto [a, b] = connected_pair();
        auto la = HeartbeatLink::start(std::move(a), kPatient, fa.callback());
        auto lb = HeartbeatLink::start(std::move(b), kPatient, fb.callback(), [this](uint64_t epoch) { asked.set_value(epoch); });
        REQUIRE(la);
        REQUIRE(lb);
        primary = std::move(*la);
        backup = std::move(*lb);
        answer = std::async(std::launch::async, [this, skew, delay]() -> uint64_t {
            auto f = asked.get_future();
            if (f.wait_for(2s) != std::future_status::ready) return 0; // never asked: the test thread finds 0
            std::this_thread::sleep_for(delay);
            uint64_t epoch = f.get() + skew;
            delivered = backup->accept_handover(epoch);
            return epoch;
        });
    }
};
} // namespace

TEST_CASE("a handover request is answered, and neither side then reports a failure", "[control][handover]") {
    AnsweringPair p(0);
    CHECK(p.primary->request_handover(42, 2s) == HeartbeatLink::HandoverAnswer::accepted);
    CHECK(p.answer.get() == 42);
    CHECK(p.delivered);
    std::this_thread::sleep_for(200ms); // both connections are closing now: still no failure
    CHECK(p.fa.future.wait_for(0s) == std::future_status::timeout);
    CHECK(p.fb.future.wait_for(0s) == std::future_status::timeout);
}

TEST_CASE("an answer naming another checkpoint fails the primary's link", "[control][handover]") {
    AnsweringPair p(1); // a backup holding something else
    CHECK(p.primary->request_handover(42, 2s) == HeartbeatLink::HandoverAnswer::failed);
    CHECK(p.answer.get() == 43);
    // Reported as a failure, so the primary runs on unprotected instead of trusting a link
    // whose threads have ended.
    REQUIRE(p.fa.future.wait_for(1s) == std::future_status::ready);
    CHECK(p.fa.future.get().first.describe().find("not at 42") != std::string::npos);
    CHECK(p.primary->peer_state() == replicator::PeerState::failed);
}

TEST_CASE("an answer that comes after the wait for it ended is heard by a later wait", "[control][handover]") {
    AnsweringPair p(0, 400ms); // a backup whose host stalls with the request in hand
    CHECK(p.primary->request_handover(42, 100ms) == HeartbeatLink::HandoverAnswer::unanswered);
    CHECK(p.primary->await_handover(42, 2s) == HeartbeatLink::HandoverAnswer::accepted);
    CHECK(p.answer.get() == 42);
    std::this_thread::sleep_for(200ms);
    CHECK(p.fa.future.wait_for(0s) == std::future_status::timeout);
    CHECK(p.fb.future.wait_for(0s) == std::future_status::timeout);
}

TEST_CASE("a handover nobody answers leaves the link running", "[control][handover]") {
    auto [a, b] = connected_pair();
    FailureProbe fa, fb;
    auto la = HeartbeatLink::start(std::move(a), kPatient, fa.callback());
    auto lb = HeartbeatLink::start(std::move(b), kPatient, fb.callback()); // skips HANDOVER, as an older backup does
    REQUIRE(la);
    REQUIRE(lb);
    CHECK((*la)->request_handover(7, 300ms) == HeartbeatLink::HandoverAnswer::unanswered);
    auto before = (*la)->stats().received;
    std::this_thread::sleep_for(100ms);
    CHECK((*la)->stats().received > before); // heartbeats go on both ways
    CHECK((*lb)->peer_state() == replicator::PeerState::alive);
    CHECK(fa.future.wait_for(0s) == std::future_status::timeout);
    CHECK(fb.future.wait_for(0s) == std::future_status::timeout);
}

namespace {
// A peer that stops reading for a while, as a primary whose host stalls: a raw socket
// with the smallest receive buffer (set before connecting, so the window is small from
// the start) that heartbeats every 5 ms all along, reads nothing until `read_after`,
// then reads everything until the connection ends.
struct SlowReader {
    int fd = -1;
    std::atomic<bool> done{false};
    std::thread heartbeats;
    std::future<std::vector<uint8_t>> received;

    SlowReader(const Endpoint& to, milliseconds read_after) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        int small = 1024;
        REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(to.port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        heartbeats = std::thread([this] {
            for (uint64_t seq = 1; !done; ++seq) {
                std::vector<uint8_t> rec;
                append_record(rec, kHeartbeat, encode_u64s({seq, seq}));
                if (::send(fd, rec.data(), rec.size(), MSG_NOSIGNAL) < 0) return;
                std::this_thread::sleep_for(5ms);
            }
        });
        received = std::async(std::launch::async, [this, read_after] {
            std::this_thread::sleep_for(read_after);
            std::vector<uint8_t> all;
            uint8_t buf[4096];
            for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) all.insert(all.end(), buf, buf + n);
            return all;
        });
    }
    ~SlowReader() {
        done = true;
        ::shutdown(fd, SHUT_RDWR);
        heartbeats.join();
        ::close(fd);
    }
    // The records received, in order, as {type, first u64 of the body}.
    std::vector<std::pair<uint32_t, uint64_t>> records() {
        auto bytes = received.get();
        std::vector<std::pair<uint32_t, uint64_t>> out;
        for (size_t at = 0; at + sizeof(RecordHeader) <= bytes.size();) {
            RecordHeader h;
            std::memcpy(&h, &bytes[at], sizeof h);
            uint64_t first = 0;
            if (h.length >= 8 && at + sizeof h + 8 <= bytes.size()) std::memcpy(&first, &bytes[at + sizeof h], 8);
            out.emplace_back(h.type, first);
            at += sizeof h + ((h.length + 7) & ~size_t{7});
        }
        return out;
    }
};
} // namespace

TEST_CASE("a last record reaches a peer that reads late, though its heartbeats are left unread", "[control][handover]") {
    auto l = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
    REQUIRE(l);
    auto accepted = std::async(std::launch::async, [&] { return l->accept(5s); });
    SlowReader primary(l->local(), 300ms);
    auto conn = accepted.get();
    REQUIRE(conn);
    FailureProbe probe;
    auto link = HeartbeatLink::start(std::move(*conn), {1ms, 5000ms}, probe.callback());
    REQUIRE(link);
    std::this_thread::sleep_for(150ms); // the peer's window is closed: heartbeats queue here
    CHECK((*link)->accept_handover(7)); // acknowledged once the peer reads, within the 1 s allowed
    // Closing now, with the peer's heartbeats unread, resets the connection: only what
    // the peer's TCP has acknowledged survives that.
    std::this_thread::sleep_for(50ms);
    link->reset();
    auto records = primary.records();
    REQUIRE(!records.empty());
    CHECK(records.back() == std::pair<uint32_t, uint64_t>{kHandoverAccept, 7});
    CHECK(probe.future.wait_for(0s) == std::future_status::timeout);
}

TEST_CASE("an answer the primary's TCP never acknowledges is reported undelivered", "[control][handover]") {
    auto l = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
    REQUIRE(l);
    auto accepted = std::async(std::launch::async, [&] { return l->accept(5s); });
    SlowReader primary(l->local(), 3000ms); // reads only after the backup stopped waiting
    auto conn = accepted.get();
    REQUIRE(conn);
    auto link = HeartbeatLink::start(std::move(*conn), {1ms, 5000ms}, nullptr);
    REQUIRE(link);
    std::this_thread::sleep_for(150ms); // the peer's window is closed
    // The backup must then not take over: the primary may never learn that it did.
    CHECK_FALSE((*link)->accept_handover(7));
}

TEST_CASE("a refusal arrives as a GOODBYE and is told apart from no answer", "[control][handover]") {
    auto [a, b] = connected_pair();
    FailureProbe fa;
    std::promise<void> asked;
    auto la = HeartbeatLink::start(std::move(a), kPatient, fa.callback());
    auto lb = HeartbeatLink::start(std::move(b), kPatient, nullptr, [&](uint64_t) { asked.set_value(); });
    REQUIRE(la);
    REQUIRE(lb);
    auto refusing = std::async(std::launch::async, [&] {
        bool heard = asked.get_future().wait_for(2s) == std::future_status::ready;
        (*lb)->goodbye();
        return heard;
    });
    CHECK((*la)->request_handover(42, 2s) == HeartbeatLink::HandoverAnswer::refused);
    CHECK(refusing.get());
    CHECK(fa.future.wait_for(100ms) == std::future_status::timeout);
}

namespace {
// A backup that accepts handovers, and a stand-in primary whose checkpoint 1 it committed.
struct HandoverSession {
    std::unique_ptr<BackupServer> server;
    std::future<Result<SessionEnd>> session;
    StandIn primary;
    std::unique_ptr<HeartbeatLink> link;
    FailureProbe probe;

    explicit HandoverSession(bool accept) {
        BackupConfig cfg;
        cfg.heartbeat = kPatient;
        cfg.security = test::link_security();
        cfg.accept_handover = accept;
        auto s = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, cfg);
        REQUIRE(s);
        server = std::move(*s);
        session = std::async(std::launch::async, [this] { return server->serve_one(10s); });
        primary = open_session(*server, 42, 42, kPatient); // 42: StreamBuilder's session, the seed of its page checks
        auto l = HeartbeatLink::start(std::move(primary.control), kPatient, probe.callback());
        REQUIRE(l);
        link = std::move(*l);
        test::StreamBuilder b;
        for (const auto& x : b.checkpoint(1, kCheckpointInitial, {0, 5}, 1)) REQUIRE(primary.data->send_record(x.type, x.body));
        auto ack = primary.data->recv_record();
        REQUIRE(ack);
        REQUIRE(ack->type == kAck);
    }
    Result<SessionEnd> end() {
        REQUIRE(session.wait_for(5s) == std::future_status::ready);
        return session.get();
    }
};
} // namespace

TEST_CASE("a backup takes over from the checkpoint a handover names, and from no other", "[control][handover]") {
    SECTION("the committed checkpoint: accepted, the session ends as a handover") {
        HandoverSession h(true);
        CHECK(h.link->request_handover(1, 2s) == HeartbeatLink::HandoverAnswer::accepted);
        auto r = h.end();
        REQUIRE(r);
        CHECK(*r == SessionEnd::handover);
        CHECK(h.server->replica()->committed_epoch() == 1);
        CHECK(h.probe.future.wait_for(100ms) == std::future_status::timeout);
    }
    SECTION("another checkpoint: refused with a GOODBYE, the session ends with the reason and no takeover") {
        HandoverSession h(true);
        CHECK(h.link->request_handover(2, 2s) == HeartbeatLink::HandoverAnswer::refused);
        auto r = h.end();
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input); // not a failed primary: nobody promotes
        CHECK_THAT(r.error().message, Catch::Contains("checkpoint 2") && Catch::Contains("checkpoint 1 is committed"));
    }
    SECTION("a backup that may not promote does not answer; the session goes on") {
        HandoverSession h(false);
        CHECK(h.link->request_handover(1, 300ms) == HeartbeatLink::HandoverAnswer::unanswered);
        CHECK(h.session.wait_for(0s) == std::future_status::timeout);
        h.link->goodbye();
        h.primary.data->shutdown();
        auto r = h.end();
        REQUIRE(r);
        CHECK(*r == SessionEnd::goodbye);
    }
}
