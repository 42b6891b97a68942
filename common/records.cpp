#include "common/records.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>
#include <xxh_x86dispatch.h> // XXH3 on the widest vector unit the CPU has (same values)

#include <cstdio>
#include <cstring>

namespace understudy {

uint64_t checksum64(std::span<const uint8_t> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

static size_t padding(size_t len) { return (8 - len % 8) % 8; }

void append_record(std::vector<uint8_t>& out, uint32_t type, std::span<const uint8_t> body) {
    size_t at = open_record(out);
    out.insert(out.end(), body.begin(), body.end());
    close_record(out, at, type);
}

size_t open_record(std::vector<uint8_t>& out) {
    size_t at = out.size();
    out.resize(at + sizeof(RecordHeader));
    return at;
}

uint64_t close_record(std::vector<uint8_t>& out, size_t at, uint32_t type) {
    const size_t length = out.size() - at - sizeof(RecordHeader);
    RecordHeader h{type, static_cast<uint32_t>(length), checksum64({out.data() + at + sizeof h, length})};
    std::memcpy(out.data() + at, &h, sizeof h);
    out.insert(out.end(), padding(length), 0);
    return h.checksum;
}

Result<FileWriter> FileWriter::create(const std::string& path) {
    std::string tmp = path + ".partial";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) return sys_error("creating " + tmp);
    return FileWriter(std::move(fd), path);
}

FileWriter::~FileWriter() {
    if (fd_.valid() && !committed_) ::unlink((path_ + ".partial").c_str());
}

Result<void> FileWriter::flush() {
    size_t done = 0;
    while (done < buf_.size()) {
        ssize_t n = ::write(fd_.get(), buf_.data() + done, buf_.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("writing " + path_ + ".partial");
        done += static_cast<size_t>(n);
    }
    buf_.clear();
    return {};
}

Result<void> FileWriter::write(std::span<const uint8_t> bytes) {
    buf_.insert(buf_.end(), bytes.begin(), bytes.end());
    if (buf_.size() >= (4u << 20)) US_TRYV(flush());
    return {};
}

Result<void> FileWriter::record(uint32_t type, std::span<const uint8_t> body) {
    if (body.size() > kMaxRecordLength) return make_error(Errc::invalid_input, "record body exceeds the maximum length");
    append_record(buf_, type, body);
    if (buf_.size() >= (4u << 20)) US_TRYV(flush());
    return {};
}

Result<void> FileWriter::commit() {
    US_TRYV(flush());
    if (::fsync(fd_.get()) < 0) return sys_error("fsync " + path_ + ".partial");
    if (::rename((path_ + ".partial").c_str(), path_.c_str()) < 0) return sys_error("renaming into " + path_);
    committed_ = true;
    return {};
}

Result<FileReader> FileReader::open(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening " + path);
    return FileReader(std::move(fd), path);
}

Result<void> FileReader::read_exact(std::span<uint8_t> out, const char* what) {
    size_t done = 0;
    while (done < out.size()) {
        ssize_t n = ::read(fd_.get(), out.data() + done, out.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("reading " + path_);
        if (n == 0)
            return make_error(Errc::invalid_input, path_ + ": truncated at offset " + std::to_string(offset_ + done) +
                                                       " while reading " + what);
        done += static_cast<size_t>(n);
    }
    offset_ += done;
    return {};
}

Result<Record> FileReader::record() {
    RecordHeader h;
    uint64_t at = offset_;
    US_TRYV(read_exact({reinterpret_cast<uint8_t*>(&h), sizeof h}, "a record header"));
    if (h.length > kMaxRecordLength)
        return make_error(Errc::invalid_input, path_ + ": record at offset " + std::to_string(at) + " claims " +
                                                   std::to_string(h.length) + " bytes, over the limit");
    Record r{h.type, std::vector<uint8_t>(h.length + padding(h.length))};
    US_TRYV(read_exact(r.body, "a record body"));
    for (size_t i = h.length; i < r.body.size(); ++i)
        if (r.body[i] != 0) return make_error(Errc::invalid_input, path_ + ": record at offset " + std::to_string(at) + " has non-zero padding");
    r.body.resize(h.length);
    if (checksum64(r.body) != h.checksum)
        return make_error(Errc::invalid_input, path_ + ": record at offset " + std::to_string(at) + " (type " +
                                                   std::to_string(h.type) + ") fails its checksum");
    return r;
}

} // namespace understudy
