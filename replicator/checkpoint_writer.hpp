// Turns one checkpoint into records on the wire: BEGIN, page batches encoded by the
// PageEncoder, vCPU/VM/device state, END with the record count and running digest.
// Records are gathered into large sends. Used by the initial synchronization and by
// the primary's sender thread, one checkpoint at a time.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "hv/vcpu_state.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/transport.hpp"
#include "replicator/wire.hpp"

namespace understudy::replicator {

// One disk's blocks in a checkpoint: each block once, its newest copy.
struct DiskBlockSet {
    std::map<uint64_t, uint32_t> slot; // block index -> its 4 KiB at data[slot * 4096]
    std::vector<uint8_t> data;
    // Where the block's copy goes (a block copied again replaces its earlier copy).
    uint8_t* place(uint64_t block);
    void clear() {
        slot.clear();
        data.clear();
    }
};

struct WriterStats {
    uint64_t pages = 0;
    uint64_t disk_blocks = 0;
    uint64_t raw_bytes = 0;  // page bytes before encoding
    uint64_t wire_bytes = 0; // every byte sent, framing included
    uint64_t encode_ns = 0;
    uint64_t transmit_ns = 0;
    CodecStats codec;
};

class CheckpointWriter {
public:
    // `seed`: the session id, which binds disk blocks to the session (page checks take
    // theirs from the encoder).
    CheckpointWriter(Connection& conn, PageEncoder& encoder, size_t batch_pages, uint64_t seed)
        : conn_(conn), encoder_(encoder), batch_pages_(batch_pages), seed_(seed) {}

    Result<void> begin(uint64_t epoch, uint32_t flags);
    // `indices[i]` names the page whose 4096 bytes start at pages[i * 4096].
    Result<void> pages(std::span<const uint64_t> indices, std::span<const uint8_t> pages);
    // Blocks of disk `disk`, `blocks` strictly increasing, their data at 4 KiB each.
    Result<void> disk_blocks(uint32_t disk, std::span<const uint64_t> blocks, std::span<const uint8_t> data);
    Result<void> disk_blocks(uint32_t disk, const DiskBlockSet& set);
    Result<void> disk_zero(const DiskZero& z);
    Result<void> disk_digests(const DiskDigests& d);
    // Sends what is gathered now (records are otherwise gathered into large sends).
    Result<void> flush();
    Result<void> state(const hv::VmState& s);
    // Writes END and flushes everything; returns this checkpoint's figures.
    Result<WriterStats> end();

private:
    Result<void> record(uint32_t type, std::span<const uint8_t> body);
    // Frames the record whose body follows out_[at] (open_record), adds it to the digest.
    Result<void> close(uint32_t type, size_t at);

    Connection& conn_;
    PageEncoder& encoder_;
    size_t batch_pages_;
    uint64_t seed_;
    uint64_t epoch_ = 0;
    CheckpointDigest digest_;
    std::vector<uint8_t> out_;   // framed records not yet sent
    std::vector<uint8_t> body_;  // scratch for one record body
    std::vector<uint8_t> lz4_state_;
    std::vector<uint64_t> gather_blocks_; // scratch: a DiskBlockSet's blocks in order
    std::vector<uint8_t> gather_data_;
    WriterStats stats_;
};

} // namespace understudy::replicator
