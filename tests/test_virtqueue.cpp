// Unit tests without KVM: the split virtqueue walker over a GuestMemory with hand-made
// rings, and the virtio-mmio register file driven through plain (offset, bytes) calls.
#include <catch2/catch.hpp>

#include <cstring>

#include "hv/guest_memory.hpp"
#include "hv/virtio/mmio_transport.hpp"
#include "hv/virtio/virtqueue.hpp"
#include "tests/support/virtio_driver.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;
using understudy::test::MmioDriver;

namespace {

constexpr uint64_t kMem = 16 * kMiB;

// A driver's view of one split ring, laid out at fixed addresses.
struct Ring {
    GuestMemory& mem;
    uint16_t size;
    Gpa desc{0x10000}, avail{0x20000}, used{0x30000};
    uint16_t avail_idx = 0;

    VirtqueueLayout layout() const { return {size, desc, avail, used}; }
    void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags = 0, uint16_t next = 0) {
        REQUIRE(mem.write_obj(desc + 16ull * i, VirtqDesc{addr, len, flags, next}));
    }
    void offer(uint16_t head) {
        REQUIRE(mem.write_obj<uint16_t>(avail + 4 + 2ull * (avail_idx % size), head));
        ++avail_idx;
        set_avail_idx(avail_idx);
    }
    void set_avail_idx(uint16_t v) { REQUIRE(mem.write_obj<uint16_t>(avail + 2, v)); }
    uint16_t used_idx() const { return *mem.read_obj<uint16_t>(used + 2); }
    uint16_t used_flags() const { return *mem.read_obj<uint16_t>(used); }
    VirtqUsedElem used_elem(uint16_t i) const { return *mem.read_obj<VirtqUsedElem>(used + 4 + 8ull * (i % size)); }
};

Bitmap drain(GuestMemory& mem) {
    Bitmap b(mem.page_count());
    mem.vmm_dirty().drain_into(b);
    return b;
}

} // namespace

TEST_CASE("virtqueue: layouts are validated against RAM, alignment and size", "[virtqueue]") {
    auto mem = *GuestMemory::create(kMem);
    VirtqueueLayout ok{8, Gpa{0x10000}, Gpa{0x20000}, Gpa{0x30000}};
    CHECK(validate_layout(mem, ok, 256));
    auto with = [&](auto f) {
        VirtqueueLayout l = ok;
        f(l);
        return validate_layout(mem, l, 256);
    };
    CHECK(!with([](auto& l) { l.size = 0; }));
    CHECK(!with([](auto& l) { l.size = 6; }));
    CHECK(!validate_layout(mem, ok, 4)); // larger than the maximum offered
    CHECK(!with([](auto& l) { l.desc = Gpa{0x10008}; }));
    CHECK(!with([](auto& l) { l.avail = Gpa{0x20001}; }));
    CHECK(!with([](auto& l) { l.used = Gpa{0x30002}; }));
    CHECK(!with([&](auto& l) { l.desc = Gpa{kMem - 16 * 4}; })); // table runs past the end
    CHECK(!with([&](auto& l) { l.used = Gpa{kMmioWindowStart}; }));
    CHECK(!with([&](auto& l) { l.avail = Gpa{~0ull - 1}; }));
    CHECK_THAT(with([](auto& l) { l.size = 6; }).error().message, Catch::Contains("power of two"));
}

TEST_CASE("virtqueue: chains are walked, readable then writable, and consumed only by pop", "[virtqueue]") {
    auto mem = *GuestMemory::create(kMem);
    Ring r{mem, 8};
    Virtqueue q(mem, 65536);
    REQUIRE(q.activate(r.layout(), 256));
    Chain c;
    CHECK(*q.peek(c) == false); // nothing offered

    // A 3-descriptor chain: 2 readable, 1 writable, crossing the ring's end (4 -> 7 -> 0).
    r.set_desc(4, 0x100000, 100, kDescFNext, 7);
    r.set_desc(7, 0x101000, 200, kDescFNext, 0);
    r.set_desc(0, 0x102000, 300, kDescFWrite);
    r.offer(4);
    r.set_desc(1, 0x103000, 10);
    r.offer(1);

    REQUIRE(*q.peek(c));
    CHECK(c.head == 4);
    REQUIRE(c.readable.size() == 2);
    REQUIRE(c.writable.size() == 1);
    CHECK(c.readable[0].addr == Gpa{0x100000});
    CHECK(c.readable[1].len == 200);
    CHECK(c.writable[0].addr == Gpa{0x102000});
    CHECK(c.readable_bytes == 300);
    CHECK(c.writable_bytes == 300);
    // Not consumed: peeking again gives the same chain.
    REQUIRE(*q.peek(c));
    CHECK(c.head == 4);
    q.pop();
    REQUIRE(*q.peek(c));
    CHECK(c.head == 1);
    q.pop();
    CHECK(*q.peek(c) == false);
    CHECK(q.next_avail() == 2);
}

TEST_CASE("virtqueue: avail ring wraps over many rounds with 16-bit indices", "[virtqueue]") {
    auto mem = *GuestMemory::create(kMem);
    Ring r{mem, 4};
    Virtqueue q(mem, 65536);
    // Start near the 16-bit wrap, as a restored queue would.
    r.avail_idx = 65530;
    r.set_avail_idx(65530);
    REQUIRE(q.activate(r.layout(), 256, 65530, 65530));
    Chain c;
    for (int i = 0; i < 20; ++i) {
        uint16_t d = i % 4;
        r.set_desc(d, 0x100000 + 0x1000 * d, 64, kDescFWrite);
        r.offer(d);
        REQUIRE(*q.peek(c));
        CHECK(c.head == d);
        q.pop();
        REQUIRE(q.push_used(c.head, 64));
        CHECK(r.used_idx() == q.next_used());
        CHECK(r.used_elem(q.next_used() - 1).id == d);
    }
    CHECK(q.next_avail() == uint16_t(65530 + 20));
}

TEST_CASE("virtqueue: driver faults are refused with a reason, never followed", "[virtqueue]") {
    auto mem = *GuestMemory::create(kMem);
    Ring r{mem, 8};
    Virtqueue q(mem, 65536);
    REQUIRE(q.activate(r.layout(), 256));
    Chain c;
    auto fault_of = [&]() -> std::string {
        auto res = q.peek(c);
        REQUIRE(!res);
        CHECK(res.error().code == Errc::guest_fault);
        return res.error().message;
    };

    SECTION("loop") {
        r.set_desc(0, 0x100000, 10, kDescFNext, 1);
        r.set_desc(1, 0x100000, 10, kDescFNext, 0);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("loop"));
    }
    SECTION("self loop") {
        r.set_desc(3, 0x100000, 1, kDescFNext, 3);
        r.offer(3);
        CHECK_THAT(fault_of(), Catch::Contains("loop"));
    }
    SECTION("head index out of range") {
        r.offer(8);
        CHECK_THAT(fault_of(), Catch::Contains("names descriptor 8"));
    }
    SECTION("next index out of range") {
        r.set_desc(0, 0x100000, 10, kDescFNext, 200);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("chains to 200"));
    }
    SECTION("buffer outside RAM") {
        r.set_desc(0, kMem - 8, 16);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("outside guest RAM"));
    }
    SECTION("buffer in the MMIO window") {
        r.set_desc(0, 0xd0000000, 4);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("outside guest RAM"));
    }
    SECTION("address that wraps") {
        r.set_desc(0, ~0ull - 4, 16);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("outside guest RAM"));
    }
    SECTION("length near 2^32") {
        r.set_desc(0, 0x100000, 0xffffffffu);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("exceeds 65536 bytes"));
    }
    SECTION("lengths whose sum would wrap 32 bits") {
        r.set_desc(0, 0x100000, 0x80000000u, kDescFNext, 1);
        r.set_desc(1, 0x100000, 0x80000000u);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("exceeds"));
    }
    SECTION("chain total over the bound") {
        for (uint16_t i = 0; i < 3; ++i) r.set_desc(i, 0x100000, 30000, i < 2 ? kDescFNext : 0, i + 1);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("exceeds 65536 bytes"));
    }
    SECTION("indirect descriptor") {
        r.set_desc(0, 0x100000, 16, kDescFIndirect);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("indirect"));
    }
    SECTION("readable after writable") {
        r.set_desc(0, 0x100000, 16, kDescFWrite | kDescFNext, 1);
        r.set_desc(1, 0x101000, 16);
        r.offer(0);
        CHECK_THAT(fault_of(), Catch::Contains("readable after"));
    }
    SECTION("avail idx jumps more than the queue size ahead") {
        r.set_avail_idx(9);
        CHECK_THAT(fault_of(), Catch::Contains("ahead"));
    }
    SECTION("avail idx behind the device (a huge jump mod 2^16)") {
        r.set_avail_idx(0xffff);
        CHECK_THAT(fault_of(), Catch::Contains("ahead"));
    }
    SECTION("exactly a full ring is fine") {
        for (uint16_t i = 0; i < 8; ++i) {
            r.set_desc(i, 0x100000, 16);
            r.offer(i);
        }
        for (int i = 0; i < 8; ++i) {
            REQUIRE(*q.peek(c));
            q.pop();
        }
        CHECK(*q.peek(c) == false);
    }
}

TEST_CASE("virtqueue: used ring writes are ordered, counted and marked dirty", "[virtqueue]") {
    auto mem = *GuestMemory::create(kMem);
    Ring r{mem, 8};
    r.used = Gpa{0x30ff8}; // the used ring straddles a page boundary
    Virtqueue q(mem, 65536);
    REQUIRE(q.activate(r.layout(), 256));
    (void)drain(mem);

    REQUIRE(q.push_used(5, 1234));
    REQUIRE(q.push_used(6, 0));
    CHECK(r.used_idx() == 2);
    CHECK(r.used_elem(0).id == 5);
    CHECK(r.used_elem(0).len == 1234);
    CHECK(r.used_elem(1).id == 6);
    Bitmap d = drain(mem);
    CHECK(d.test(0x30ff8 / kPageSize)); // idx
    CHECK(d.test(0x31000 / kPageSize)); // elements
    CHECK(d.count() == 2);

    REQUIRE(q.set_used_flags(kUsedFNoNotify));
    CHECK(r.used_flags() == kUsedFNoNotify);
    CHECK(drain(mem).test(0x30ff8 / kPageSize));

    q.deactivate();
    Chain c;
    CHECK(!q.peek(c));
    CHECK(!q.push_used(0, 0));
}

// ---- virtio-mmio transport ----

namespace {

struct FakeModel : VirtioModel {
    uint64_t features = kFeatureVersion1 | (1ull << 5);
    std::vector<unsigned> notified;
    int driver_oks = 0, resets = 0;
    uint32_t device_id() const override { return 1; }
    uint64_t device_features() const override { return features; }
    void read_config(uint64_t offset, std::span<uint8_t> out) const override {
        for (size_t i = 0; i < out.size(); ++i)
            if (offset + i < 6) out[i] = uint8_t(0xa0 + offset + i);
    }
    void queue_notify(unsigned index) override { notified.push_back(index); }
    void driver_ok() override { ++driver_oks; }
    void device_reset() override { ++resets; }
};

} // namespace

TEST_CASE("mmio: identification registers and feature words", "[mmio]") {
    auto mem = *GuestMemory::create(kMem);
    FakeModel m;
    MmioTransport t("test", mem, m, {{256, 65536}, {128, 65536}});
    auto r = MmioDriver::of_transport(t);
    CHECK(r.rd(reg::kMagic) == 0x74726976);
    CHECK(r.rd(reg::kVersion) == 2);
    CHECK(r.rd(reg::kDeviceId) == 1);
    CHECK(r.rd(reg::kVendorId) == kVendorId);
    r.wr(reg::kDeviceFeaturesSel, 0);
    CHECK(r.rd(reg::kDeviceFeatures) == (1u << 5));
    r.wr(reg::kDeviceFeaturesSel, 1);
    CHECK(r.rd(reg::kDeviceFeatures) == 1u); // VERSION_1 is bit 32
    r.wr(reg::kDeviceFeaturesSel, 2);
    CHECK(r.rd(reg::kDeviceFeatures) == 0);
    r.wr(reg::kQueueSel, 0);
    CHECK(r.rd(reg::kQueueNumMax) == 256);
    r.wr(reg::kQueueSel, 1);
    CHECK(r.rd(reg::kQueueNumMax) == 128);
    r.wr(reg::kQueueSel, 2);
    CHECK(r.rd(reg::kQueueNumMax) == 0); // no such queue
    CHECK(r.rd(reg::kQueueReady) == 0);
    CHECK(r.rd(reg::kConfigGeneration) == 0);
    CHECK(r.rd(reg::kInterruptStatus) == 0);
    // Configuration space: any width.
    uint8_t b[6] = {};
    t.access(reg::kConfig + 1, {b, 1}, false);
    CHECK(b[0] == 0xa1);
    uint16_t w = 0;
    t.access(reg::kConfig + 4, {reinterpret_cast<uint8_t*>(&w), 2}, false);
    CHECK(w == 0xa5a4);
    CHECK(t.bad_accesses() == 0);
    CHECK(mmio_cmdline_token(0xd0000000, 5) == "virtio_mmio.device=0x1000@0xd0000000:5");
}

TEST_CASE("mmio: bad accesses are ignored and counted, never fatal", "[mmio]") {
    auto mem = *GuestMemory::create(kMem);
    FakeModel m;
    MmioTransport t("test", mem, m, {{256, 65536}});
    auto r = MmioDriver::of_transport(t);
    uint8_t byte = 0x55;
    t.access(reg::kMagic, {&byte, 1}, false); // 1-byte register read
    CHECK(byte == 0);
    uint64_t q = 0;
    t.access(reg::kStatus, {reinterpret_cast<uint8_t*>(&q), 8}, true); // 8-byte write
    t.access(reg::kStatus + 2, {&byte, 1}, true);                     // unaligned
    CHECK(r.rd(0x0f0) == 0);                                          // no register there
    r.wr(reg::kMagic, 1);                                             // read-only
    r.wr(reg::kConfig, 1);                                            // read-only config
    CHECK(r.rd(reg::kQueueNum) == 0);                                 // write-only
    CHECK(t.bad_accesses() == 7);
    CHECK(t.status() == 0);
    CHECK(!t.broken());
}

TEST_CASE("mmio: feature negotiation and the status state machine", "[mmio]") {
    auto mem = *GuestMemory::create(kMem);
    FakeModel m;
    MmioTransport t("test", mem, m, {{256, 65536}, {256, 65536}});
    auto r = MmioDriver::of_transport(t);

    SECTION("driver features before DRIVER are ignored") {
        r.wr(reg::kDriverFeatures, 0xffffffff);
        CHECK(t.driver_features() == 0);
        CHECK(t.bad_accesses() == 1);
    }
    SECTION("features not offered are refused: FEATURES_OK stays clear") {
        CHECK(!r.negotiate(kFeatureVersion1 | (1ull << 5) | (1ull << 0))); // CSUM
        CHECK(!(t.status() & kStatusFeaturesOk));
    }
    SECTION("a legacy driver (no VERSION_1) is refused") { CHECK(!r.negotiate(1ull << 5)); }
    SECTION("a subset including VERSION_1 is accepted; features freeze after FEATURES_OK") {
        REQUIRE(r.negotiate(kFeatureVersion1));
        CHECK(t.driver_features() == kFeatureVersion1);
        r.wr(reg::kDriverFeaturesSel, 0);
        r.wr(reg::kDriverFeatures, 1u << 5);
        CHECK(t.driver_features() == kFeatureVersion1);
    }
    SECTION("DRIVER_OK without FEATURES_OK breaks the device") {
        r.wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
        CHECK(t.broken());
        CHECK(!t.live());
        CHECK(m.driver_oks == 0);
        CHECK(r.rd(reg::kStatus) & kStatusNeedsReset);
    }
    SECTION("full bring-up, notify, reset") {
        REQUIRE(r.negotiate(kFeatureVersion1 | (1ull << 5)));
        r.setup_queue(0, 8, 0x10000, 0x20000, 0x30000);
        r.setup_queue(1, 16, 0x40000, 0x50000, 0x60000);
        CHECK(r.rd(reg::kQueueReady) == 1);
        r.wr(reg::kQueueNotify, 1); // not live yet: ignored
        CHECK(m.notified.empty());
        r.wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
        CHECK(t.live());
        CHECK(m.driver_oks == 1);
        CHECK(t.queue(1).active());
        CHECK(t.queue(1).layout().size == 16);
        r.wr(reg::kQueueNotify, 1);
        r.wr(reg::kQueueNotify, 0);
        r.wr(reg::kQueueNotify, 7); // no such queue
        CHECK(m.notified == std::vector<unsigned>{1, 0});
        CHECK(t.bad_accesses() == 1);
        // Queue set-up cannot change while ready.
        r.wr(reg::kQueueSel, 1);
        r.wr(reg::kQueueNum, 4);
        r.wr(reg::kQueueDescLow, 0x80000);
        CHECK(t.queue(1).layout().size == 16);
        CHECK(t.save().queues[1].desc == 0x40000);
        // Clearing status bits without a reset is refused.
        r.wr(reg::kStatus, kStatusAcknowledge);
        CHECK(t.live());
        // Reset.
        r.wr(reg::kStatus, 0);
        CHECK(m.resets == 1);
        CHECK(t.status() == 0);
        CHECK(t.driver_features() == 0);
        CHECK(!t.queue(0).active());
        r.wr(reg::kQueueSel, 0);
        CHECK(r.rd(reg::kQueueReady) == 0);
    }
    SECTION("bad queue set-up marks the device broken until reset") {
        REQUIRE(r.negotiate(kFeatureVersion1));
        r.setup_queue(0, 12, 0x10000, 0x20000, 0x30000); // not a power of two
        CHECK(t.broken());
        CHECK(r.rd(reg::kQueueReady) == 0);
        r.wr(reg::kStatus, 0);
        CHECK(!t.broken());
        REQUIRE(r.negotiate(kFeatureVersion1));
        r.setup_queue(0, 8, kMem - 64, 0x20000, 0x30000); // desc table outside RAM
        CHECK(t.broken());
        r.wr(reg::kStatus, 0);
        REQUIRE(r.negotiate(kFeatureVersion1));
        r.setup_queue(0, 512, 0x10000, 0x20000, 0x30000); // over QueueNumMax
        CHECK(t.broken());
        r.wr(reg::kStatus, 0);
        REQUIRE(r.negotiate(kFeatureVersion1));
        r.setup_queue(0, 0x10008, 0x10000, 0x20000, 0x30000); // over 16 bits
        CHECK(t.broken());
    }
}

TEST_CASE("mmio: transport state round-trips and bad state is refused whole", "[mmio]") {
    auto mem = *GuestMemory::create(kMem);
    FakeModel m;
    MmioTransport t("test", mem, m, {{256, 65536}, {256, 65536}});
    auto r = MmioDriver::of_transport(t);
    REQUIRE(r.negotiate(kFeatureVersion1 | (1ull << 5)));
    r.setup_queue(0, 8, 0x10000, 0x20000, 0x30000);
    r.setup_queue(1, 16, 0x40000, 0x50000, 0x60000);
    r.wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    REQUIRE(t.queue(1).push_used(3, 0));
    TransportState s = t.save();
    CHECK(s.queues[1].next_used == 1);

    FakeModel m2;
    MmioTransport t2("test2", mem, m2, {{256, 65536}, {256, 65536}});
    REQUIRE(t2.restore(s));
    CHECK(t2.live());
    CHECK(t2.queue(1).next_used() == 1);
    CHECK(t2.queue(1).layout().used == Gpa{0x60000});
    TransportState s2 = t2.save();
    CHECK(s2.status == s.status);
    CHECK(s2.driver_features == s.driver_features);
    CHECK(m2.driver_oks == 0); // restoring is not a driver action

    auto refused = [&](auto f) {
        TransportState b = s;
        f(b);
        FakeModel m3;
        MmioTransport t3("test3", mem, m3, {{256, 65536}, {256, 65536}});
        auto res = t3.restore(b);
        if (!res) CHECK(t3.status() == 0); // nothing applied
        return !res;
    };
    CHECK(refused([](auto& b) { b.device_features |= 1; }));
    CHECK(refused([](auto& b) { b.driver_features |= 1ull << 7; }));
    CHECK(refused([](auto& b) { b.status |= 0x100; }));
    CHECK(refused([](auto& b) { b.status &= ~kStatusFeaturesOk; }));
    CHECK(refused([](auto& b) { b.queues.pop_back(); }));
    CHECK(refused([](auto& b) { b.queues[0].num = 6; }));
    CHECK(refused([](auto& b) { b.queues[0].num = 512; }));
    CHECK(refused([](auto& b) { b.queues[1].desc = kMem; }));
    CHECK(refused([](auto& b) { b.queues[1].device = 0x60002; }));
    CHECK(!refused([](auto& b) { b.queues[1].ready = false, b.queues[1].num = 6; })); // checked when made ready
}
