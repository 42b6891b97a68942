#include "hv/disk_identity.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include <fmt/format.h>

#include "common/codec.hpp"
#include "common/file_io.hpp"
#include "common/records.hpp"
#include "common/unique_fd.hpp"

namespace understudy::hv {

namespace {

// The file (little-endian, 128 bytes):
//   0 8 magic "USDISKID"; 8 u32 version 1; 12 u32 flags (bit 0: consistent);
//   16 16 disk id; 32 u64 generation; 40 8 × u64 history; 104 u64 reserved 0;
//   112 u64 reserved 0; 120 u64 XXH3-64 of bytes 0..119.
constexpr char kMagic[8] = {'U', 'S', 'D', 'I', 'S', 'K', 'I', 'D'};
constexpr uint32_t kVersion = 1;
constexpr size_t kFileBytes = 128;
constexpr uint32_t kConsistent = 1;

uint64_t random_u64() {
    std::random_device rd;
    uint64_t v = 0;
    while (v == 0) v = (uint64_t(rd()) << 32) | rd();
    return v;
}

} // namespace

bool DiskIdentity::descends_from(uint64_t g) const {
    return g != 0 && std::find(history.begin(), history.end(), g) != history.end();
}

std::string identity_path(const std::string& disk_path) { return disk_path + ".understudy"; }

std::string describe(const DiskIdentity& id) {
    if (!id.known()) return "no identity";
    std::string hex;
    for (uint8_t b : id.disk_id) hex += fmt::format("{:02x}", b);
    return fmt::format("disk {} generation {:016x}{}", hex, id.generation, id.consistent ? "" : " (inconsistent)");
}

Result<std::optional<DiskIdentity>> read_identity(const std::string& disk_path) {
    const std::string path = identity_path(disk_path);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        if (errno == ENOENT) return std::optional<DiskIdentity>{};
        return sys_error("opening " + path);
    }
    uint8_t buf[kFileBytes + 1];
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) return sys_error("reading " + path);
    auto bad = [&](const std::string& why) {
        return make_error(Errc::invalid_input, path + ": " + why + " (remove it to let this disk be treated as unknown)");
    };
    if (n != ssize_t(kFileBytes)) return bad(fmt::format("{} bytes, not the {} of a disk identity", n, kFileBytes));
    if (std::memcmp(buf, kMagic, 8) != 0) return bad("not a disk identity (bad magic)");
    if (checksum64({buf, 120}) != Decoder({buf + 120, 8}, path).u64().value()) return bad("fails its checksum");
    Decoder d({buf + 8, 112}, path);
    const uint32_t version = US_TRY(d.u32());
    if (version != kVersion) return bad(fmt::format("version {} (this build reads version {})", version, kVersion));
    const uint32_t flags = US_TRY(d.u32());
    if (flags & ~kConsistent) return bad("unknown flags");
    DiskIdentity id;
    std::memcpy(id.disk_id.data(), US_TRY(d.bytes(16)).data(), 16);
    id.generation = US_TRY(d.u64());
    for (auto& h : id.history) h = US_TRY(d.u64());
    if (US_TRY(d.u64()) != 0 || US_TRY(d.u64()) != 0) return bad("reserved fields are not zero");
    id.consistent = flags & kConsistent;
    return std::optional<DiskIdentity>(id);
}

Result<void> write_identity(const std::string& disk_path, const DiskIdentity& id) {
    std::vector<uint8_t> buf;
    Encoder e(buf);
    e.raw(kMagic, 8);
    e.u32(kVersion);
    e.u32(id.consistent ? kConsistent : 0);
    e.raw(id.disk_id.data(), 16);
    e.u64(id.generation);
    for (uint64_t h : id.history) e.u64(h);
    e.u64(0);
    e.u64(0);
    e.u64(checksum64(buf));
    const std::string path = identity_path(disk_path), tmp = path + ".tmp";
    {
        UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        if (!fd.valid()) return sys_error("creating " + tmp);
        if (auto w = pwrite_full(fd.get(), 0, buf); !w) return std::move(w.error()).wrap(tmp);
        if (::fsync(fd.get()) < 0) return sys_error("fsync of " + tmp);
    }
    if (::rename(tmp.c_str(), path.c_str()) < 0) return sys_error("renaming " + tmp + " to " + path);
    std::string dir = std::filesystem::path(path).parent_path().string();
    UniqueFd dfd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd.valid()) (void)::fsync(dfd.get());
    return {};
}

Result<DiskIdentity> begin_generation(const std::string& disk_path) {
    auto old = US_TRY(read_identity(disk_path));
    DiskIdentity id;
    if (old && old->known() && old->consistent) {
        id.disk_id = old->disk_id;
        id.history[0] = old->generation;
        std::copy(old->history.begin(), old->history.end() - 1, id.history.begin() + 1);
    } else {
        for (size_t i = 0; i < 16; i += 8) {
            const uint64_t r = random_u64();
            std::memcpy(id.disk_id.data() + i, &r, 8);
        }
    }
    id.generation = random_u64();
    id.consistent = true;
    US_TRYV(write_identity(disk_path, id));
    return id;
}

std::optional<std::string> sync_refusal(const DiskIdentity& source, const std::optional<DiskIdentity>& target,
                                        const std::string& target_path) {
    // A copy of unknown or partial content is overwritten wherever it differs; so is any
    // copy of a disk that has no identity of its own (a read-only disk).
    if (!target || !target->known() || !target->consistent || !source.known()) return std::nullopt;
    const std::string remove = " Remove " + identity_path(target_path) + " to let the copy be overwritten.";
    if (target->disk_id != source.disk_id)
        return "the backup's copy " + target_path + " holds another disk (" + describe(*target) + "; the primary's is " +
               describe(source) + ")." + remove;
    if (target->generation == source.generation || source.descends_from(target->generation)) return std::nullopt;
    if (target->descends_from(source.generation))
        return "the backup's copy " + target_path + " is newer than the primary's disk: it was written as a primary after "
               "generation " + fmt::format("{:016x}", source.generation) + ", and a sync this way would lose those writes "
               "(run the VM from the copy instead)." + remove;
    return "the backup's copy " + target_path + " and the primary's disk diverged (generations " +
           fmt::format("{:016x} and {:016x}", target->generation, source.generation) +
           "): both were written as primaries since they were last in sync." + remove;
}

} // namespace understudy::hv
