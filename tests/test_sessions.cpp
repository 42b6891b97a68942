// Sessions between a primary and a backup, and every wait on the peer in them (no KVM:
// the primary replicates a fake VM, tests/support/fake_vm.hpp): the handshake deadline on
// both sides, connections that never become a session, a backup that heartbeats but
// never acknowledges, which checkpoint may be promoted, and the dead-peer socket options.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <sys/wait.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"
#include "replicator/primary.hpp"
#include "replicator/wire.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/fake_vm.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/loopback.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace understudy::test;
using namespace std::chrono;

namespace {

// Deadlines on the peer that the tests below run into. Long enough that a loaded host (a
// parallel ctest, page faults at 10 us) never runs into them where a test does not mean to:
// 300 ms did, in the handshake of a 32 MiB primary and in the first ACKs.
const milliseconds kHandshake = scaled(milliseconds(1000));
const milliseconds kAckTimeout = scaled(milliseconds(1000));

std::unique_ptr<FakeVm> running_vm(FakeVmConfig fc = {}) {
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    vm->start();
    vm->resume_all();
    return vm;
}

PrimaryConfig primary_config() {
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = milliseconds(5);
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    return pc;
}

std::unique_ptr<BackupServer> backup_server(BackupHooks hooks = {}) {
    BackupConfig cfg;
    cfg.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    cfg.security = link_security();
    cfg.handshake_timeout = kHandshake;
    auto s = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), std::move(hooks), cfg);
    REQUIRE(s);
    return std::move(*s);
}

// serve_one() on a thread of its own; ended with stop() if it outlives `limit` (scaled),
// so that a missing deadline fails the test instead of hanging it.
Result<SessionEnd> serve_within(BackupServer& server, milliseconds limit, const std::function<void()>& meanwhile) {
    auto session = std::async(std::launch::async, [&] { return server.serve_one(seconds(30)); });
    meanwhile();
    bool ended = session.wait_for(scaled(limit)) == std::future_status::ready;
    if (!ended) server.stop();
    auto r = session.get();
    INFO("serve_one() ended by itself: " << ended);
    REQUIRE(ended);
    return r;
}

// A primary's session: the stream, then the control connection.
std::unique_ptr<Primary> start_primary(FakeVm& vm, const BackupServer& to, PrimaryConfig pc = primary_config()) {
    auto data = connect_to(to); // the backup takes the next connection as control
    auto p = Primary::start(vm, std::move(data), pc, {}, connect_to(to));
    REQUIRE(p);
    return std::move(*p);
}

// A primary's session that commits at least `epochs` checkpoints and ends in order.
Result<SessionEnd> committed_session(BackupServer& server, FakeVm& vm, uint64_t epochs) {
    return serve_within(server, seconds(60), [&] {
        auto p = start_primary(vm, server);
        REQUIRE(wait_until([&] { return p->acked_epoch() >= epochs || p->failure(); }, seconds(30)));
        p->stop();
        CHECK(p->wait());
    });
}

} // namespace

TEST_CASE("a backup drops a connection that says nothing within the handshake timeout; it is no session", "[sessions]") {
    auto server = backup_server();
    std::unique_ptr<Connection> silent;
    auto t0 = steady_clock::now();
    auto r = serve_within(*server, seconds(10), [&] { silent = connect_to(*server); });
    REQUIRE(!r);
    CHECK(r.error().code == Errc::timeout);
    CHECK_THAT(r.error().describe(), Catch::Contains("no session within the handshake timeout"));
    CHECK(steady_clock::now() - t0 >= kHandshake);
    CHECK(server->sessions_started() == 0);
}

TEST_CASE("a connection that opens and closes (a port probe) is no session and leads to no promotion", "[sessions]") {
    auto server = backup_server();
    auto r = serve_within(*server, seconds(10), [&] { connect_to(*server)->shutdown(); });
    REQUIRE(!r);
    CHECK(server->sessions_started() == 0);
    CHECK(!server->replica_current());
}

TEST_CASE("a primary fails when the backup accepts but never answers the handshake", "[sessions]") {
    auto listener = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
    REQUIRE(listener);
    auto vm = running_vm();
    auto pc = primary_config();
    pc.handshake_timeout = kHandshake;
    auto data = Connection::connect(listener->local(), seconds(5));
    REQUIRE(data);
    auto held = listener->accept(seconds(5)); // accepted, as a busy backup's kernel does, and never answered
    REQUIRE(held);
    auto p = Primary::start(*vm, std::move(*data), pc);
    REQUIRE(p);
    bool failed = wait_until([&] { return (*p)->failure().has_value(); }, seconds(10));
    if (!failed) (*p)->stop();
    auto r = (*p)->wait();
    REQUIRE(failed);
    REQUIRE(!r);
    CHECK(r.error().code == Errc::timeout);
    CHECK_THAT(r.error().describe(), Catch::Contains("within the handshake timeout of " + std::to_string(kHandshake.count()) + " ms"));
}

TEST_CASE("only a session whose own checkpoint is committed may lead to a promotion", "[sessions]") {
    auto server = backup_server();
    auto vm = running_vm();
    // Session 1 commits checkpoints and ends in order.
    auto r = committed_session(*server, *vm, 3);
    CHECK(r);
    CHECK(server->sessions_started() == 1);
    CHECK(server->replica_current());
    const uint64_t committed = server->replica()->committed_epoch();

    // Session 2 is established (authenticated, header accepted) and ends before its first
    // checkpoint: the replica still holds session 1's checkpoint, which is not current.
    r = serve_within(*server, seconds(30), [&] {
        auto c = connect_to(*server);
        REQUIRE(secure_client(*c, *shared_link_key(), LinkChannel::stream));
        auto h = make_stream_header(vm->memory().size(), vm->vcpu_count(), hv::memory_layout_digest(vm->memory()),
                                    vm->config_digest(), 0x5e55'0002, 0);
        std::span<const uint8_t> hb(reinterpret_cast<const uint8_t*>(&h), sizeof h);
        REQUIRE(c->send({&hb, 1}));
        auto accept = c->recv_record();
        REQUIRE(accept);
        CHECK(accept->type == kAccept);
        c->shutdown();
    });
    CHECK(server->sessions_started() == 2);
    CHECK(server->replica()->committed_epoch() == committed);
    CHECK(!server->replica_current());
}

namespace {
// A stream header for `vm`'s shape sent on a fresh authenticated connection; the
// backup's answer (ACCEPT or REJECT).
Record send_header(const BackupServer& to, FakeVm& vm, uint64_t session) {
    auto c = connect_to(to);
    REQUIRE(secure_client(*c, *shared_link_key(), LinkChannel::stream));
    auto h = make_stream_header(vm.memory().size(), vm.vcpu_count(), hv::memory_layout_digest(vm.memory()),
                                vm.config_digest(), session, 0);
    std::span<const uint8_t> hb(reinterpret_cast<const uint8_t*>(&h), sizeof h);
    REQUIRE(c->send({&hb, 1}));
    auto answer = c->recv_record();
    REQUIRE(answer);
    c->shutdown();
    return std::move(*answer);
}
} // namespace

TEST_CASE("a backup takes a primary of another shape while it holds no checkpoint, and refuses one after", "[sessions]") {
    auto server = backup_server();
    auto small = running_vm(); // 16 MiB, 2 vCPUs
    FakeVmConfig big_config;
    big_config.memory_bytes = 32 * hv::kMiB;
    big_config.vcpus = 3;
    auto big = running_vm(big_config);
    // A 16 MiB session that commits nothing: the replica takes that shape, holding nothing.
    (void)serve_within(*server, seconds(30), [&] { CHECK(send_header(*server, *small, 1).type == kAccept); });
    REQUIRE(server->replica());
    CHECK(!server->replica()->has_committed());
    // A 32 MiB primary then gets a replica of its shape, and commits.
    auto r = committed_session(*server, *big, 2);
    CHECK(r);
    CHECK(server->replica()->memory().size() == 32 * hv::kMiB);
    const uint64_t committed = server->replica()->committed_epoch();
    CHECK(committed >= 2);
    // Now it holds that VM's checkpoint: a 16 MiB primary is refused, and told why.
    Record answer;
    r = serve_within(*server, seconds(30), [&] { answer = send_header(*server, *small, 3); });
    CHECK(!r);
    CHECK(answer.type == kReject);
    CHECK_THAT(std::string(answer.body.begin(), answer.body.end()),
               Catch::Contains("16 MiB of memory, this backup 32 MiB") &&
                   Catch::Contains("holds checkpoint " + std::to_string(committed)));
    CHECK(server->replica()->committed_epoch() == committed);
}

TEST_CASE("a backup that heartbeats but acknowledges nothing is given up after the ACK timeout, with a goodbye", "[sessions]") {
    // The backup's stream thread blocks in the commit hook from checkpoint 5 on (a stuck
    // disk): it ACKs nothing more, while its control connection goes on heartbeating.
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    BackupHooks hooks;
    hooks.on_commit = [released](uint64_t epoch, const BackupReplica&) {
        if (epoch >= 5) released.wait();
    };
    auto server = backup_server(hooks);
    auto session = std::async(std::launch::async, [&] { return server->serve_one(seconds(30)); });
    auto vm = running_vm();
    auto pc = primary_config();
    pc.ack_timeout = kAckTimeout;
    auto p = start_primary(*vm, *server, pc);
    bool failed = wait_until([&] { return p->failure().has_value(); }, seconds(20));
    release.set_value();
    if (!failed) p->stop();
    auto r = p->wait();
    REQUIRE(failed);
    REQUIRE(!r);
    CHECK(r.error().code == Errc::timeout);
    CHECK_THAT(r.error().describe(), Catch::Contains("acknowledged no checkpoint") &&
                                         Catch::Contains(std::to_string(kAckTimeout.count()) + " ms"));
    CHECK(p->acked_epoch() == 4);
    // The backup heard the goodbye: an orderly end, which no backup promotes on.
    REQUIRE(session.wait_for(scaled(seconds(10))) == std::future_status::ready);
    auto end = session.get();
    INFO((end ? std::string("goodbye") : end.error().describe()));
    CHECK(end);
    CHECK(server->replica()->committed_epoch() >= 4);
}

TEST_CASE("every connection fails a dead peer through keepalive and TCP_USER_TIMEOUT", "[sessions]") {
    auto pair = connected_pair();
    for (Connection* c : {pair.client.get(), pair.server.get()}) {
        auto opt = [&](int level, int name) {
            int v = -1;
            socklen_t len = sizeof v;
            REQUIRE(::getsockopt(c->native_handle(), level, name, &v, &len) == 0);
            return v;
        };
        CHECK(opt(SOL_SOCKET, SO_KEEPALIVE) == 1);
        CHECK(opt(IPPROTO_TCP, TCP_KEEPIDLE) == 10);
        CHECK(opt(IPPROTO_TCP, TCP_KEEPINTVL) == 5);
        CHECK(opt(IPPROTO_TCP, TCP_KEEPCNT) == 3);
        CHECK(opt(IPPROTO_TCP, TCP_USER_TIMEOUT) == 30000);
    }
}

TEST_CASE("a receive deadline ends a receive with a timeout and leaves the receive side unusable", "[sessions]") {
    auto [client, accepted] = connected_pair();
    // Half a record arrives, then nothing.
    std::vector<uint8_t> rec;
    append_record(rec, kAck, encode_u64s({7}));
    std::span<const uint8_t> half(rec.data(), rec.size() / 2);
    REQUIRE(client->send({&half, 1}));
    accepted->set_receive_deadline(steady_clock::now() + milliseconds(100));
    auto t0 = steady_clock::now();
    auto r = accepted->recv_record();
    REQUIRE(!r);
    CHECK(r.error().code == Errc::timeout);
    CHECK(steady_clock::now() - t0 >= milliseconds(100));
    std::span<const uint8_t> rest(rec.data() + half.size(), rec.size() - half.size());
    REQUIRE(client->send({&rest, 1}));
    accepted->set_receive_deadline(std::nullopt);
    auto again = accepted->recv_record();
    REQUIRE(!again);
    CHECK(again.error().code == Errc::state);
    CHECK_THAT(again.error().describe(), Catch::Contains("ended at its deadline"));
}

TEST_CASE("a handover whose answer never arrives, though the backup had the request: the VM stays paused", "[sessions]") {
    // The backup runs in a child process that dies the moment it holds the request, after
    // it may have taken over: its stream and control connection end with no verdict.
    int port_pipe[2];
    REQUIRE(::pipe(port_pipe) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(port_pipe[0]);
        BackupConfig cfg;
        cfg.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
        cfg.security = link_security();
        cfg.accept_handover = true;
        BackupHooks hooks;
        hooks.on_handover = [](uint64_t) { ::_exit(0); };
        auto s = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), hooks, cfg);
        if (!s) ::_exit(2);
        uint16_t port = (*s)->local().port;
        if (::write(port_pipe[1], &port, sizeof port) != sizeof port) ::_exit(2);
        (void)(*s)->serve_one(seconds(60));
        ::_exit(3);
    }
    ::close(port_pipe[1]);
    uint16_t port = 0;
    REQUIRE(::read(port_pipe[0], &port, sizeof port) == sizeof port);
    ::close(port_pipe[0]);
    Endpoint backup{"127.0.0.1", port};
    auto vm = running_vm();
    auto data = Connection::connect(backup, seconds(5));
    REQUIRE(data);
    auto control = Connection::connect(backup, seconds(5));
    REQUIRE(control);
    auto p = Primary::start(*vm, std::move(*data), primary_config(), {}, std::move(*control));
    REQUIRE(p);
    bool synced = wait_until([&] { return (*p)->acked_epoch() >= 3 || (*p)->failure(); }, seconds(30));
    auto outcome = (*p)->hand_over(nullptr, scaled(milliseconds(2000)));
    int status = 0;
    ::waitpid(child, &status, 0);
    (*p)->stop();
    (void)(*p)->wait();
    REQUIRE(synced);
    REQUIRE(!outcome);
    CHECK_THAT(outcome.error().describe(), Catch::Contains("cannot tell whether the backup runs the VM"));
    CHECK((*p)->handover_uncertain().has_value());
    CHECK(!vm->vmm_write(0, 1)); // still paused: running on here could make a second copy
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}
