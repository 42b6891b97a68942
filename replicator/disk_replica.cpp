#include "replicator/disk_replica.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/file_io.hpp"

namespace understudy::replicator {

namespace {
constexpr uint64_t kBlock = hv::kDiskBlockBytes;
// Queue depth of the files' io_uring: the replica writes with pwrite, not through the ring.
constexpr unsigned kRingDepth = 4;
} // namespace

Result<std::unique_ptr<DiskReplica>> DiskReplica::open(DiskReplicaConfig cfg) {
    if (cfg.paths.size() > kMaxDisks)
        return make_error(Errc::invalid_input, std::to_string(cfg.paths.size()) + " disks; at most " + std::to_string(kMaxDisks));
    std::unique_ptr<DiskReplica> r(new DiskReplica(std::move(cfg)));
    for (const auto& path : r->cfg_.paths) {
        auto f = hv::virtio::DiskFile::open(path, false, kRingDepth);
        if (!f) return std::move(f.error()).wrap("the backup's disk " + std::to_string(r->files_.size()));
        r->files_.push_back(std::move(*f));
    }
    r->dirty_.assign(r->files_.size(), false);
    for (const auto& path : r->cfg_.paths) r->identity_.push_back(US_TRY(hv::read_identity(path)));
    return r;
}

Result<void> DiskReplica::check(std::span<const DiskInfo> primary) const {
    if (primary.size() != files_.size())
        return make_error(Errc::invalid_input, "the primary's VM has " + std::to_string(primary.size()) + " disks, this backup " +
                                                   std::to_string(files_.size()) + " (give the backup one --disk per disk of the primary, in the same order)");
    for (size_t i = 0; i < files_.size(); ++i)
        if (primary[i].size_bytes != files_[i]->size_bytes())
            return make_error(Errc::invalid_input, "the primary's disk " + std::to_string(i) + " has " +
                                                       std::to_string(primary[i].size_bytes) + " bytes, this backup's " +
                                                       files_[i]->path() + " " + std::to_string(files_[i]->size_bytes()));
    for (size_t i = 0; i < files_.size(); ++i)
        if (auto why = hv::sync_refusal(primary[i].identity, identity_[i], files_[i]->path()))
            return make_error(Errc::invalid_input, "disk " + std::to_string(i) + ": " + *why);
    return {};
}

Result<DiskWant> DiskReplica::compare(const DiskDigests& d, uint64_t seed) {
    const auto& f = *files_[d.disk];
    DiskWant w{d.disk, d.first_chunk, std::vector<bool>(d.digests.size())};
    std::vector<uint8_t> chunk(kDiskChunkBytes);
    for (size_t i = 0; i < d.digests.size(); ++i) {
        if (auto r = pread_full(f.fd(), (d.first_chunk + i) * kDiskChunkBytes, chunk); !r)
            return std::move(r.error()).wrap("the disk " + f.path());
        w.differs[i] = chunk_digest(chunk, seed) != d.digests[i];
    }
    return w;
}

Result<void> DiskReplica::begin_sync() {
    for (size_t i = 0; i < files_.size(); ++i) {
        if (identity_[i] && !identity_[i]->consistent) continue;
        hv::DiskIdentity id = identity_[i].value_or(hv::DiskIdentity{});
        id.consistent = false;
        US_TRYV(hv::write_identity(files_[i]->path(), id));
        identity_[i] = id;
    }
    return {};
}

Result<void> DiskReplica::synced(std::span<const DiskInfo> primary) {
    for (size_t i = 0; i < files_.size(); ++i) {
        // Durable before the identity says so: a whole disk of that generation.
        if (::fdatasync(files_[i]->fd()) < 0) return sys_error("fdatasync of the disk " + files_[i]->path());
        hv::DiskIdentity id = primary[i].identity;
        id.consistent = true;
        US_TRYV(hv::write_identity(files_[i]->path(), id));
        identity_[i] = id;
    }
    return {};
}

void DiskReplica::discard_staged() {
    slot_.clear();
    zeros_.clear();
    // Memory stays allocated for the next checkpoint, up to the bound; the spill file is
    // truncated so that a burst does not keep its disk space.
    if (spill_.valid() && ::ftruncate(spill_.get(), 0) < 0) spill_.reset();
}

Result<uint8_t*> DiskReplica::staged_slot(uint32_t disk, uint64_t block, bool repeats, bool& spilled, uint64_t& slot) {
    auto [it, added] = slot_.try_emplace({disk, block}, slot_.size());
    if (!added && !repeats)
        return make_error(Errc::invalid_input, "replication stream: block " + std::to_string(block) + " of disk " +
                                                   std::to_string(disk) + " sent twice in one checkpoint");
    slot = it->second;
    const uint64_t memory_slots = cfg_.staging_memory / kBlock;
    spilled = slot >= memory_slots;
    if (spilled) {
        if (!spill_.valid()) {
            spill_ = UniqueFd(::open(cfg_.spill_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
            if (!spill_.valid() && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
                // A file system without O_TMPFILE (9p, some FUSE): a named file, unlinked at once.
                std::string name = cfg_.spill_dir + "/understudy-spill-XXXXXX";
                spill_ = UniqueFd(::mkostemp(name.data(), O_CLOEXEC));
                if (spill_.valid()) ::unlink(name.c_str());
            }
            if (!spill_.valid()) {
                if (added) slot_.erase(it);
                return sys_error("creating the disk staging spill file in " + cfg_.spill_dir);
            }
        }
        return nullptr;
    }
    if (memory_.size() < (slot + 1) * kBlock)
        memory_.resize(std::min(memory_slots * kBlock, std::max<uint64_t>((slot + 1) * kBlock, memory_.size() * 2)));
    return memory_.data() + slot * kBlock;
}

Result<void> DiskReplica::stage(const DiskBlocks& b, bool repeats) {
    const uint64_t memory_slots = cfg_.staging_memory / kBlock;
    for (size_t i = 0; i < b.blocks.size(); ++i) {
        bool spilled = false;
        uint64_t slot = 0;
        uint8_t* dst = US_TRY(staged_slot(b.disk, b.blocks[i], repeats, spilled, slot));
        const uint8_t* src = b.data.data() + i * kBlock;
        if (!spilled) {
            std::memcpy(dst, src, kBlock);
            continue;
        }
        if (auto w = pwrite_full(spill_.get(), (slot - memory_slots) * kBlock, {src, kBlock}); !w)
            return std::move(w.error()).wrap("disk staging spill file");
        ++stats_.spilled_blocks;
    }
    return {};
}

Result<void> DiskReplica::stage(const DiskZero& z) {
    slot_.erase(slot_.lower_bound({z.disk, z.first_block}), slot_.lower_bound({z.disk, z.first_block + z.blocks}));
    zeros_.push_back(z);
    return {};
}

Result<void> DiskReplica::write_block(uint32_t disk, uint64_t block, const uint8_t* data) {
    const auto& f = *files_[disk];
    const uint64_t off = block * kBlock;
    const uint64_t len = std::min<uint64_t>(kBlock, f.size_bytes() - off); // the last block may be short
    if (auto w = pwrite_full(f.fd(), off, {data, len}); !w) return std::move(w.error()).wrap("the disk " + f.path());
    dirty_[disk] = true;
    ++stats_.blocks_applied;
    stats_.bytes_applied += len;
    return {};
}

Result<void> DiskReplica::write(const DiskBlocks& b) {
    for (size_t i = 0; i < b.blocks.size(); ++i) US_TRYV(write_block(b.disk, b.blocks[i], b.data.data() + i * kBlock));
    return {};
}

Result<void> DiskReplica::write(const DiskZero& z) {
    const auto& f = *files_[z.disk];
    const uint64_t off = z.first_block * kBlock;
    const uint64_t len = std::min<uint64_t>(z.blocks * kBlock, f.size_bytes() - off);
    if (auto w = zero_range(f.fd(), off, len); !w) return std::move(w.error()).wrap("the disk " + f.path());
    dirty_[z.disk] = true;
    ++stats_.zero_ranges;
    return {};
}

Result<void> DiskReplica::apply_staged() {
    for (const DiskZero& z : zeros_) US_TRYV(write(z));
    const uint64_t memory_slots = cfg_.staging_memory / kBlock;
    std::vector<uint8_t> spilled(kBlock);
    for (const auto& [key, slot] : slot_) { // in disk and block order: sequential writes
        const uint8_t* data = memory_.data() + slot * kBlock;
        if (slot >= memory_slots) {
            if (auto r = pread_full(spill_.get(), (slot - memory_slots) * kBlock, spilled); !r)
                return std::move(r.error()).wrap("disk staging spill file");
            data = spilled.data();
        }
        US_TRYV(write_block(key.first, key.second, data));
    }
    discard_staged();
    return sync_if_asked();
}

Result<void> DiskReplica::sync_if_asked() {
    if (!cfg_.sync_before_ack) return {};
    for (size_t i = 0; i < files_.size(); ++i) {
        if (!dirty_[i]) continue;
        if (::fdatasync(files_[i]->fd()) < 0) return sys_error("fdatasync of the disk " + files_[i]->path());
        dirty_[i] = false;
        ++stats_.syncs;
    }
    return {};
}

} // namespace understudy::replicator
