// The records that carry disks in the replication stream (docs/wire-format.md, "Disks"):
// DISKS, each disk's size and flags, right after the stream header; DISK_BLOCKS, a batch
// of one disk's 4 KiB blocks (LZ4 when that is smaller), bound to their indices and the
// session by a check; DISK_ZERO, a range of blocks that reads as zeros (the holes of the
// initial synchronization). Encoders and checking decoders; no I/O.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/error.hpp"
#include "hv/replicated_disk.hpp"

namespace understudy::replicator {

struct DiskInfo {
    uint64_t size_bytes = 0; // a positive multiple of 512
    bool readonly = false;
    hv::DiskIdentity identity; // the primary's disk (unknown: all zero)
    bool operator==(const DiskInfo&) const = default;
};
std::vector<uint8_t> encode_disks(std::span<const DiskInfo> disks);
// `expected`: the stream header's disk count.
Result<std::vector<DiskInfo>> decode_disks(std::span<const uint8_t> body, uint32_t expected);

// Blocks in one DISK_BLOCKS record, at most (4 MiB of data).
inline constexpr uint32_t kMaxDiskBlocksPerRecord = 1024;

// The record bodies after their u64 epoch.
struct DiskBlocks {
    uint32_t disk = 0;
    std::vector<uint64_t> blocks;   // strictly increasing
    std::vector<uint8_t> data;      // blocks.size() * 4096 bytes, the last block of a disk zero-padded
    uint64_t encoded_bytes = 0;     // of the data, on the wire
};
// `blocks` strictly increasing, at most kMaxDiskBlocksPerRecord; `data` their contents.
// `lz4_state`: scratch of LZ4_sizeofState() bytes.
void encode_disk_blocks(uint32_t disk, std::span<const uint64_t> blocks, std::span<const uint8_t> data, uint64_t seed,
                        std::vector<uint8_t>& lz4_state, std::vector<uint8_t>& out);
// Checks everything against `disks` (the index, the block range, the order, the sizes,
// the check over indices and data) and fills `out`.
Result<void> decode_disk_blocks(std::span<const uint8_t> body, uint64_t seed, std::span<const DiskInfo> disks, DiskBlocks& out);

// The initial synchronization compares each disk in chunks of this many blocks (256 KiB):
// the primary sends each chunk's digest, the backup answers which of its chunks differ.
inline constexpr uint64_t kDiskChunkBlocks = 64;
inline constexpr uint64_t kDiskChunkBytes = kDiskChunkBlocks * hv::kDiskBlockBytes;
inline constexpr uint32_t kMaxDigestsPerRecord = 65536;
inline uint64_t disk_chunks(uint64_t size_bytes) { return (size_bytes + kDiskChunkBytes - 1) / kDiskChunkBytes; }
// XXH3-128 of one chunk (zero-padded past the disk's end), seeded with the session id.
struct ChunkDigest {
    uint64_t lo = 0, hi = 0;
    bool operator==(const ChunkDigest&) const = default;
};
ChunkDigest chunk_digest(std::span<const uint8_t> chunk, uint64_t seed);

struct DiskDigests {
    uint32_t disk = 0;
    uint64_t first_chunk = 0;
    std::vector<ChunkDigest> digests;
};
void encode_disk_digests(const DiskDigests& d, std::vector<uint8_t>& out);
Result<DiskDigests> decode_disk_digests(std::span<const uint8_t> body, std::span<const DiskInfo> disks);

// The backup's answer to one DISK_DIGESTS: which of those chunks differ from its copy.
struct DiskWant {
    uint32_t disk = 0;
    uint64_t first_chunk = 0;
    std::vector<bool> differs; // one per digest
};
std::vector<uint8_t> encode_disk_want(const DiskWant& w);
Result<DiskWant> decode_disk_want(std::span<const uint8_t> body);

struct DiskZero {
    uint32_t disk = 0;
    uint64_t first_block = 0, blocks = 0;
};
void encode_disk_zero(const DiskZero& z, std::vector<uint8_t>& out);
Result<DiskZero> decode_disk_zero(std::span<const uint8_t> body, std::span<const DiskInfo> disks);

} // namespace understudy::replicator
