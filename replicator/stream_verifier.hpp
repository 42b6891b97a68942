// An independent check of a captured replication stream (`understudy backup --capture`)
// against docs/wire-format.md, docs/records.md, docs/snapshot-format.md and the batch
// layout of replicator/README.md. It re-implements the structural rules from those
// documents and shares no parsing code with the backup's reader (BackupReplica,
// PageDecoder) or the primary's writer, so a bug in either shows up here as a violation.
//
// It checks structure only: it holds no guest memory or disk, so it neither decompresses
// LZ4 payloads nor verifies page or disk block checks (SAME and XOR_LZ4 pages refer to
// content it does not have) or the chunk digests of DISK_DIGESTS. Input is read record by
// record; a capture of any size needs at most one record (64 MiB) in memory.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace understudy::replicator {

struct StreamViolation {
    uint64_t offset = 0;        // byte offset of the offending bytes in the stream
    uint64_t record_offset = 0; // start of the record that holds them (offset for the header)
    std::string message;
};

struct StreamReport {
    // From the stream header (valid once header_read).
    bool header_read = false;
    uint32_t version = 0;
    uint64_t memory_bytes = 0;
    uint32_t vcpus = 0;
    uint64_t session_id = 0;
    uint32_t disks = 0;                 // the header's disk count
    std::vector<uint64_t> disk_sizes;   // bytes, from the DISKS record

    uint64_t bytes = 0;   // bytes examined: up to the violation, or the whole input
    uint64_t records = 0; // whole records read (the header is not one)
    uint64_t checkpoints = 0; // complete checkpoints (BEGIN .. a matching END)
    std::optional<uint64_t> first_epoch, last_epoch; // of complete checkpoints
    bool first_initial = false; // the first checkpoint carried the initial synchronization
    uint64_t page_records = 0;
    uint64_t pages = 0;
    std::array<uint64_t, 5> pages_by_encoding{}; // ZERO, SAME, XOR_LZ4, LZ4, RAW
    uint64_t payload_bytes = 0;                  // page payload bytes, encoded
    uint64_t disk_block_records = 0;             // DISK_BLOCKS records
    std::array<uint64_t, 2> disk_records_by_encoding{}; // of them: raw, LZ4
    uint64_t disk_blocks = 0;                    // 4 KiB blocks they carry
    uint64_t disk_data_bytes = 0;                // their data bytes, encoded
    uint64_t disk_zero_ranges = 0;               // DISK_ZERO records
    uint64_t disk_zero_blocks = 0;               // blocks they cover
    uint64_t disk_digest_records = 0;            // DISK_DIGESTS records
    uint64_t disk_digest_chunks = 0;             // 256 KiB chunks they compare
    uint64_t device_states = 0;
    uint64_t heartbeats = 0;
    uint64_t verify_slices = 0;    // VERIFY records (online verification)
    uint64_t optional_records = 0; // unknown optional records, skipped

    // The input ended inside a checkpoint or a record: a torn tail, not a violation.
    std::optional<uint64_t> torn_epoch;    // "ends inside checkpoint N"
    uint64_t torn_checkpoint_offset = 0;   // where its CHECKPOINT_BEGIN starts
    uint64_t torn_checkpoint_records = 0;  // records of it that arrived, BEGIN included
    std::optional<uint64_t> torn_record;   // offset of an incomplete last record
    bool ends_before_disks = false;        // the header announces disks; nothing follows it

    std::optional<StreamViolation> violation; // the first one; checking stops there

    bool valid() const { return !violation.has_value(); }
};

// Where the bytes come from. read() returns how many bytes it put into out: fewer than
// out.size() only at the end of the input.
class StreamSource {
public:
    virtual ~StreamSource() = default;
    virtual Result<size_t> read(std::span<uint8_t> out) = 0;
};

// Verifies a whole stream; an Error only when the source fails (never for bad content,
// which is the report's violation).
Result<StreamReport> verify_stream(StreamSource& in);
StreamReport verify_stream(std::span<const uint8_t> bytes);
// Reads the file in chunks, record by record.
Result<StreamReport> verify_stream_file(const std::string& path);

// The report in words, one item per line, for `understudy verify-stream`.
std::string format_report(const StreamReport& r);

} // namespace understudy::replicator
