// 10,000 pause/resume cycles of a 2-vCPU churn guest: every pause leaves both vCPUs out
// of KVM_RUN with churn's stamps consistent with one moment, the guest keeps making
// progress, and no thread hangs. A pause inside an instruction that needs the VMM more
// than once (string and split MMIO) completes it whole.
#include <catch2/catch.hpp>

#include <mutex>
#include <thread>

#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::abi;
using namespace std::chrono;

TEST_CASE("10,000 pause/resume cycles of a 2-vCPU churn guest", "[pause][kvm]") {
    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    cfg.vcpus = 2;
    auto vm = test::boot("churn", "pages=256", cfg);
    REQUIRE(vm->start());
    auto header = test::wait_churn_header(*vm, seconds(20));
    REQUIRE(header.has_value());
    test::ChurnProgress p{};
    auto both = [](const test::ChurnProgress& q) { return q.vcpus == 2; };
    REQUIRE(test::wait_churn(*vm, *header, "second vCPU", seconds(20), both, &p) == "");

    uint64_t last = p.pages_stamped, grew = 0, grew_in_window = 0;
    for (int cycle = 0; cycle < 10000; ++cycle) {
        vm->pause_all();
        for (unsigned i = 0; i < vm->vcpu_count(); ++i) REQUIRE(vm->vcpu(i).run_state() == VcpuRunState::paused);
        std::string err = test::check_churn(vm->memory(), *header, &p);
        vm->resume_all();
        INFO("cycle " << cycle);
        REQUIRE(err.empty());
        REQUIRE(p.pages_stamped >= last); // never backwards: nothing lost or replayed
        if (p.pages_stamped > last) ++grew, ++grew_in_window;
        last = p.pages_stamped;
        // The guest keeps running: it made progress in every stretch of 500 cycles. (How
        // often it progresses between two pauses depends on scheduling, not on us.)
        if (cycle % 500 == 499) {
            REQUIRE(grew_in_window > 0);
            grew_in_window = 0;
        }
        std::this_thread::sleep_for(microseconds(50));
    }
    CHECK(!vm->stop_reason().has_value());
    INFO("progress between " << grew << " of 10,000 pause pairs");
    CHECK(grew > 0);
    vm->stop();
    auto stop = vm->wait_for(test::scaled(seconds(10)));
    REQUIRE(stop.has_value());
    CHECK(stop->kind == VmStopKind::stopped);
}

TEST_CASE("pausing a halted guest wakes it and the halt ends early", "[pause][kvm]") {
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    cfg.vcpus = 2;
    // counter's second vCPU halts forever; pausing must still return promptly.
    auto vm = test::boot("counter", "mib=4 rounds=100000", cfg);
    REQUIRE(vm->start());
    std::this_thread::sleep_for(milliseconds(100));
    for (int i = 0; i < 200; ++i) {
        auto t0 = steady_clock::now();
        vm->pause_all();
        CHECK(steady_clock::now() - t0 < test::scaled(seconds(2)));
        vm->resume_all();
    }
    vm->stop();
    REQUIRE(vm->wait_for(test::scaled(seconds(10))).has_value());
}

TEST_CASE("a moved VM tells each halted vCPU once at its next halt", "[pause][kvm]") {
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    cfg.vcpus = 2;
    // counter's vCPU 1 halts and reports every US_HALT_MOVED it gets as a running count.
    auto vm = test::boot("counter", "mib=4 rounds=1000000", cfg);
    REQUIRE(vm->start());
    REQUIRE(vm->wait_report(0, US_REPORT_READY, test::scaled(seconds(20))).has_value());
    CHECK(!vm->report(1, US_REPORT_MOVED).has_value());
    // Pauses are not moves.
    for (int i = 0; i < 20; ++i) {
        vm->pause_all();
        vm->resume_all();
    }
    vm->notify_moved();
    auto first = vm->wait_report(1, US_REPORT_MOVED, test::scaled(seconds(10)));
    REQUIRE(first.has_value());
    CHECK(*first == 1);
    // Once per move: vCPU 1 halts on, and its count only grows with the next move.
    vm->notify_moved();
    auto deadline = test::deadline_in(seconds(10));
    while (vm->report(1, US_REPORT_MOVED) == std::optional<uint64_t>(1) && steady_clock::now() < deadline)
        std::this_thread::sleep_for(milliseconds(5));
    CHECK(vm->report(1, US_REPORT_MOVED) == std::optional<uint64_t>(2));
    CHECK(!vm->stop_reason().has_value());
    vm->stop();
    REQUIRE(vm->wait_for(test::scaled(seconds(10))).has_value());
}

namespace {

// The string_mmio image's device (guest/images/string_mmio.c): two pages that read as a
// fixed pattern and take a running byte sequence as writes, each round SPAN bytes from
// the middle of the pair, then 8 bytes 3 before the page boundary. It records the first
// write that is not the next byte of the sequence at its place.
class PatternDevice {
public:
    static constexpr uint64_t kBase = 0xd8000000, kPage = 4096, kSpan = 256;
    static constexpr uint64_t kRoundBytes = kSpan + 8;

    Result<void> access(IoAccess& a) {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < a.data.size(); ++i) {
            uint64_t off = a.offset + i;
            if (!a.is_write) {
                a.data[i] = uint8_t((off * 0x9d) ^ (off >> 8) ^ 0x5a);
                continue;
            }
            uint64_t k = written_ % kRoundBytes;
            uint64_t want_off = k < kSpan ? kPage - kSpan / 2 + k : kPage - 3 + (k - kSpan);
            if (error_.empty() && (off != want_off || a.data[i] != uint8_t(written_)))
                error_ = "write " + std::to_string(written_) + ": byte " + std::to_string(a.data[i]) + " at offset " +
                         std::to_string(off) + ", expected " + std::to_string(uint8_t(written_)) + " at " +
                         std::to_string(want_off);
            ++written_;
        }
        return {};
    }
    uint64_t written() const {
        std::lock_guard lock(mu_);
        return written_;
    }
    std::string error() const {
        std::lock_guard lock(mu_);
        return error_;
    }

private:
    mutable std::mutex mu_;
    uint64_t written_ = 0;
    std::string error_;
};

} // namespace

TEST_CASE("a pause inside a string or split MMIO access completes it whole", "[pause][kvm]") {
    // KVM emulates `rep movsb` on MMIO one byte per exit, continuing the instruction in the
    // kernel in between, and an access across a page boundary in two exits. A pause that
    // lands in the middle must hand each further part to the device before parking:
    // dropped, a read would return stale bytes and a write would never arrive.
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    cfg.vcpus = 1;
    auto console = std::make_shared<std::string>();
    auto vm = test::boot("string_mmio", "mmio=" + std::to_string(PatternDevice::kBase), cfg, console);
    PatternDevice dev;
    REQUIRE(vm->mmio().add(PatternDevice::kBase, 2 * PatternDevice::kPage, "pattern",
                           [&dev](IoAccess& a) { return dev.access(a); }));
    REQUIRE(vm->start());
    bool ready = vm->wait_report(0, US_REPORT_READY, test::scaled(seconds(20))).has_value();
    vm->pause_all(); // the console is read while no vCPU writes it
    {
        INFO(test::describe_run(*vm) << "\nconsole:\n" << *console);
        REQUIRE(ready);
    }
    vm->resume_all();

    // The guest spends nearly all its time in these accesses, so most pauses land inside one.
    for (int i = 0; i < 5000; ++i) {
        vm->pause_all();
        vm->resume_all();
        std::this_thread::sleep_for(microseconds(20));
    }
    vm->pause_all();
    uint64_t rounds = vm->report(0, US_REPORT_PROGRESS).value_or(0);
    uint64_t written = dev.written();
    INFO(test::describe_run(*vm) << "\nconsole:\n" << *console);
    INFO("rounds " << rounds << ", bytes written " << written);
    CHECK(!vm->stop_reason().has_value());
    CHECK(dev.error() == "");
    CHECK(rounds >= 2);
    // Every finished round's bytes arrived, and at most one round's beyond them (all of
    // it when the pause came after the round's last write, before its report).
    CHECK(written >= rounds * PatternDevice::kRoundBytes);
    CHECK(written <= (rounds + 1) * PatternDevice::kRoundBytes);
    vm->stop();
    REQUIRE(vm->wait_for(test::scaled(seconds(10))).has_value());
}
