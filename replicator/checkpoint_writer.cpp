#include "replicator/checkpoint_writer.hpp"

#include <chrono>

#include "common/clock.hpp"
#include "common/codec.hpp"

namespace understudy::replicator {

namespace {
constexpr size_t kSendChunk = 4u << 20; // gather about this much before each send
} // namespace

Result<void> CheckpointWriter::record(uint32_t type, std::span<const uint8_t> body) {
    const size_t at = open_record(out_);
    out_.insert(out_.end(), body.begin(), body.end());
    return close(type, at);
}

Result<void> CheckpointWriter::close(uint32_t type, size_t at) {
    if (out_.size() - at - sizeof(RecordHeader) > kMaxRecordLength) {
        out_.resize(at);
        return make_error(Errc::state, "a record body exceeds the maximum record length");
    }
    const uint64_t sum = close_record(out_, at, type); // one hash for the header and the digest
    if (type != kCheckpointBegin && type != kCheckpointEnd) digest_.add_checksum(type, sum);
    if (out_.size() >= kSendChunk) US_TRYV(flush());
    return {};
}

Result<void> CheckpointWriter::flush() {
    if (out_.empty()) return {};
    uint64_t t0 = now_ns();
    std::span<const uint8_t> one(out_);
    US_TRYV(conn_.send({&one, 1}));
    stats_.transmit_ns += now_ns() - t0;
    stats_.wire_bytes += out_.size();
    out_.clear();
    return {};
}

Result<void> CheckpointWriter::begin(uint64_t epoch, uint32_t flags) {
    epoch_ = epoch;
    digest_.clear();
    stats_ = {};
    body_.clear();
    Encoder e(body_);
    e.u64(epoch);
    e.u32(flags);
    e.u32(0);
    return record(kCheckpointBegin, body_);
}

Result<void> CheckpointWriter::pages(std::span<const uint64_t> indices, std::span<const uint8_t> data) {
    for (size_t first = 0; first < indices.size(); first += batch_pages_) {
        size_t n = std::min(batch_pages_, indices.size() - first);
        // Encoded straight into the send buffer: a page batch is most of what is sent.
        const size_t at = open_record(out_);
        Encoder(out_).u64(epoch_);
        uint64_t t0 = now_ns();
        auto cs = encoder_.encode(indices.subspan(first, n), data.subspan(first * 4096, n * 4096), out_);
        if (!cs) {
            out_.resize(at);
            return std::move(cs.error());
        }
        stats_.encode_ns += now_ns() - t0;
        for (size_t k = 0; k < stats_.codec.pages.size(); ++k) stats_.codec.pages[k] += cs->pages[k];
        stats_.codec.raw_bytes += cs->raw_bytes;
        stats_.codec.encoded_bytes += cs->encoded_bytes;
        stats_.pages += n;
        stats_.raw_bytes += n * 4096;
        US_TRYV(close(kPages, at));
    }
    return {};
}

uint8_t* DiskBlockSet::place(uint64_t block) {
    auto [it, added] = slot.try_emplace(block, uint32_t(slot.size()));
    if (added) data.resize(data.size() + hv::kDiskBlockBytes);
    return data.data() + uint64_t(it->second) * hv::kDiskBlockBytes;
}

Result<void> CheckpointWriter::disk_blocks(uint32_t disk, std::span<const uint64_t> blocks, std::span<const uint8_t> data) {
    constexpr uint64_t kBlock = hv::kDiskBlockBytes;
    for (size_t first = 0; first < blocks.size(); first += kMaxDiskBlocksPerRecord) {
        const size_t n = std::min<size_t>(kMaxDiskBlocksPerRecord, blocks.size() - first);
        body_.clear();
        Encoder(body_).u64(epoch_);
        uint64_t t0 = now_ns();
        encode_disk_blocks(disk, blocks.subspan(first, n), data.subspan(first * kBlock, n * kBlock), seed_, lz4_state_, body_);
        stats_.encode_ns += now_ns() - t0;
        stats_.disk_blocks += n;
        stats_.raw_bytes += n * kBlock;
        US_TRYV(record(kDiskBlocks, body_));
    }
    return {};
}

Result<void> CheckpointWriter::disk_blocks(uint32_t disk, const DiskBlockSet& set) {
    // In block order, as the record wants, a record's worth at a time.
    auto it = set.slot.begin();
    while (it != set.slot.end()) {
        gather_blocks_.clear();
        gather_data_.clear();
        for (; it != set.slot.end() && gather_blocks_.size() < kMaxDiskBlocksPerRecord; ++it) {
            gather_blocks_.push_back(it->first);
            const uint8_t* p = set.data.data() + uint64_t(it->second) * hv::kDiskBlockBytes;
            gather_data_.insert(gather_data_.end(), p, p + hv::kDiskBlockBytes);
        }
        US_TRYV(disk_blocks(disk, gather_blocks_, gather_data_));
    }
    return {};
}

Result<void> CheckpointWriter::disk_zero(const DiskZero& z) {
    body_.clear();
    Encoder(body_).u64(epoch_);
    encode_disk_zero(z, body_);
    return record(kDiskZero, body_);
}

Result<void> CheckpointWriter::disk_digests(const DiskDigests& d) {
    body_.clear();
    Encoder(body_).u64(epoch_);
    encode_disk_digests(d, body_);
    return record(kDiskDigests, body_);
}

Result<void> CheckpointWriter::state(const hv::VmState& s) {
    for (uint32_t i = 0; i < s.vcpus.size(); ++i) {
        body_.clear();
        Encoder e(body_);
        e.u64(epoch_);
        e.u32(i);
        e.u32(0);
        hv::encode_vcpu_state(s.vcpus[i], body_);
        US_TRYV(record(kVcpuState, body_));
    }
    body_.clear();
    Encoder(body_).u64(epoch_);
    hv::encode_vm_clock(s, body_);
    US_TRYV(record(kVmState, body_));
    for (const auto& d : s.devices) {
        body_.clear();
        Encoder(body_).u64(epoch_);
        hv::encode_device_state(d, body_);
        US_TRYV(record(kDeviceState, body_));
    }
    return {};
}

Result<WriterStats> CheckpointWriter::end() {
    auto body = encode_u64s({epoch_, digest_.records(), digest_.value()});
    US_TRYV(record(kCheckpointEnd, body));
    US_TRYV(flush());
    return stats_;
}

} // namespace understudy::replicator
