// The crafted-guest suite for the virtio-net device (issue 4). The bad_virtio image
// breaks the virtio rules one way per attack (looping chains, buffers outside RAM,
// absurd lengths, ring indices out of range, stray MMIO) against a device attached to
// a real VM. The VMM must survive and the guest must run to its end; the device must
// set NEEDS_RESET (descriptor and queue attacks) or ignore and count (register
// attacks), log why, send nothing for the attack, and work again once the guest has
// reset it. Run under ASan too, which would catch an access outside guest memory.
#include <catch2/catch.hpp>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hv/virtio/net_device.hpp"
#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;
using namespace std::chrono;

namespace {

constexpr uint32_t kStatusUp = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;

// Keeps every transmitted frame, in place of a tap.
class CollectingSink final : public EgressSink {
public:
    Accept transmit(std::span<const uint8_t> frame) override {
        std::lock_guard lock(mu_);
        frames_.emplace_back(frame.begin(), frame.end());
        return Accept::sent_or_held;
    }
    std::vector<std::vector<uint8_t>> frames() const {
        std::lock_guard lock(mu_);
        return frames_;
    }

private:
    mutable std::mutex mu_;
    std::vector<std::vector<uint8_t>> frames_;
};

// Log lines (warnings and up), so a case can check that the device said why.
class LogCapture final : public spdlog::sinks::base_sink<std::mutex> {
public:
    std::string text() {
        std::lock_guard lock(mutex_);
        return text_;
    }
    void clear() {
        std::lock_guard lock(mutex_);
        text_.clear();
    }

protected:
    void sink_it_(const spdlog::details::log_msg& m) override {
        text_.append(m.payload.data(), m.payload.size());
        text_ += '\n';
    }
    void flush_() override {}

private:
    std::string text_;
};

LogCapture& log_capture() {
    static std::shared_ptr<LogCapture> sink = [] {
        auto s = std::make_shared<LogCapture>();
        s->set_level(spdlog::level::warn);
        spdlog::default_logger()->sinks().push_back(s); // before any VM runs: no other thread logs yet
        return s;
    }();
    return *sink;
}

struct Attack {
    const char* name;
    bool breaks;     // NEEDS_RESET expected; otherwise the device stays up
    const char* log; // in the device's log line
};

// Reasons as virtqueue.cpp / mmio_transport.cpp word them.
const Attack kAttacks[] = {
    {"loop", true, "TX queue: descriptor chain from 0 is longer than the queue (a loop)"},
    {"oob", true, "descriptor 0 points at [0xfffffffff000, +0x48), outside guest RAM"},
    {"oobmmio", true, "descriptor 0 points at [0xd0000000, +0x48), outside guest RAM"},
    {"straddle", true, "+0x48), outside guest RAM"},
    {"len32", true, "descriptor chain from 0 exceeds 65547 bytes"},
    {"len64wrap", true, "descriptor 0 points at [0xfffffffffffff000, +0x2000), outside guest RAM"},
    {"idx", true, "avail idx 1000 is 1000 entries ahead of the device's 0 (queue size 8)"},
    {"badhead", true, "avail ring names descriptor 4000 in a queue of 8"},
    {"indirect", true, "descriptor 0 is indirect, which was not negotiated"},
    {"qaddr", true, "queue 1: descriptor table at 0xfffffffff000 is not in guest RAM"},
    {"rxloop", true, "RX queue: descriptor chain from 0 is longer than the queue (a loop)"},
    {"mmio", false, "registers take aligned 32-bit accesses"},
};

struct Outcome {
    VmStop stop;
    std::optional<uint64_t> report;
    NetStats stats;
    uint64_t unclaimed_mmio = 0;
    std::vector<std::vector<uint8_t>> frames;
    MacAddress mac{};
    std::string console, log;
};

Outcome run_attack(const std::string& attack) {
    CollectingSink sink; // outlives the VM, which owns the device
    log_capture().clear();
    auto owned = VirtioNet::create({});
    REQUIRE(owned);
    VirtioNet& dev = **owned;
    dev.set_egress(&sink);
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    auto console = std::make_shared<std::string>();
    auto vm = test::boot("bad_virtio", "attack=" + attack + " " + dev.cmdline_token(), cfg, console);
    REQUIRE(vm->add_device(std::move(*owned)));
    if (attack == "rxloop") {
        // Waits host-side until the guest's RX ring, which is where the loop will be.
        std::vector<uint8_t> frame(60, 0xab);
        auto r = dev.deliver(frame);
        REQUIRE(r);
        CHECK_FALSE(*r);
    }
    REQUIRE(vm->start());
    auto stop = vm->wait_for(test::scaled(seconds(30)));
    if (!stop) {
        vm->stop();
        vm->wait();
        FAIL("the guest did not finish within 30 s; console:\n" << *console);
    }
    Outcome o{*stop, vm->report(0, abi::US_REPORT_VIRTIO_STATUS), dev.stats(), vm->mmio().unclaimed_accesses(),
              sink.frames(), dev.mac(), *console, log_capture().text()};
    return o;
}

} // namespace

TEST_CASE("crafted guest: malformed virtqueues break the device, never the VMM; a reset recovers it",
          "[bad-virtio][kvm]") {
    for (const auto& a : kAttacks) {
        Outcome o = run_attack(a.name);
        INFO("attack=" << a.name << "\nstop: " << vm_stop_kind_name(o.stop.kind) << " " << o.stop.status << " "
                       << o.stop.message << "\nconsole:\n"
                       << o.console << "log:\n"
                       << o.log);
        // The guest ran to its end: the VMM neither crashed nor stopped the VM over it.
        CHECK(o.stop.kind == VmStopKind::exited);
        CHECK(o.stop.status == 0);
        REQUIRE(o.report.has_value());
        const uint64_t r = *o.report;
        const uint32_t attacked = r & 0xff, recovered = (r >> 8) & 0xff;
        CHECK((r >> 17 & 1) == 1); // recovery finished

        if (a.breaks) {
            CHECK((attacked & kStatusNeedsReset) != 0);
            CHECK(o.stats.errors == 1);
            CHECK_THAT(o.log, Catch::Contains("virtio-net0: device broken, needs reset by the driver"));
        } else {
            CHECK(attacked == kStatusUp);
            CHECK(o.stats.errors == 0);
            CHECK(o.stats.bad_register_accesses >= 10);
            CHECK(o.unclaimed_mmio >= 4); // past the device and further up the MMIO window
            CHECK_THAT(o.log, Catch::Contains("virtio-net0: ignored"));
            CHECK_THAT(o.log, Catch::Contains("unclaimed"));
            CHECK_THAT(o.log, !Catch::Contains("device broken"));
        }
        CHECK_THAT(o.log, Catch::Contains(a.log));

        // After the reset: up again, not broken, and the one valid frame went out; the
        // attack itself sent nothing.
        CHECK(recovered == kStatusUp);
        CHECK((r >> 16 & 1) == 1);
        CHECK_FALSE(o.stats.broken);
        CHECK(o.stats.tx_frames == 1);
        CHECK(o.stats.tx_malformed == 0);
        REQUIRE(o.frames.size() == 1);
        const auto& f = o.frames[0];
        REQUIRE(f.size() == 60);
        CHECK(std::all_of(f.begin(), f.begin() + 6, [](uint8_t b) { return b == 0xff; }));
        CHECK(std::equal(o.mac.begin(), o.mac.end(), f.begin() + 6));
        CHECK((f[12] == 0x88 && f[13] == 0xb5));
        CHECK(std::string(f.begin() + 14, f.begin() + 34) == "bad_virtio recovered");
        if (std::string(a.name) == "rxloop") CHECK(o.stats.rx_frames == 0); // the looping ring took nothing
    }
}

TEST_CASE("crafted guest: an unknown attack name is refused by the guest itself", "[bad-virtio][kvm]") {
    Outcome o = run_attack("nonesuch");
    INFO(o.console);
    CHECK(o.stop.kind == VmStopKind::exited);
    CHECK(o.stop.status == 2);
    CHECK_THAT(o.console, Catch::Contains("unknown attack=nonesuch"));
    CHECK(o.stats.errors == 0);
    CHECK(o.frames.empty());
}
