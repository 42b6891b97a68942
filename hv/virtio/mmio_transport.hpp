// The virtio-mmio transport, modern interface (Version 2, virtio 1.2 section 4.2.2):
// the register file, feature negotiation, the device status state machine and the
// queues. It holds no lock and knows no vCPU: the device that owns it serialises
// accesses and drives it with plain (offset, bytes) calls, so tests need no KVM.
// Misbehaviour is never a VM stop: bad register accesses are ignored and counted, bad
// queue set-up marks the device broken (DEVICE_NEEDS_RESET) until the driver resets it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/codec.hpp"
#include "common/error.hpp"
#include "hv/guest_memory.hpp"
#include "hv/virtio/virtqueue.hpp"

namespace understudy::hv::virtio {

// Device status bits (virtio 1.2, 2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusNeedsReset = 0x40;
inline constexpr uint32_t kStatusFailed = 0x80;

inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;

// Device placement: window i at kMmioBase + i * kMmioSize, inside the MMIO window.
inline constexpr uint64_t kMmioBase = 0xd0000000;
inline constexpr uint64_t kMmioSize = 0x1000;
// Device i's interrupt is kMmioIrq + i (edge-triggered, in the ACPI DSDT) on a VM with the
// PC platform; the guest/ images poll and never see one.
inline constexpr unsigned kMmioIrq = 5;
inline constexpr uint32_t kInterruptUsedBuffer = 1; // InterruptStatus bit 0
inline constexpr uint32_t kMmioMagic = 0x74726976; // "virt"
inline constexpr uint32_t kMmioVersion = 2;
inline constexpr uint32_t kVendorId = 0x44545355; // "USTD"

// Register offsets.
namespace reg {
inline constexpr uint64_t kMagic = 0x000, kVersion = 0x004, kDeviceId = 0x008, kVendorId = 0x00c;
inline constexpr uint64_t kDeviceFeatures = 0x010, kDeviceFeaturesSel = 0x014;
inline constexpr uint64_t kDriverFeatures = 0x020, kDriverFeaturesSel = 0x024;
inline constexpr uint64_t kQueueSel = 0x030, kQueueNumMax = 0x034, kQueueNum = 0x038, kQueueReady = 0x044;
inline constexpr uint64_t kQueueNotify = 0x050, kInterruptStatus = 0x060, kInterruptAck = 0x064, kStatus = 0x070;
inline constexpr uint64_t kQueueDescLow = 0x080, kQueueDescHigh = 0x084;
inline constexpr uint64_t kQueueDriverLow = 0x090, kQueueDriverHigh = 0x094;
inline constexpr uint64_t kQueueDeviceLow = 0x0a0, kQueueDeviceHigh = 0x0a4;
inline constexpr uint64_t kConfigGeneration = 0x0fc, kConfig = 0x100;
} // namespace reg

// Rate limit for guest-triggered log lines: the first 16 occurrences, then the 32nd,
// 64th, ... (n counts from 0).
inline bool log_worthy(uint64_t n) { return n < 16 || (n & (n - 1)) == 0; }

// `virtio_mmio.device=<size>@<base>:<irq>`, Linux's kernel command line convention.
std::string mmio_cmdline_token(uint64_t base, unsigned irq);

// What a device type tells its transport, and what the transport asks of it. Called
// with the owner's lock held.
class VirtioModel {
public:
    virtual ~VirtioModel() = default;
    virtual uint32_t device_id() const = 0;
    virtual uint64_t device_features() const = 0;
    // Reads of the device-specific configuration space at `offset` from 0x100; bytes
    // past its end read as zero.
    virtual void read_config(uint64_t offset, std::span<uint8_t> out) const = 0;
    // The driver wrote `index` (a valid queue) to QueueNotify while the device is live.
    virtual void queue_notify(unsigned index) = 0;
    // The transport reached DRIVER_OK, or was reset (status written 0).
    virtual void driver_ok() = 0;
    virtual void device_reset() = 0;
};

struct QueueSpec {
    uint16_t max_size;        // QueueNumMax
    uint64_t max_chain_bytes; // bound on one chain's total length
};

// Plain transport state, for save/restore. The broken flag is status bit NEEDS_RESET.
struct QueueState {
    uint32_t num = 0; // as the driver wrote it; checked when the queue is made ready
    bool ready = false;
    uint64_t desc = 0, driver = 0, device = 0;
    uint16_t next_avail = 0, next_used = 0;
};
struct TransportState {
    uint64_t device_features = 0; // offered
    uint64_t driver_features = 0; // accepted by the driver
    uint32_t status = 0;
    uint32_t queue_sel = 0;
    uint32_t device_features_sel = 0;
    uint32_t driver_features_sel = 0;
    std::vector<QueueState> queues;
};

// The transport's part of every virtio-mmio device's saved state (docs/virtio.md, "Saved
// state"): tagged fields 1 to 3. A device's own fields take tags from kFirstDeviceTag.
inline constexpr uint32_t kFirstDeviceTag = 4;
void encode_transport_state(Encoder& e, const TransportState& ts);

// Collects the transport's fields while a device decodes its saved state.
class TransportStateReader {
public:
    explicit TransportStateReader(unsigned queue_count);
    // Takes `f` (true) if it is one of the transport's fields; false leaves it to the device.
    Result<bool> take(const Decoder::Field& f, const Decoder& d, const std::string& what);
    // The state, once every field was present exactly once.
    Result<TransportState> finish(const Decoder& d) const;

private:
    TransportState ts_;
    bool have_features_ = false, have_transport_ = false;
    std::vector<bool> seen_queue_;
};

class MmioTransport {
public:
    // `name` prefixes log lines.
    MmioTransport(std::string name, GuestMemory& mem, VirtioModel& model, const std::vector<QueueSpec>& queues);

    // One guest access at `offset` in the device window. Never fails: accesses of the
    // wrong width or to unknown registers read as zero / are dropped, and are counted.
    void access(uint64_t offset, std::span<uint8_t> data, bool is_write);

    // Live: DRIVER_OK reached and not broken.
    bool live() const { return (status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset); }
    bool broken() const { return status_ & kStatusNeedsReset; }
    uint32_t status() const { return status_; }
    uint64_t driver_features() const { return driver_features_; }
    Virtqueue& queue(unsigned i) { return queues_[i].vq; }
    unsigned queue_count() const { return static_cast<unsigned>(queues_.size()); }
    uint64_t bad_accesses() const { return bad_accesses_; }
    // Times the device was marked broken, by the transport (queue set-up, status) or the model.
    uint64_t failures() const { return failures_; }

    // Sets InterruptStatus bits (the device then raises its interrupt line); the driver
    // clears them through InterruptACK. Not saved: after a restore the device raises
    // them again (and rescans its queues), which a driver must tolerate anyway.
    void raise_interrupt(uint32_t bits) { interrupt_status_ |= bits; }

    // Marks the device broken (DEVICE_NEEDS_RESET) with a rate-limited log line; it stays
    // so until the driver writes 0 to Status.
    void fail(const std::string& why);

    TransportState save() const;
    // Validates everything first (queue sizes, addresses, feature sets, status bits) and
    // changes nothing if the state is refused.
    Result<void> restore(const TransportState& s);

private:
    struct Queue {
        QueueSpec spec;
        Virtqueue vq;
        uint32_t num;
        bool ready = false;
        uint64_t desc = 0, driver = 0, device = 0;
    };
    uint32_t read_reg(uint64_t off);
    void write_reg(uint64_t off, uint32_t v);
    void write_status(uint32_t v);
    void set_queue_ready(Queue& q, uint32_t v);
    void reset();
    void bad_access(uint64_t off, size_t len, bool is_write, const char* why);
    Queue* selected() { return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr; }

    std::string name_;
    GuestMemory& mem_;
    VirtioModel& model_;
    std::vector<Queue> queues_;
    uint64_t driver_features_ = 0;
    uint32_t status_ = 0;
    uint32_t interrupt_status_ = 0;
    uint32_t queue_sel_ = 0;
    uint32_t device_features_sel_ = 0;
    uint32_t driver_features_sel_ = 0;
    uint64_t bad_accesses_ = 0;
    uint64_t failures_ = 0;
    uint64_t refusals_ = 0; // feature sets refused, for log rate limiting
};

} // namespace understudy::hv::virtio
