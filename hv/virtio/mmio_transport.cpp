// virtio-mmio register file and status state machine (see mmio_transport.hpp).
#include "hv/virtio/mmio_transport.hpp"

#include <cstring>

#include <fmt/format.h>

#include "common/log.hpp"

namespace understudy::hv::virtio {

namespace {
constexpr uint32_t kKnownStatus =
    kStatusAcknowledge | kStatusDriver | kStatusDriverOk | kStatusFeaturesOk | kStatusNeedsReset | kStatusFailed;
// Bits the driver sets one by one during initialisation and must not clear except by reset.
constexpr uint32_t kDriverSteps = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;

uint64_t set_half(uint64_t v, bool high, uint32_t half) {
    return high ? (v & 0xffffffffull) | (uint64_t(half) << 32) : (v & ~0xffffffffull) | half;
}
} // namespace

std::string mmio_cmdline_token(uint64_t base, unsigned irq) {
    return fmt::format("virtio_mmio.device=0x{:x}@0x{:x}:{}", kMmioSize, base, irq);
}

// ---- the transport's saved-state fields ----

namespace {
// Never reuse a tag number.
enum TransportTag : uint32_t { kTagFeatures = 1, kTagTransport = 2, kTagQueue = 3 };
static_assert(kTagQueue < kFirstDeviceTag);

struct FeaturesWire {
    uint64_t offered;    // 0
    uint64_t negotiated; // 8
};
static_assert(std::is_standard_layout_v<FeaturesWire> && sizeof(FeaturesWire) == 16);

struct TransportWire {
    uint32_t status;              // 0
    uint32_t queue_sel;           // 4
    uint32_t device_features_sel; // 8
    uint32_t driver_features_sel; // 12
};
static_assert(std::is_standard_layout_v<TransportWire> && sizeof(TransportWire) == 16);

struct QueueWire {
    uint32_t index;      // 0
    uint32_t num;        // 4
    uint32_t ready;      // 8: 0 or 1
    uint16_t next_avail; // 12
    uint16_t next_used;  // 14
    uint64_t desc;       // 16
    uint64_t driver;     // 24: avail ring
    uint64_t device;     // 32: used ring
};
static_assert(std::is_standard_layout_v<QueueWire> && sizeof(QueueWire) == 40);
} // namespace

void encode_transport_state(Encoder& e, const TransportState& ts) {
    e.field_pod(kTagFeatures, FeaturesWire{ts.device_features, ts.driver_features});
    e.field_pod(kTagTransport, TransportWire{ts.status, ts.queue_sel, ts.device_features_sel, ts.driver_features_sel});
    for (uint32_t i = 0; i < ts.queues.size(); ++i) {
        const auto& q = ts.queues[i];
        e.field_pod(kTagQueue, QueueWire{i, q.num, q.ready ? 1u : 0u, q.next_avail, q.next_used, q.desc, q.driver, q.device});
    }
}

TransportStateReader::TransportStateReader(unsigned queue_count) : seen_queue_(queue_count, false) {
    ts_.queues.resize(queue_count);
}

Result<bool> TransportStateReader::take(const Decoder::Field& f, const Decoder& d, const std::string& what) {
    switch (f.tag) {
    case kTagFeatures: {
        auto w = US_TRY(Decoder::as_pod<FeaturesWire>(f, what));
        ts_.device_features = w.offered;
        ts_.driver_features = w.negotiated;
        have_features_ = true;
        return true;
    }
    case kTagTransport: {
        auto w = US_TRY(Decoder::as_pod<TransportWire>(f, what));
        ts_.status = w.status;
        ts_.queue_sel = w.queue_sel;
        ts_.device_features_sel = w.device_features_sel;
        ts_.driver_features_sel = w.driver_features_sel;
        have_transport_ = true;
        return true;
    }
    case kTagQueue: {
        auto w = US_TRY(Decoder::as_pod<QueueWire>(f, what));
        if (w.index >= seen_queue_.size() || seen_queue_[w.index])
            return d.error(fmt::format("queue {} is unknown or appears twice", w.index));
        if (w.ready > 1) return d.error(fmt::format("queue {} ready flag is {}", w.index, w.ready));
        seen_queue_[w.index] = true;
        ts_.queues[w.index] = QueueState{w.num, w.ready == 1, w.desc, w.driver, w.device, w.next_avail, w.next_used};
        return true;
    }
    default: return false;
    }
}

Result<TransportState> TransportStateReader::finish(const Decoder& d) const {
    if (!have_features_ || !have_transport_) return d.error("features or transport field missing");
    for (bool seen : seen_queue_)
        if (!seen) return d.error("a queue is missing");
    return ts_;
}

MmioTransport::MmioTransport(std::string name, GuestMemory& mem, VirtioModel& model, const std::vector<QueueSpec>& queues)
    : name_(std::move(name)), mem_(mem), model_(model) {
    for (const auto& spec : queues) queues_.push_back(Queue{spec, Virtqueue(mem, spec.max_chain_bytes), spec.max_size});
}

void MmioTransport::bad_access(uint64_t off, size_t len, bool is_write, const char* why) {
    uint64_t n = bad_accesses_++;
    if (log_worthy(n))
        log::warn("{}: ignored {}-byte {} at offset 0x{:x}: {} (#{})", name_, len, is_write ? "write" : "read", off, why,
                  n + 1);
}

void MmioTransport::fail(const std::string& why) {
    status_ |= kStatusNeedsReset;
    uint64_t n = failures_++;
    if (log_worthy(n))
        log::error("{}: device broken, needs reset by the driver: {} (#{})", name_, why, n + 1);
}

void MmioTransport::access(uint64_t offset, std::span<uint8_t> data, bool is_write) {
    if (offset >= reg::kConfig) {
        // Configuration space: any width. Read-only for virtio-net (MAC without CTRL_MAC_ADDR).
        if (is_write) return bad_access(offset, data.size(), true, "configuration space is read-only");
        std::memset(data.data(), 0, data.size());
        model_.read_config(offset - reg::kConfig, data);
        return;
    }
    // Registers: aligned 32-bit accesses only (virtio 1.2, 4.2.2.2).
    if (data.size() != 4 || offset % 4 != 0) {
        if (!is_write) std::memset(data.data(), 0, data.size());
        return bad_access(offset, data.size(), is_write, "registers take aligned 32-bit accesses");
    }
    if (is_write) {
        uint32_t v;
        std::memcpy(&v, data.data(), 4);
        write_reg(offset, v);
    } else {
        uint32_t v = read_reg(offset);
        std::memcpy(data.data(), &v, 4);
    }
}

uint32_t MmioTransport::read_reg(uint64_t off) {
    switch (off) {
    case reg::kMagic: return kMmioMagic;
    case reg::kVersion: return kMmioVersion;
    case reg::kDeviceId: return model_.device_id();
    case reg::kVendorId: return kVendorId;
    case reg::kDeviceFeatures: {
        uint64_t f = model_.device_features();
        return device_features_sel_ == 0 ? uint32_t(f) : device_features_sel_ == 1 ? uint32_t(f >> 32) : 0;
    }
    case reg::kQueueNumMax: return selected() ? selected()->spec.max_size : 0; // 0: no such queue
    case reg::kQueueReady: return selected() ? selected()->ready : 0;
    case reg::kInterruptStatus: return interrupt_status_;
    case reg::kStatus: return status_;
    case reg::kConfigGeneration: return 0; // the configuration never changes
    default: bad_access(off, 4, false, "not a readable register"); return 0;
    }
}

void MmioTransport::write_reg(uint64_t off, uint32_t v) {
    Queue* q = selected();
    auto queue_addr = [&](uint64_t Queue::*field, bool high) {
        if (!q) return bad_access(off, 4, true, "no queue selected");
        if (q->ready) return bad_access(off, 4, true, "queue address changed while the queue is ready");
        q->*field = set_half(q->*field, high, v);
    };
    switch (off) {
    case reg::kDeviceFeaturesSel: device_features_sel_ = v; return;
    case reg::kDriverFeaturesSel: driver_features_sel_ = v; return;
    case reg::kDriverFeatures:
        if (!(status_ & kStatusDriver) || (status_ & kStatusFeaturesOk))
            return bad_access(off, 4, true, "driver features written outside feature negotiation");
        if (driver_features_sel_ > 1) {
            if (v != 0) bad_access(off, 4, true, "driver features beyond bit 63");
            return;
        }
        driver_features_ = set_half(driver_features_, driver_features_sel_ == 1, v);
        return;
    case reg::kQueueSel: queue_sel_ = v; return;
    case reg::kQueueNum:
        if (!q) return bad_access(off, 4, true, "no queue selected");
        if (q->ready) return bad_access(off, 4, true, "queue size changed while the queue is ready");
        q->num = v;
        return;
    case reg::kQueueReady:
        if (!q) return bad_access(off, 4, true, "no queue selected");
        return set_queue_ready(*q, v);
    case reg::kQueueDescLow: return queue_addr(&Queue::desc, false);
    case reg::kQueueDescHigh: return queue_addr(&Queue::desc, true);
    case reg::kQueueDriverLow: return queue_addr(&Queue::driver, false);
    case reg::kQueueDriverHigh: return queue_addr(&Queue::driver, true);
    case reg::kQueueDeviceLow: return queue_addr(&Queue::device, false);
    case reg::kQueueDeviceHigh: return queue_addr(&Queue::device, true);
    case reg::kQueueNotify:
        if (v >= queues_.size()) return bad_access(off, 4, true, "notify names no queue");
        if (live() && queues_[v].ready) model_.queue_notify(v);
        return;
    case reg::kInterruptAck: interrupt_status_ &= ~v; return;
    case reg::kStatus: return write_status(v);
    default: return bad_access(off, 4, true, "not a writable register");
    }
}

void MmioTransport::write_status(uint32_t v) {
    if (v == 0) {
        reset();
        model_.device_reset();
        return;
    }
    const uint32_t old = status_;
    uint32_t next = v & ~kStatusNeedsReset; // NEEDS_RESET is the device's to set
    if (next & ~kKnownStatus) return bad_access(reg::kStatus, 4, true, "unknown status bits");
    if (old & ~next & kDriverSteps) return bad_access(reg::kStatus, 4, true, "status bits cleared without a reset");
    if ((next & kStatusFeaturesOk) && !(old & kStatusFeaturesOk)) {
        // Refusing leaves FEATURES_OK clear; the driver reads Status back and gives up.
        bool subset = (driver_features_ & ~model_.device_features()) == 0;
        if (!subset || !(driver_features_ & kFeatureVersion1) || !(next & kStatusDriver)) {
            next &= ~(kStatusFeaturesOk | kStatusDriverOk);
            if (log_worthy(refusals_++))
                log::warn("{}: refused driver features 0x{:x} (offered 0x{:x}; VERSION_1 is required) (#{})", name_,
                          driver_features_, model_.device_features(), refusals_);
        }
    }
    if ((next & kStatusDriverOk) && !(next & kStatusFeaturesOk)) {
        status_ = old | (next & ~kStatusDriverOk);
        return fail("DRIVER_OK set without FEATURES_OK");
    }
    status_ = next | (old & kStatusNeedsReset);
    if ((status_ & kStatusDriverOk) && !(old & kStatusDriverOk) && !broken()) model_.driver_ok();
}

void MmioTransport::set_queue_ready(Queue& q, uint32_t v) {
    if (v > 1) return bad_access(reg::kQueueReady, 4, true, "QueueReady takes 0 or 1");
    if (v == 0) {
        q.ready = false;
        q.vq.deactivate();
        return;
    }
    if (q.ready) return;
    if (q.num > 0xffff) return fail(fmt::format("queue {} size {} is not a power of two in [1, {}]", queue_sel_, q.num, q.spec.max_size));
    VirtqueueLayout l{static_cast<uint16_t>(q.num), Gpa{q.desc}, Gpa{q.driver}, Gpa{q.device}};
    if (auto r = q.vq.activate(l, q.spec.max_size); !r) return fail(fmt::format("queue {}: {}", queue_sel_, r.error().message));
    q.ready = true;
}

void MmioTransport::reset() {
    driver_features_ = 0;
    status_ = 0;
    interrupt_status_ = 0;
    queue_sel_ = 0;
    device_features_sel_ = 0;
    driver_features_sel_ = 0;
    for (auto& q : queues_) {
        q.vq.deactivate();
        q.num = q.spec.max_size;
        q.ready = false;
        q.desc = q.driver = q.device = 0;
    }
}

TransportState MmioTransport::save() const {
    TransportState s;
    s.device_features = model_.device_features();
    s.driver_features = driver_features_;
    s.status = status_;
    s.queue_sel = queue_sel_;
    s.device_features_sel = device_features_sel_;
    s.driver_features_sel = driver_features_sel_;
    for (const auto& q : queues_) {
        QueueState qs{q.num, q.ready, q.desc, q.driver, q.device, 0, 0};
        if (q.ready) {
            qs.next_avail = q.vq.next_avail();
            qs.next_used = q.vq.next_used();
        }
        s.queues.push_back(qs);
    }
    return s;
}

Result<void> MmioTransport::restore(const TransportState& s) {
    auto bad = [&](const std::string& why) { return make_error(Errc::invalid_input, name_ + " state: " + why); };
    if (s.device_features != model_.device_features())
        return bad(fmt::format("saved by a device offering features 0x{:x}; this one offers 0x{:x}", s.device_features,
                               model_.device_features()));
    if (s.driver_features & ~s.device_features)
        return bad(fmt::format("driver features 0x{:x} were never offered", s.driver_features));
    if (s.status & ~kKnownStatus) return bad(fmt::format("unknown status bits 0x{:x}", s.status));
    if ((s.status & kStatusFeaturesOk) && !(s.driver_features & kFeatureVersion1))
        return bad("FEATURES_OK without VERSION_1");
    if ((s.status & kStatusDriverOk) && !(s.status & kStatusFeaturesOk)) return bad("DRIVER_OK without FEATURES_OK");
    if (s.queues.size() != queues_.size())
        return bad(fmt::format("{} queues, this device has {}", s.queues.size(), queues_.size()));
    for (size_t i = 0; i < queues_.size(); ++i) {
        const auto& qs = s.queues[i];
        if (!qs.ready) continue;
        if (qs.num > 0xffff) return bad(fmt::format("queue {} size {}", i, qs.num));
        VirtqueueLayout l{static_cast<uint16_t>(qs.num), Gpa{qs.desc}, Gpa{qs.driver}, Gpa{qs.device}};
        if (auto r = validate_layout(mem_, l, queues_[i].spec.max_size); !r)
            return bad(fmt::format("queue {}: {}", i, r.error().message));
    }
    // Everything checked: apply.
    driver_features_ = s.driver_features;
    status_ = s.status;
    queue_sel_ = s.queue_sel;
    device_features_sel_ = s.device_features_sel;
    driver_features_sel_ = s.driver_features_sel;
    for (size_t i = 0; i < queues_.size(); ++i) {
        const auto& qs = s.queues[i];
        auto& q = queues_[i];
        q.num = qs.num;
        q.ready = qs.ready;
        q.desc = qs.desc;
        q.driver = qs.driver;
        q.device = qs.device;
        q.vq.deactivate();
        if (qs.ready) {
            VirtqueueLayout l{static_cast<uint16_t>(qs.num), Gpa{qs.desc}, Gpa{qs.driver}, Gpa{qs.device}};
            US_TRYV(q.vq.activate(l, q.spec.max_size, qs.next_avail, qs.next_used)); // validated above
        }
    }
    return {};
}

} // namespace understudy::hv::virtio
