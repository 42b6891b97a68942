// The guest's side of a virtio-mmio device, for tests without KVM: split rings built in a
// GuestMemory, and register accesses through the device's MMIO handler.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "hv/guest_memory.hpp"
#include "hv/virtio/mmio_transport.hpp"
#include "hv/virtio/virtqueue.hpp"

namespace understudy::test {

struct Ring {
    hv::GuestMemory& mem;
    uint16_t size;
    hv::Gpa desc, avail, used;
    uint16_t avail_idx = 0;

    void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags = 0, uint16_t next = 0) {
        REQUIRE(mem.write_obj(desc + 16ull * i, hv::virtio::VirtqDesc{addr, len, flags, next}));
    }
    void offer(uint16_t head) {
        REQUIRE(mem.write_obj<uint16_t>(avail + 4 + 2ull * (avail_idx % size), head));
        ++avail_idx;
        REQUIRE(mem.write_obj<uint16_t>(avail + 2, avail_idx));
    }
    uint16_t used_idx() const { return *mem.read_obj<uint16_t>(used + 2); }
    uint16_t used_flags() const { return *mem.read_obj<uint16_t>(used); }
    hv::virtio::VirtqUsedElem used_elem(uint16_t i) const {
        return *mem.read_obj<hv::virtio::VirtqUsedElem>(used + 4 + 8ull * (i % size));
    }
    void clear() { // fresh rings: the three areas zeroed, nothing offered
        std::vector<uint8_t> z(0x1000, 0);
        for (hv::Gpa a : {desc, avail, used}) REQUIRE(mem.write(a, z));
        avail_idx = 0;
    }
};

// Register accesses and the bring-up steps (virtio 1.2, 3.1.1) through an MMIO handler:
// a device's mmio_access() or a bare transport's access().
struct MmioDriver {
    std::function<void(uint64_t, std::span<uint8_t>, bool)> access;

    template <class Device>
    static MmioDriver of(Device& d) {
        return {[&d](uint64_t off, std::span<uint8_t> data, bool w) { d.mmio_access(off, data, w); }};
    }
    static MmioDriver of_transport(hv::virtio::MmioTransport& t) {
        return {[&t](uint64_t off, std::span<uint8_t> data, bool w) { t.access(off, data, w); }};
    }

    uint32_t rd(uint64_t off) {
        uint32_t v = 0xdeadbeef;
        access(off, {reinterpret_cast<uint8_t*>(&v), 4}, false);
        return v;
    }
    void wr(uint64_t off, uint32_t v) { access(off, {reinterpret_cast<uint8_t*>(&v), 4}, true); }
    void wr64(uint64_t lo, uint64_t v) {
        wr(lo, uint32_t(v));
        wr(lo + 4, uint32_t(v >> 32));
    }
    uint32_t status() { return rd(hv::virtio::reg::kStatus); }
    uint64_t device_features() {
        using namespace hv::virtio;
        wr(reg::kDeviceFeaturesSel, 0);
        uint64_t f = rd(reg::kDeviceFeatures);
        wr(reg::kDeviceFeaturesSel, 1);
        return f | uint64_t(rd(reg::kDeviceFeatures)) << 32;
    }
    // ACKNOWLEDGE, DRIVER, the features written, FEATURES_OK; whether it reads back set.
    bool negotiate(uint64_t features) {
        using namespace hv::virtio;
        wr(reg::kStatus, kStatusAcknowledge);
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver);
        wr(reg::kDriverFeaturesSel, 0);
        wr(reg::kDriverFeatures, uint32_t(features));
        wr(reg::kDriverFeaturesSel, 1);
        wr(reg::kDriverFeatures, uint32_t(features >> 32));
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
        return status() & kStatusFeaturesOk;
    }
    // Queue set-up as Linux's virtio_mmio does it.
    void setup_queue(unsigned i, uint32_t num, uint64_t desc, uint64_t avail, uint64_t used) {
        using namespace hv::virtio;
        wr(reg::kQueueSel, i);
        wr(reg::kQueueNum, num);
        wr64(reg::kQueueDescLow, desc);
        wr64(reg::kQueueDriverLow, avail);
        wr64(reg::kQueueDeviceLow, used);
        wr(reg::kQueueReady, 1);
    }
    void setup_queue(unsigned i, const Ring& r) {
        wr(hv::virtio::reg::kQueueSel, i);
        REQUIRE(rd(hv::virtio::reg::kQueueNumMax) >= r.size);
        setup_queue(i, r.size, r.desc.value, r.avail.value, r.used.value);
    }
    void driver_ok() {
        using namespace hv::virtio;
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
        REQUIRE(status() == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk));
    }
};

} // namespace understudy::test
