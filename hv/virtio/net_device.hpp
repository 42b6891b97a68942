// virtio-net over virtio-mmio: device id 1, features VERSION_1 and MAC only, queue 0 RX
// and queue 1 TX, a 12-byte virtio_net_hdr in front of every frame. Guests poll (RX
// used.flags carries NO_NOTIFY) and halt through the hypercall; a delivered frame wakes
// them. Spec as the guest sees it, and the save-state encoding: docs/virtio.md.
//
// Threads: MMIO accesses arrive on vCPU threads, deliver() and poll_rx() on a host I/O
// thread, tx_room_available() on the sink's thread, suspend()/resume()/save()/restore()
// on the thread that pauses the VM. One mutex serialises all of them.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "hv/virtio/mmio_device.hpp"
#include "hv/virtio/net_backend.hpp"

namespace understudy::hv::virtio {

inline constexpr uint32_t kNetDeviceId = 1;
inline constexpr uint64_t kNetFeatureMac = 1ull << 5;
inline constexpr unsigned kRxQueue = 0;
inline constexpr unsigned kTxQueue = 1;
inline constexpr uint16_t kNetQueueMax = 256;
// Largest frame either way (without the header); a chain may hold at most header + this.
inline constexpr size_t kMaxFrameBytes = 65535;
inline constexpr size_t kMinTxFrameBytes = 14; // an Ethernet header
inline constexpr uint32_t kNetStateVersion = 1;

// virtio_net_hdr with VERSION_1 (virtio 1.2, 5.1.6): always 12 bytes.
struct VirtioNetHdr {
    uint8_t flags;        // 0
    uint8_t gso_type;     // 1
    uint16_t hdr_len;     // 2
    uint16_t gso_size;    // 4
    uint16_t csum_start;  // 6
    uint16_t csum_offset; // 8
    uint16_t num_buffers; // 10: 1 without MRG_RXBUF
};
static_assert(std::is_standard_layout_v<VirtioNetHdr> && sizeof(VirtioNetHdr) == 12);

using MacAddress = std::array<uint8_t, 6>;

struct NetConfig {
    unsigned index = 0; // MMIO window kMmioBase + index * kMmioSize; name "virtio-net<index>"
    MacAddress mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
    uint16_t queue_max = kNetQueueMax; // QueueNumMax offered for both queues
    size_t pending_limit = 256;        // received frames held while the guest has no buffer
};

struct NetStats {
    uint64_t tx_frames = 0, tx_bytes = 0;
    uint64_t tx_stalls = 0;     // times the sink said full (the TX queue stalled)
    uint64_t tx_malformed = 0;  // chains too short for a header and an Ethernet header: returned unsent
    uint64_t tx_no_sink = 0;    // frames dropped because no sink was set
    uint64_t rx_frames = 0, rx_bytes = 0;
    uint64_t rx_deferred = 0;            // frames queued because the guest could not take them at once
    uint64_t rx_dropped_pending_full = 0; // frames dropped: the pending queue was full
    uint64_t rx_dropped_too_big = 0;      // frames dropped: larger than the guest's buffer
    uint64_t rx_dropped_invalid = 0;      // empty or over kMaxFrameBytes
    uint64_t rx_pending = 0;             // frames waiting now
    uint64_t errors = 0;                 // times the device was marked broken
    uint64_t bad_register_accesses = 0;
    bool broken = false;
};

// Where the device's queues stand (hv/stall_watchdog.hpp): the driver's avail idx and the
// next slot the device takes, per queue, and the frames waiting for a guest buffer.
struct NetQueueState {
    bool live = false; // DRIVER_OK and not broken
    bool suspended = false;
    uint16_t rx_avail = 0, rx_next = 0;
    uint16_t tx_avail = 0, tx_next = 0;
    uint64_t rx_pending = 0;
    bool tx_stalled = false; // the sink is full: TX waits for room, not for the guest
    // No interrupt: the driver polls and returns each RX buffer as soon as it has taken
    // the frame (the guest/ images), so frames delivered and no buffer returned for
    // seconds mean a guest that no longer reads. Linux refills in batches; not this.
    bool polled = false;
};

class VirtioNet final : public MmioDevice {
public:
    static Result<std::unique_ptr<VirtioNet>> create(const NetConfig& cfg);
    ~VirtioNet() override;

    // --- Device ---
    DeviceState save() const override;
    Result<void> restore(const DeviceState& s) override;
    void suspend() override;
    void resume() override;

    // Without an interrupt (the guest/ images) the RX used ring carries NO_NOTIFY: the
    // device looks at it whenever a frame arrives; with one, the guest expects RX
    // notifications and used.flags stays 0.
    MacAddress mac() const;

    // The sink for transmitted frames (may be null: frames are then dropped and counted).
    // It must outlive the device or be replaced first.
    void set_egress(EgressSink* sink);
    // A received frame for the guest. true: it is in a guest buffer now; false: it was
    // queued (guest not ready, suspended, no buffer) or dropped (pending queue full, larger
    // than the guest's buffer). Errors: empty or oversized frames.
    Result<bool> deliver(std::span<const uint8_t> frame);
    // Retries frames waiting for guest buffers (the RX queue sends no notifications).
    void poll_rx();
    bool rx_pending() const;
    // The sink has room again: continue a stalled TX queue. Any thread except inside transmit().
    void tx_room_available();
    NetStats stats() const;
    NetQueueState queue_state() const;

private:
    explicit VirtioNet(const NetConfig& cfg);

    // VirtioModel (called by the transport, lock held)
    uint32_t device_id() const override { return kNetDeviceId; }
    uint64_t device_features() const override { return kFeatureVersion1 | kNetFeatureMac; }
    void read_config(uint64_t offset, std::span<uint8_t> out) const override;
    void queue_notify(unsigned index) override;
    void driver_ok() override;
    void device_reset() override;

    enum class RxResult { delivered, no_buffer, dropped, failed };
    bool can_touch_guest() const;
    void fail(const std::string& why);
    void process_tx();
    void flush_rx();
    RxResult write_rx(std::span<const uint8_t> frame);

    const uint16_t queue_max_;
    const size_t pending_limit_;

    MacAddress mac_;
    bool rescan_ = false; // restored: look at the queues and interrupt the guest on resume
    EgressSink* sink_ = nullptr;
    bool suspended_ = false;
    bool tx_stalled_ = false;
    std::deque<std::vector<uint8_t>> pending_;
    Chain chain_;                // scratch, reused
    std::vector<uint8_t> frame_; // scratch, reused
    NetStats stats_;
};

} // namespace understudy::hv::virtio
