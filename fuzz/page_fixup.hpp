// Recomputes the per-page check values of a page batch (replicator/README.md) the way an
// honest primary would, so that mutated batches get past the content checks and reach
// what follows them. Pages whose content cannot be worked out (corrupt LZ4, index out of
// range, truncated record) are left as they are.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

namespace understudy::fuzz {

// base(index) returns the page the decoder will use as SAME/XOR base, or nullptr.
void fix_page_checks(std::span<uint8_t> batch, uint64_t hash_seed, uint64_t page_count,
                     const std::function<const uint8_t*(uint64_t)>& base);

// The same for a DISK_BLOCKS body after its epoch (docs/wire-format.md, "Disks"): the
// check over disk, count, indices and the raw blocks, seeded with the session id. Left
// as it is when the data does not decode to count x 4096 bytes or the body is short.
void fix_disk_block_check(std::span<uint8_t> body, uint64_t session_id);

} // namespace understudy::fuzz
