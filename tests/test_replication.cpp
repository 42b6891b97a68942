// End to end over loopback: a protected churn guest, a backup that applies whole
// checkpoints only, and a primary killed at random moments.
#include <catch2/catch.hpp>

#include <xxhash.h>

#include <map>
#include <random>
#include <set>
#include <thread>

#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"
#include "replicator/primary.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::abi;
using namespace understudy::replicator;
using understudy::test::BackupThread;
using understudy::test::connect_to;
using namespace std::chrono;

namespace {

// Memory digest plus the registers that say where each vCPU was.
uint64_t image_digest(const GuestMemory& mem, const VmState& s) {
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (uint64_t p = 0; p < mem.page_count(); ++p) XXH3_64bits_update(st, mem.page_ptr(p), hv::kPageSize);
    for (const auto& v : s.vcpus) {
        XXH3_64bits_update(st, &v.regs, sizeof v.regs);
        XXH3_64bits_update(st, &v.sregs.cr3, sizeof v.sregs.cr3);
    }
    uint64_t d = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return d;
}

} // namespace

TEST_CASE("the backup's committed replica equals the primary at sampled checkpoints", "[replication][kvm]") {
    std::mutex mu;
    std::map<uint64_t, uint64_t> primary_digest, backup_digest;
    std::vector<std::string> capture_errors; // from the primary's thread: checked on this one
    std::vector<VerifyReport> primary_passes, backup_passes; // online verification, both sides
    BackupHooks bh;
    bh.on_verified = [&](const VerifyReport& r) {
        std::lock_guard lock(mu);
        backup_passes.push_back(r);
    };
    bh.on_commit = [&](uint64_t epoch, const BackupReplica& r) {
        if (epoch % 25 != 1) return;
        uint64_t d = image_digest(r.memory(), r.state());
        std::lock_guard lock(mu);
        backup_digest[epoch] = d;
    };
    BackupThread backup(bh);

    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    cfg.vcpus = 2;
    auto vm = test::boot("churn", "pages=2048 rate=100000 content=pattern", cfg);
    REQUIRE(vm->start());
    PrimaryConfig pc;
    pc.security = test::link_security();
    pc.epoch = milliseconds(5);
    // Two busy vCPUs on two cores (four under a sanitizer's weight): a generous timeout
    // keeps a starved heartbeat thread from ending the session.
    pc.heartbeat = {milliseconds(10), test::scaled(milliseconds(2000))};
    pc.verify_interval = seconds(1); // online verification of the real VM's pages and vCPU state
    pc.verify_pages_per_checkpoint = 2048;
    PrimaryHooks ph;
    ph.on_verified = [&](const VerifyReport& r) {
        std::lock_guard lock(mu);
        primary_passes.push_back(r);
    };
    ph.on_capture = [&](uint64_t epoch, hv::Checkpointable& v) {
        if (epoch % 25 != 1) return;
        auto s = v.save_state();
        std::lock_guard lock(mu);
        if (!s) capture_errors.push_back(s.error().describe());
        else primary_digest[epoch] = image_digest(v.memory(), *s);
    };
    // With a control connection: heartbeats flow beside the checkpoints all along.
    auto data = connect_to(*backup.server);
    auto primary = Primary::start(*vm, std::move(data), pc, ph, connect_to(*backup.server));
    REQUIRE(primary);
    REQUIRE(test::wait_until([&] { return (*primary)->is_protected() || (*primary)->failure(); }, seconds(60)));
    REQUIRE((*primary)->verify()); // a pass at once, besides the scheduled ones
    auto deadline = test::deadline_in(seconds(120));
    while (((*primary)->acked_epoch() < 520 || (*primary)->verification().passes == 0) && steady_clock::now() < deadline &&
           !(*primary)->failure() && !vm->stop_reason())
        std::this_thread::sleep_for(milliseconds(20));
    INFO(test::describe_run(*vm, (*primary)->failure()));
    REQUIRE((*primary)->acked_epoch() >= 520);
    auto figures = (*primary)->recent_epochs();
    CHECK((*primary)->heartbeats().received > 50);
    CHECK(backup.server->heartbeats().received > 50);
    (*primary)->stop();
    CHECK((*primary)->wait());
    {
        std::lock_guard lock(mu);
        CHECK(capture_errors.empty());
    }
    // A stop on purpose says GOODBYE: the backup ends the session without an error.
    backup.wait_sessions(1);
    {
        std::lock_guard lock(backup.mu);
        CHECK(backup.sessions == 1);
        CHECK(backup.session_errors.empty());
    }
    vm->stop();
    vm->resume_all();

    std::lock_guard lock(mu);
    size_t compared = 0;
    for (auto [epoch, d] : backup_digest) {
        auto it = primary_digest.find(epoch);
        REQUIRE(it != primary_digest.end());
        INFO("epoch " << epoch);
        CHECK(it->second == d);
        ++compared;
    }
    CHECK(compared >= 20);
    // Every verification pass found the replica equal to the VM, on both sides.
    REQUIRE(!primary_passes.empty());
    for (const auto& r : primary_passes) {
        INFO(r.describe());
        CHECK(r.matches());
        CHECK(r.pages_checked == vm->memory().page_count());
    }
    CHECK(backup_passes.size() == primary_passes.size());
    for (const auto& r : backup_passes) CHECK(r.matches());
    // Something was actually replicated each epoch, and deltas were used.
    uint64_t dirty = 0, xor_pages = 0;
    for (const auto& f : figures) {
        dirty += f.dirty_pages;
        xor_pages += f.codec.count(PageEncoding::xor_lz4);
    }
    CHECK(dirty > 1000);
    CHECK(xor_pages > 0);
}

TEST_CASE("request_checkpoint ends a long epoch early; without it the epoch runs its length", "[replication][kvm]") {
    BackupThread backup;
    VmConfig cfg;
    cfg.memory_bytes = 16 * kMiB;
    auto vm = test::boot("churn", "pages=64 rate=1000", cfg);
    REQUIRE(vm->start());
    PrimaryConfig pc;
    pc.security = test::link_security();
    // The epoch (at most the 10 s allowed), the waits and the bound scale together: a
    // requested checkpoint must come within half an epoch, on any host.
    const milliseconds epoch = std::min<milliseconds>(test::scaled(milliseconds(3000)), seconds(10));
    pc.epoch = epoch;
    auto primary = Primary::start(*vm, connect_to(*backup.server), pc);
    INFO((primary ? std::string() : primary.error().describe()));
    REQUIRE(primary);
    auto deadline = test::deadline_in(seconds(30));
    while (!(*primary)->is_protected() && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(1));
    REQUIRE((*primary)->is_protected());
    // Epoch 2 started when epoch 1 was captured; asking now ends it long before 3 s.
    uint64_t before = (*primary)->acked_epoch();
    auto asked = steady_clock::now();
    (*primary)->request_checkpoint(asked + milliseconds(5));
    while ((*primary)->acked_epoch() == before && steady_clock::now() < asked + epoch) std::this_thread::sleep_for(milliseconds(1));
    CHECK((*primary)->acked_epoch() == before + 1);
    CHECK(steady_clock::now() - asked < epoch / 2);
    // The request was consumed: the next epoch runs its full length.
    std::this_thread::sleep_for(epoch / 3);
    CHECK((*primary)->acked_epoch() == before + 1);
    (*primary)->stop();
    CHECK((*primary)->wait());
    vm->stop();
    vm->resume_all();
}

TEST_CASE("killing the primary at random moments leaves one whole checkpoint on the backup", "[replication][kvm]") {
    BackupThread backup;
    std::mt19937 rng(std::random_device{}());
    int killed_in_sync = 0, killed_protected = 0, checked = 0, before_header = 0, kept_earlier = 0;
    uint64_t last_committed = 0, kept_session = 0, kept_epoch = 0;
    for (int round = 0; round < 50; ++round) {
        VmConfig cfg;
        cfg.memory_bytes = 16 * kMiB;
        cfg.vcpus = 2;
        auto vm = test::boot("churn", "pages=512 content=pattern", cfg);
        REQUIRE(vm->start());
        PrimaryConfig pc;
        pc.security = test::link_security();
        pc.epoch = milliseconds(2 + rng() % 20);
        std::atomic<bool> syncing{false};
        PrimaryHooks hooks;
        hooks.on_sync_progress = [&](const SyncProgress&) { syncing = true; };
        // The checkpoints captured before churn wrote its header (in the pause, so exact).
        std::mutex captured_mu;
        std::set<uint64_t> before_header_epochs;
        hooks.on_capture = [&](uint64_t epoch, hv::Checkpointable& v) {
            if (test::churn_header_gpa(v.memory())) return;
            std::lock_guard lock(captured_mu);
            before_header_epochs.insert(epoch);
        };
        auto primary = Primary::start(*vm, connect_to(*backup.server), pc, hooks);
        REQUIRE(primary);
        auto deadline = test::deadline_in(seconds(30));
        if (round == 49) {
            // The last round leaves a checkpoint of a running churn for the restore below.
            auto header = test::wait_churn_header(*vm, seconds(20));
            REQUIRE(header.has_value());
            uint64_t target = (*primary)->acked_epoch() + 3;
            while ((*primary)->acked_epoch() < target && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(1));
            std::this_thread::sleep_for(microseconds(rng() % 20000));
        } else if (round % 2 == 0) {
            // During the initial synchronization: once its first round has been sent.
            while (!syncing && !(*primary)->is_protected() && steady_clock::now() < deadline) std::this_thread::sleep_for(microseconds(200));
            std::this_thread::sleep_for(microseconds(rng() % 3000));
        } else {
            // While protected and churn runs: between checkpoints or in the middle of one.
            REQUIRE(test::wait_churn_header(*vm, seconds(20)).has_value());
            while (!(*primary)->is_protected() && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(1));
            std::this_thread::sleep_for(microseconds(rng() % 100000));
        }
        if ((*primary)->is_protected()) ++killed_protected; else ++killed_in_sync;
        const uint64_t session = (*primary)->session_id();
        (*primary)->stop(); // the connection drops wherever the stream is
        (void)(*primary)->wait();
        vm->stop();
        vm->resume_all();
        vm->wait();
        backup.wait_sessions(round + 1);

        const BackupReplica* r = backup.server->replica();
        if (!r || !r->has_committed()) continue;
        INFO("round " << round << ", committed epoch " << r->committed_epoch());
        if (r->committed_session_id() != session) {
            // Killed before this session's first commit: the backup keeps the checkpoint
            // an earlier round left, unchanged (and checked when that round committed it).
            CHECK(r->committed_session_id() == kept_session);
            CHECK(r->committed_epoch() == kept_epoch);
            ++kept_earlier;
            continue;
        }
        kept_session = session;
        kept_epoch = r->committed_epoch();
        auto header = test::churn_header_gpa(r->memory());
        if (!header) {
            // Committed before churn wrote its header: only possible for a checkpoint
            // captured while the guest was still booting (the initial one, or a later one
            // when the guest booted slowly and the primary was killed soon after).
            std::lock_guard lock(captured_mu);
            CHECK(before_header_epochs.count(r->committed_epoch()) == 1);
            ++before_header;
            continue;
        }
        test::ChurnProgress p{};
        CHECK(test::check_churn(r->memory(), *header, &p) == "");
        ++checked;
        last_committed = r->committed_epoch();
    }
    INFO("killed during sync " << killed_in_sync << ", while protected " << killed_protected << "; stamps checked "
                                << checked << " times, " << before_header << " committed images predate churn's header, "
                                << kept_earlier << " rounds left an earlier round's checkpoint");
    CHECK(checked >= 20);
    CHECK(killed_protected >= 10);
    CHECK(killed_in_sync >= 5);
    CHECK(last_committed > 0);

    // The committed image restores as a snapshot and the guest runs on from it.
    std::string snap = test::temp_path("backup.snap");
    const BackupReplica* r = backup.server->replica();
    REQUIRE(write_snapshot(r->memory(), r->state(), snap));
    test::check_churn_snapshot_continues(snap);
}

TEST_CASE("SIGKILL of a primary process leaves the backup process a restorable checkpoint", "[replication][kvm]") {
    std::string snap = test::temp_path("killed-primary.snap");
    std::string log = test::temp_path("backup.log");
    // A backup process on a free port, serving one session.
    const uint16_t port = test::free_loopback_port();
    std::string out;
    // The product's 100 ms failure timeout, scaled on slow hosts on both sides: this
    // checks what the backup keeps after a kill, not how fast it notices one.
    std::string key = " --link-key " + test::write_link_key_file(test::temp_path("link.key")) + " --failure-timeout-ms " +
                      std::to_string(test::scaled(milliseconds(100)).count());
    REQUIRE(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:" + std::to_string(port) + " --sessions 1 --snapshot-to " +
                                snap + key + " > " + log + " 2>&1 & echo $! > " + log + ".pid",
                            &out) == 0);
    // A protected primary process, killed without warning once it has been protected a
    // while. The shell's waits are tenths of a second: 10 s each, scaled.
    std::string tenths = std::to_string(test::scaled(seconds(10)).count() / 100);
    std::string run = test::cli_path() + " run " + test::guest_image("churn") +
                      " -m 64M --vcpus 2 -c 'pages=2048 content=pattern' --epoch-ms 10 --backup 127.0.0.1:" + std::to_string(port) + key;
    int rc = test::run_shell("(" + run + " > " + log + ".primary 2>&1 & pid=$!; "
                             "for i in $(seq 1 " + tenths + "); do grep -q '^checkpoints:' " + log + ".primary && break; sleep 0.1; done; "
                             "sleep 0.$((RANDOM % 9 + 1)); kill -9 $pid; wait $pid 2>/dev/null; "
                             "for i in $(seq 1 " + tenths + "); do kill -0 $(cat " + log + ".pid) 2>/dev/null || break; sleep 0.1; done)",
                             &out);
    INFO(out);
    CHECK(rc == 0);
    std::string blog, plog;
    test::run_shell("cat " + log, &blog);
    test::run_shell("cat " + log + ".primary", &plog);
    INFO("backup log:\n" << blog << "\nprimary log:\n" << plog);
    REQUIRE(plog.find("checkpoints:") != std::string::npos); // it was protected before the kill
    test::check_churn_snapshot_continues(snap);
}

