// The replication stream as the backup receives it from a primary (docs/wire-format.md):
// the 64-byte stream header, the DISKS record when the header announces disks, then
// framed records. Two readers see the same bytes:
//  - the backup's path: check_stream_header, decode_disks, BackupReplica::create/
//    begin_session, then every record that passes the framing rules of
//    Connection::recv_record (length bound, zero padding, checksum) goes to
//    BackupReplica::feed, exactly as BackupServer::run_session does, until the first
//    error ends the session, taking the reply a record asks for after each (the DISK_WANT
//    answering a DISK_DIGESTS, which the backup sends to the primary; here it is dropped).
//    A replica for a stream with disks holds two small disk files (fuzz::kWireDiskBytes)
//    in a temporary directory made once per process, emptied and stripped of their
//    identity (docs/disks.md, "Identity") whenever a replica is rebuilt after a commit, so
//    that the identity an earlier input committed never makes the backup refuse a later one;
//  - the independent stream verifier (verify_stream), as `understudy verify-stream`.
// And one cross-check between them: the backup never commits a checkpoint that the
// verifier, which implements the written spec separately, finds a violation in.
//
// Input: byte 0 = fix-up flags (fuzz_support.hpp), then the stream.
//   bit 0: recompute record checksums;  bit 1: recompute CHECKPOINT_END's record count
//   and digest;  bit 2: recompute page checks in PAGES records (against the replica's
//   committed memory) and the checks of DISK_BLOCKS records.
// The header's memory size is replaced by 16 MiB (the smallest guest) so that a replica
// costs milliseconds, not seconds; the fuzzer controls every other byte.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "fuzz/fuzz_support.hpp"
#include "fuzz/page_fixup.hpp"
#include "hv/disk_identity.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/stream_verifier.hpp"

using namespace understudy;
using namespace understudy::replicator;

namespace {

constexpr uint8_t kFixChecksums = 1, kFixEnd = 2, kFixPages = 4;

// A replica that has never committed is as good as new (begin_session drops anything
// open), so one per vCPU count, without and with disks, is kept and rebuilt only after a
// commit.
std::unique_ptr<BackupReplica> g_replicas[2][9];

// The directory of the disk files, made at the first stream with disks, removed at exit.
std::string g_disk_dir;

void remove_disk_dir() {
    std::error_code ec;
    if (!g_disk_dir.empty()) std::filesystem::remove_all(g_disk_dir, ec);
}

// The backup's disks for replicas of `vcpus` vCPUs: one set of files per vCPU count, as a
// DiskReplica locks its files. Null where they cannot be made (no io_uring): such a
// replica has no disks and refuses streams with disks, which is tested as well.
std::unique_ptr<DiskReplica> disks_for(uint32_t vcpus) {
    if (g_disk_dir.empty()) {
        std::string tmpl = (std::filesystem::temp_directory_path() / "us-fuzz-wire-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) return nullptr;
        g_disk_dir = tmpl;
        std::atexit(remove_disk_dir);
    }
    DiskReplicaConfig cfg;
    cfg.spill_dir = g_disk_dir;
    cfg.staging_memory = 8 * 4096; // beyond 8 staged blocks, the spill file
    for (size_t i = 0; i < std::size(fuzz::kWireDiskBytes); ++i) {
        std::string path = g_disk_dir + "/vcpus" + std::to_string(vcpus) + "-disk" + std::to_string(i);
        // A committed checkpoint left its data and the primary's identity here; a fresh
        // replica starts from an empty copy of unknown identity instead.
        std::error_code ec;
        std::filesystem::remove(hv::identity_path(path), ec);
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) return nullptr;
        const bool sized = ::ftruncate(fd, static_cast<off_t>(fuzz::kWireDiskBytes[i])) == 0;
        ::close(fd);
        if (!sized) return nullptr;
        cfg.paths.push_back(path);
    }
    auto r = DiskReplica::open(std::move(cfg));
    return r ? std::move(*r) : nullptr;
}

BackupReplica* replica_for(uint32_t vcpus, bool with_disks) {
    if (vcpus < 1 || vcpus > 8) {
        auto r = BackupReplica::create(hv::kMinMemory, vcpus); // the refusal path
        if (r) fuzz::fail("wire: BackupReplica::create accepted " + std::to_string(vcpus) + " vCPUs");
        return nullptr;
    }
    auto& slot = g_replicas[with_disks][vcpus];
    if (!slot) {
        auto r = BackupReplica::create(hv::kMinMemory, vcpus, with_disks ? disks_for(vcpus) : nullptr);
        if (!r) return nullptr;
        slot = std::move(*r);
    }
    return slot.get();
}

// The next record at `at` as Connection::recv_record frames it, after `fix` (the body
// fix-ups) and, with kFixChecksums, its checksum recomputed; nullopt where the backup's
// connection would end instead (over the length limit, torn, bad padding or checksum).
template <class Fix>
std::optional<std::pair<uint32_t, std::span<uint8_t>>> next_record(std::vector<uint8_t>& buf, size_t& at, uint8_t flags, Fix&& fix) {
    if (buf.size() - at < sizeof(RecordHeader)) return std::nullopt;
    RecordHeader rh;
    std::memcpy(&rh, buf.data() + at, sizeof rh);
    if (rh.length > kMaxRecordLength) return std::nullopt; // recv_record: over the limit
    size_t body_at = at + sizeof rh, padded = rh.length + fuzz::pad8(rh.length);
    if (padded > buf.size() - body_at) return std::nullopt; // torn: the peer closed mid-record
    std::span<uint8_t> body(buf.data() + body_at, rh.length);
    fix(rh.type, body);
    if (flags & kFixChecksums) {
        rh.checksum = checksum64(body);
        std::memcpy(buf.data() + at, &rh, sizeof rh);
    }
    bool zero_pad = true;
    for (size_t i = rh.length; i < padded; ++i) zero_pad &= buf[body_at + i] == 0;
    if (!zero_pad || checksum64(body) != rh.checksum) return std::nullopt;
    at = body_at + padded;
    return std::pair{rh.type, body};
}

// Feeds records like BackupServer::run_session; returns the stream offset where the last
// committed checkpoint's CHECKPOINT_END ends (0: none).
size_t run_backup(std::vector<uint8_t>& buf, uint8_t flags) {
    StreamHeader h;
    std::memcpy(&h, buf.data(), sizeof h);
    if (!check_stream_header(h)) return 0;
    size_t at = sizeof h;
    // With disks, the DISKS record follows the header; the session starts with it.
    std::vector<DiskInfo> disks;
    if (h.disks > 0) {
        auto rec = next_record(buf, at, flags, [](uint32_t, std::span<uint8_t>) {});
        if (!rec || rec->first != kDisks) return 0;
        auto decoded = decode_disks(rec->second, h.disks);
        if (!decoded) return 0;
        disks = std::move(*decoded);
    }
    const bool with_disks = h.disks > 0;
    BackupReplica* replica = replica_for(h.vcpus, with_disks);
    if (!replica) return 0;
    if (!replica->begin_session(h, disks)) return 0;

    size_t committed_end = 0;
    CheckpointDigest digest; // what the fix-up puts into CHECKPOINT_END
    auto fix = [&](uint32_t type, std::span<uint8_t> body) {
        if ((flags & kFixPages) && type == kPages && body.size() >= 8)
            fuzz::fix_page_checks(body.subspan(8), h.session_id, replica->memory().page_count(),
                                  [&](uint64_t i) { return replica->memory().page_ptr(i); });
        if ((flags & kFixPages) && type == kDiskBlocks && body.size() >= 8) fuzz::fix_disk_block_check(body.subspan(8), h.session_id);
        if ((flags & kFixEnd) && type == kCheckpointEnd && body.size() >= 24) {
            uint64_t v[2] = {digest.records(), digest.value()};
            std::memcpy(body.data() + 8, v, sizeof v);
        }
    };
    while (auto rec = next_record(buf, at, flags, fix)) {
        auto [type, body] = *rec;
        bool was_open = replica->receiving();
        auto fed = replica->feed(Record{type, std::vector<uint8_t>(body.begin(), body.end())});
        // BackupServer::run_session sends this answer to the primary; here it is dropped,
        // once checked to be a DISK_WANT for a DISK_DIGESTS the replica took.
        if (auto reply = replica->take_reply();
            reply && (!fed || type != kDiskDigests || reply->type != kDiskWant || !decode_disk_want(reply->body)))
            fuzz::fail("wire: the replica answered a record of type " + std::to_string(type) + " with a record of type " +
                       std::to_string(reply->type) + (fed ? "" : " and refused it"));
        if (!fed) break; // the backup REJECTs and ends the session
        if (*fed) committed_end = at;
        if (!was_open && replica->receiving()) digest.clear(); // a CHECKPOINT_BEGIN opened one
        else if (was_open && replica->receiving() && type != kHeartbeat) digest.add(type, body);
    }
    replica->abort_open_checkpoint(); // as serve_one does when a session ends
    if (replica->has_committed()) g_replicas[with_disks][h.vcpus].reset();
    return committed_end;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    fuzz::Input in(data, size);
    uint8_t flags = in.u8();
    auto stream = in.rest();
    std::vector<uint8_t> buf(stream.begin(), stream.end());

    size_t committed_end = 0;
    if (buf.size() >= sizeof(StreamHeader)) {
        uint64_t mem = hv::kMinMemory;
        std::memcpy(buf.data() + offsetof(StreamHeader, memory_bytes), &mem, sizeof mem);
        committed_end = run_backup(buf, flags);
    }

    // The verifier reads the bytes as the backup ended up seeing them (fix-ups applied).
    StreamReport rep = verify_stream(std::span<const uint8_t>(buf));
    // HEARTBEAT is optional on the data stream: the backup may skip it unread, while the
    // verifier checks its shape, so only that difference is allowed.
    if (rep.violation && rep.violation->offset < committed_end &&
        rep.violation->message.find("HEARTBEAT") == std::string::npos) {
        fuzz::fail("wire: the backup committed a checkpoint ending at offset " + std::to_string(committed_end) +
                   ", but the verifier finds a violation at offset " + std::to_string(rep.violation->offset) + ": " +
                   rep.violation->message);
    }
    (void)format_report(rep);
    return 0;
}
