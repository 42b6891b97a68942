#include "replicator/backup_replica.hpp"

#include <cstring>

#include "common/codec.hpp"
#include "common/log.hpp"
#include "hv/snapshot.hpp"

namespace understudy::replicator {

namespace {
Error stream_error(const std::string& why) { return make_error(Errc::invalid_input, "replication stream: " + why); }
} // namespace

Result<std::unique_ptr<BackupReplica>> BackupReplica::create(uint64_t memory_bytes, uint32_t vcpus,
                                                             std::unique_ptr<DiskReplica> disks) {
    if (vcpus < 1 || vcpus > 8) return stream_error("vCPU count " + std::to_string(vcpus) + " is not allowed");
    auto mem = US_TRY(hv::GuestMemory::create(memory_bytes, hv::GuestMemory::Prefault::no));
    return std::unique_ptr<BackupReplica>(new BackupReplica(std::move(mem), vcpus, std::move(disks)));
}

BackupReplica::BackupReplica(hv::GuestMemory mem, uint32_t vcpus, std::unique_ptr<DiskReplica> disks)
    : memory_(std::move(mem)), vcpus_(vcpus), layout_digest_(hv::memory_layout_digest(memory_)), disks_(std::move(disks)),
      staged_slot_(memory_.page_count(), -1) {}

bool BackupReplica::fits(const StreamHeader& h) const {
    return h.memory_bytes == memory_.size() && h.vcpus == vcpus_ && h.layout_digest == layout_digest_;
}

Result<void> BackupReplica::begin_session(const StreamHeader& h, std::span<const DiskInfo> disks) {
    US_TRYV(check_stream_header(h));
    if (disks.size() != h.disks)
        return stream_error("the stream header announces " + std::to_string(h.disks) + " disks, the DISKS record describes " +
                            std::to_string(disks.size()));
    if (disk_failure_) return stream_error(*disk_failure_);
    if (!disks_ && !disks.empty())
        return stream_error("the primary's VM has " + std::to_string(disks.size()) +
                            " disks and this backup none (give the backup one --disk per disk of the primary)");
    if (disks_) US_TRYV(disks_->check(disks));
    // A replica of another shape is refused, never reshaped: its committed checkpoint may
    // be the only copy of its VM (BackupServer reshapes one that holds none).
    const std::string held = has_committed_ ? ", and holds checkpoint " + std::to_string(committed_epoch_) +
                                                   " of that VM (a backup serves one VM until it is restarted)"
                                            : "";
    if (h.memory_bytes != memory_.size())
        return stream_error("the primary's guest has " + std::to_string(h.memory_bytes >> 20) + " MiB of memory, this backup " +
                            std::to_string(memory_.size() >> 20) + " MiB" + held);
    if (h.vcpus != vcpus_)
        return stream_error("the primary's guest has " + std::to_string(h.vcpus) + " vCPUs, this backup " +
                            std::to_string(vcpus_) + held);
    if (h.layout_digest != layout_digest_) return stream_error("the primary lays out guest memory differently" + held);
    abort_open_checkpoint();
    decoder_ = US_TRY(PageDecoder::create({memory_.page_count(), h.session_id}));
    if (has_committed_ && h.config_digest != committed_config_)
        log::warn("backup: the new primary's VM configuration differs from the committed checkpoint's; "
                  "it replaces it when its first checkpoint commits");
    session_config_ = h.config_digest;
    session_id_ = h.session_id;
    session_disks_.assign(disks.begin(), disks.end());
    return {};
}

void BackupReplica::abort_open_checkpoint() {
    if (open_) ++stats_.checkpoints_rejected;
    for (uint64_t idx : staged_.indices) staged_slot_[idx] = -1;
    staged_.clear();
    staged_state_ = {};
    staged_vcpu_.assign(vcpus_, false);
    staged_vm_ = false;
    digest_.clear();
    open_ = false;
    if (disks_) disks_->discard_staged();
}

void BackupReplica::apply_staged() {
    for (size_t i = 0; i < staged_.indices.size(); ++i) {
        uint64_t idx = staged_.indices[i];
        std::memcpy(memory_.page_ptr(idx), staged_.data.data() + i * hv::kPageSize, hv::kPageSize);
        staged_slot_[idx] = -1;
        if (!differing_pages_.empty()) differing_pages_.erase(idx); // the primary's page now
        ++stats_.pages_applied;
    }
    staged_.clear();
}

// A page sent again in the same checkpoint (pre-copy rounds, in-epoch copies) overwrites
// its staged slot instead of taking a new one: staging never holds more than one copy of
// each page, so a checkpoint needs at most the guest's memory plus one batch, however
// often a primary (or a hostile peer) repeats pages.
void BackupReplica::fold_staged_from(size_t first) {
    uint8_t* data = staged_.data.data();
    size_t kept = first;
    for (size_t i = first; i < staged_.indices.size(); ++i) {
        uint64_t idx = staged_.indices[i];
        if (int64_t slot = staged_slot_[idx]; slot >= 0) {
            std::memcpy(data + static_cast<uint64_t>(slot) * hv::kPageSize, data + i * hv::kPageSize, hv::kPageSize);
            continue;
        }
        if (kept != i) {
            std::memcpy(data + kept * hv::kPageSize, data + i * hv::kPageSize, hv::kPageSize);
            staged_.indices[kept] = idx;
        }
        staged_slot_[idx] = static_cast<int64_t>(kept++);
    }
    staged_.indices.resize(kept);
    staged_.data.truncate(kept * hv::kPageSize);
}

const uint8_t* BackupReplica::base_page(uint64_t index) const {
    // A page sent twice in one checkpoint (pre-copy rounds) is decoded against its
    // newest staged version; otherwise against the committed replica.
    int64_t slot = staged_slot_[index];
    if (slot >= 0) return staged_.data.data() + static_cast<uint64_t>(slot) * hv::kPageSize;
    return memory_.page_ptr(index);
}

Result<std::optional<uint64_t>> BackupReplica::feed(const Record& r) {
    if (!decoder_) return stream_error("a record arrived before the stream header");
    auto result = [&]() -> Result<std::optional<uint64_t>> {
        Decoder d(r.body, std::string(record_type_name(r.type)) + " record");
        if (r.type == kHeartbeat) return std::nullopt;
        if (r.type == kCheckpointBegin) {
            if (open_) return stream_error("CHECKPOINT_BEGIN for a new epoch while epoch " + std::to_string(open_epoch_) + " is open");
            uint64_t epoch = US_TRY(d.u64());
            uint32_t flags = US_TRY(d.u32());
            if (US_TRY(d.u32()) != 0) return stream_error("CHECKPOINT_BEGIN's reserved word is not zero");
            if (!d.done()) return stream_error("CHECKPOINT_BEGIN body has " + std::to_string(r.body.size()) + " bytes, expected 16");
            if (flags & ~kCheckpointInitial) return stream_error("unknown checkpoint flags");
            bool initial = flags & kCheckpointInitial;
            if (!initial && (!has_committed_ || epoch != committed_epoch_ + 1))
                return stream_error("checkpoint " + std::to_string(epoch) + " out of order (committed: " +
                                    (has_committed_ ? std::to_string(committed_epoch_) : std::string("none")) + ")");
            abort_open_checkpoint();
            // A fresh copy is written as the first checkpoint arrives: from here until that
            // checkpoint commits, the copy is no whole disk.
            if (disks_ && initial && !has_committed_) US_TRYV(disks_->begin_sync());
            open_ = true;
            open_epoch_ = epoch;
            open_flags_ = flags;
            return std::nullopt;
        }
        if (!open_) {
            if (!(r.type & kRecordOptional))
                return stream_error(std::string(record_type_name(r.type)) + " record outside a checkpoint");
            return std::nullopt;
        }
        if (r.type == kCheckpointEnd) return std::optional<uint64_t>(US_TRY(commit(d)));
        digest_.add(r.type, r.body);
        US_TRYV(feed_open(r, d));
        return std::nullopt;
    }();
    if (!result) abort_open_checkpoint();
    return result;
}

Result<void> BackupReplica::feed_open(const Record& r, Decoder& d) {
    if (r.type & kRecordOptional) return {};
    if (r.type != kPages && r.type != kVcpuState && r.type != kVmState && r.type != kDeviceState && r.type != kDiskBlocks &&
        r.type != kDiskZero && r.type != kDiskDigests)
        return stream_error("unknown mandatory record type " + std::to_string(r.type));
    uint64_t epoch = US_TRY(d.u64());
    if (epoch != open_epoch_)
        return stream_error(std::string(record_type_name(r.type)) + " record of epoch " + std::to_string(epoch) +
                            " inside checkpoint " + std::to_string(open_epoch_));
    auto rest = std::span(r.body).subspan(8);
    switch (r.type) {
    case kPages: {
        size_t before = staged_.indices.size();
        US_TRYV(decoder_->decode(rest, [this](uint64_t i) { return base_page(i); }, staged_));
        fold_staged_from(before);
        // A replica that holds no checkpoint yet has nothing to protect: the first one's
        // pages go straight into it, batch by batch (one torn leaves no committed
        // checkpoint, as before). Staging it would hold up to a second copy of guest
        // memory and copy all of it again at the END: for 4 GiB, a stall of the whole
        // backup long enough to miss heartbeats (bench/bench_heartbeat).
        if (!has_committed_) apply_staged();
        return {};
    }
    case kVcpuState: {
        uint32_t index = US_TRY(d.u32());
        if (US_TRY(d.u32()) != 0) return stream_error("VCPU_STATE's reserved word is not zero");
        if (index >= vcpus_) return stream_error("vCPU state for vCPU " + std::to_string(index) + " of " + std::to_string(vcpus_));
        if (staged_vcpu_[index]) return stream_error("vCPU " + std::to_string(index) + " sent twice in one checkpoint");
        if (staged_state_.vcpus.size() < vcpus_) staged_state_.vcpus.resize(vcpus_);
        staged_state_.vcpus[index] = US_TRY(hv::decode_vcpu_state(rest.subspan(8)));
        staged_vcpu_[index] = true;
        return {};
    }
    case kVmState:
        if (staged_vm_) return stream_error("VM state sent twice in one checkpoint");
        US_TRYV(hv::decode_vm_clock(rest, staged_state_));
        staged_vm_ = true;
        return {};
    case kDiskBlocks:
    case kDiskZero:
    case kDiskDigests: return feed_disk(r, rest);
    case kDeviceState:
        if (auto added = hv::add_device_state(staged_state_.devices, US_TRY(hv::decode_device_state(rest))); !added)
            return stream_error(added.error().message + " in one checkpoint");
        return {};
    default: break;
    }
    return stream_error("unknown mandatory record type " + std::to_string(r.type));
}

// Like pages, a replica that holds no checkpoint takes the first one's blocks straight onto
// its disks; later checkpoints are staged until their END.
Result<void> BackupReplica::feed_disk(const Record& r, std::span<const uint8_t> body) {
    if (r.type == kDiskDigests) {
        if (!(open_flags_ & kCheckpointInitial)) return stream_error("DISK_DIGESTS outside the initial checkpoint");
        const DiskDigests digests = US_TRY(decode_disk_digests(body, session_disks_));
        reply_ = Record{kDiskWant, encode_disk_want(US_TRY(disks_->compare(digests, session_id_)))};
        return {};
    }
    if (r.type == kDiskZero) {
        if (!(open_flags_ & kCheckpointInitial)) return stream_error("DISK_ZERO outside the initial checkpoint");
        const DiskZero z = US_TRY(decode_disk_zero(body, session_disks_));
        return has_committed_ ? disks_->stage(z) : disks_->write(z);
    }
    US_TRYV(decode_disk_blocks(body, session_id_, session_disks_, disk_blocks_));
    return has_committed_ ? disks_->stage(disk_blocks_, open_flags_ & kCheckpointInitial) : disks_->write(disk_blocks_);
}

Result<uint64_t> BackupReplica::commit(Decoder& d) {
    uint64_t epoch = US_TRY(d.u64());
    uint64_t records = US_TRY(d.u64());
    uint64_t digest = US_TRY(d.u64());
    if (!d.done()) return stream_error("CHECKPOINT_END body has " + std::to_string(d.remaining() + 24) + " bytes, expected 24");
    if (epoch != open_epoch_) return stream_error("CHECKPOINT_END for epoch " + std::to_string(epoch) + " closes checkpoint " + std::to_string(open_epoch_));
    if (records != digest_.records())
        return stream_error("checkpoint " + std::to_string(epoch) + " announced " + std::to_string(records) + " records, " +
                            std::to_string(digest_.records()) + " arrived");
    if (digest != digest_.value()) return stream_error("checkpoint " + std::to_string(epoch) + " fails its digest");
    if (!staged_vm_) return stream_error("checkpoint " + std::to_string(epoch) + " has no VM state");
    for (uint32_t i = 0; i < vcpus_; ++i)
        if (!staged_vcpu_[i]) return stream_error("checkpoint " + std::to_string(epoch) + " lacks vCPU " + std::to_string(i));

    // Everything is verified: apply, disks first. Only their writes can fail, and then the
    // replica is neither checkpoint: it says so, and never promotes.
    if (disks_) {
        const bool initial = open_flags_ & kCheckpointInitial;
        auto w = [&]() -> Result<void> {
            if (has_committed_) {
                if (initial) US_TRYV(disks_->begin_sync());
                US_TRYV(disks_->apply_staged());
            }
            return initial ? disks_->synced(session_disks_) : disks_->sync_if_asked();
        }();
        if (!w) {
            disk_failure_ = "writing checkpoint " + std::to_string(epoch) + " to the backup's disks failed (" +
                            w.error().describe() + "): the disks hold part of it";
            return make_error(Errc::system, *disk_failure_);
        }
    }
    apply_staged();
    committed_disks_ = session_disks_;
    state_ = std::move(staged_state_);
    differing_state_ = 0;
    committed_epoch_ = epoch;
    committed_config_ = session_config_;
    committed_session_ = session_id_;
    has_committed_ = true;
    ++stats_.checkpoints_committed;
    stats_.committed_epoch = epoch;
    open_ = false; // committed, not rejected
    abort_open_checkpoint();
    return epoch;
}

VerifyOutcome BackupReplica::verify(const VerifySlice& s) {
    auto o = compare_slice(s, memory_, state_, has_committed_ && !open_ ? committed_epoch_ : 0);
    if (o.other_checkpoint) return o;
    for (uint64_t p = s.first_page; p < s.first_page + s.pages.size(); ++p) differing_pages_.erase(p);
    differing_pages_.insert(o.differing_pages.begin(), o.differing_pages.end());
    differing_state_ = o.state_differs;
    return o;
}

std::optional<std::string> BackupReplica::known_difference() const {
    if (disk_failure_) return disk_failure_;
    if (differing_pages_.empty() && differing_state_ == 0) return std::nullopt;
    std::string s = "online verification found this replica different from its primary at checkpoint " +
                    std::to_string(committed_epoch_) + ":";
    if (!differing_pages_.empty()) {
        s += " " + pages_text(differing_pages_.size()) + " (first: page index " +
             std::to_string(*differing_pages_.begin()) + ")";
    }
    if (differing_state_) s += std::string(differing_pages_.empty() ? "" : ",") + " the state of " + state_parts(differing_state_);
    return s;
}

} // namespace understudy::replicator
