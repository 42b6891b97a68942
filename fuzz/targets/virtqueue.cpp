// The split-virtqueue walker (hv/virtio/virtqueue.hpp) over guest memory whose bytes,
// ring layout and ring positions all come from the fuzz input, as a hostile guest
// driver would set them. A device loop peeks, checks and consumes chains and publishes
// used entries; between steps the "guest" rewrites memory (ring indices, descriptors),
// as a vCPU running beside the device can.
//
// Input: u16 queue size, u16 max size, three u64 area addresses (bit 63 of each clear:
// the address is taken modulo the 64 KiB window the input fills, so rings mostly land
// in fuzzed memory; set: used as is), u16 next_avail, u16 next_used, u32 chain byte
// bound, u8 window bytes count (x 256), the window bytes, then steps:
// {u8 op; ...} where op 0..3 = device step, 4 = guest writes u16 at a window offset,
// 5 = guest writes 16 bytes, 6 = re-activate at saved positions (a restore).
// Every chain the walker returns must lie in guest RAM, respect the byte bound and the
// readable-before-writable order, and name a head below the queue size.

#include "fuzz/fuzz_support.hpp"
#include "hv/virtio/virtqueue.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;

namespace {

constexpr uint64_t kWindow = 64 * 1024;

GuestMemory& memory() {
    static GuestMemory* m = [] {
        auto r = GuestMemory::create(kMinMemory);
        if (!r) fuzz::fail("virtqueue: " + r.error().describe());
        return new GuestMemory(std::move(*r));
    }();
    return *m;
}

Gpa area(fuzz::Input& in, uint64_t align) {
    uint64_t v = in.u64();
    if (v >> 63) return Gpa{v & ~(1ull << 63)};
    return Gpa{(v % kWindow) & ~(align - 1)};
}

void check_chain(const GuestMemory& mem, const Chain& c, uint16_t size, uint64_t bound) {
    if (c.head >= size) fuzz::fail("virtqueue: chain head beyond the queue size");
    uint64_t r = 0, w = 0;
    for (const auto& s : c.readable) {
        if (!mem.contains(s.addr, s.len)) fuzz::fail("virtqueue: readable segment outside guest RAM");
        r += s.len;
    }
    for (const auto& s : c.writable) {
        if (!mem.contains(s.addr, s.len)) fuzz::fail("virtqueue: writable segment outside guest RAM");
        w += s.len;
    }
    if (r != c.readable_bytes || w != c.writable_bytes) fuzz::fail("virtqueue: chain byte counts disagree with its segments");
    if (r + w > bound) fuzz::fail("virtqueue: chain exceeds the byte bound");
    if (c.readable.size() + c.writable.size() > size) fuzz::fail("virtqueue: chain longer than the queue");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    GuestMemory& mem = memory();
    fuzz::Input in(data, size);
    VirtqueueLayout l;
    l.size = in.u16();
    uint16_t max_size = in.u16();
    l.desc = area(in, 16);
    l.avail = area(in, 2);
    l.used = area(in, 4);
    uint16_t next_avail = in.u16(), next_used = in.u16();
    uint64_t bound = in.u32();
    size_t window = std::min<size_t>(kWindow, 256u * in.u8());

    // The window: cleared, then filled from the input (what the last input left is gone).
    auto span = mem.span(Gpa{0}, kWindow);
    if (!span) fuzz::fail("virtqueue: the window is not guest RAM");
    std::memset(span->data(), 0, kWindow);
    auto fill = in.bytes(window);
    if (!fill.empty()) std::memcpy(span->data(), fill.data(), fill.size());

    Virtqueue q(mem, bound);
    if (!q.activate(l, max_size, next_avail, next_used)) return 0;
    if (!q.active()) fuzz::fail("virtqueue: activate succeeded but the queue is not active");
    Chain c;
    std::vector<uint8_t> scratch;
    for (int step = 0; step < 256 && in.remaining() > 0; ++step) {
        uint8_t op = in.u8() % 7;
        if (op <= 3) {
            if (!q.active()) break;
            auto r = q.peek(c);
            if (!r) { // the device is broken until reset; a later reset re-activates it
                q.deactivate();
                continue;
            }
            if (!*r) continue;
            check_chain(mem, c, q.layout().size, bound);
            // The device reads what it may read and writes what it may write.
            for (const auto& s : c.readable) {
                auto b = mem.span(s.addr, s.len);
                if (!b) fuzz::fail("virtqueue: a readable segment the walker returned is not accessible");
                scratch.assign(b->begin(), b->end());
            }
            uint32_t written = 0;
            for (const auto& s : c.writable) {
                auto b = mem.span(s.addr, s.len);
                if (!b) fuzz::fail("virtqueue: a writable segment the walker returned is not accessible");
                if (!b->empty()) (*b)[0] ^= 1;
                mem.mark_dirty(s.addr, s.len);
                written += s.len;
            }
            if (op == 3) continue; // left in the ring (a TX stall), peeked again later
            q.pop();
            if (!q.push_used(c.head, written)) fuzz::fail("virtqueue: push_used failed on a validated queue");
            if (op == 2 && !q.set_used_flags(kUsedFNoNotify)) fuzz::fail("virtqueue: set_used_flags failed on a validated queue");
        } else if (op == 4) {
            uint16_t off = in.u16() % kWindow;
            uint16_t v = in.u16();
            std::memcpy(span->data() + (off & ~1u), &v, 2);
        } else if (op == 5) {
            uint16_t off = in.u16() % (kWindow - 16);
            auto b = in.bytes(16);
            if (!b.empty()) std::memcpy(span->data() + off, b.data(), b.size());
        } else {
            // A restore: the same layout at the saved positions.
            uint16_t a = q.next_avail(), u = q.next_used();
            if (!q.activate(q.layout(), max_size, a, u)) fuzz::fail("virtqueue: re-activating a validated layout failed");
        }
    }
    // Used ring writes may have landed outside the window (bit 63 addresses).
    if (l.used.value + used_ring_bytes(l.size) > kWindow && mem.contains(l.used, used_ring_bytes(l.size))) {
        auto u = mem.span(l.used, used_ring_bytes(l.size));
        std::memset(u->data(), 0, u->size());
    }
    return 0;
}
