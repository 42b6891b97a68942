// Online verification of the replica (replicator/verification.hpp, DESIGN.md invariant 7)
// against a fake VM, without KVM: passes over a running VM match on both sides; a page
// left out of a checkpoint and a wrong vCPU register are found and named exactly; a
// resync puts the replica right; a replica known to differ is never promoted; a backup
// that does not verify leaves the pass unanswered, not failed; the record formats refuse
// what does not fit.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include "failover/promotion.hpp"
#include "replicator/primary.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/fake_vm.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace understudy::test;
using namespace std::chrono;

namespace {

constexpr uint32_t kSlicePages = 512; // a 16 MiB guest (4096 pages) in 8 checkpoints

PrimaryConfig config() {
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = milliseconds(5);
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    pc.verify_pages_per_checkpoint = kSlicePages;
    pc.verify_interval = seconds(0); // passes on request only, unless a test says otherwise
    return pc;
}

std::unique_ptr<FakeVm> running_vm() {
    FakeVmConfig fc;
    fc.memory_bytes = 16 * hv::kMiB;
    fc.vcpus = 2;
    fc.pages = 400; // vCPU writes stay below the pages the tests write as a device
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    vm->start();
    vm->resume_all();
    return vm;
}

// Reports from either side's hook thread, read on the test thread.
struct Reports {
    std::mutex mu;
    std::vector<VerifyReport> primary, backup;
    std::vector<std::optional<std::string>> backup_difference; // the replica's known_difference() at each backup report
    BackupServer* server = nullptr;

    PrimaryHooks primary_hooks() {
        PrimaryHooks h;
        h.on_verified = [this](const VerifyReport& r) {
            std::lock_guard lock(mu);
            primary.push_back(r);
        };
        return h;
    }
    BackupHooks backup_hooks(std::function<void(uint64_t, const BackupReplica&)> on_commit) {
        BackupHooks h;
        h.on_commit = std::move(on_commit);
        h.on_verified = [this](const VerifyReport& r) {
            std::lock_guard lock(mu);
            backup.push_back(r);
            // On the session's thread, which owns the replica.
            backup_difference.push_back(server->replica()->known_difference());
        };
        return h;
    }
    size_t primary_count() {
        std::lock_guard lock(mu);
        return primary.size();
    }
};

struct Pair {
    Reports reports;
    BackupThread backup;
    std::unique_ptr<FakeVm> vm = running_vm();
    std::unique_ptr<Primary> primary;

    explicit Pair(PrimaryConfig cfg = config(), PrimaryHooks extra = {},
                  std::function<void(uint64_t, const BackupReplica&)> on_commit = {})
        : backup(reports.backup_hooks(std::move(on_commit))) {
        reports.server = backup.server.get();
        auto hooks = reports.primary_hooks();
        hooks.tamper = std::move(extra.tamper);
        auto data = connect_to(*backup.server);
        auto p = Primary::start(*vm, std::move(data), cfg, std::move(hooks), connect_to(*backup.server));
        REQUIRE(p);
        primary = std::move(*p);
        REQUIRE(wait_until([&] { return primary->is_protected() || primary->failure(); }, seconds(30)));
        REQUIRE(!primary->failure());
    }
    // Requests a pass and waits for the primary's report of it.
    VerifyReport pass() {
        auto n = primary->verify();
        REQUIRE(n);
        bool done = wait_until(
            [&] {
                auto t = primary->verification();
                return (t.last && t.last->pass >= *n) || primary->failure();
            },
            seconds(30));
        INFO((primary->failure() ? primary->failure()->describe() : std::string("no failure")));
        REQUIRE(done);
        REQUIRE(!primary->failure());
        auto last = *primary->verification().last;
        CHECK(last.pass == *n);
        return last;
    }
    void finish() {
        primary->stop();
        CHECK(primary->wait());
        backup.wait_sessions(1);
        std::lock_guard lock(backup.mu);
        CHECK(backup.session_errors.empty());
    }
};

// A page no vCPU of running_vm() writes: tests change it as a device would.
constexpr uint64_t kDevicePage = 4000;

// Writes the device page until a write lands (the VM may be paused for a moment).
void device_write(FakeVm& vm, uint8_t value) {
    REQUIRE(wait_until([&] { return vm.vmm_write(kDevicePage, value); }, seconds(10)));
}

} // namespace

TEST_CASE("verification passes over a running VM match, page by page and state, on both sides", "[verification]") {
    Pair pair;
    for (int i = 0; i < 3; ++i) {
        auto r = pair.pass();
        INFO(r.describe());
        CHECK(r.matches());
        CHECK(r.pages_checked == pair.vm->memory().page_count());
        CHECK(r.last_epoch - r.first_epoch + 1 == pair.vm->memory().page_count() / kSlicePages);
    }
    // The digests are taken in the pause and counted in it, as a part of their own.
    size_t with_digests = 0;
    for (const auto& f : pair.primary->recent_epochs()) {
        CHECK(f.verify_ns <= f.pause_ns);
        with_digests += f.verify_ns > 0;
    }
    CHECK(with_digests == 3 * pair.vm->memory().page_count() / kSlicePages); // one checkpoint per slice, no other
    const auto totals = pair.primary->verification();
    CHECK(totals.passes == 3);
    CHECK(totals.mismatches == 0);
    CHECK(totals.resyncs == 0);
    pair.finish();
    std::lock_guard lock(pair.reports.mu);
    REQUIRE(pair.reports.backup.size() == 3); // the backup reached the same verdicts itself
    for (const auto& r : pair.reports.backup) CHECK(r.matches());
    for (const auto& d : pair.reports.backup_difference) CHECK(!d);
}

TEST_CASE("passes start by themselves at the configured interval", "[verification]") {
    auto cfg = config();
    cfg.verify_interval = seconds(1);
    Pair pair(cfg);
    REQUIRE(wait_until([&] { return pair.reports.primary_count() >= 2 || pair.primary->failure(); }, seconds(30)));
    REQUIRE(!pair.primary->failure());
    std::lock_guard lock(pair.reports.mu);
    for (const auto& r : pair.reports.primary) CHECK(r.matches());
}

TEST_CASE("a page left out of a checkpoint is found and named; a resync puts the replica right", "[verification]") {
    // The test-only hook drops the device page from the first checkpoint that carries it.
    std::atomic<bool> armed{false}, dropped{false};
    PrimaryHooks tamper;
    tamper.tamper = [&](uint64_t, std::vector<uint64_t>& indices, PrefaultedBuffer& pages, hv::VmState&) {
        if (!armed || dropped) return;
        for (size_t i = 0; i < indices.size(); ++i)
            if (indices[i] == kDevicePage) {
                indices.erase(indices.begin() + i);
                std::memmove(pages.data() + i * hv::kPageSize, pages.data() + (i + 1) * hv::kPageSize,
                             pages.size() - (i + 1) * hv::kPageSize);
                pages.truncate(pages.size() - hv::kPageSize);
                dropped = true;
                return;
            }
    };
    auto cfg = config();
    SECTION("resync on a mismatch (the default)") {
        Pair pair(cfg, tamper);
        armed = true;
        device_write(*pair.vm, 0xa5);
        REQUIRE(wait_until([&] { return dropped.load(); }, seconds(10)));
        auto found = pair.pass();
        INFO(found.describe());
        CHECK(!found.matches());
        CHECK(found.differing_pages == std::vector<uint64_t>{kDevicePage});
        CHECK(found.state_differs == 0);
        CHECK(found.describe().find("page index 4000") != std::string::npos);
        // The resync went out in the next checkpoint: the next pass matches.
        auto after = pair.pass();
        INFO(after.describe());
        CHECK(after.matches());
        auto totals = pair.primary->verification();
        CHECK(totals.mismatches == 1);
        CHECK(totals.resyncs == 1);
        pair.finish();
        std::lock_guard lock(pair.reports.mu);
        REQUIRE(pair.reports.backup.size() == 2);
        CHECK(pair.reports.backup[0].differing_pages == std::vector<uint64_t>{kDevicePage});
        REQUIRE(pair.reports.backup_difference[0]);
        CHECK(pair.reports.backup_difference[0]->find("1 page (first: page index 4000)") != std::string::npos);
        CHECK(!pair.reports.backup_difference[1]);
    }
    SECTION("report only: the replica stays known to differ, and is never promoted") {
        cfg.resync_on_mismatch = false;
        Pair pair(cfg, tamper);
        armed = true;
        device_write(*pair.vm, 0x5a);
        REQUIRE(wait_until([&] { return dropped.load(); }, seconds(10)));
        auto found = pair.pass();
        CHECK(found.differing_pages == std::vector<uint64_t>{kDevicePage});
        CHECK(pair.pass().differing_pages == std::vector<uint64_t>{kDevicePage}); // still there
        CHECK(pair.primary->verification().resyncs == 0);
        pair.finish();
        pair.backup.server->stop();
        pair.backup.thread.join();
        auto replica = pair.backup.server->take_replica();
        REQUIRE(replica);
        REQUIRE(replica->known_difference());
        auto promoted = failover::promote(std::move(replica), hv::VmConfig{}, nullptr);
        REQUIRE(!promoted);
        CHECK(promoted.error().message.find("not promoting: online verification found this replica different") == 0);
    }
}

TEST_CASE("a page gone wrong on the backup is found, and the resync sends it whole, not against that copy", "[verification]") {
    // A fault of the backup's own (a bit flipped in its memory after a commit): the primary's
    // encoder believes the backup holds the page, and would send it as SAME or as a delta.
    std::atomic<bool> armed{false}, corrupted{false};
    auto corrupt = [&](uint64_t, const BackupReplica& r) {
        if (!armed || corrupted) return;
        const_cast<uint8_t*>(r.memory().page_ptr(kDevicePage))[100] ^= 0x40;
        corrupted = true;
    };
    Pair pair(config(), {}, corrupt);
    device_write(*pair.vm, 0x77);
    const uint64_t written_at = pair.primary->acked_epoch();
    REQUIRE(wait_until([&] { return pair.primary->acked_epoch() > written_at + 2 || pair.primary->failure(); }, seconds(10)));
    armed = true;
    REQUIRE(wait_until([&] { return corrupted.load(); }, seconds(10)));
    auto found = pair.pass();
    INFO(found.describe());
    CHECK(found.differing_pages == std::vector<uint64_t>{kDevicePage});
    auto after = pair.pass(); // fails replication (the backup rejects the stream) if the resync referred to its copy
    INFO(after.describe());
    CHECK(after.matches());
    CHECK(pair.primary->verification().resyncs == 1);
    pair.finish();
}

TEST_CASE("a wrong vCPU register is found and named", "[verification]") {
    PrimaryHooks tamper;
    tamper.tamper = [](uint64_t, std::vector<uint64_t>&, PrefaultedBuffer&, hv::VmState& s) {
        if (s.vcpus.size() > 1) s.vcpus[1].regs.rbx ^= 1; // what the backup receives, not what the VM holds
    };
    auto cfg = config();
    cfg.resync_on_mismatch = false;
    Pair pair(cfg, tamper);
    auto found = pair.pass();
    INFO(found.describe());
    CHECK(found.differing_pages.empty());
    CHECK(found.state_differs == (1u << 1));
    CHECK(found.describe().find("the state of vCPU 1 differs") != std::string::npos);
    CHECK(pair.primary->verification().resyncs == 0); // the state goes whole into every checkpoint
    pair.finish();
}

namespace {
// A relay between a primary and a backup, link security off, that drops every VERIFY
// record of the checkpoint stream: the backup then acts as one that predates
// verification (it would skip the optional record).
struct DroppingRelay {
    std::unique_ptr<Listener> listener;
    std::mutex mu;
    std::vector<std::unique_ptr<Connection>> conns; // guarded by mu, as is pumps
    std::vector<std::thread> pumps;
    std::thread acceptor;

    explicit DroppingRelay(Endpoint backup) {
        auto l = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
        REQUIRE(l);
        listener = std::make_unique<Listener>(std::move(*l));
        acceptor = std::thread([this, backup] {
            for (int n = 0; n < 2; ++n) { // the checkpoint stream, then the control connection
                auto in = listener->accept(seconds(30));
                if (!in) return;
                auto out = Connection::connect(backup, seconds(5));
                if (!out) return;
                std::lock_guard lock(mu);
                Connection* a = in->get();
                Connection* b = out->get();
                conns.push_back(std::move(*in));
                conns.push_back(std::move(*out));
                pumps.emplace_back([a, b, n] { pump(*a, *b, n == 0, true); });
                pumps.emplace_back([a, b] { pump(*b, *a, false, false); });
            }
        });
    }
    // Forwards the 64-byte first message (primary to backup), then records.
    static void pump(Connection& from, Connection& to, bool drop_verify, bool hello) {
        if (hello) {
            std::array<uint8_t, 64> h;
            std::span<const uint8_t> s(h);
            if (!from.recv_exact(h) || !to.send({&s, 1})) return to.shutdown();
        }
        for (;;) {
            auto r = from.recv_record();
            if (!r) return to.shutdown();
            if (drop_verify && r->type == kVerify) continue;
            if (!to.send_record(r->type, r->body)) return from.shutdown();
        }
    }
    ~DroppingRelay() {
        listener->interrupt();
        acceptor.join();
        for (auto& c : conns) c->shutdown();
        for (auto& t : pumps) t.join();
    }
};
} // namespace

TEST_CASE("a backup that does not verify leaves the pass unanswered, and no pass runs after", "[verification]") {
    BackupConfig bc;
    bc.security = {LinkSecurityMode::disabled, nullptr};
    bc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, bc);
    REQUIRE(server);
    std::jthread serving([&] { (void)(*server)->serve_one(seconds(30)); });
    DroppingRelay relay((*server)->local());
    auto vm = running_vm();
    auto cfg = config();
    cfg.security = {LinkSecurityMode::disabled, nullptr};
    auto connect = [&] {
        auto c = Connection::connect(relay.listener->local(), seconds(5));
        REQUIRE(c);
        return std::move(*c);
    };
    auto data = connect();
    auto p = Primary::start(*vm, std::move(data), cfg, {}, connect());
    REQUIRE(p);
    auto& primary = **p;
    REQUIRE(wait_until([&] { return primary.is_protected() || primary.failure(); }, seconds(30)));
    auto n = primary.verify();
    REQUIRE(n);
    REQUIRE(wait_until([&] { return primary.verification().last.has_value() || primary.failure(); }, seconds(30)));
    INFO((primary.failure() ? primary.failure()->describe() : std::string("no failure")));
    CHECK(!primary.failure()); // still protected: an old backup is no failed one
    auto t = primary.verification();
    CHECK(t.last->unanswered);
    CHECK(std::string(t.last->verdict()) == "unanswered");
    CHECK(!t.backup_verifies);
    auto again = primary.verify();
    REQUIRE(!again);
    CHECK(again.error().message.find("does not verify") != std::string::npos);
    primary.stop();
    CHECK(primary.wait());
    (*server)->stop();
}

TEST_CASE("VERIFY and VERIFY_RESULT bodies are checked against the replica's shape", "[verification]") {
    VerifySlice s;
    s.epoch = 7;
    s.pass = 2;
    s.first_page = 4000;
    s.state = {1, 2, 3, 4};
    s.pages.assign(96, 5);
    s.flags = kVerifyLastSlice;
    auto body = encode_verify(s);
    auto back = decode_verify(body, 4096, 2);
    REQUIRE(back);
    CHECK(back->pages == s.pages);
    CHECK(back->state == s.state);
    CHECK(!decode_verify(body, 4095, 2));    // pages beyond memory
    CHECK(!decode_verify(body, 4096, 3));    // a digest per vCPU, plus the clock and the devices
    auto cut = body;
    cut.pop_back();
    CHECK(!decode_verify(cut, 4096, 2));
    auto flagged = body;
    flagged[28] = 2; // unknown flag
    CHECK(!decode_verify(flagged, 4096, 2));

    VerifyOutcome o;
    o.epoch = 7;
    o.pass = 2;
    o.first_page = 4000;
    o.page_count = 96;
    o.differing_pages = {4001, 4090};
    o.state_differs = kStateVmClock | 1;
    auto rb = encode_verify_result(o);
    auto ro = decode_verify_result(rb);
    REQUIRE(ro);
    CHECK(ro->differing_pages == o.differing_pages);
    CHECK(ro->state_differs == o.state_differs);
    o.differing_pages = {4090, 4001}; // out of order
    CHECK(!decode_verify_result(encode_verify_result(o)));
    o.differing_pages = {5000}; // outside the slice
    CHECK(!decode_verify_result(encode_verify_result(o)));
    CHECK(state_parts(kStateVmClock | kStateDevices | 1) == "vCPU 0, the VM clock, the devices");
}
