// The backup's copies of the primary's disks, advanced with the memory replica one whole
// checkpoint at a time (docs/disks.md, "Replication"). A checkpoint's blocks are staged as
// they arrive, in memory up to a bound and in an unlinked spill file beyond it, each block
// once (its newest copy), and written to the disk files only when the checkpoint commits;
// a checkpoint that never commits leaves the disks as the last committed one had them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "common/unique_fd.hpp"
#include "hv/virtio/disk_file.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/wire.hpp"

namespace understudy::replicator {

struct DiskReplicaConfig {
    std::vector<std::string> paths;        // the backup's disk files, in the guest's order
    uint64_t staging_memory = 256ull << 20; // staged block data held in memory; beyond it, the spill file
    std::string spill_dir = "/var/tmp";    // where the spill file (unlinked, O_TMPFILE) goes
    // The ACK of a checkpoint waits for fdatasync of the disks it wrote ("synced"), or
    // only for the writes ("written", the default: docs/disks.md says why).
    bool sync_before_ack = false;
};

struct DiskReplicaStats {
    uint64_t blocks_applied = 0;
    uint64_t bytes_applied = 0;
    uint64_t zero_ranges = 0;
    uint64_t spilled_blocks = 0; // staged in the spill file, all checkpoints together
    uint64_t syncs = 0;
};

class DiskReplica {
public:
    // Opens and locks every file (exclusively: nothing else may write a replica).
    static Result<std::unique_ptr<DiskReplica>> open(DiskReplicaConfig cfg);

    size_t count() const { return files_.size(); }
    // Refuses a primary whose disks differ in number or size from these files, or whose
    // identity forbids a sync onto them (hv::sync_refusal: another disk, a newer copy).
    Result<void> check(std::span<const DiskInfo> primary) const;
    // The initial synchronization: which chunks of this copy differ from the primary's
    // digests (the copy as it is on disk, before this checkpoint's writes).
    Result<DiskWant> compare(const DiskDigests& d, uint64_t seed);
    // Before an initial checkpoint writes a copy: marked inconsistent, durably, so that a
    // copy left half synchronized is never taken for a whole one.
    Result<void> begin_sync();
    // Once an initial checkpoint committed: each copy holds the primary's disk.
    Result<void> synced(std::span<const DiskInfo> primary);

    // Into staging, in record order: only an initial checkpoint (`repeats`) may send a
    // block again, its later copy replacing the earlier; a zero range drops the blocks it
    // covers that were staged before it.
    Result<void> stage(const DiskBlocks& b, bool repeats);
    Result<void> stage(const DiskZero& z);
    // Straight to the files (the first checkpoint of a replica that holds none).
    Result<void> write(const DiskBlocks& b);
    Result<void> write(const DiskZero& z);
    // Writes what is staged (zero ranges, then blocks in disk order), then fdatasyncs
    // when asked to, and empties the staging. An error leaves the disks partly written.
    Result<void> apply_staged();
    void discard_staged();
    // fdatasync of every disk written since the last sync (when sync_before_ack).
    Result<void> sync_if_asked();

    uint64_t staged_blocks() const { return slot_.size(); }
    const DiskReplicaConfig& config() const { return cfg_; }
    DiskReplicaStats stats() const { return stats_; }

private:
    explicit DiskReplica(DiskReplicaConfig cfg) : cfg_(std::move(cfg)) {}
    Result<void> write_block(uint32_t disk, uint64_t block, const uint8_t* data);
    Result<uint8_t*> staged_slot(uint32_t disk, uint64_t block, bool repeats, bool& spilled, uint64_t& slot);

    DiskReplicaConfig cfg_;
    std::vector<std::unique_ptr<hv::virtio::DiskFile>> files_;
    std::vector<bool> dirty_;      // written since the last sync
    std::vector<std::optional<hv::DiskIdentity>> identity_; // each copy's, as recorded next to it
    std::map<std::pair<uint32_t, uint64_t>, uint64_t> slot_; // (disk, block) -> staging slot
    std::vector<uint8_t> memory_;  // slots [0, memory slots)
    UniqueFd spill_;               // slots beyond, at (slot - memory slots) * 4096
    std::vector<DiskZero> zeros_;
    DiskReplicaStats stats_;
};

} // namespace understudy::replicator
