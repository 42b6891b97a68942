// Dirty tracking is exact, for the ring and the bitmap: over 1,000+ rounds the
// dirty_rounds guest writes a random set of pages chosen by the host, the VMM writes
// another random set itself, and the harvested set must equal their union within the
// data region: no page missed, none invented.
#include <catch2/catch.hpp>

#include <mutex>
#include <random>
#include <set>

#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::abi;

namespace {

constexpr uint64_t kListGpa = 8 * kMiB;     // host-written page list (the VMM's own writes)
constexpr uint64_t kDataGpa = 16 * kMiB;    // pages the guest and the VMM write at random
constexpr uint64_t kDataPages = 16384;      // 64 MiB
constexpr uint64_t kRounds = 1200;

struct RoundDriver {
    Vm* vm = nullptr;
    std::mt19937_64 rng{12345};
    uint64_t round = 0;
    std::set<uint64_t> expected; // data-region page indices written since the last harvest
    std::vector<std::string> failures;
    uint64_t pages_checked = 0, big_rounds = 0, outside_max = 0;
    uint64_t data_first = 0;
    Bitmap harvested;

    // Compares one harvest with what was written since the previous one.
    void check_round() {
        harvested.clear_all();
        if (auto r = vm->harvest_dirty(harvested); !r) {
            failures.push_back("harvest: " + r.error().describe());
            return;
        }
        std::set<uint64_t> got;
        uint64_t outside = 0;
        harvested.for_each_set([&](size_t page) {
            if (page >= data_first && page < data_first + kDataPages)
                got.insert(page);
            else
                ++outside;
        });
        if (round > 1) outside_max = std::max(outside_max, outside);
        if (round > 1 && got != expected) {
            std::vector<uint64_t> missed, invented;
            for (auto p : expected)
                if (!got.count(p)) missed.push_back(p);
            for (auto p : got)
                if (!expected.count(p)) invented.push_back(p);
            failures.push_back("round " + std::to_string(round) + ": " + std::to_string(missed.size()) + " pages missed, " +
                               std::to_string(invented.size()) + " invented");
        }
        pages_checked += expected.size();
        expected.clear();
    }

    Result<void> on_hypercall(Gpa args_gpa) {
        auto& mem = vm->memory();
        auto args = US_TRY(mem.read_obj<abi::us_hc_test>(args_gpa));
        check_round();
        ++round;
        if (round > kRounds) {
            args.arg[1] = ~0ull;
            return mem.write_obj(args_gpa, args);
        }
        // Mostly small sets; every 100th round more pages than a 1,024-entry ring holds.
        uint64_t count = (round % 100 == 0) ? 3000 : 1 + rng() % 300;
        if (count > 1000) ++big_rounds;
        std::vector<uint64_t> list;
        for (uint64_t i = 0; i < count; ++i) {
            uint64_t page = rng() % kDataPages;
            list.push_back(kDataGpa + page * kPageSize);
            expected.insert(data_first + page);
        }
        US_TRYV(mem.write(Gpa{kListGpa}, {reinterpret_cast<const uint8_t*>(list.data()), list.size() * 8}));
        // The VMM's own writes, as device emulation would make them.
        for (uint64_t i = 0, n = rng() % 8; i < n; ++i) {
            uint64_t page = rng() % kDataPages;
            uint64_t v = round;
            US_TRYV(mem.write(Gpa{kDataGpa + page * kPageSize + 2048}, {reinterpret_cast<const uint8_t*>(&v), 8}));
            expected.insert(data_first + page);
        }
        args.arg[0] = kListGpa;
        args.arg[1] = count;
        args.arg[2] = round;
        return mem.write_obj(args_gpa, args);
    }
};

void run_exactness(DirtyMode mode) {
    VmConfig cfg;
    cfg.memory_bytes = 128 * kMiB;
    cfg.dirty.mode = mode;
    cfg.dirty.ring_entries = 1024;
    auto vm = test::boot("dirty_rounds", "", cfg);
    REQUIRE(std::string(vm->dirty_tracker().name()) == dirty_mode_name(mode));
    RoundDriver d;
    d.vm = vm.get();
    d.harvested = Bitmap(vm->memory().page_count());
    d.data_first = *vm->memory().page_index(Gpa{kDataGpa});
    std::mutex mu;
    REQUIRE(vm->hypercalls().add(US_HC_TEST_FIRST, [&](Vcpu&, Gpa args) {
        std::lock_guard lock(mu);
        return d.on_hypercall(args);
    }));
    REQUIRE(vm->start());
    auto stop = vm->wait_for(test::scaled(std::chrono::seconds(240)));
    REQUIRE(stop.has_value());
    INFO(stop->message);
    REQUIRE(stop->kind == VmStopKind::exited);
    REQUIRE(stop->status == 0);
    auto layout = vm->report(0, US_REPORT_LAYOUT);
    REQUIRE(layout.has_value());
    CHECK(*layout <= kListGpa); // the runtime's own pages lie below the list and the data
    for (const auto& f : d.failures) FAIL_CHECK(f);
    CHECK(d.failures.empty());
    CHECK(d.round == kRounds + 1);
    CHECK(d.big_rounds >= 10);
    // Outside the data region only the guest's stack, its args and the list pages change.
    CHECK(d.outside_max <= 16);
    CHECK(d.pages_checked > 100000);
}

} // namespace

TEST_CASE("dirty ring harvest is exact over 1,200 rounds, ring-full exits included", "[dirty][kvm]") {
    run_exactness(DirtyMode::ring);
}

TEST_CASE("dirty bitmap harvest is exact over 1,200 rounds", "[dirty][kvm]") { run_exactness(DirtyMode::bitmap); }

TEST_CASE("a harvest with nothing written is empty, and VMM writes alone are reported", "[dirty][kvm]") {
    for (auto mode : {DirtyMode::ring, DirtyMode::bitmap}) {
        VmConfig cfg;
        cfg.memory_bytes = 64 * kMiB;
        cfg.dirty.mode = mode;
        auto vm = test::boot("dirty_rounds", "", cfg);
        Bitmap b(vm->memory().page_count());
        REQUIRE(vm->harvest_dirty(b)); // the image load itself
        CHECK(b.count() > 0);
        b.clear_all();
        REQUIRE(vm->harvest_dirty(b));
        CHECK(b.count() == 0);
        uint64_t v = 7;
        REQUIRE(vm->memory().write(Gpa{40 * kMiB + 4095}, {reinterpret_cast<uint8_t*>(&v), 8})); // straddles two pages
        REQUIRE(vm->harvest_dirty(b));
        CHECK(b.count() == 2);
        CHECK(b.test(40 * kMiB / kPageSize));
        CHECK(b.test(40 * kMiB / kPageSize + 1));
    }
}
