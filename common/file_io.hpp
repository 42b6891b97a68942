// Whole-range reads and writes at an offset, and the sparse-file calls disk replication
// needs (SEEK_DATA/SEEK_HOLE, hole punching), with EINTR and short transfers handled.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "common/error.hpp"

namespace understudy {

// Reads out.size() bytes at `offset`; what lies beyond the end of the file reads as zeros.
Result<void> pread_full(int fd, uint64_t offset, std::span<uint8_t> out);
// Writes all of `data` at `offset`.
Result<void> pwrite_full(int fd, uint64_t offset, std::span<const uint8_t> data);
// The ranges [begin, end) of the first `size` bytes that may hold data; the rest are holes
// and read as zeros. A file system without SEEK_DATA reports one range: all of it.
Result<std::vector<std::pair<uint64_t, uint64_t>>> data_extents(int fd, uint64_t size);
// Makes [offset, offset + length) read as zeros, keeping the file's size: a punched hole
// where the file system can, else zeros written.
Result<void> zero_range(int fd, uint64_t offset, uint64_t length);

} // namespace understudy
