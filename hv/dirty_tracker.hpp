// Dirty-page tracking strategies. Both report, per harvest, every guest page the vCPUs
// wrote since the previous harvest, as dense page indices (GuestMemory::page_index).
// The VM ORs in the pages the VMM itself wrote (GuestMemory::vmm_dirty).
//
// Why a harvest is exact even while vCPUs run: a page is reported first and re-protected
// second (ring reset or KVM_CLEAR_DIRTY_LOG); a write that lands between the two is
// already covered by the report, as long as the caller reads the page's contents only
// after harvest() returns. A write after re-protection is logged again.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/bitmap.hpp"
#include "common/error.hpp"
#include "hv/guest_memory.hpp"
#include "hv/kvm.hpp"

namespace understudy::hv {

enum class DirtyMode { none, ring, bitmap, automatic };

// Cumulative cost of tracking, for metrics and bench/bench_dirty.
struct DirtyStats {
    uint64_t harvests = 0;
    uint64_t pages_reported = 0;  // ring entries or bitmap bits collected
    uint64_t collect_ns = 0;      // reading ring entries or fetching bitmaps
    uint64_t reprotect_ns = 0;    // KVM_RESET_DIRTY_RINGS or KVM_CLEAR_DIRTY_LOG
    uint64_t ring_full_exits = 0; // vCPU exits because its ring filled up
};
const char* dirty_mode_name(DirtyMode m);
Result<DirtyMode> parse_dirty_mode(const std::string& s);

class DirtyTracker {
public:
    virtual ~DirtyTracker() = default;
    virtual const char* name() const = 0;
    // Flags for KVM_SET_USER_MEMORY_REGION.
    virtual uint32_t memslot_flags() const = 0;
    // Called once per vCPU right after it is created.
    virtual Result<void> attach_vcpu(unsigned index, int vcpu_fd) = 0;
    // Called by a vCPU thread on KVM_EXIT_DIRTY_RING_FULL, before it re-enters the guest.
    virtual Result<void> drain_vcpu(unsigned index) = 0;
    // ORs every page dirtied since the last harvest into out and re-arms tracking.
    virtual Result<void> harvest(Bitmap& out) = 0;
    virtual DirtyStats stats() const = 0;
};

struct DirtyConfig {
    DirtyMode mode = DirtyMode::automatic;
    uint32_t ring_entries = 16384; // per vCPU; a power of two
};

// Picks and prepares a strategy on a fresh VM (before any vCPU exists): the ring where
// KVM supports it (automatic), else the bitmap with manual re-protection.
Result<std::unique_ptr<DirtyTracker>> make_dirty_tracker(const Kvm& kvm, int vm_fd, const GuestMemory& mem,
                                                         const DirtyConfig& cfg);

} // namespace understudy::hv
