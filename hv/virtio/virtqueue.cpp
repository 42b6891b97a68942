// Split virtqueue walker: reads avail and desc entries through checked copies (a guest
// changing a descriptor while we look at it cannot make us use a value we did not
// check), and publishes used entries with release ordering.
#include "hv/virtio/virtqueue.hpp"

#include <atomic>
#include <bit>
#include <string>

#include <fmt/format.h>

namespace understudy::hv::virtio {

namespace {

Error fault(std::string msg) { return make_error(Errc::guest_fault, std::move(msg)); }

// The ring index fields are shared with vCPUs running at the same time: access them as
// atomics. Alignment was checked when the queue was activated.
Result<std::atomic_ref<uint16_t>> ring_u16(GuestMemory& mem, Gpa gpa) {
    auto s = US_TRY(mem.span(gpa, 2));
    return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(s.data()));
}

} // namespace

Result<void> validate_layout(const GuestMemory& mem, const VirtqueueLayout& l, uint16_t max_size) {
    if (l.size == 0 || l.size > max_size || !std::has_single_bit(l.size))
        return fault(fmt::format("queue size {} is not a power of two in [1, {}]", l.size, max_size));
    if (l.desc.value % 16 || l.avail.value % 2 || l.used.value % 4)
        return fault(fmt::format("queue areas misaligned (desc 0x{:x}, avail 0x{:x}, used 0x{:x})", l.desc.value,
                                 l.avail.value, l.used.value));
    if (!mem.contains(l.desc, desc_table_bytes(l.size)))
        return fault(fmt::format("descriptor table at 0x{:x} is not in guest RAM", l.desc.value));
    if (!mem.contains(l.avail, avail_ring_bytes(l.size)))
        return fault(fmt::format("avail ring at 0x{:x} is not in guest RAM", l.avail.value));
    if (!mem.contains(l.used, used_ring_bytes(l.size)))
        return fault(fmt::format("used ring at 0x{:x} is not in guest RAM", l.used.value));
    return {};
}

Result<void> Virtqueue::activate(const VirtqueueLayout& l, uint16_t max_size, uint16_t next_avail, uint16_t next_used) {
    US_TRYV(validate_layout(*mem_, l, max_size));
    layout_ = l;
    next_avail_ = next_avail;
    next_used_ = next_used;
    active_ = true;
    return {};
}

std::optional<uint16_t> Virtqueue::driver_avail_idx() const {
    if (!active_) return std::nullopt;
    auto idx = ring_u16(*mem_, layout_.avail + 2);
    if (!idx) return std::nullopt;
    return idx->load(std::memory_order_acquire);
}

Result<bool> Virtqueue::peek(Chain& out) {
    if (!active_) return make_error(Errc::state, "queue is not active");
    const uint16_t size = layout_.size;
    auto avail_idx = US_TRY(ring_u16(*mem_, layout_.avail + 2));
    // Acquire: the ring entry and descriptors the driver wrote before bumping idx are visible.
    uint16_t idx = avail_idx.load(std::memory_order_acquire);
    uint16_t ahead = static_cast<uint16_t>(idx - next_avail_);
    if (ahead == 0) return false;
    if (ahead > size)
        return fault(fmt::format("avail idx {} is {} entries ahead of the device's {} (queue size {})", idx, ahead,
                                 next_avail_, size));
    uint16_t head = US_TRY(mem_->read_obj<uint16_t>(layout_.avail + 4 + 2ull * (next_avail_ % size)));
    if (head >= size) return fault(fmt::format("avail ring names descriptor {} in a queue of {}", head, size));

    out.head = head;
    out.readable.clear();
    out.writable.clear();
    out.readable_bytes = 0;
    out.writable_bytes = 0;
    uint16_t i = head;
    // A chain visits at most `size` descriptors; one more means a loop.
    for (unsigned n = 0;; ++n) {
        if (n == size) return fault(fmt::format("descriptor chain from {} is longer than the queue (a loop)", head));
        auto d = US_TRY(mem_->read_obj<VirtqDesc>(layout_.desc + 16ull * i));
        if (d.flags & kDescFIndirect)
            return fault(fmt::format("descriptor {} is indirect, which was not negotiated", i));
        // Checked one at a time against the bound, so the sum cannot wrap.
        if (d.len > max_chain_bytes_ || out.readable_bytes + out.writable_bytes + d.len > max_chain_bytes_)
            return fault(fmt::format("descriptor chain from {} exceeds {} bytes", head, max_chain_bytes_));
        if (!mem_->contains(Gpa{d.addr}, d.len))
            return fault(fmt::format("descriptor {} points at [0x{:x}, +0x{:x}), outside guest RAM", i, d.addr, d.len));
        if (d.flags & kDescFWrite) {
            out.writable.push_back({Gpa{d.addr}, d.len});
            out.writable_bytes += d.len;
        } else {
            if (!out.writable.empty())
                return fault(fmt::format("descriptor {} is device-readable after a device-writable one", i));
            out.readable.push_back({Gpa{d.addr}, d.len});
            out.readable_bytes += d.len;
        }
        if (!(d.flags & kDescFNext)) break;
        if (d.next >= size) return fault(fmt::format("descriptor {} chains to {} in a queue of {}", i, d.next, size));
        i = d.next;
    }
    return true;
}

Result<void> Virtqueue::push_used(uint16_t head, uint32_t len) {
    if (!active_) return make_error(Errc::state, "queue is not active");
    Gpa elem = layout_.used + 4 + 8ull * (next_used_ % layout_.size);
    US_TRYV(mem_->write_obj(elem, VirtqUsedElem{head, len})); // write() marks the page dirty
    Gpa idx_gpa = layout_.used + 2;
    auto used_idx = US_TRY(ring_u16(*mem_, idx_gpa));
    ++next_used_;
    // The entry must be visible before the idx that publishes it (x86 is TSO; the fence
    // also stops the compiler from reordering).
    std::atomic_thread_fence(std::memory_order_release);
    used_idx.store(next_used_, std::memory_order_release);
    mem_->mark_dirty(idx_gpa, 2);
    return {};
}

Result<void> Virtqueue::set_used_flags(uint16_t flags) {
    if (!active_) return make_error(Errc::state, "queue is not active");
    auto f = US_TRY(ring_u16(*mem_, layout_.used));
    f.store(flags, std::memory_order_release);
    mem_->mark_dirty(layout_.used, 2);
    return {};
}

} // namespace understudy::hv::virtio
