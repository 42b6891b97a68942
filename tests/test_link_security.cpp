// Link security (docs/security.md): key files, the frame cipher, the handshake, and a
// real primary and backup against a peer with the wrong key, a man in the middle that
// flips one byte, a replayed old session, and a security-mode mismatch. Each is refused
// or detected with a clear error on both sides, and the backup keeps its last committed
// checkpoint, with nothing from the bad stream applied.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>

#include "common/unique_fd.hpp"
#include "replicator/backup.hpp"
#include "replicator/link_cipher.hpp"
#include "replicator/link_security.hpp"
#include "replicator/primary.hpp"
#include "replicator/wire.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/loopback.hpp"
#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::replicator;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {

void write_file(const std::string& path, size_t bytes, mode_t mode) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    std::vector<uint8_t> b(bytes, 0x5a);
    REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
    std::fclose(f);
    REQUIRE(::chmod(path.c_str(), mode) == 0);
}

uint64_t memory_digest(const GuestMemory& m) { return XXH3_64bits(m.page_ptr(0), m.size()); }

// A TCP relay between primaries and a backup that forwards every connection in accept
// order, can flip one byte of the first connection's primary-to-backup direction (at a
// fixed offset, or at the first byte forwarded once armed), and records that direction.
class Proxy {
public:
    explicit Proxy(Endpoint backup) : backup_(std::move(backup)) {
        fd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(fd_.valid());
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(fd_.get(), 8) == 0);
        socklen_t len = sizeof a;
        REQUIRE(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port_ = ntohs(a.sin_port);
        acceptor_ = std::thread([this] { accept_main(); });
    }
    ~Proxy() {
        stopping_ = true;
        ::shutdown(fd_.get(), SHUT_RDWR);
        if (acceptor_.joinable()) acceptor_.join();
        {
            std::lock_guard lock(mu_);
            for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
        }
        for (auto& t : pumps_) t.join();
    }
    Endpoint local() const { return {"127.0.0.1", port_}; }
    void flip_at(uint64_t offset) { flip_offset_ = offset; }
    void arm_flip() { armed_ = true; }
    bool flipped() const { return flipped_; }
    std::vector<uint8_t> recorded() {
        std::lock_guard lock(mu_);
        return recorded_;
    }

private:
    void accept_main() {
        for (unsigned index = 0; !stopping_; ++index) {
            int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) return;
            int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_port = htons(backup_.port);
            ::inet_pton(AF_INET, backup_.host.c_str(), &a.sin_addr);
            if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
                ::close(c);
                ::close(u);
                continue;
            }
            int one = 1;
            ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            std::lock_guard lock(mu_);
            open_.push_back(c);
            open_.push_back(u);
            pumps_.emplace_back([this, c, u, index] { pump(c, u, index == 0); });
            pumps_.emplace_back([this, c, u] { pump(u, c, false); });
        }
    }
    void pump(int from, int to, bool tamper) {
        std::vector<uint8_t> buf(1 << 16);
        uint64_t offset = 0;
        for (;;) {
            ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
            if (n <= 0) break;
            if (tamper) {
                for (ssize_t i = 0; i < n && !flipped_; ++i)
                    if (offset + uint64_t(i) == flip_offset_ || armed_) {
                        buf[size_t(i)] ^= 0x01;
                        flipped_ = true;
                    }
                std::lock_guard lock(mu_);
                recorded_.insert(recorded_.end(), buf.begin(), buf.begin() + n);
            }
            offset += uint64_t(n);
            if (::send(to, buf.data(), size_t(n), MSG_NOSIGNAL) != n) break;
        }
        ::shutdown(to, SHUT_WR);
        ::shutdown(from, SHUT_RD);
    }

    Endpoint backup_;
    UniqueFd fd_;
    uint16_t port_ = 0;
    std::atomic<bool> stopping_{false}, armed_{false}, flipped_{false};
    std::atomic<uint64_t> flip_offset_{UINT64_MAX};
    std::mutex mu_;
    std::vector<int> open_;
    std::vector<uint8_t> recorded_;
    std::vector<std::thread> pumps_;
    std::thread acceptor_;
};

// A backup that records the replica's memory digest at each commit.
struct Backup {
    std::unique_ptr<BackupServer> server;
    std::mutex mu;
    std::map<uint64_t, uint64_t> digest_at; // epoch -> memory digest right after its commit

    explicit Backup(LinkSecurity security) {
        BackupConfig cfg;
        cfg.heartbeat = {10ms, test::scaled(2000ms)};
        cfg.security = std::move(security);
        BackupHooks hooks;
        hooks.on_commit = [this](uint64_t epoch, const BackupReplica& r) {
            std::lock_guard lock(mu);
            digest_at[epoch] = memory_digest(r.memory());
        };
        auto s = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), hooks, cfg);
        REQUIRE(s);
        server = std::move(*s);
    }
    std::future<Result<SessionEnd>> serve() {
        return std::async(std::launch::async, [this] { return server->serve_one(10s); });
    }
    uint64_t committed() const {
        auto* r = server->replica();
        return r && r->has_committed() ? r->committed_epoch() : 0;
    }
    uint64_t digest_now() const { return memory_digest(server->replica()->memory()); }
    uint64_t digest_of(uint64_t epoch) {
        std::lock_guard lock(mu);
        return digest_at.at(epoch);
    }
};

struct Guest {
    std::unique_ptr<Vm> vm;
    Guest() {
        VmConfig cfg;
        cfg.memory_bytes = 16 * kMiB;
        vm = test::boot("churn", "pages=512 rate=100000 content=pattern", cfg);
        REQUIRE(vm->start());
    }
    ~Guest() {
        vm->stop();
        vm->resume_all();
    }
};

std::unique_ptr<Primary> start_primary(Vm& vm, const Endpoint& to, LinkSecurity security) {
    PrimaryConfig pc;
    pc.epoch = 10ms;
    pc.heartbeat = {10ms, test::scaled(2000ms)};
    pc.security = std::move(security);
    auto data = Connection::connect(to, 5s);
    REQUIRE(data);
    auto control = Connection::connect(to, 5s);
    REQUIRE(control);
    auto p = Primary::start(vm, std::move(*data), pc, {}, std::move(*control));
    REQUIRE(p);
    return std::move(*p);
}

void wait_acked(Primary& p, uint64_t epoch) {
    auto deadline = test::deadline_in(60s);
    while (p.acked_epoch() < epoch && !p.failure() && steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
    INFO((p.failure() ? p.failure()->describe() : std::string("no failure")));
    REQUIRE(p.acked_epoch() >= epoch);
}

// A good session that commits at least `epochs` checkpoints and ends in order. (The
// backup's session may still end with an error: an ACK it sends after the primary
// closed. What counts here is the primary's side and the committed replica.)
void commit_some(Backup& b, uint64_t epochs) {
    Guest g;
    auto session = b.serve();
    auto p = start_primary(*g.vm, b.server->local(), test::link_security());
    wait_acked(*p, epochs);
    p->stop();
    CHECK(p->wait());
    (void)session.get();
    CHECK(b.committed() >= epochs);
}

std::string failure_of(Primary& p) {
    auto r = p.wait();
    REQUIRE(!r);
    return r.error().describe();
}

} // namespace

TEST_CASE("key files: owner-only, at least 32 bytes, keygen writes 0600", "[link][keys]") {
    std::string dir = test::temp_path("keys");
    std::filesystem::create_directories(dir);
    write_file(dir + "/ok", 32, 0600);
    REQUIRE(load_link_key(dir + "/ok"));
    write_file(dir + "/short", 31, 0600);
    auto s = load_link_key(dir + "/short");
    REQUIRE(!s);
    CHECK(s.error().code == Errc::invalid_input);
    CHECK_THAT(s.error().message, Catch::Contains("holds 31 bytes") && Catch::Contains("at least 32"));
    for (mode_t mode : {0640, 0604, 0620}) {
        write_file(dir + "/open", 64, mode);
        auto o = load_link_key(dir + "/open");
        REQUIRE(!o);
        CHECK(o.error().code == Errc::invalid_input);
        CHECK_THAT(o.error().message, Catch::Contains("group or others") && Catch::Contains("chmod 600"));
    }
    CHECK(!load_link_key(dir + "/missing"));
    CHECK(!load_link_key(dir)); // not a regular file

    std::string gen = dir + "/gen";
    REQUIRE(write_new_link_key(gen));
    struct stat st{};
    REQUIRE(::stat(gen.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(st.st_size == 32);
    auto k1 = load_link_key(gen);
    REQUIRE(k1);
    auto again = write_new_link_key(gen); // never overwrites
    REQUIRE(!again);
    CHECK(again.error().sys_errno == EEXIST);
    std::string gen2 = dir + "/gen2";
    REQUIRE(write_new_link_key(gen2));
    auto k2 = load_link_key(gen2);
    REQUIRE(k2);
    CHECK(!std::equal(k1->bytes().begin(), k1->bytes().end(), k2->bytes().begin())); // fresh randomness

    // required without a key is refused by the library too; disabled needs none.
    CHECK(!validate(LinkSecurity{}));
    CHECK(validate(LinkSecurity{LinkSecurityMode::disabled, nullptr}));
    CHECK(!parse_link_security_mode("optional"));
}

TEST_CASE("the command line: keygen, and required without a key is a usage error", "[link][cli]") {
    std::string dir = test::temp_path("cli-keys");
    std::filesystem::create_directories(dir);
    std::string out;
    CHECK(test::run_shell(test::cli_path() + " keygen " + dir + "/k", &out) == 0);
    struct stat st{};
    REQUIRE(::stat((dir + "/k").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(st.st_size == 32);
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " keygen " + dir + "/k", &out) == 2); // exists
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:0", &out) == 2);
    CHECK_THAT(out, Catch::Contains("--link-key") && Catch::Contains("--link-security"));
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " run " + test::guest_image("churn") + " --backup 127.0.0.1:1", &out) == 2);
    CHECK_THAT(out, Catch::Contains("--link-key") && Catch::Contains("--link-security"));
    write_file(dir + "/open", 32, 0644);
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:0 --link-key " + dir + "/open", &out) == 2);
    CHECK_THAT(out, Catch::Contains("group or others"));
    write_file(dir + "/short", 16, 0600);
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:0 --link-key " + dir + "/short", &out) == 2);
    CHECK_THAT(out, Catch::Contains("holds 16 bytes"));
    out.clear();
    CHECK(test::run_shell("timeout --preserve-status -s INT 1 " + test::cli_path() + " backup --listen 127.0.0.1:0 --link-security disabled", &out) == 0);
    CHECK_THAT(out, Catch::Contains("link-security disabled") && Catch::Contains("in clear"));
}

TEST_CASE("frames: a flipped bit, a replayed, reordered or reflected frame fail; keys roll over in step", "[link][cipher]") {
    LinkSecret k{};
    k[0] = 1;
    LinkIv iv{};
    iv[3] = 9;
    auto seal = FrameCipher::create(k, iv, true, 100000);
    auto open = FrameCipher::create(k, iv, false, 100000);
    REQUIRE(seal);
    REQUIRE(open);
    std::vector<uint8_t> a(70000), b(5000);
    for (size_t i = 0; i < a.size(); ++i) a[i] = uint8_t(i * 7);
    auto frame_of = [&](FrameCipher& c, std::vector<uint8_t>& plain) {
        std::vector<uint8_t> f(plain.size() + kFrameOverhead);
        std::span<const uint8_t> pieces[2] = {std::span(plain).first(plain.size() / 3), std::span(plain).subspan(plain.size() / 3)};
        REQUIRE(c.seal(pieces, plain.size(), f.data()));
        return f;
    };
    // Five frames cross two key updates (100000 bytes each) and stay in step.
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < 5; ++i) frames.push_back(frame_of(**seal, a));
    for (auto& f : frames) {
        std::vector<uint8_t> out(a.size());
        REQUIRE((*open)->open(f, out.data()));
        CHECK(out == a);
    }
    auto next = frame_of(**seal, b);
    std::vector<uint8_t> out(a.size()); // room for the largest frame's plaintext
    // Replaying an old frame, one bit flipped anywhere, or a frame sealed for the other
    // direction (another IV) fails the tag.
    CHECK(!(*open)->open(frames[4], out.data()));
    auto fresh_opener = [&] { return std::move(*FrameCipher::create(k, iv, false, 100000)); };
    for (size_t at : {size_t(0), size_t(4), size_t(100), next.size() - 1}) {
        auto o = fresh_opener();
        for (int i = 0; i < 5; ++i) REQUIRE(o->open(frames[size_t(i)], std::vector<uint8_t>(a.size()).data()));
        auto bad = next;
        bad[at] ^= 0x80;
        auto r = o->open(bad, out.data());
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
    }
    LinkIv other = iv;
    other[0] ^= 1;
    auto reflect = FrameCipher::create(k, other, true);
    auto o = fresh_opener();
    CHECK(!o->open(frame_of(**reflect, b), out.data()));
    // Out of order: the second frame first.
    auto o2 = fresh_opener();
    CHECK(!o2->open(frames[1], std::vector<uint8_t>(a.size()).data()));
}

TEST_CASE("a secured connection carries small and large records intact", "[link][transport]") {
    auto [client, server] = test::connected_pair();
    auto key = test::shared_link_key();
    auto srv = std::async(std::launch::async, [&, s = server.get()] { return secure_server(*s, *key); });
    REQUIRE(secure_client(*client, *key, LinkChannel::control));
    auto ch = srv.get();
    REQUIRE(ch);
    CHECK(*ch == LinkChannel::control);
    CHECK(client->encrypted());
    std::vector<uint8_t> big(5 * kMiB + 13);
    for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i ^ (i >> 9));
    auto sender = std::async(std::launch::async, [&]() -> Result<void> { // checked on this thread
        for (int i = 0; i < 3; ++i) {
            US_TRYV(client->send_record(kHeartbeat, encode_u64s({uint64_t(i), 2})));
            US_TRYV(client->send_record(kPages, big));
        }
        return {};
    });
    for (int i = 0; i < 3; ++i) {
        auto hb = server->recv_record();
        REQUIRE(hb);
        CHECK(hb->body == encode_u64s({uint64_t(i), 2}));
        auto r = server->recv_record();
        REQUIRE(r);
        CHECK(r->body == big);
    }
    REQUIRE(sender.get());
    REQUIRE(server->send_record(kAck, encode_u64s({7})));
    auto ack = client->recv_record();
    REQUIRE(ack);
    CHECK(ack->body == encode_u64s({7}));
}

TEST_CASE("a backup with another key is refused before any guest memory is sent", "[link][kvm]") {
    Backup b(test::other_link_security());
    auto session = b.serve();
    Guest g;
    auto p = start_primary(*g.vm, b.server->local(), test::link_security());
    auto primary_error = failure_of(*p);
    CHECK_THAT(primary_error, Catch::Contains("link authentication failed") && Catch::Contains("does not hold the same key"));
    CHECK(p->acked_epoch() == 0);
    auto r = session.get();
    REQUIRE(!r);
    CHECK(r.error().code == Errc::invalid_input); // not a failed primary: no promotion
    CHECK_THAT(r.error().describe(), Catch::Contains("link authentication failed") && Catch::Contains("does not hold the same key"));
    CHECK(b.server->replica() == nullptr); // no stream header was ever read
}

TEST_CASE("a primary with another key is refused; the backup keeps its checkpoint", "[link][kvm]") {
    Backup b(test::link_security());
    commit_some(b, 5);
    uint64_t epoch = b.committed();
    uint64_t digest = b.digest_now();
    REQUIRE(digest == b.digest_of(epoch));

    auto session = b.serve();
    Guest g;
    auto p = start_primary(*g.vm, b.server->local(), test::other_link_security());
    CHECK_THAT(failure_of(*p), Catch::Contains("link authentication failed") && Catch::Contains("does not hold the same key"));
    auto r = session.get();
    REQUIRE(!r);
    CHECK(r.error().code == Errc::invalid_input);
    CHECK_THAT(r.error().describe(), Catch::Contains("link authentication failed: the primary"));
    CHECK(b.committed() == epoch);
    CHECK(b.digest_now() == digest);
}

TEST_CASE("one flipped byte in the encrypted stream is detected, early or after commits", "[link][kvm]") {
    Backup b(test::link_security());
    SECTION("inside the initial synchronization") {
        Proxy mitm(b.server->local());
        mitm.flip_at(4000); // past the handshake (96 bytes) and the sealed stream header
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, mitm.local(), test::link_security());
        auto perr = failure_of(*p);
        CHECK(mitm.flipped());
        CHECK_THAT(perr, Catch::Contains("rejected the stream") && Catch::Contains("link authentication failed"));
        auto r = session.get();
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().describe(), Catch::Contains("link authentication failed") && Catch::Contains("authentication tag"));
        REQUIRE(b.server->replica());
        CHECK(!b.server->replica()->has_committed());
    }
    SECTION("after checkpoints were committed") {
        Proxy mitm(b.server->local());
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, mitm.local(), test::link_security());
        wait_acked(*p, 10);
        mitm.arm_flip();
        auto perr = failure_of(*p);
        CHECK(mitm.flipped());
        CHECK_THAT(perr, Catch::Contains("link authentication failed"));
        auto r = session.get();
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().describe(), Catch::Contains("authentication tag"));
        // The replica is exactly the last committed checkpoint: nothing of the tampered
        // frame's checkpoint was applied.
        uint64_t epoch = b.committed();
        CHECK(epoch >= 10);
        CHECK(b.digest_now() == b.digest_of(epoch));
        CHECK(p->acked_epoch() <= epoch);
    }
}

TEST_CASE("a replayed old session is refused; the backup keeps its checkpoint", "[link][kvm]") {
    Backup b(test::link_security());
    std::vector<uint8_t> old;
    {
        Proxy recorder(b.server->local());
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, recorder.local(), test::link_security());
        wait_acked(*p, 5);
        p->stop();
        CHECK(p->wait());
        (void)session.get();
        old = recorder.recorded();
    }
    REQUIRE(old.size() > 100000);
    uint64_t epoch = b.committed();
    uint64_t digest = b.digest_now();
    // Replay every byte the primary sent, as fast as the backup takes them.
    auto session = b.serve();
    auto c = Connection::connect(b.server->local(), 5s);
    REQUIRE(c);
    std::span<const uint8_t> all(old);
    (void)(*c)->send({&all, 1}); // the backup may close before taking all of it
    auto r = session.get();
    REQUIRE(!r);
    CHECK(r.error().code == Errc::invalid_input);
    CHECK_THAT(r.error().describe(), Catch::Contains("link authentication failed") && Catch::Contains("does not hold the same key"));
    CHECK(b.committed() == epoch);
    CHECK(b.digest_now() == digest);
}

TEST_CASE("a link-security mismatch is a clear error on both sides", "[link][kvm]") {
    const LinkSecurity disabled{LinkSecurityMode::disabled, nullptr};
    SECTION("the backup has it disabled") {
        Backup b(disabled);
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, b.server->local(), test::link_security());
        CHECK_THAT(failure_of(*p), Catch::Contains("refused the link") && Catch::Contains("link security mismatch"));
        auto r = session.get();
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().describe(), Catch::Contains("link security mismatch") && Catch::Contains("disabled"));
        CHECK(b.server->replica() == nullptr);
    }
    SECTION("the primary has it disabled") {
        Backup b(test::link_security());
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, b.server->local(), disabled);
        CHECK_THAT(failure_of(*p), Catch::Contains("refused the stream") && Catch::Contains("link security mismatch"));
        auto r = session.get();
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().describe(), Catch::Contains("link security mismatch") && Catch::Contains("disabled"));
        CHECK(b.server->replica() == nullptr);
    }
    SECTION("both have it disabled: the link runs in clear") {
        Backup b(disabled);
        auto session = b.serve();
        Guest g;
        auto p = start_primary(*g.vm, b.server->local(), disabled);
        wait_acked(*p, 3);
        p->stop();
        CHECK(p->wait());
        (void)session.get();
        CHECK(b.committed() >= 3);
    }
}
