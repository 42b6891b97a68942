// virtio-blk under KVM (docs/disks.md), with the `disk` guest image and its polling
// driver: the guest writes every sector of a region with a stamp per pass, flushes, reads
// it back and checks it, pass after pass. Exact checks from the host:
//   - at each of many pauses while the guest is busy, the disk file holds one clean cut:
//     the region's first c sectors carry the pass being written and the rest the pass
//     before, with c a whole batch (no request half done: none is in flight at a pause);
//   - at the end, every sector carries the last pass the guest reported;
//   - a VM with a disk refuses a snapshot (snapshots do not carry disks);
//   - protected, every checkpoint the backup commits holds the primary's disk at that
//     checkpoint's pause, byte for byte and a clean cut; the backup, promoted after the
//     primary ran on past it, continues the passes on its own copy and verifies them;
//   - the CLI: a primary process SIGKILLed during steady writes, the backup process
//     promotes, and its guest finishes its passes with every sector verified.
// Skipped (77) without /dev/kvm.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <xxhash.h>

#include "failover/promotion.hpp"
#include "hv/snapshot.hpp"
#include "hv/virtio/blk_device.hpp"
#include "replicator/primary.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;
using namespace understudy::abi;
using namespace std::chrono;

namespace {

constexpr uint64_t kSectors = 8192; // 4 MiB
constexpr uint64_t kWords = 512 / 8;
constexpr uint64_t kBatchSectors = 8 * 32; // guest/images/disk.c: 8 sectors a request, 32 a batch

uint64_t stamp(uint64_t pass, uint64_t sector, uint64_t word) { return pass << 48 | sector << 16 | word; }

// A disk file with every sector of the region stamped with pass 0.
void make_disk(const std::string& path) {
    std::vector<uint64_t> words(kSectors * kWords);
    for (uint64_t s = 0; s < kSectors; ++s)
        for (uint64_t w = 0; w < kWords; ++w) words[s * kWords + w] = stamp(0, s, w);
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, words.data(), words.size() * 8, 0) == ssize_t(words.size() * 8));
    ::close(fd);
}

std::vector<uint64_t> read_disk(const std::string& path) {
    std::vector<uint64_t> words(kSectors * kWords);
    int fd = ::open(path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pread(fd, words.data(), words.size() * 8, 0) == ssize_t(words.size() * 8));
    ::close(fd);
    return words;
}

// The pass stamped on sector s, or nullopt if its words do not all carry one pass.
std::optional<uint64_t> pass_of(const std::vector<uint64_t>& words, uint64_t s) {
    const uint64_t pass = words[s * kWords] >> 48;
    for (uint64_t w = 0; w < kWords; ++w)
        if (words[s * kWords + w] != stamp(pass, s, w)) return std::nullopt;
    return pass;
}

// Describes what is wrong with the disk as one cut between `newer` and newer - 1 at a
// batch boundary (or all of `newer`), or returns "" and the cut.
std::string check_cut(const std::vector<uint64_t>& words, uint64_t* cut, uint64_t* newer) {
    auto first = pass_of(words, 0);
    if (!first) return "sector 0 is torn or unstamped";
    *newer = *first;
    uint64_t s = 0;
    while (s < kSectors && pass_of(words, s) == *newer) ++s;
    *cut = s;
    if (s < kSectors && *newer == 0) return "sector " + std::to_string(s) + " differs from the initial stamps";
    for (; s < kSectors; ++s)
        if (pass_of(words, s) != *newer - 1)
            return "sector " + std::to_string(s) + " is neither pass " + std::to_string(*newer) + " before the cut at " +
                   std::to_string(*cut) + " nor pass " + std::to_string(*newer - 1) + " after it";
    if (*cut % kBatchSectors) return "the cut at sector " + std::to_string(*cut) + " splits a batch";
    return "";
}

} // namespace

TEST_CASE("a busy disk paused 300 times holds one clean cut each time; every pass verified", "[disk][kvm]") {
    const std::string path = test::temp_path("disk.img");
    make_disk(path);
    auto dev = VirtioBlk::create({.path = path});
    REQUIRE(dev);
    VirtioBlk& blk = **dev;
    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    auto console = std::make_shared<std::string>();
    auto vm = test::boot("disk", blk.cmdline_token() + " disk.sectors=" + std::to_string(kSectors), cfg, console);
    REQUIRE(vm->add_device(std::move(*dev)));
    REQUIRE(vm->start());
    const bool ready = vm->wait_report(0, US_REPORT_READY, test::scaled(seconds(20))).has_value();
    INFO("the guest's console so far:\n" << *console);
    REQUIRE(ready);

    std::mt19937 rng(std::random_device{}());
    std::set<uint64_t> cuts;
    uint64_t last_pass = 0;
    for (int i = 0; i < 300; ++i) {
        std::this_thread::sleep_for(microseconds(std::uniform_int_distribution<int>(200, 5000)(rng)));
        vm->pause_all();
        uint64_t cut = 0, newer = 0;
        const std::string err = check_cut(read_disk(path), &cut, &newer);
        const auto reported = vm->report(0, US_REPORT_PROGRESS).value_or(0);
        vm->resume_all();
        INFO("pause " << i << ", the guest reported pass " << reported);
        REQUIRE(err == "");
        // The disk never runs behind what the guest saw verified, nor more than one pass ahead.
        REQUIRE(newer >= reported);
        REQUIRE(newer <= reported + 1);
        REQUIRE(newer >= last_pass);
        last_pass = newer;
        if (cut % kSectors) cuts.insert(cut);
        REQUIRE(!vm->stop_reason());
    }
    // The pauses fell inside the write phases, not only between passes.
    CHECK(cuts.size() >= 3);
    REQUIRE(vm->wait_report(0, US_REPORT_PROGRESS, test::scaled(seconds(30))));
    const uint64_t before = *vm->report(0, US_REPORT_PROGRESS);
    // Two more whole passes, then the whole region carries the pass the guest reported.
    auto deadline = steady_clock::now() + test::scaled(seconds(60));
    while (vm->report(0, US_REPORT_PROGRESS).value_or(0) < before + 2 && steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    vm->pause_all();
    const uint64_t reported = *vm->report(0, US_REPORT_PROGRESS);
    REQUIRE(reported >= before + 2);
    uint64_t cut = 0, newer = 0;
    REQUIRE(check_cut(read_disk(path), &cut, &newer) == "");
    CHECK((newer == reported || newer == reported + 1));
    auto stats = blk.stats();
    CHECK(stats.bad_requests == 0);
    CHECK(stats.io_errors == 0);
    CHECK(!stats.broken);
    CHECK(stats.flushes >= reported);
    CHECK(stats.write_bytes >= reported * kSectors * 512);

    // A snapshot of a VM with a disk is refused: the file would come back without it.
    auto snap = hv::save_snapshot(*vm, test::temp_path("disk.snap"));
    REQUIRE(!snap);
    CHECK(snap.error().message.find("snapshots do not carry disks, and this VM has the disk " + path) != std::string::npos);
    vm->resume_all();
    vm->stop();
    auto stop = vm->wait_for(test::scaled(seconds(10)));
    REQUIRE(stop.has_value());
    CHECK(stop->kind == VmStopKind::stopped);
    std::filesystem::remove(path);
}

TEST_CASE("protected: each committed checkpoint holds the primary's disk at its pause; the promoted backup carries on",
          "[disk][kvm]") {
    const std::string primary_path = test::temp_path("primary.img"), backup_path = test::temp_path("backup.img");
    make_disk(primary_path);
    {
        // The backup's copy starts as something else: the initial synchronization replaces it.
        std::vector<uint8_t> junk(kSectors * 512, 0x6b);
        int fd = ::open(backup_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::pwrite(fd, junk.data(), junk.size(), 0) == ssize_t(junk.size()));
        ::close(fd);
    }
    auto digest = [](const std::string& path) {
        auto words = read_disk(path);
        return XXH3_64bits(words.data(), words.size() * 8);
    };
    std::mutex mu;
    std::map<uint64_t, uint64_t> primary_digest, backup_digest;
    std::map<uint64_t, std::string> backup_cut; // check_cut's verdict on each committed disk
    replicator::BackupHooks bh;
    bh.on_commit = [&](uint64_t epoch, const replicator::BackupReplica&) {
        const uint64_t d = digest(backup_path);
        uint64_t cut = 0, newer = 0;
        std::string err = check_cut(read_disk(backup_path), &cut, &newer);
        std::lock_guard lock(mu);
        backup_digest[epoch] = d;
        backup_cut[epoch] = err;
    };
    // Staging memory for a fraction of a pass: busy checkpoints spill.
    test::BackupThread backup(bh, false, {.paths = {backup_path}, .staging_memory = 512 * 1024, .spill_dir = std::filesystem::path(backup_path).parent_path().string()});

    auto dev = VirtioBlk::create({.path = primary_path});
    REQUIRE(dev);
    const std::string token = (*dev)->cmdline_token();
    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    auto console = std::make_shared<std::string>();
    auto vm = test::boot("disk", token + " disk.sectors=" + std::to_string(kSectors), cfg, console);
    REQUIRE(vm->add_device(std::move(*dev)));
    REQUIRE(vm->start());
    REQUIRE(vm->wait_report(0, US_REPORT_READY, test::scaled(seconds(20))));
    replicator::PrimaryConfig pc;
    pc.security = test::link_security();
    pc.epoch = milliseconds(5);
    pc.heartbeat = {milliseconds(10), test::scaled(milliseconds(2000))};
    replicator::PrimaryHooks ph;
    ph.on_capture = [&](uint64_t epoch, hv::Checkpointable&) { // paused: no request in flight
        const uint64_t d = digest(primary_path);
        std::lock_guard lock(mu);
        primary_digest[epoch] = d;
    };
    auto data = test::connect_to(*backup.server);
    auto primary = replicator::Primary::start(*vm, std::move(data), pc, ph, test::connect_to(*backup.server));
    REQUIRE(primary);
    auto deadline = steady_clock::now() + test::scaled(seconds(120));
    while (((*primary)->acked_epoch() < 200 || vm->report(0, US_REPORT_PROGRESS).value_or(0) < 3) &&
           steady_clock::now() < deadline && !(*primary)->failure() && !vm->stop_reason())
        std::this_thread::sleep_for(10ms);
    INFO("the guest's console:\n" << *console);
    INFO(((*primary)->failure() ? (*primary)->failure()->describe() : std::string("replication running")));
    REQUIRE((*primary)->acked_epoch() >= 200);
    REQUIRE(!vm->stop_reason());
    uint64_t blocks = 0;
    for (const auto& f : (*primary)->recent_epochs()) blocks += f.disk_blocks;
    CHECK(blocks > 1000);
    // Replication ends; the primary runs on (its writes from here are never committed on
    // the backup), then goes away.
    (*primary)->stop();
    CHECK((*primary)->wait());
    backup.server->stop();
    backup.thread.join();
    std::this_thread::sleep_for(test::scaled(milliseconds(300)));
    vm->stop();
    vm->resume_all();
    REQUIRE(vm->wait_for(test::scaled(seconds(10))));
    vm.reset();

    {
        std::lock_guard lock(mu);
        REQUIRE(backup_digest.size() >= 200);
        for (auto [epoch, d] : backup_digest) {
            INFO("checkpoint " << epoch);
            CHECK(backup_cut[epoch] == "");
            REQUIRE(primary_digest.count(epoch));
            CHECK(primary_digest[epoch] == d);
        }
    }
    CHECK(backup.server->replica()->disk_stats().spilled_blocks > 0);

    // Promotion: the backup's copy becomes the guest's disk, and the guest carries on from
    // the committed checkpoint, writing and verifying every sector pass after pass.
    auto replica = backup.server->take_replica();
    const uint64_t committed = replica->committed_epoch();
    auto promoted_console = std::make_shared<std::string>();
    VmConfig base;
    base.console = [promoted_console](std::string_view s) { promoted_console->append(s); };
    auto promoted = failover::promote(std::move(replica), base, [&](Vm& v) -> Result<void> {
        auto d = US_TRY(VirtioBlk::create({.path = backup_path}));
        return v.add_device(std::move(d));
    });
    INFO("promoted from checkpoint " << committed);
    REQUIRE(promoted);
    Vm& pv = **promoted;
    REQUIRE(pv.start());
    const uint64_t from = pv.report(0, US_REPORT_PROGRESS).value_or(0);
    deadline = steady_clock::now() + test::scaled(seconds(60));
    while (pv.report(0, US_REPORT_PROGRESS).value_or(0) < from + 2 && steady_clock::now() < deadline && !pv.stop_reason())
        std::this_thread::sleep_for(10ms);
    INFO("the promoted guest's console:\n" << *promoted_console);
    REQUIRE(!pv.stop_reason()); // a sector that failed its check would have panicked it
    pv.pause_all();
    const uint64_t reported = *pv.report(0, US_REPORT_PROGRESS);
    REQUIRE(reported >= from + 2);
    uint64_t cut = 0, newer = 0;
    REQUIRE(check_cut(read_disk(backup_path), &cut, &newer) == "");
    CHECK((newer == reported || newer == reported + 1));
    pv.stop();
    pv.resume_all();
    std::filesystem::remove(primary_path);
    std::filesystem::remove(backup_path);
}

TEST_CASE("CLI: a primary process killed during steady writes; the promoted backup's guest verifies every sector, "
          "re-protected onto the old primary's disk", "[disk][kvm]") {
    const std::string primary_path = test::temp_path("cli-primary.img"), backup_path = test::temp_path("cli-backup.img");
    make_disk(primary_path);
    {
        int fd = ::open(backup_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, off_t(kSectors * 512)) == 0); // empty: the initial synchronization fills it
        ::close(fd);
    }
    const std::string blog = test::temp_path("cli-backup.log"), plog = test::temp_path("cli-primary.log"),
                      rlog = test::temp_path("cli-reprotect.log");
    const uint16_t port = test::free_loopback_port(), port2 = test::free_loopback_port();
    const std::string key = " --link-key " + test::write_link_key_file(test::temp_path("cli-link.key")) +
                            " --failure-timeout-ms " + std::to_string(test::scaled(milliseconds(200)).count());
    std::string out;
    REQUIRE(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:" + std::to_string(port) +
                                " --sessions 1 --promote --disk " + backup_path + " --reprotect-to 127.0.0.1:" +
                                std::to_string(port2) + key + " > " + blog + " 2>&1 & echo $! > " + blog + ".pid",
                            &out) == 0);
    // Where the promoted VM is protected next: the old primary's host, on its disk (opened
    // only when that session starts, after the primary is gone).
    REQUIRE(test::run_shell(test::cli_path() + " backup --listen 127.0.0.1:" + std::to_string(port2) + " --sessions 1 --disk " +
                                primary_path + key + " > " + rlog + " 2>&1 & echo $! > " + rlog + ".pid",
                            &out) == 0);
    REQUIRE(test::run_shell(test::cli_path() + " run " + test::guest_image("disk") + " -m 64M --disk " + primary_path +
                                " -c 'disk.sectors=" + std::to_string(kSectors) + " disk.log=1' --epoch-ms 10 --backup 127.0.0.1:" +
                                std::to_string(port) + key + " > " + plog + " 2>&1 & echo $! > " + plog + ".pid",
                            &out) == 0);
    auto file = [](const std::string& path) {
        std::string s;
        test::run_shell("cat " + path, &s);
        return s;
    };
    auto count = [](const std::string& text, const std::string& what) {
        size_t n = 0;
        for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
        return n;
    };
    auto cleanup = [&] {
        test::run_shell("kill -9 $(cat " + plog + ".pid) $(cat " + blog + ".pid) $(cat " + rlog + ".pid) 2>/dev/null", nullptr);
    };
    // Protected, and writing: a few passes verified since.
    bool protected_ = test::wait_until([&] { return file(plog).find("checkpoints:") != std::string::npos; }, seconds(60));
    size_t passes_then = count(file(plog), "verified");
    bool writing = protected_ && test::wait_until([&] { return count(file(plog), "verified") >= passes_then + 2; }, seconds(60));
    if (writing) {
        std::mt19937 rng(std::random_device{}());
        std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(0, 300)(rng))); // mid-pass, somewhere
        test::run_shell("kill -9 $(cat " + plog + ".pid)", nullptr);
    }
    INFO("primary log:\n" << file(plog));
    INFO("backup log:\n" << file(blog));
    if (!writing) cleanup();
    REQUIRE(writing);
    // The backup promotes and its guest goes on: two passes, each written, read back and
    // checked word by word by the guest, after the promotion.
    bool promoted = test::wait_until([&] { return file(blog).find("PROMOTED") != std::string::npos; }, seconds(30));
    auto after_promotion = [&] {
        std::string b = file(blog);
        size_t at = b.find("PROMOTED");
        return at == std::string::npos ? 0 : count(b.substr(at), "verified");
    };
    bool carried_on = promoted && test::wait_until([&] { return after_promotion() >= 2; }, seconds(60));
    // Re-protected: the old primary's disk compared and brought up to date, then a few
    // more passes under protection.
    bool reprotected = carried_on && test::wait_until([&] { return file(blog).find("differed from the backup's copy") !=
                                                                  std::string::npos; }, seconds(60));
    auto protected_since_promotion = [&] {
        std::string b = file(blog);
        size_t at = b.find("differed from the backup's copy");
        return at != std::string::npos && b.find("checkpoints:", at) != std::string::npos;
    };
    bool protected_again = reprotected && test::wait_until(protected_since_promotion, seconds(60));
    const size_t verified_then = after_promotion();
    protected_again = protected_again && test::wait_until([&] { return after_promotion() >= verified_then + 2; }, seconds(60));
    // The promoted guest's disk, held still (what io_uring had taken lands meanwhile).
    test::run_shell("kill -STOP $(cat " + blog + ".pid); sleep 0.2", nullptr);
    uint64_t cut = 0, newer = 0, cut2 = 0, newer2 = 0;
    const std::string err = check_cut(read_disk(backup_path), &cut, &newer);
    // The new backup's copy once its session ended with the promoted VM's host: its last
    // committed checkpoint, whatever was arriving discarded.
    test::run_shell("kill -9 $(cat " + blog + ".pid)", nullptr);
    const bool ended = test::wait_until([&] { return test::run_shell("kill -0 $(cat " + rlog + ".pid) 2>/dev/null", nullptr) != 0; },
                                        seconds(30));
    const std::string err2 = check_cut(read_disk(primary_path), &cut2, &newer2);
    std::string b = file(blog);
    INFO("backup log at the check:\n" << b);
    INFO("re-protection backup log:\n" << file(rlog));
    cleanup();
    CHECK(ended);
    REQUIRE(promoted);
    REQUIRE(carried_on);
    REQUIRE(reprotected);
    REQUIRE(protected_again);
    CHECK(b.find("panic") == std::string::npos);
    CHECK(err == "");
    CHECK(err2 == "");
    CHECK(newer2 <= newer); // the copy holds a checkpoint: never ahead of the guest
    std::filesystem::remove(primary_path);
    std::filesystem::remove(backup_path);
}
