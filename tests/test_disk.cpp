// virtio-blk under KVM (docs/disks.md), with the `disk` guest image and its polling
// driver: the guest writes every sector of a region with a stamp per pass, flushes, reads
// it back and checks it, pass after pass. Exact checks from the host:
//   - at each of many pauses while the guest is busy, the disk file holds one clean cut:
//     the region's first c sectors carry the pass being written and the rest the pass
//     before, with c a whole batch (no request half done: none is in flight at a pause);
//   - at the end, every sector carries the last pass the guest reported;
//   - a Vm with a disk refuses to save its state (checkpoints do not carry disks yet).
// Skipped (77) without /dev/kvm.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "hv/virtio/blk_device.hpp"
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
    {
        std::vector<uint64_t> words(kSectors * kWords);
        for (uint64_t s = 0; s < kSectors; ++s)
            for (uint64_t w = 0; w < kWords; ++w) words[s * kWords + w] = stamp(0, s, w);
        int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::pwrite(fd, words.data(), words.size() * 8, 0) == ssize_t(words.size() * 8));
        ::close(fd);
    }
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

    // A VM with a disk cannot be captured: checkpoints and snapshots do not carry disks yet.
    auto state = vm->save_state();
    REQUIRE(!state);
    CHECK(state.error().message.find("virtio-blk0 keeps the disk " + path) != std::string::npos);
    vm->resume_all();
    vm->stop();
    auto stop = vm->wait_for(test::scaled(seconds(10)));
    REQUIRE(stop.has_value());
    CHECK(stop->kind == VmStopKind::stopped);
    std::filesystem::remove(path);
}
