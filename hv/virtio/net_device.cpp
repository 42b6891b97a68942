// virtio-net device model (see net_device.hpp), its RX/TX paths and its saved state.
#include "hv/virtio/net_device.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "common/codec.hpp"
#include "common/log.hpp"
#include "hv/vm.hpp"

namespace understudy::hv::virtio {

namespace {

constexpr uint64_t kMaxChainBytes = sizeof(VirtioNetHdr) + kMaxFrameBytes;

// Saved state (docs/virtio.md): the transport's fields, then the MAC. Never reuse a tag.
constexpr uint32_t kTagMac = kFirstDeviceTag;

struct MacWire {
    uint8_t mac[6];    // 0
    uint16_t reserved; // 6: zero
};
static_assert(std::is_standard_layout_v<MacWire> && sizeof(MacWire) == 8);

bool usable_mac(const MacAddress& m) {
    return !(m[0] & 1) && std::any_of(m.begin(), m.end(), [](uint8_t b) { return b != 0; });
}

} // namespace

Result<std::unique_ptr<VirtioNet>> VirtioNet::create(const NetConfig& cfg) {
    US_TRYV(check_index(cfg.index));
    if (!usable_mac(cfg.mac))
        return make_error(Errc::invalid_input, "the MAC address must be unicast and not all zeros");
    if (cfg.queue_max == 0 || cfg.queue_max > kNetQueueMax || !std::has_single_bit(cfg.queue_max))
        return make_error(Errc::invalid_input,
                          fmt::format("queue size {} is not a power of two in [1, {}]", cfg.queue_max, kNetQueueMax));
    if (cfg.pending_limit == 0 || cfg.pending_limit > 65536)
        return make_error(Errc::invalid_input, fmt::format("pending limit {} is not in [1, 65536]", cfg.pending_limit));
    return std::unique_ptr<VirtioNet>(new VirtioNet(cfg));
}

VirtioNet::VirtioNet(const NetConfig& cfg)
    : MmioDevice("virtio-net" + std::to_string(cfg.index), cfg.index,
                 std::vector<QueueSpec>(2, QueueSpec{cfg.queue_max, kMaxChainBytes})),
      queue_max_(cfg.queue_max),
      pending_limit_(cfg.pending_limit), mac_(cfg.mac) {}

VirtioNet::~VirtioNet() = default;

MacAddress VirtioNet::mac() const {
    std::lock_guard lock(mu_);
    return mac_;
}

void VirtioNet::set_egress(EgressSink* sink) {
    std::lock_guard lock(mu_);
    sink_ = sink;
    tx_stalled_ = false;
    process_tx();
}

// ---- VirtioModel ----

void VirtioNet::read_config(uint64_t offset, std::span<uint8_t> out) const {
    // struct virtio_net_config: mac[6] @0; nothing else is offered.
    for (size_t i = 0; i < out.size(); ++i)
        if (offset + i < mac_.size()) out[i] = mac_[offset + i];
}

void VirtioNet::queue_notify(unsigned index) {
    if (index == kTxQueue) process_tx();
    // RX notifications are not needed (NO_NOTIFY) but are honoured; TX ones also retry RX
    // because a guest that transmits is usually also about to receive.
    flush_rx();
}

void VirtioNet::driver_ok() {
    // A polling guest: the device looks at the RX avail ring whenever a frame arrives, so
    // no RX kicks, please. A guest with interrupts (Linux) kicks after refilling instead.
    auto& rx = transport_->queue(kRxQueue);
    if (rx.active() && !interrupt_) {
        if (auto r = rx.set_used_flags(kUsedFNoNotify); !r) return fail("RX used ring: " + r.error().message);
    }
    flush_rx();
    process_tx();
}

void VirtioNet::device_reset() { tx_stalled_ = false; }

// ---- internals (lock held) ----

bool VirtioNet::can_touch_guest() const { return transport_ && transport_->live() && !suspended_; }

void VirtioNet::fail(const std::string& why) { transport_->fail(why); }

void VirtioNet::process_tx() {
    if (!can_touch_guest() || tx_stalled_) return;
    auto& q = transport_->queue(kTxQueue);
    if (!q.active()) return;
    bool pushed = false;
    for (;;) {
        auto more = q.peek(chain_);
        if (!more) {
            fail("TX queue: " + more.error().message);
            break;
        }
        if (!*more) break;
        if (!chain_.writable.empty()) {
            fail(fmt::format("TX chain {} has device-writable descriptors", chain_.head));
            break;
        }
        bool well_formed = chain_.readable_bytes >= sizeof(VirtioNetHdr) + kMinTxFrameBytes;
        if (well_formed) {
            // Gather the chain, then drop the header (nothing in it applies: no offloads).
            frame_.resize(chain_.readable_bytes);
            size_t at = 0;
            bool ok = true;
            for (const auto& s : chain_.readable) {
                if (!mem_->read(s.addr, std::span(frame_).subspan(at, s.len))) ok = false;
                at += s.len;
            }
            if (!ok) {
                fail("TX buffer left guest RAM"); // checked by peek(); kept as a guard
                break;
            }
            std::span<const uint8_t> frame = std::span(frame_).subspan(sizeof(VirtioNetHdr));
            if (!sink_) {
                ++stats_.tx_no_sink;
            } else if (sink_->transmit(frame) == EgressSink::Accept::full) {
                // Leave the chain in the ring; tx_room_available() continues from it.
                tx_stalled_ = true;
                ++stats_.tx_stalls;
                break;
            } else {
                ++stats_.tx_frames;
                stats_.tx_bytes += frame.size();
            }
        } else {
            ++stats_.tx_malformed;
            if (log_worthy(stats_.tx_malformed - 1))
                log::warn("{}: TX chain {} of {} bytes is too short for a header and a frame; returned unsent (#{})",
                          name_, chain_.head, chain_.readable_bytes, stats_.tx_malformed);
        }
        q.pop();
        if (auto r = q.push_used(chain_.head, 0); !r) {
            fail("TX used ring: " + r.error().message);
            break;
        }
        pushed = true;
    }
    if (pushed) used_buffers();
}

VirtioNet::RxResult VirtioNet::write_rx(std::span<const uint8_t> frame) {
    auto& q = transport_->queue(kRxQueue);
    if (!q.active()) return RxResult::no_buffer;
    auto more = q.peek(chain_);
    if (!more) {
        fail("RX queue: " + more.error().message);
        return RxResult::failed;
    }
    if (!*more) return RxResult::no_buffer;
    if (!chain_.readable.empty()) {
        fail(fmt::format("RX chain {} has device-readable descriptors", chain_.head));
        return RxResult::failed;
    }
    const uint64_t total = sizeof(VirtioNetHdr) + frame.size();
    if (chain_.writable_bytes < total) {
        // The buffer stays in the ring for the next, smaller frame.
        ++stats_.rx_dropped_too_big;
        if (log_worthy(stats_.rx_dropped_too_big - 1))
            log::warn("{}: dropped a {}-byte frame: the guest's RX buffer holds {} bytes with the header (#{})", name_,
                      frame.size(), chain_.writable_bytes, stats_.rx_dropped_too_big);
        return RxResult::dropped;
    }
    VirtioNetHdr hdr{};
    hdr.num_buffers = 1;
    auto hdr_bytes = std::span(reinterpret_cast<const uint8_t*>(&hdr), sizeof hdr);
    uint64_t done = 0;
    for (const auto& s : chain_.writable) {
        if (done == total) break;
        uint64_t n = std::min<uint64_t>(s.len, total - done);
        // Scatter [done, done+n) of header+frame into this segment; write() marks it dirty.
        uint64_t written = 0;
        while (written < n) {
            uint64_t pos = done + written;
            std::span<const uint8_t> src = pos < sizeof hdr ? hdr_bytes.subspan(pos) : frame.subspan(pos - sizeof hdr);
            src = src.first(std::min<uint64_t>(src.size(), n - written));
            if (auto r = mem_->write(s.addr + written, src); !r) {
                fail("RX buffer left guest RAM: " + r.error().message); // checked by peek(); kept as a guard
                return RxResult::failed;
            }
            written += src.size();
        }
        done += n;
    }
    q.pop();
    if (auto r = q.push_used(chain_.head, static_cast<uint32_t>(total)); !r) {
        fail("RX used ring: " + r.error().message);
        return RxResult::failed;
    }
    ++stats_.rx_frames;
    stats_.rx_bytes += frame.size();
    return RxResult::delivered;
}

void VirtioNet::flush_rx() {
    bool delivered = false;
    while (!pending_.empty() && can_touch_guest()) {
        RxResult r = write_rx(pending_.front());
        if (r == RxResult::no_buffer || r == RxResult::failed) break;
        delivered |= r == RxResult::delivered;
        pending_.pop_front();
    }
    if (delivered) used_buffers();
}

// ---- host-facing ----

Result<bool> VirtioNet::deliver(std::span<const uint8_t> frame) {
    std::lock_guard lock(mu_);
    if (frame.empty() || frame.size() > kMaxFrameBytes) {
        ++stats_.rx_dropped_invalid;
        return make_error(Errc::invalid_input, fmt::format("{}: cannot deliver a {}-byte frame", name_, frame.size()));
    }
    flush_rx();
    if (pending_.empty() && can_touch_guest()) {
        switch (write_rx(frame)) {
        case RxResult::delivered:
            used_buffers();
            return true;
        case RxResult::dropped: return false;
        case RxResult::no_buffer:
        case RxResult::failed: break;
        }
    }
    if (pending_.size() >= pending_limit_) {
        ++stats_.rx_dropped_pending_full;
        return false;
    }
    pending_.emplace_back(frame.begin(), frame.end());
    ++stats_.rx_deferred;
    return false;
}

void VirtioNet::poll_rx() {
    std::lock_guard lock(mu_);
    flush_rx();
}

bool VirtioNet::rx_pending() const {
    std::lock_guard lock(mu_);
    return !pending_.empty();
}

void VirtioNet::tx_room_available() {
    std::lock_guard lock(mu_);
    tx_stalled_ = false;
    process_tx(); // does nothing while suspended; resume() continues
}

void VirtioNet::suspend() {
    std::lock_guard lock(mu_);
    suspended_ = true;
}

void VirtioNet::resume() {
    std::lock_guard lock(mu_);
    suspended_ = false;
    flush_rx();
    process_tx();
    // Restored (a promotion, a snapshot): whatever interrupt was pending on the source is
    // not in the saved state, so raise one; the driver finds the work in its rings.
    if (std::exchange(rescan_, false) && interrupt_ && can_touch_guest()) used_buffers();
}

NetQueueState VirtioNet::queue_state() const {
    std::lock_guard lock(mu_);
    NetQueueState q;
    q.suspended = suspended_;
    q.rx_pending = pending_.size();
    q.tx_stalled = tx_stalled_;
    q.polled = !interrupt_;
    if (!transport_ || !transport_->live()) return q;
    q.live = true;
    auto& rx = transport_->queue(kRxQueue);
    auto& tx = transport_->queue(kTxQueue);
    q.rx_avail = rx.driver_avail_idx().value_or(rx.next_avail());
    q.rx_next = rx.next_avail();
    q.tx_avail = tx.driver_avail_idx().value_or(tx.next_avail());
    q.tx_next = tx.next_avail();
    return q;
}

NetStats VirtioNet::stats() const {
    std::lock_guard lock(mu_);
    NetStats s = stats_;
    s.rx_pending = pending_.size();
    if (transport_) {
        s.bad_register_accesses = transport_->bad_accesses();
        // The transport's count: it also breaks the device itself (bad queue set-up).
        s.errors = transport_->failures();
        s.broken = transport_->broken();
    }
    return s;
}

// ---- saved state ----

DeviceState VirtioNet::save() const {
    std::lock_guard lock(mu_);
    DeviceState ds{name_, kNetStateVersion, {}};
    if (!transport_) return ds; // never attached: nothing a guest could have set up
    Encoder e(ds.data);
    encode_transport_state(e, transport_->save());
    MacWire m{};
    std::memcpy(m.mac, mac_.data(), 6);
    e.field_pod(kTagMac, m);
    return ds;
}

Result<void> VirtioNet::restore(const DeviceState& s) {
    std::lock_guard lock(mu_);
    US_TRYV(check_saved(s, kNetStateVersion));
    const std::string what = name_ + " state";
    Decoder d(s.data, what);
    TransportStateReader transport(transport_->queue_count());
    std::optional<MacAddress> mac;
    while (!d.done()) {
        auto f = US_TRY(d.field());
        if (US_TRY(transport.take(f, d, what))) continue;
        if (f.tag == kTagMac) {
            auto w = US_TRY(Decoder::as_pod<MacWire>(f, what));
            MacAddress m;
            std::memcpy(m.data(), w.mac, 6);
            if (!usable_mac(m)) return d.error("the MAC address is multicast or all zeros");
            mac = m;
        } // other tags: fields from a newer writer
    }
    if (!mac) return d.error("MAC field missing");
    TransportState ts = US_TRY(transport.finish(d));
    US_TRYV(transport_->restore(ts)); // validates before changing anything
    if (*mac != mac_)
        log::info("{}: MAC {:02x} from the saved state replaces the configured one", name_, fmt::join(*mac, ":"));
    mac_ = *mac;
    tx_stalled_ = false;
    rescan_ = true;
    return {};
}

} // namespace understudy::hv::virtio
