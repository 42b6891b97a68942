// Shared pieces of the fuzz targets (fuzz/targets/*.cpp). The targets build two ways:
// as libFuzzer binaries under clang (scripts/fuzz.sh) and as replay drivers under the
// normal gcc build (fuzz/replay_main.cpp, ctest fuzz_replay_*); nothing here is
// clang-specific.
//
// Checksums are the fuzzer's wall: a mutated record almost never carries the right
// XXH3 of its body, so every input would stop at the first checksum check. The targets
// therefore take a leading byte of fix-up flags and, when a flag is set, recompute the
// checksums (and digests) the way an honest peer would before handing the bytes to the
// code under test. With the flag clear the bytes go in untouched, so the checksum and
// digest checks themselves are fuzzed too.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "common/records.hpp"

namespace understudy::fuzz {

// Consumes the fuzz input from the front; past the end it yields zeros / empty spans,
// so a target never reads outside the input.
class Input {
public:
    Input(const uint8_t* data, size_t size) : d_(data), n_(size) {}
    size_t remaining() const { return n_ - pos_; }
    template <class T>
    T pod() {
        T v{};
        size_t k = std::min(sizeof v, remaining());
        if (k) std::memcpy(&v, d_ + pos_, k);
        pos_ += k;
        return v;
    }
    uint8_t u8() { return pod<uint8_t>(); }
    uint16_t u16() { return pod<uint16_t>(); }
    uint32_t u32() { return pod<uint32_t>(); }
    uint64_t u64() { return pod<uint64_t>(); }
    std::span<const uint8_t> bytes(size_t n) {
        n = std::min(n, remaining());
        std::span<const uint8_t> s(d_ + pos_, n);
        pos_ += n;
        return s;
    }
    std::span<const uint8_t> rest() { return bytes(remaining()); }

private:
    const uint8_t* d_;
    size_t n_;
    size_t pos_ = 0;
};

inline size_t pad8(size_t n) { return (8 - n % 8) % 8; }

// The disks the `wire` target's backup replicas hold (files in a temporary directory) and
// its seeds with disks describe: 64 KiB (16 blocks) and 10752 bytes (3 blocks, the last
// one partial).
inline constexpr uint64_t kWireDiskBytes[] = {64 * 1024, 10752};

// Walks framed records (docs/records.md) in buf from `offset` and rewrites each header's
// checksum to match its body. Stops at the first record whose length runs past the end.
inline void fix_record_checksums(std::vector<uint8_t>& buf, size_t offset) {
    while (buf.size() - offset >= sizeof(RecordHeader) && offset <= buf.size()) {
        RecordHeader h;
        std::memcpy(&h, buf.data() + offset, sizeof h);
        size_t body = offset + sizeof h;
        if (h.length > buf.size() - body) return;
        h.checksum = checksum64({buf.data() + body, h.length});
        std::memcpy(buf.data() + offset, &h, sizeof h);
        size_t next = body + h.length + pad8(h.length);
        if (next > buf.size()) return;
        offset = next;
    }
}

// A memfd holding `bytes`, reachable by path (/proc/self/fd/N) for readers that open
// files. One per target, reused: contents replaced on each call.
class MemFile {
public:
    explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {}
    ~MemFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    bool ok() const { return fd_ >= 0; }
    // Replaces the contents; false if the kernel refused.
    bool set(std::span<const uint8_t> bytes) {
        if (::ftruncate(fd_, 0) != 0) return false;
        size_t done = 0;
        while (done < bytes.size()) {
            ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
            if (n <= 0) return false;
            done += static_cast<size_t>(n);
        }
        return true;
    }
    std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

private:
    int fd_;
};

// Reports an invariant of the code under test that the input broke, and aborts: libFuzzer
// then keeps the input as a crash, the replay driver fails.
[[noreturn]] void fail(const std::string& what);

// Silences the project's logging (common/log.hpp) once per process: the targets feed garbage
// on purpose and the warnings would drown libFuzzer's output.
void quiet_logs();

} // namespace understudy::fuzz
