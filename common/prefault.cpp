#include "common/prefault.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

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

} // namespace understudy
