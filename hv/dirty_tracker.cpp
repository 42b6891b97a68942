#include "hv/dirty_tracker.hpp"

#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <chrono>

#include "common/clock.hpp"

namespace understudy::hv {

const char* dirty_mode_name(DirtyMode m) {
    switch (m) {
    case DirtyMode::none: return "none";
    case DirtyMode::ring: return "ring";
    case DirtyMode::bitmap: return "bitmap";
    case DirtyMode::automatic: return "auto";
    }
    return "?";
}

Result<DirtyMode> parse_dirty_mode(const std::string& s) {
    for (auto m : {DirtyMode::none, DirtyMode::ring, DirtyMode::bitmap, DirtyMode::automatic})
        if (s == dirty_mode_name(m)) return m;
    return make_error(Errc::invalid_input, "dirty tracking mode '" + s + "' is not one of auto, ring, bitmap, none");
}

namespace {

class NoTracker final : public DirtyTracker {
public:
    const char* name() const override { return "none"; }
    uint32_t memslot_flags() const override { return 0; }
    Result<void> attach_vcpu(unsigned, int) override { return {}; }
    Result<void> drain_vcpu(unsigned) override { return {}; }
    Result<void> harvest(Bitmap&) override { return {}; }
    DirtyStats stats() const override { return {}; }
};

// Memslot n is GuestMemory region n; a slot offset becomes a page index through it.
std::vector<uint64_t> slot_first_pages(const GuestMemory& mem) {
    std::vector<uint64_t> v;
    for (const auto& r : mem.regions()) v.push_back(r.file_offset / kPageSize);
    return v;
}

class RingTracker final : public DirtyTracker {
public:
    RingTracker(int vm_fd, const GuestMemory& mem, uint32_t entries)
        : vm_fd_(vm_fd), entries_(entries), slot_first_(slot_first_pages(mem)), pending_(mem.page_count()) {}
    ~RingTracker() override {
        for (auto& r : rings_)
            if (r.gfns) ::munmap(r.gfns, entries_ * sizeof(kvm_dirty_gfn));
    }
    const char* name() const override { return "ring"; }
    uint32_t memslot_flags() const override { return KVM_MEM_LOG_DIRTY_PAGES; }

    Result<void> attach_vcpu(unsigned index, int vcpu_fd) override {
        void* p = ::mmap(nullptr, entries_ * sizeof(kvm_dirty_gfn), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd,
                         KVM_DIRTY_LOG_PAGE_OFFSET * kPageSize);
        if (p == MAP_FAILED) return sys_error("mapping the dirty ring of vCPU " + std::to_string(index));
        std::lock_guard lock(mu_);
        if (rings_.size() <= index) rings_.resize(index + 1);
        rings_[index] = Ring{static_cast<kvm_dirty_gfn*>(p), 0, 0};
        return {};
    }

    Result<void> drain_vcpu(unsigned index) override {
        std::lock_guard lock(mu_);
        if (index >= rings_.size()) return make_error(Errc::state, "dirty ring of an unknown vCPU");
        ++stats_.ring_full_exits;
        uint64_t t0 = now_ns();
        const uint64_t before = stats_.pages_reported;
        US_TRYV(collect(rings_[index], pending_));
        // KVM says "full" but there is nothing to collect. Once, a harvest on another thread
        // may have emptied the ring first; again and again, KVM wrote past the ring's end
        // (hv/vm.cpp, Vm::setup), overwriting entries: dirty pages were lost and the ring
        // cannot be reset any more. Stop rather than spin or miss pages.
        Ring& r = rings_[index];
        r.empty_drains = stats_.pages_reported == before ? r.empty_drains + 1 : 0;
        if (r.empty_drains >= kOverflowDrains)
            return make_error(Errc::system, "KVM's dirty ring of vCPU " + std::to_string(index) +
                                                " overflowed (its entries were overwritten, so dirty pages were lost); "
                                                "run this guest with --dirty bitmap");
        uint64_t t1 = now_ns();
        US_TRYV(reset());
        stats_.collect_ns += t1 - t0;
        stats_.reprotect_ns += now_ns() - t1;
        return {};
    }

    Result<void> harvest(Bitmap& out) override {
        std::lock_guard lock(mu_);
        uint64_t t0 = now_ns();
        for (auto& r : rings_) US_TRYV(collect(r, pending_));
        uint64_t t1 = now_ns();
        US_TRYV(reset());
        stats_.collect_ns += t1 - t0;
        stats_.reprotect_ns += now_ns() - t1;
        ++stats_.harvests;
        auto& ow = out.words();
        auto& pw = pending_.words();
        for (size_t i = 0; i < pw.size(); ++i) {
            ow[i] |= pw[i];
            pw[i] = 0;
        }
        return {};
    }

    DirtyStats stats() const override {
        std::lock_guard lock(mu_);
        return stats_;
    }

private:
    struct Ring {
        kvm_dirty_gfn* gfns = nullptr;
        uint64_t fetch = 0; // next entry to look at; only grows
        unsigned empty_drains = 0; // ring-full exits in a row that found nothing to collect
    };
    static constexpr unsigned kOverflowDrains = 3;

    Result<void> collect(Ring& r, Bitmap& into) {
        if (!r.gfns) return {};
        for (;;) {
            kvm_dirty_gfn& e = r.gfns[r.fetch & (entries_ - 1)];
            uint32_t flags = std::atomic_ref<uint32_t>(e.flags).load(std::memory_order_acquire);
            if (!(flags & KVM_DIRTY_GFN_F_DIRTY)) break;
            uint32_t slot = e.slot & 0xffff; // high half is the address space id, always 0 here
            if (slot >= slot_first_.size())
                return make_error(Errc::state, "dirty ring names memslot " + std::to_string(slot) + ", which we never created");
            uint64_t page = slot_first_[slot] + e.offset;
            if (page >= into.size()) return make_error(Errc::state, "dirty ring entry beyond guest memory");
            into.set(page);
            std::atomic_ref<uint32_t>(e.flags).store(KVM_DIRTY_GFN_F_RESET, std::memory_order_release);
            ++r.fetch;
            ++unreset_;
            ++stats_.pages_reported;
        }
        return {};
    }

    Result<void> reset() {
        if (unreset_ == 0) return {};
        US_TRYV(kvm_ioctl(vm_fd_, KVM_RESET_DIRTY_RINGS, 0, "KVM_RESET_DIRTY_RINGS"));
        unreset_ = 0;
        return {};
    }

    int vm_fd_;
    uint32_t entries_;
    std::vector<uint64_t> slot_first_;
    mutable std::mutex mu_;
    std::vector<Ring> rings_;
    Bitmap pending_; // collected from rings (some by vCPU threads on ring-full), not yet harvested
    uint64_t unreset_ = 0;
    DirtyStats stats_;
};

class BitmapTracker final : public DirtyTracker {
public:
    BitmapTracker(int vm_fd, const GuestMemory& mem) : vm_fd_(vm_fd) {
        for (const auto& r : mem.regions()) slots_.push_back({r.file_offset / kPageSize, r.size / kPageSize});
    }
    const char* name() const override { return "bitmap"; }
    uint32_t memslot_flags() const override { return KVM_MEM_LOG_DIRTY_PAGES; }
    Result<void> attach_vcpu(unsigned, int) override { return {}; }
    Result<void> drain_vcpu(unsigned) override { return {}; }

    Result<void> harvest(Bitmap& out) override {
        std::lock_guard lock(mu_);
        ++stats_.harvests;
        for (size_t s = 0; s < slots_.size(); ++s) {
            uint64_t t0 = now_ns();
            auto& slot = slots_[s];
            std::vector<uint64_t> bits((slot.pages + 63) / 64, 0);
            kvm_dirty_log log{};
            log.slot = static_cast<uint32_t>(s);
            log.dirty_bitmap = bits.data();
            US_TRYV(kvm_ioctl(vm_fd_, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG"));
            bool any = false;
            for (size_t w = 0; w < bits.size(); ++w) {
                uint64_t word = bits[w];
                any |= word != 0;
                while (word) {
                    out.set(slot.first_page + w * 64 + std::countr_zero(word));
                    word &= word - 1;
                    ++stats_.pages_reported;
                }
            }
            uint64_t t1 = now_ns();
            stats_.collect_ns += t1 - t0;
            if (!any) continue;
            kvm_clear_dirty_log clear{};
            clear.slot = static_cast<uint32_t>(s);
            clear.first_page = 0;
            clear.num_pages = static_cast<uint32_t>(slot.pages);
            clear.dirty_bitmap = bits.data();
            US_TRYV(kvm_ioctl(vm_fd_, KVM_CLEAR_DIRTY_LOG, &clear, "KVM_CLEAR_DIRTY_LOG"));
            stats_.reprotect_ns += now_ns() - t1;
        }
        return {};
    }

    DirtyStats stats() const override {
        std::lock_guard lock(mu_);
        return stats_;
    }

private:
    struct Slot {
        uint64_t first_page;
        uint64_t pages;
    };
    int vm_fd_;
    std::vector<Slot> slots_;
    mutable std::mutex mu_;
    DirtyStats stats_;
};

Result<std::unique_ptr<DirtyTracker>> make_ring(const Kvm& kvm, int vm_fd, const GuestMemory& mem, uint32_t entries) {
    long cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
    int max_bytes = kvm.check(cap);
    if (max_bytes <= 0) {
        cap = KVM_CAP_DIRTY_LOG_RING;
        max_bytes = kvm.check(cap);
    }
    if (max_bytes <= 0) return make_error(Errc::unsupported, "KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)");
    if (entries < 64 || !std::has_single_bit(entries))
        return make_error(Errc::invalid_input, "dirty ring size " + std::to_string(entries) + " is not a power of two >= 64");
    uint64_t bytes = uint64_t(entries) * sizeof(kvm_dirty_gfn);
    if (bytes > uint64_t(max_bytes))
        return make_error(Errc::invalid_input, "dirty ring of " + std::to_string(entries) + " entries exceeds KVM's limit of " +
                                                   std::to_string(max_bytes / sizeof(kvm_dirty_gfn)));
    kvm_enable_cap ec{};
    ec.cap = static_cast<uint32_t>(cap);
    ec.args[0] = bytes;
    US_TRYV(kvm_ioctl(vm_fd, KVM_ENABLE_CAP, &ec, "enabling the KVM dirty ring"));
    return std::unique_ptr<DirtyTracker>(new RingTracker(vm_fd, mem, entries));
}

Result<std::unique_ptr<DirtyTracker>> make_bitmap(const Kvm& kvm, int vm_fd, const GuestMemory& mem) {
    int caps = kvm.check(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (!(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
        return make_error(Errc::unsupported, "KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
    kvm_enable_cap ec{};
    ec.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    ec.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    US_TRYV(kvm_ioctl(vm_fd, KVM_ENABLE_CAP, &ec, "enabling manual dirty-log protection"));
    return std::unique_ptr<DirtyTracker>(new BitmapTracker(vm_fd, mem));
}

} // namespace

Result<std::unique_ptr<DirtyTracker>> make_dirty_tracker(const Kvm& kvm, int vm_fd, const GuestMemory& mem,
                                                         const DirtyConfig& cfg) {
    switch (cfg.mode) {
    case DirtyMode::none: return std::unique_ptr<DirtyTracker>(new NoTracker);
    case DirtyMode::ring: return make_ring(kvm, vm_fd, mem, cfg.ring_entries);
    case DirtyMode::bitmap: return make_bitmap(kvm, vm_fd, mem);
    case DirtyMode::automatic:
        if (kvm.check(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0 || kvm.check(KVM_CAP_DIRTY_LOG_RING) > 0)
            return make_ring(kvm, vm_fd, mem, cfg.ring_entries);
        return make_bitmap(kvm, vm_fd, mem);
    }
    return make_error(Errc::invalid_input, "unknown dirty tracking mode");
}

} // namespace understudy::hv
