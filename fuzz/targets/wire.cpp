// The replication stream as the backup receives it from a primary (docs/wire-format.md):
// the 64-byte stream header, then framed records. Two readers see the same bytes:
//  - the backup's path: check_stream_header, BackupReplica::create/begin_session, then
//    every record that passes the framing rules of Connection::recv_record (length
//    bound, zero padding, checksum) goes to BackupReplica::feed, exactly as
//    BackupServer::run_session does, until the first error ends the session;
//  - the independent stream verifier (verify_stream), as `understudy verify-stream`.
// And one cross-check between them: the backup never commits a checkpoint that the
// verifier, which implements the written spec separately, finds a violation in.
//
// Input: byte 0 = fix-up flags (fuzz_support.hpp), then the stream.
//   bit 0: recompute record checksums;  bit 1: recompute CHECKPOINT_END's record count
//   and digest;  bit 2: recompute page checks in PAGES records (against the replica's
//   committed memory).
// The header's memory size is replaced by 16 MiB (the smallest guest) so that a replica
// costs milliseconds, not seconds; the fuzzer controls every other byte.
#include <memory>

#include "fuzz/fuzz_support.hpp"
#include "fuzz/page_fixup.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/stream_verifier.hpp"

using namespace understudy;
using namespace understudy::replicator;

namespace {

constexpr uint8_t kFixChecksums = 1, kFixEnd = 2, kFixPages = 4;

// A replica that has never committed is as good as new (begin_session drops anything
// open), so one per vCPU count is kept and rebuilt only after a commit.
std::unique_ptr<BackupReplica> g_replicas[9];

BackupReplica* replica_for(uint32_t vcpus) {
    if (vcpus < 1 || vcpus > 8) {
        auto r = BackupReplica::create(hv::kMinMemory, vcpus); // the refusal path
        if (r) fuzz::fail("wire: BackupReplica::create accepted " + std::to_string(vcpus) + " vCPUs");
        return nullptr;
    }
    auto& slot = g_replicas[vcpus];
    if (!slot) {
        auto r = BackupReplica::create(hv::kMinMemory, vcpus);
        if (!r) return nullptr;
        slot = std::move(*r);
    }
    return slot.get();
}

// Feeds records like BackupServer::run_session; returns the stream offset where the last
// committed checkpoint's CHECKPOINT_END ends (0: none).
size_t run_backup(std::vector<uint8_t>& buf, uint8_t flags) {
    StreamHeader h;
    std::memcpy(&h, buf.data(), sizeof h);
    if (!check_stream_header(h)) return 0;
    BackupReplica* replica = replica_for(h.vcpus);
    if (!replica) return 0;
    if (!replica->begin_session(h)) return 0;

    size_t committed_end = 0;
    CheckpointDigest digest; // what the fix-up puts into CHECKPOINT_END
    size_t at = sizeof h;
    while (buf.size() - at >= sizeof(RecordHeader)) {
        RecordHeader rh;
        std::memcpy(&rh, buf.data() + at, sizeof rh);
        if (rh.length > kMaxRecordLength) break; // recv_record: over the limit
        size_t body_at = at + sizeof rh, padded = rh.length + fuzz::pad8(rh.length);
        if (padded > buf.size() - body_at) break; // torn: the peer closed mid-record
        std::span<uint8_t> body(buf.data() + body_at, rh.length);
        if ((flags & kFixPages) && rh.type == kPages && body.size() >= 8)
            fuzz::fix_page_checks(body.subspan(8), h.session_id, replica->memory().page_count(),
                                  [&](uint64_t i) { return replica->memory().page_ptr(i); });
        if ((flags & kFixEnd) && rh.type == kCheckpointEnd && body.size() >= 24) {
            uint64_t v[2] = {digest.records(), digest.value()};
            std::memcpy(body.data() + 8, v, sizeof v);
        }
        if (flags & kFixChecksums) {
            rh.checksum = checksum64(body);
            std::memcpy(buf.data() + at, &rh, sizeof rh);
        }
        bool zero_pad = true;
        for (size_t i = rh.length; i < padded; ++i) zero_pad &= buf[body_at + i] == 0;
        if (!zero_pad || checksum64(body) != rh.checksum) break;
        at = body_at + padded;

        bool was_open = replica->receiving();
        auto fed = replica->feed(Record{rh.type, std::vector<uint8_t>(body.begin(), body.end())});
        if (!fed) break; // the backup REJECTs and ends the session
        if (*fed) committed_end = at;
        if (!was_open && replica->receiving()) digest.clear(); // a CHECKPOINT_BEGIN opened one
        else if (was_open && replica->receiving() && rh.type != kHeartbeat) digest.add(rh.type, body);
    }
    replica->abort_open_checkpoint(); // as serve_one does when a session ends
    if (replica->has_committed()) g_replicas[h.vcpus].reset();
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
