// The backup's replica: guest memory (a memfd laid out like the primary's) plus the
// committed vCPU, VM and device state, advanced one whole checkpoint at a time.
// Records are fed in arrival order; a checkpoint is staged and verified as it arrives
// and applied only on a valid CHECKPOINT_END (DESIGN.md invariants 2 and 6). Any error
// discards the open checkpoint and leaves the committed one untouched.
// Knows no sockets: the network loop (replicator/backup.cpp) feeds it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>

#include "common/codec.hpp"
#include "common/records.hpp"
#include "hv/guest_memory.hpp"
#include "hv/vcpu_state.hpp"
#include "replicator/disk_replica.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/verification.hpp"
#include "replicator/wire.hpp"

namespace understudy::replicator {

struct ReplicaStats {
    uint64_t committed_epoch = 0;
    uint64_t checkpoints_committed = 0;
    uint64_t checkpoints_rejected = 0;
    uint64_t pages_applied = 0;
};

class BackupReplica {
public:
    // Memory of the given shape, all zero, nothing committed; `disks` (may be null: none)
    // are the backup's copies of the primary's disks.
    static Result<std::unique_ptr<BackupReplica>> create(uint64_t memory_bytes, uint32_t vcpus,
                                                         std::unique_ptr<DiskReplica> disks = nullptr);

    // True when a primary of this header's shape (memory, vCPUs, layout) can use it.
    bool fits(const StreamHeader& h) const;
    // A new session from a primary: checks the header against this replica's shape and
    // starts decoding with the session's hash seed; `disks` (the DISKS record) must match
    // this replica's disk files. Committed state is kept until the new session's first
    // checkpoint commits.
    Result<void> begin_session(const StreamHeader& h, std::span<const DiskInfo> disks = {});

    // Pages of the open checkpoint held in staging (each page at most once).
    size_t staged_pages() const { return staged_.indices.size(); }
    // Feeds one record. Returns the epoch it committed (on CHECKPOINT_END), else nullopt.
    // On error the open checkpoint is discarded; the caller should end the session.
    Result<std::optional<uint64_t>> feed(const Record& r);

    // Online verification: compares a slice of the primary's digests with the committed
    // checkpoint. Pages and state found different are remembered until a later
    // checkpoint rewrites them or a later slice finds them equal (known_difference()).
    VerifyOutcome verify(const VerifySlice& s);
    // What the replica is known to differ in from its primary, if anything: a promotion
    // never runs on it (DESIGN.md invariant 7).
    std::optional<std::string> known_difference() const;

    // An answer the last record asks for (DISK_WANT to a DISK_DIGESTS), once.
    std::optional<Record> take_reply() { return std::exchange(reply_, std::nullopt); }

    // Drops a checkpoint that was being received (the connection broke).
    void abort_open_checkpoint();

    bool has_committed() const { return has_committed_; }
    // True between a CHECKPOINT_BEGIN and its END.
    bool receiving() const { return open_; }
    uint64_t committed_epoch() const { return committed_epoch_; }
    // The configuration digest of the session whose checkpoint is committed: a VM
    // promoted from this replica must have the same (hv::Vm::config_digest).
    uint64_t committed_config_digest() const { return committed_config_; }
    // The session whose checkpoint is committed (fencing: a primary that released output
    // this replica lacks retires that session, docs/failover.md).
    uint64_t committed_session_id() const { return committed_session_; }
    const hv::GuestMemory& memory() const { return memory_; }
    uint32_t vcpus() const { return vcpus_; }
    // Promotion: hands the committed memory over to a VM. The replica is unusable after.
    hv::GuestMemory take_memory() { return std::move(memory_); }
    const hv::VmState& state() const { return state_; }
    ReplicaStats stats() const { return stats_; }
    // The disks as the primary of the committed checkpoint described them, and the files
    // here that hold them (empty without disks).
    const std::vector<DiskInfo>& committed_disks() const { return committed_disks_; }
    std::vector<std::string> disk_paths() const { return disks_ ? disks_->config().paths : std::vector<std::string>{}; }
    DiskReplicaStats disk_stats() const { return disks_ ? disks_->stats() : DiskReplicaStats{}; }
    // Promotion: closes the disk files (and drops their locks) for the promoted VM to open.
    void release_disks() { disks_.reset(); }

private:
    BackupReplica(hv::GuestMemory mem, uint32_t vcpus, std::unique_ptr<DiskReplica> disks);
    Result<void> feed_disk(const Record& r, std::span<const uint8_t> body);
    Result<void> feed_open(const Record& r, Decoder& d);
    Result<uint64_t> commit(Decoder& d);
    const uint8_t* base_page(uint64_t index) const;

    hv::GuestMemory memory_;
    uint32_t vcpus_;
    uint64_t layout_digest_;
    std::optional<PageDecoder> decoder_;
    uint64_t session_config_ = 0;
    uint64_t committed_config_ = 0;
    uint64_t session_id_ = 0;
    uint64_t committed_session_ = 0;
    std::unique_ptr<DiskReplica> disks_;
    std::vector<DiskInfo> session_disks_, committed_disks_;
    DiskBlocks disk_blocks_;              // scratch for one DISK_BLOCKS record
    std::optional<Record> reply_;
    std::optional<std::string> disk_failure_; // a commit's disk writes failed: the replica is torn

    bool has_committed_ = false;
    uint64_t committed_epoch_ = 0;
    hv::VmState state_;
    ReplicaStats stats_;
    std::set<uint64_t> differing_pages_; // found by verification, not yet rewritten
    uint32_t differing_state_ = 0;       // kState* bits, until the next commit

    // The open checkpoint.
    bool open_ = false;
    uint64_t open_epoch_ = 0;
    uint32_t open_flags_ = 0;
    CheckpointDigest digest_;
    void fold_staged_from(size_t first);
    // Copies the staged pages into the replica and empties the staging.
    void apply_staged();

    StagedPages staged_;
    std::vector<int64_t> staged_slot_; // page index -> newest slot in staged_, or -1
    hv::VmState staged_state_;
    std::vector<bool> staged_vcpu_;
    bool staged_vm_ = false;
};

} // namespace understudy::replicator
