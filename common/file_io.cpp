#include "common/file_io.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace understudy {

Result<void> pread_full(int fd, uint64_t offset, std::span<uint8_t> out) {
    size_t done = 0;
    while (done < out.size()) {
        ssize_t n = ::pread(fd, out.data() + done, out.size() - done, off_t(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("reading " + std::to_string(out.size()) + " bytes at byte " + std::to_string(offset));
        if (n == 0) { // end of file
            std::memset(out.data() + done, 0, out.size() - done);
            break;
        }
        done += size_t(n);
    }
    return {};
}

Result<void> pwrite_full(int fd, uint64_t offset, std::span<const uint8_t> data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, off_t(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return sys_error("writing " + std::to_string(data.size()) + " bytes at byte " + std::to_string(offset),
                             n < 0 ? errno : EIO);
        done += size_t(n);
    }
    return {};
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> data_extents(int fd, uint64_t size) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    uint64_t at = 0;
    while (at < size) {
        off_t data = ::lseek(fd, off_t(at), SEEK_DATA);
        if (data < 0 && errno == ENXIO) break; // only a hole from here on
        if (data < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) return std::vector<std::pair<uint64_t, uint64_t>>{{0, size}};
        if (data < 0) return sys_error("looking for data (SEEK_DATA)");
        if (uint64_t(data) >= size) break;
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) return sys_error("looking for a hole (SEEK_HOLE)");
        const uint64_t end = std::min<uint64_t>(uint64_t(hole), size);
        out.emplace_back(uint64_t(data), end);
        at = end;
    }
    return out;
}

Result<void> zero_range(int fd, uint64_t offset, uint64_t length) {
    if (length == 0) return {};
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offset), off_t(length)) == 0) return {};
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL && errno != ENODEV)
        return sys_error("punching a hole of " + std::to_string(length) + " bytes at byte " + std::to_string(offset));
    static const std::vector<uint8_t> zeros(1 << 20, 0);
    for (uint64_t done = 0; done < length;) {
        const uint64_t n = std::min<uint64_t>(zeros.size(), length - done);
        US_TRYV(pwrite_full(fd, offset + done, {zeros.data(), n}));
        done += n;
    }
    return {};
}

} // namespace understudy
