// The replication stream, version 2 (docs/wire-format.md): a fixed stream header from
// the primary, then framed records (common/records.hpp) in both directions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/records.hpp"

namespace understudy::replicator {

inline constexpr uint32_t kWireVersion = 2;

struct StreamHeader {
    char magic[8];          // 0: "USREPL\r\n"
    uint32_t version;       // 8: kWireVersion
    uint32_t page_size;     // 12: 4096
    uint64_t memory_bytes;  // 16: guest RAM
    uint32_t vcpus;         // 24
    uint32_t flags;         // 28: kStreamFlag*; other bits reserved and 0
    uint64_t layout_digest; // 32: XXH3-64 of the RAM regions' (gpa, size) pairs
    uint64_t session_id;    // 40: random per connection; also seeds the page hashes
    uint64_t config_digest; // 48: the VM's configuration (hv::Vm::config_digest)
    uint32_t disks;         // 56: disks replicated with memory; a DISKS record follows when non-zero
    uint32_t reserved;      // 60: 0
};
static_assert(std::is_standard_layout_v<StreamHeader> && sizeof(StreamHeader) == 64);

// A control connection carrying heartbeats follows the ACCEPT (replicator/control_link.hpp).
inline constexpr uint32_t kStreamFlagControl = 1;
// Disks a stream may carry.
inline constexpr uint32_t kMaxDisks = 16;

StreamHeader make_stream_header(uint64_t memory_bytes, uint32_t vcpus, uint64_t layout_digest, uint64_t config_digest,
                                uint64_t session_id, uint32_t flags = 0, uint32_t disks = 0);
// Checks magic, version, page size, flags and reserved fields (not the VM's shape).
Result<void> check_stream_header(const StreamHeader& h);

// Record types. Bit 31 (kRecordOptional) marks records a reader may skip.
enum RecordType : uint32_t {
    kCheckpointBegin = 1, // primary: u64 epoch, u32 flags, u32 0
    kPages = 2,           // primary: u64 epoch, then one page batch (replicator/README.md)
    kVcpuState = 3,       // primary: u64 epoch, u32 vCPU index, u32 0, vCPU state fields
    kVmState = 4,         // primary: u64 epoch, VM state fields
    kDeviceState = 5,     // primary: u64 epoch, device state fields
    kCheckpointEnd = 6,   // primary: u64 epoch, u64 record count, u64 digest
    kAck = 7,             // backup: u64 epoch, committed
    kAccept = 8,          // backup: u64 committed epoch of a previous session (0: none)
    kReject = 9,          // backup: reason text; the connection then closes
    kHeartbeat = kRecordOptional | 10, // either side: u64 sequence, u64 sender clock ns
    kGoodbye = 11,        // control connection, primary: replication ends on purpose; empty
    // Planned switchover, control connection (optional: a backup that does not know them
    // skips HANDOVER and the primary, left without an answer, runs on as before).
    kHandover = kRecordOptional | 12,       // primary: u64 epoch, the last checkpoint, acknowledged
    kHandoverAccept = kRecordOptional | 13, // backup: u64 epoch; it takes over from that checkpoint
    // Online verification, checkpoint stream, between checkpoints (replicator/verification.hpp).
    kVerify = kRecordOptional | 14,       // primary: digests of the VM at the checkpoint just ended
    kVerifyResult = kRecordOptional | 15, // backup: the same digests over its replica, compared
    // Disks (replicator/disk_records.hpp).
    kDisks = 16,      // primary, right after the stream header: each disk's size, flags and identity
    kDiskBlocks = 17, // primary: u64 epoch, then one batch of a disk's 4 KiB blocks
    kDiskZero = 18,   // primary, initial checkpoint: u64 epoch, a range of a disk's blocks that reads as zeros
    kDiskDigests = 19, // primary, initial checkpoint: u64 epoch, digests of a range of a disk's chunks
    kDiskWant = 20,    // backup, answering each DISK_DIGESTS: which of those chunks differ from its copy
};

inline constexpr uint32_t kCheckpointInitial = 1; // CHECKPOINT_BEGIN flag: carries the initial synchronization

const char* record_type_name(uint32_t type);

// The running digest that CHECKPOINT_END carries: XXH3-64 over one u64 per record
// between BEGIN and END, in order: the record's body checksum XOR its type.
class CheckpointDigest {
public:
    void add(uint32_t type, std::span<const uint8_t> body);
    void add_checksum(uint32_t type, uint64_t body_checksum) { checksums_.push_back(body_checksum ^ type); }
    uint64_t value() const;
    uint64_t records() const { return checksums_.size(); }
    void clear() { checksums_.clear(); }

private:
    std::vector<uint64_t> checksums_;
};

// Bodies of the small records.
std::vector<uint8_t> encode_u64s(std::initializer_list<uint64_t> v);

} // namespace understudy::replicator
