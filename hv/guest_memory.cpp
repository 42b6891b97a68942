#include "hv/guest_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace understudy::hv {

Result<void> validate_memory_size(uint64_t bytes) {
    if (bytes < kMinMemory || bytes > kMaxMemory || bytes % kMemoryGranule != 0)
        return make_error(Errc::invalid_input,
                          "guest memory size " + std::to_string(bytes) + " bytes is not allowed: it must be a multiple of 2 MiB between " +
                              std::to_string(kMinMemory / kMiB) + " MiB and " + std::to_string(kMaxMemory / kGiB) + " GiB");
    return {};
}

Result<GuestMemory> GuestMemory::create(uint64_t bytes, Prefault prefault) {
    US_TRYV(validate_memory_size(bytes));
    UniqueFd fd(::memfd_create("understudy-guest-ram", MFD_CLOEXEC));
    if (!fd.valid()) return sys_error("memfd_create for guest RAM");
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) < 0) return sys_error("sizing guest RAM");
    const int populate = prefault == Prefault::yes ? MAP_POPULATE : 0;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd.get(), 0);
    if (p == MAP_FAILED) return sys_error("mapping " + std::to_string(bytes) + " bytes of guest RAM");
    ::madvise(p, bytes, MADV_DONTDUMP); // guest data stays out of core dumps
    return GuestMemory(std::move(fd), static_cast<uint8_t*>(p), bytes);
}

GuestMemory::GuestMemory(UniqueFd fd, uint8_t* base, uint64_t size)
    : fd_(std::move(fd)), base_(base), size_(size), vmm_dirty_(size / kPageSize) {
    uint64_t low = std::min(size, kMmioWindowStart);
    regions_.push_back({Gpa{0}, low, 0});
    if (size > low) regions_.push_back({Gpa{kMmioWindowEnd}, size - low, low});
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : fd_(std::move(o.fd_)), base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)),
      regions_(std::move(o.regions_)), vmm_dirty_(std::move(o.vmm_dirty_)) {}

GuestMemory::~GuestMemory() {
    if (base_) ::munmap(base_, size_);
}

const MemoryRegion* GuestMemory::find(Gpa gpa, uint64_t len) const {
    for (const auto& r : regions_) {
        // Written so that no sum can wrap: gpa >= start, len <= size, offset <= size - len.
        if (gpa.value < r.gpa.value) continue;
        uint64_t off = gpa.value - r.gpa.value;
        if (len <= r.size && off <= r.size - len) return &r;
    }
    return nullptr;
}

bool GuestMemory::contains(Gpa gpa, uint64_t len) const { return find(gpa, len) != nullptr; }

static Error out_of_range(Gpa gpa, uint64_t len) {
    char buf[96];
    snprintf(buf, sizeof buf, "guest range [0x%llx, +0x%llx) is not guest RAM", (unsigned long long)gpa.value,
             (unsigned long long)len);
    return make_error(Errc::guest_fault, buf);
}

Result<std::span<uint8_t>> GuestMemory::span(Gpa gpa, uint64_t len) {
    const MemoryRegion* r = find(gpa, len);
    if (!r) return out_of_range(gpa, len);
    return std::span<uint8_t>(base_ + r->file_offset + (gpa.value - r->gpa.value), len);
}

Result<std::span<const uint8_t>> GuestMemory::span(Gpa gpa, uint64_t len) const {
    const MemoryRegion* r = find(gpa, len);
    if (!r) return out_of_range(gpa, len);
    return std::span<const uint8_t>(base_ + r->file_offset + (gpa.value - r->gpa.value), len);
}

Result<void> GuestMemory::read(Gpa gpa, std::span<uint8_t> out) const {
    auto s = US_TRY(span(gpa, out.size()));
    if (!out.empty()) std::memcpy(out.data(), s.data(), s.size());
    return {};
}

Result<void> GuestMemory::write(Gpa gpa, std::span<const uint8_t> in) {
    auto s = US_TRY(span(gpa, in.size()));
    if (!in.empty()) std::memcpy(s.data(), in.data(), in.size());
    mark_dirty(gpa, in.size());
    return {};
}

void GuestMemory::mark_dirty(Gpa gpa, uint64_t len) {
    if (len == 0) return;
    const MemoryRegion* r = find(gpa, len);
    if (!r) return; // nothing was written outside RAM: span() refused it
    uint64_t first = (r->file_offset + (gpa.value - r->gpa.value)) / kPageSize;
    uint64_t last = (r->file_offset + (gpa.value - r->gpa.value) + len - 1) / kPageSize;
    vmm_dirty_.set_range(first, last - first + 1);
}

Result<uint64_t> GuestMemory::page_index(Gpa gpa) const {
    const MemoryRegion* r = find(gpa, 1);
    if (!r) return out_of_range(gpa, 1);
    return (r->file_offset + (gpa.value - r->gpa.value)) / kPageSize;
}

Gpa GuestMemory::page_gpa(uint64_t index) const {
    uint64_t off = index * kPageSize;
    for (const auto& r : regions_)
        if (off >= r.file_offset && off < r.file_offset + r.size) return Gpa{r.gpa.value + (off - r.file_offset)};
    return Gpa{~0ull};
}

} // namespace understudy::hv
