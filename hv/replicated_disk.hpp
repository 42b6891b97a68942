// A disk whose contents the replicator carries with each checkpoint, block by block, as it
// carries guest memory page by page (docs/disks.md, "Replication"): the device records the
// blocks it wrote, the replicator harvests that set while the VM is paused and reads the
// blocks back. hv::virtio::VirtioBlk implements it; so does the fake VM of the native tests.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/bitmap.hpp"
#include "common/error.hpp"
#include "hv/disk_identity.hpp"

namespace understudy::hv {

// The unit of disk replication: a write of any size marks the 4 KiB blocks it touches.
inline constexpr uint64_t kDiskBlockBytes = 4096;
inline constexpr uint64_t disk_blocks(uint64_t size_bytes) { return (size_bytes + kDiskBlockBytes - 1) / kDiskBlockBytes; }

class ReplicatedDisk {
public:
    virtual ~ReplicatedDisk() = default;
    virtual const std::string& path() const = 0;
    virtual uint64_t size_bytes() const = 0;
    virtual bool readonly() const = 0;
    // Which disk and generation the file holds (unknown where it could not be recorded).
    virtual const DiskIdentity& identity() const = 0;
    // Every block written since the previous harvest, ORed into out (disk_blocks() bits).
    // A write counts once it completed, so a block harvested while a write to it was in
    // flight is found again by the next harvest.
    virtual void harvest_written(Bitmap& out) = 0;
    // Reads `bytes` from `offset` of the disk file; beyond its end reads zeros.
    virtual Result<void> read_at(uint64_t offset, std::span<uint8_t> out) const = 0;
    // The byte ranges [begin, end) that may hold data; the rest reads as zeros (holes).
    virtual Result<std::vector<std::pair<uint64_t, uint64_t>>> data_extents() const = 0;
};

} // namespace understudy::hv
