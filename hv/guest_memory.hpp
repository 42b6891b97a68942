// Guest RAM: one memfd, mapped shared and prefaulted, laid out in guest-physical
// regions around the MMIO window. Every access from the VMM goes through the checked
// accessors here: no host pointer is ever formed from a guest-controlled value without
// a bounds check, and every VMM write is recorded in the VMM's own dirty bitmap so the
// next checkpoint carries it (DESIGN.md, invariant 3).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/bitmap.hpp"
#include "common/error.hpp"
#include "common/unique_fd.hpp"

namespace understudy::hv {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kMiB = 1ull << 20;
inline constexpr uint64_t kGiB = 1ull << 30;

// Guest RAM sizes this VMM accepts: whole 2 MiB units between these bounds. The upper
// bound keeps RAM inside what the guest runtime maps (16 GiB of guest-physical space).
inline constexpr uint64_t kMinMemory = 16 * kMiB;
inline constexpr uint64_t kMaxMemory = 12 * kGiB;
inline constexpr uint64_t kMemoryGranule = 2 * kMiB;

// Guest-physical addresses [3 GiB, 4 GiB) hold devices (virtio-mmio, ...), never RAM.
inline constexpr uint64_t kMmioWindowStart = 3 * kGiB;
inline constexpr uint64_t kMmioWindowEnd = 4 * kGiB;

// A guest-physical address. Crossing to a host pointer is only possible through
// GuestMemory, which checks bounds.
struct Gpa {
    uint64_t value = 0;
    constexpr Gpa operator+(uint64_t off) const { return Gpa{value + off}; }
    constexpr auto operator<=>(const Gpa&) const = default;
};

// A contiguous piece of guest-physical RAM and where it lives in the memfd.
struct MemoryRegion {
    Gpa gpa;
    uint64_t size;
    uint64_t file_offset; // also offset into the host mapping
};

Result<void> validate_memory_size(uint64_t bytes);

class GuestMemory {
public:
    // Prefaulted by default: the first touch of a page under nested paging is expensive,
    // so a VM pays it before it runs. A backup's replica is not (Prefault::no): faulting in
    // all of a large guest takes seconds, which the primary would see as a backup that
    // does not answer its handshake; the initial synchronization touches the pages anyway.
    enum class Prefault { yes, no };
    static Result<GuestMemory> create(uint64_t bytes, Prefault prefault = Prefault::yes);
    GuestMemory(GuestMemory&&) noexcept;
    GuestMemory& operator=(GuestMemory&&) = delete;
    ~GuestMemory();

    uint64_t size() const { return size_; }
    uint64_t page_count() const { return size_ / kPageSize; }
    const std::vector<MemoryRegion>& regions() const { return regions_; }
    int memfd() const { return fd_.get(); }

    // Checked translation: the whole [gpa, gpa+len) must lie in one RAM region.
    Result<std::span<uint8_t>> span(Gpa gpa, uint64_t len);
    Result<std::span<const uint8_t>> span(Gpa gpa, uint64_t len) const;
    bool contains(Gpa gpa, uint64_t len) const;

    // Copies out of guest memory.
    Result<void> read(Gpa gpa, std::span<uint8_t> out) const;
    // Copies into guest memory and marks the pages dirty for the VMM.
    Result<void> write(Gpa gpa, std::span<const uint8_t> in);
    template <class T>
    Result<T> read_obj(Gpa gpa) const {
        T v;
        US_TRYV(read(gpa, {reinterpret_cast<uint8_t*>(&v), sizeof v}));
        return v;
    }
    template <class T>
    Result<void> write_obj(Gpa gpa, const T& v) {
        return write(gpa, {reinterpret_cast<const uint8_t*>(&v), sizeof v});
    }
    // For device code that writes through span(): record the pages it touched.
    void mark_dirty(Gpa gpa, uint64_t len);

    // Page index: the page's position in the memfd (dense, 0..page_count()).
    Result<uint64_t> page_index(Gpa gpa) const;
    Gpa page_gpa(uint64_t index) const;
    // Host view of one page by index (index < page_count(), checked by the caller).
    uint8_t* page_ptr(uint64_t index) { return base_ + index * kPageSize; }
    const uint8_t* page_ptr(uint64_t index) const { return base_ + index * kPageSize; }
    uint8_t* host_base() { return base_; }

    // Pages the VMM wrote since the last drain.
    AtomicBitmap& vmm_dirty() { return vmm_dirty_; }

private:
    GuestMemory(UniqueFd fd, uint8_t* base, uint64_t size);
    const MemoryRegion* find(Gpa gpa, uint64_t len) const;

    UniqueFd fd_;
    uint8_t* base_;
    uint64_t size_;
    std::vector<MemoryRegion> regions_;
    AtomicBitmap vmm_dirty_;
};

} // namespace understudy::hv
