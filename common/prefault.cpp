#include "common/prefault.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 // Linux 5.14; older headers lack it, older kernels refuse it (EINVAL)
#endif

namespace understudy {

void prefault_for_write(void* begin, size_t bytes) {
    static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t first = (uintptr_t(begin) + page - 1) & ~(page - 1);
    const uintptr_t end = (uintptr_t(begin) + bytes) & ~(page - 1);
    if (end <= first) return;
    if (::madvise(reinterpret_cast<void*>(first), end - first, MADV_POPULATE_WRITE) == 0) return;
    // Only a kernel without it is worked around; any other failure (no memory) would fail
    // the touching too, and the pages then fault where they are first used.
    if (errno != EINVAL) return;
    for (uintptr_t p = first; p < end; p += page) {
        volatile uint8_t* b = reinterpret_cast<volatile uint8_t*>(p);
        *b = *b;
    }
}

void PrefaultedBuffer::reserve_faulted(size_t bytes) {
    if (bytes <= faulted_) return;
    if (bytes > capacity_) {
        static const size_t page = size_t(::sysconf(_SC_PAGESIZE));
        const size_t capacity = std::max(std::bit_ceil(bytes), page);
        std::unique_ptr<uint8_t, Free> grown(static_cast<uint8_t*>(std::aligned_alloc(page, capacity)));
        if (!grown) throw std::bad_alloc();
        prefault_for_write(grown.get(), bytes); // before the old contents move in
        if (size_) std::memcpy(grown.get(), bytes_.get(), size_);
        bytes_ = std::move(grown);
        capacity_ = capacity;
    } else {
        prefault_for_write(bytes_.get() + faulted_, bytes - faulted_);
    }
    faulted_ = bytes;
}

uint8_t* PrefaultedBuffer::extend(size_t n) {
    if (size_ + n > faulted_) reserve_faulted(std::bit_ceil(size_ + n));
    uint8_t* added = bytes_.get() + size_;
    size_ += n;
    return added;
}

void PrefaultedBuffer::append(const void* src, size_t n) { std::memcpy(extend(n), src, n); }

void PrefaultedBuffer::release() {
    bytes_.reset();
    size_ = capacity_ = faulted_ = 0;
}

} // namespace understudy
