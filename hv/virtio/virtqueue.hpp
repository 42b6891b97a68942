// A virtio 1.x split virtqueue seen from the device side, over guest memory only (no
// KVM), so tests can craft rings in a GuestMemory and walk them. Every guest pointer goes
// through GuestMemory's checked accessors; every byte written (used ring, used idx) is
// marked dirty for the next checkpoint. A chain is peeked, then popped only once the
// device has finished with it, so a device can leave a chain in the ring (TX stall).
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/error.hpp"
#include "hv/guest_memory.hpp"

namespace understudy::hv::virtio {

// Ring layouts (virtio 1.2, 2.7). Little-endian; the guest is x86.
struct VirtqDesc {
    uint64_t addr;  // 0
    uint32_t len;   // 8
    uint16_t flags; // 12
    uint16_t next;  // 14
};
static_assert(std::is_standard_layout_v<VirtqDesc> && sizeof(VirtqDesc) == 16);

struct VirtqUsedElem {
    uint32_t id;  // 0: head index of the chain
    uint32_t len; // 4: bytes the device wrote into the chain
};
static_assert(std::is_standard_layout_v<VirtqUsedElem> && sizeof(VirtqUsedElem) == 8);

inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
// used.flags: the device does not need notifications for this queue.
inline constexpr uint16_t kUsedFNoNotify = 1;

// Avail ring: flags @0, idx @2, ring[size] @4, used_event after. Used ring: flags @0,
// idx @2, ring[size] of VirtqUsedElem @4, avail_event after.
inline constexpr uint64_t avail_ring_bytes(uint16_t size) { return 6 + 2ull * size; }
inline constexpr uint64_t used_ring_bytes(uint16_t size) { return 6 + 8ull * size; }
inline constexpr uint64_t desc_table_bytes(uint16_t size) { return 16ull * size; }

// Where the driver put the three parts of a queue, and how many entries it has.
struct VirtqueueLayout {
    uint16_t size = 0; // a power of two
    Gpa desc;          // 16-byte aligned
    Gpa avail;         // 2-byte aligned
    Gpa used;          // 4-byte aligned
};

// Checks a layout against guest RAM: size a power of two in [1, max_size], alignment,
// and all three areas inside RAM.
Result<void> validate_layout(const GuestMemory& mem, const VirtqueueLayout& l, uint16_t max_size);

struct Segment {
    Gpa addr;
    uint32_t len;
};

// One descriptor chain: device-readable segments first, then device-writable ones.
struct Chain {
    uint16_t head = 0;
    std::vector<Segment> readable;
    std::vector<Segment> writable;
    uint64_t readable_bytes = 0;
    uint64_t writable_bytes = 0;
};

class Virtqueue {
public:
    // max_chain_bytes bounds the sum of a chain's descriptor lengths.
    Virtqueue(GuestMemory& mem, uint64_t max_chain_bytes) : mem_(&mem), max_chain_bytes_(max_chain_bytes) {}

    // Makes the queue usable, continuing from the given ring positions (0, 0 for a
    // fresh queue; saved values for a restored one).
    Result<void> activate(const VirtqueueLayout& l, uint16_t max_size, uint16_t next_avail = 0, uint16_t next_used = 0);
    void deactivate() { active_ = false; }
    bool active() const { return active_; }
    const VirtqueueLayout& layout() const { return layout_; }
    uint16_t next_avail() const { return next_avail_; }
    uint16_t next_used() const { return next_used_; }
    // The avail idx the driver has published (chains made available so far), while active.
    std::optional<uint16_t> driver_avail_idx() const;

    // Fills `out` with the next available chain without consuming it. Returns false if
    // the driver has made none available. Errors are the driver's faults (index out of
    // range, loop, address outside RAM, length over the bound, avail idx more than the
    // queue size ahead, indirect descriptor, readable after writable): the caller marks
    // the device broken.
    Result<bool> peek(Chain& out);
    // Consumes the chain the last peek() returned.
    void pop() { ++next_avail_; }
    // Returns a chain to the driver: used ring entry, then (after a release fence) used idx.
    Result<void> push_used(uint16_t head, uint32_t len);
    // Writes used.flags (kUsedFNoNotify or 0).
    Result<void> set_used_flags(uint16_t flags);

private:
    GuestMemory* mem_;
    uint64_t max_chain_bytes_;
    VirtqueueLayout layout_;
    bool active_ = false;
    uint16_t next_avail_ = 0; // the next avail ring slot the device reads
    uint16_t next_used_ = 0;  // the used idx the device last published
};

} // namespace understudy::hv::virtio
