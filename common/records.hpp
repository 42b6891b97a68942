// Record framing shared by the snapshot file and the replication stream (after Xen's
// migration stream v2): a 16-byte header {u32 type; u32 length; u64 xxh3(body)}, then
// the body, zero-padded to a multiple of 8. Bit 31 of the type marks a record that a
// reader may skip when it does not know it; an unknown record without it is an error.
// Spec: docs/records.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/unique_fd.hpp"

namespace understudy {

struct RecordHeader {
    uint32_t type;     // 0
    uint32_t length;   // 4: body bytes, padding excluded
    uint64_t checksum; // 8: XXH3-64 of the body
};
static_assert(std::is_standard_layout_v<RecordHeader> && sizeof(RecordHeader) == 16);

inline constexpr uint32_t kRecordOptional = 0x80000000u;
inline constexpr uint32_t kMaxRecordLength = 64u << 20;

uint64_t checksum64(std::span<const uint8_t> bytes);

// Appends one framed record to out.
void append_record(std::vector<uint8_t>& out, uint32_t type, std::span<const uint8_t> body);

// The same in two steps, for a body written straight into out (no copy of it): open_record
// leaves room for the header and returns where it starts; close_record, once the body
// follows it, writes the header and the padding and returns the body's checksum.
size_t open_record(std::vector<uint8_t>& out);
uint64_t close_record(std::vector<uint8_t>& out, size_t at, uint32_t type);

// Buffered, checked writing to a file descriptor.
class FileWriter {
public:
    // Creates path.partial; commit() fsyncs and renames it over path, so a crash never
    // leaves a half-written file under the real name.
    static Result<FileWriter> create(const std::string& path);
    Result<void> write(std::span<const uint8_t> bytes);
    Result<void> record(uint32_t type, std::span<const uint8_t> body);
    Result<void> commit();
    ~FileWriter();
    FileWriter(FileWriter&&) = default;

private:
    FileWriter(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
    Result<void> flush();
    UniqueFd fd_;
    std::string path_;
    std::vector<uint8_t> buf_;
    bool committed_ = false;
};

struct Record {
    uint32_t type;
    std::vector<uint8_t> body;
};

class FileReader {
public:
    static Result<FileReader> open(const std::string& path);
    // Reads exactly out.size() bytes; a short file is an error naming `what`.
    Result<void> read_exact(std::span<uint8_t> out, const char* what);
    // Reads one record, verifying its length bound, checksum and padding.
    Result<Record> record();
    uint64_t offset() const { return offset_; }

private:
    explicit FileReader(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
    UniqueFd fd_;
    std::string path_;
    uint64_t offset_ = 0;
};

} // namespace understudy
