// Structural verification of a replication stream, version 2, written from the documents
// alone (docs/wire-format.md, docs/records.md, docs/snapshot-format.md,
// replicator/README.md). Deliberately shares no parsing code with BackupReplica,
// PageDecoder, the disk record decoders (disk_records.cpp), hv's state decoders or the
// writer: only the hash function (XXH3-64) and the Linux UAPI struct sizes that the
// snapshot format names.
#include "replicator/stream_verifier.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <memory>
#include <unordered_set>
#include <vector>

#include "common/unique_fd.hpp"

namespace understudy::replicator {

namespace {

// --- Constants, as the documents give them ---------------------------------------
constexpr uint8_t kMagic[8] = {'U', 'S', 'R', 'E', 'P', 'L', '\r', '\n'};
constexpr size_t kHeaderBytes = 64;
constexpr size_t kFrameBytes = 16;
constexpr uint32_t kMaxBody = 64u << 20;
constexpr uint32_t kOptional = 0x80000000u;
constexpr uint64_t kMiB = 1ull << 20, kGiB = 1ull << 30;
constexpr uint64_t kPage = 4096;
constexpr uint32_t kVersion = 2;

enum : uint32_t {
    tBegin = 1,
    tPages = 2,
    tVcpu = 3,
    tVm = 4,
    tDevice = 5,
    tEnd = 6,
    tAck = 7,
    tAccept = 8,
    tReject = 9,
    tHeartbeat = kOptional | 10,
    tVerify = kOptional | 14,
    tVerifyResult = kOptional | 15,
    tDisks = 16,
    tDiskBlocks = 17,
    tDiskZero = 18,
    tDiskDigests = 19,
    tDiskWant = 20,
};

// docs/wire-format.md, "Disks".
constexpr uint32_t kMaxDisks = 16;
constexpr uint64_t kDiskBlock = 4096;
constexpr uint32_t kMaxDiskBlocks = 1024; // per DISK_BLOCKS record
constexpr uint64_t kDiskChunk = 64 * kDiskBlock; // DISK_DIGESTS compares chunks of 256 KiB
constexpr uint32_t kMaxDigests = 65536;          // per DISK_DIGESTS record
constexpr uint32_t kDiskReadonly = 1, kDiskConsistent = 2;
// DISKS entry: size, flags, reserved, disk_id (16), generation, history (8 x u64).
constexpr size_t kDiskEntry = 8 + 4 + 4 + 16 + 8 + 8 * 8, kDiskBlocksHead = 32, kDiskZeroBody = 32, kDiskDigestsHead = 24,
                 kDigestBytes = 16;
static_assert(kDiskEntry == 104);

constexpr uint32_t kMaxBatchPages = 8192;
constexpr size_t kBatchHeader = 8, kPageHeader = 24;
enum : uint8_t { eZero = 0, eSame = 1, eXorLz4 = 2, eLz4 = 3, eRaw = 4 };
constexpr const char* kEncodingNames[5] = {"ZERO", "SAME", "XOR_LZ4", "LZ4", "RAW"};

size_t pad8(size_t n) { return (8 - n % 8) % 8; }

std::string type_name(uint32_t t) {
    switch (t) {
    case tBegin: return "CHECKPOINT_BEGIN";
    case tPages: return "PAGES";
    case tVcpu: return "VCPU_STATE";
    case tVm: return "VM_STATE";
    case tDevice: return "DEVICE_STATE";
    case tEnd: return "CHECKPOINT_END";
    case tAck: return "ACK";
    case tAccept: return "ACCEPT";
    case tReject: return "REJECT";
    case tHeartbeat: return "HEARTBEAT";
    case tVerify: return "VERIFY";
    case tVerifyResult: return "VERIFY_RESULT";
    case tDisks: return "DISKS";
    case tDiskBlocks: return "DISK_BLOCKS";
    case tDiskZero: return "DISK_ZERO";
    case tDiskDigests: return "DISK_DIGESTS";
    case tDiskWant: return "DISK_WANT";
    }
    return fmt::format("type {:#x}", t);
}

template <class T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// XXH3-64 of the RAM regions' (gpa, size) pairs, u64 each: RAM below 3 GiB first, then
// the rest from 4 GiB (docs/snapshot-format.md).
uint64_t expected_layout_digest(uint64_t memory_bytes) {
    uint64_t pairs[4];
    size_t n = 0;
    uint64_t low = std::min(memory_bytes, 3 * kGiB);
    pairs[n++] = 0;
    pairs[n++] = low;
    if (memory_bytes > low) {
        pairs[n++] = 4 * kGiB;
        pairs[n++] = memory_bytes - low;
    }
    return XXH3_64bits(pairs, n * 8);
}

std::string printable(std::span<const uint8_t> b) {
    std::string s;
    for (uint8_t c : b) {
        if (c == '\r') s += "\\r";
        else if (c == '\n') s += "\\n";
        else if (c >= 0x20 && c < 0x7f) s += static_cast<char>(c);
        else s += fmt::format("\\x{:02x}", c);
    }
    return s;
}

// --- Input -------------------------------------------------------------------------
// Counts the offset and buffers small reads; large reads go straight to their target.
class Reader {
public:
    explicit Reader(StreamSource& src) : src_(src), buf_(1 << 20) {}
    uint64_t offset() const { return offset_; }
    // Fills out as far as the input allows; returns how much it got.
    Result<size_t> read(std::span<uint8_t> out) {
        size_t got = 0;
        while (got < out.size()) {
            if (pos_ == len_) {
                if (eof_) break;
                size_t want = out.size() - got;
                if (want >= buf_.size()) {
                    size_t n = US_TRY(src_.read(out.subspan(got)));
                    got += n;
                    if (n < want) eof_ = true;
                    break;
                }
                pos_ = 0;
                len_ = US_TRY(src_.read(buf_));
                if (len_ < buf_.size()) eof_ = true;
                if (len_ == 0) break;
            }
            size_t n = std::min(len_ - pos_, out.size() - got);
            std::memcpy(out.data() + got, buf_.data() + pos_, n);
            pos_ += n;
            got += n;
        }
        offset_ += got;
        return got;
    }

private:
    StreamSource& src_;
    std::vector<uint8_t> buf_;
    size_t pos_ = 0, len_ = 0;
    bool eof_ = false;
    uint64_t offset_ = 0;
};

class SpanSource : public StreamSource {
public:
    explicit SpanSource(std::span<const uint8_t> b) : b_(b) {}
    Result<size_t> read(std::span<uint8_t> out) override {
        size_t n = std::min(out.size(), b_.size() - pos_);
        if (n > 0) std::memcpy(out.data(), b_.data() + pos_, n); // an empty span's data() may be null
        pos_ += n;
        return n;
    }

private:
    std::span<const uint8_t> b_;
    size_t pos_ = 0;
};

class FileSource : public StreamSource {
public:
    FileSource(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
    Result<size_t> read(std::span<uint8_t> out) override {
        size_t got = 0;
        while (got < out.size()) {
            ssize_t n = ::read(fd_.get(), out.data() + got, out.size() - got);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return sys_error("reading " + path_);
            if (n == 0) break;
            got += static_cast<size_t>(n);
        }
        return got;
    }

private:
    UniqueFd fd_;
    std::string path_;
};

// --- The checks --------------------------------------------------------------------
class Verifier {
public:
    explicit Verifier(StreamReport& r) : r_(r) {}
    ~Verifier() {
        if (digest_) XXH3_freeState(digest_);
    }
    Result<void> run(Reader& in);

private:
    // Records the first violation; always returns false so checks can `return fail(...)`.
    bool fail(uint64_t offset, std::string msg) {
        if (!r_.violation) r_.violation = StreamViolation{offset, rec_off_, std::move(msg)};
        return false;
    }
    // Offset in the stream of byte i of the current record's body.
    uint64_t at(size_t i) const { return rec_off_ + kFrameBytes + i; }

    bool header(std::span<const uint8_t> h);
    bool record(uint32_t type, std::span<const uint8_t> body);
    bool begin(std::span<const uint8_t> body);
    bool end(std::span<const uint8_t> body);
    bool pages(std::span<const uint8_t> body);
    bool vcpu(std::span<const uint8_t> body);
    bool vm(std::span<const uint8_t> body);
    bool device(std::span<const uint8_t> body);
    bool verify(std::span<const uint8_t> body);
    bool disks(std::span<const uint8_t> body);
    bool disk_blocks(std::span<const uint8_t> body);
    bool disk_zero(std::span<const uint8_t> body);
    bool disk_digests(std::span<const uint8_t> body);
    // Walks the tagged fields in body[from..]: {u32 tag; u32 length; bytes; zero padding to
    // 8}. on_field(tag, bytes, offset of the field header within body) returns false on a
    // violation.
    template <class F>
    bool fields(const std::string& what, std::span<const uint8_t> body, size_t from, F&& on_field);
    template <class T>
    bool field_size(const std::string& what, uint32_t tag, const char* name, std::span<const uint8_t> f, size_t off) {
        if (f.size() == sizeof(T)) return true;
        return fail(at(off), fmt::format("{}: field {} ({}) has {} bytes, expected {}", what, tag, name, f.size(), sizeof(T)));
    }

    StreamReport& r_;
    uint64_t rec_off_ = 0;
    uint64_t memory_pages_ = 0;
    bool seen_checkpoint_ = false;
    uint64_t committed_ = 0;
    bool disks_read_ = false;              // the DISKS record (when the header announces disks)
    std::vector<uint64_t> disk_limit_;     // blocks of each disk: ceil(size / 4096)
    std::vector<uint64_t> disk_chunks_;    // chunks of each disk: ceil(size / 256 KiB)

    // The open checkpoint.
    bool open_ = false;
    uint64_t epoch_ = 0;
    bool initial_ = false;
    uint64_t begin_off_ = 0;
    uint64_t records_ = 0;     // counted by END: all but BEGIN, END and HEARTBEAT
    uint64_t all_records_ = 0; // BEGIN and everything since
    XXH3_state_t* digest_ = nullptr;
    int phase_ = 0; // 0 pages, 1 vCPU states, 2 VM state, 3 device states
    std::vector<bool> vcpu_seen_;
    bool vm_seen_ = false;
    std::vector<uint64_t> page_seen_; // bitmap over guest pages, this checkpoint
    std::vector<uint64_t> touched_;   // words of page_seen_ to clear at the next BEGIN
    std::unordered_set<uint64_t> block_seen_;  // (disk << 52 | block), later checkpoints only

    // Online verification: the slices of a pass cover guest memory in order, one after
    // each checkpoint at most.
    uint64_t verified_epoch_ = 0; // the checkpoint the last VERIFY followed
    uint64_t pass_ = 0;           // the pass under way (0: none yet)
    uint64_t pass_next_page_ = 0; // where its next slice starts (0 after a last slice)
};

bool Verifier::header(std::span<const uint8_t> h) {
    const uint8_t* p = h.data();
    r_.header_read = true;
    r_.version = load<uint32_t>(p + 8);
    r_.memory_bytes = load<uint64_t>(p + 16);
    r_.vcpus = load<uint32_t>(p + 24);
    r_.session_id = load<uint64_t>(p + 40);
    if (std::memcmp(p, kMagic, 8) != 0)
        return fail(0, fmt::format("stream header: bad magic \"{}\" (expected \"USREPL\\r\\n\"): not a replication stream",
                                   printable(h.first(8))));
    if (r_.version != kVersion)
        return fail(8, fmt::format("stream header: format version {} (this verifier speaks version {})", r_.version, kVersion));
    uint32_t page_size = load<uint32_t>(p + 12);
    if (page_size != kPage) return fail(12, fmt::format("stream header: page size {} (version 2 has 4096)", page_size));
    uint64_t mem = r_.memory_bytes;
    if (mem % (2 * kMiB) != 0 || mem < 16 * kMiB || mem > 12 * kGiB)
        return fail(16, fmt::format("stream header: guest memory of {} bytes is not a multiple of 2 MiB between 16 MiB and 12 GiB", mem));
    if (r_.vcpus < 1 || r_.vcpus > 8) return fail(24, fmt::format("stream header: {} vCPUs (a VM has 1 to 8)", r_.vcpus));
    uint32_t flags = load<uint32_t>(p + 28);
    // Bit 0: a control connection (heartbeats) accompanies the stream; it is not in the capture.
    if (flags & ~1u) return fail(28, fmt::format("stream header: unknown flags {:#x} (only bit 0 is defined in version 2)", flags & ~1u));
    uint64_t layout = load<uint64_t>(p + 32), want = expected_layout_digest(mem);
    if (layout != want)
        return fail(32, fmt::format("stream header: layout digest {:#018x} does not describe {} MiB of RAM laid out below 3 GiB "
                                    "then from 4 GiB ({:#018x})",
                                    layout, mem >> 20, want));
    // 48..55 is the configuration digest: any value.
    r_.disks = load<uint32_t>(p + 56);
    if (r_.disks > kMaxDisks) return fail(56, fmt::format("stream header: {} disks (at most {})", r_.disks, kMaxDisks));
    for (int i = 60; i < 64; ++i)
        if (p[i] != 0) return fail(static_cast<uint64_t>(i), fmt::format("stream header: reserved byte {} is not zero", i));
    memory_pages_ = mem / kPage;
    page_seen_.assign((memory_pages_ + 63) / 64, 0);
    return true;
}

Result<void> Verifier::run(Reader& in) {
    uint8_t h[kHeaderBytes];
    size_t got = US_TRY(in.read(h));
    r_.bytes = in.offset();
    if (got < kHeaderBytes) {
        fail(got, fmt::format("the stream ends after {} bytes, inside its 64-byte header", got));
        return {};
    }
    if (!header({h, kHeaderBytes})) return {};
    digest_ = XXH3_createState();
    if (!digest_) return make_error(Errc::system, "allocating a hash state");

    std::vector<uint8_t> body;
    for (;;) {
        rec_off_ = in.offset();
        uint8_t frame[kFrameBytes];
        got = US_TRY(in.read(frame));
        if (got == 0) break; // the end, between records
        if (got < kFrameBytes) {
            r_.torn_record = rec_off_;
            break;
        }
        uint32_t type = load<uint32_t>(frame), length = load<uint32_t>(frame + 4);
        uint64_t checksum = load<uint64_t>(frame + 8);
        if (length > kMaxBody) {
            fail(rec_off_ + 4, fmt::format("record at offset {} ({}) claims a {}-byte body, over the 64 MiB limit", rec_off_,
                                           type_name(type), length));
            break;
        }
        body.resize(length + pad8(length));
        got = US_TRY(in.read(body));
        if (got < body.size()) {
            r_.torn_record = rec_off_;
            break;
        }
        for (size_t i = length; i < body.size(); ++i)
            if (body[i] != 0) {
                fail(at(i), fmt::format("record at offset {} ({}) has non-zero padding", rec_off_, type_name(type)));
                break;
            }
        if (r_.violation) break;
        auto b = std::span<const uint8_t>(body).first(length);
        if (XXH3_64bits(b.data(), b.size()) != checksum) {
            fail(rec_off_ + 8, fmt::format("record at offset {} ({}, {} bytes) fails its checksum", rec_off_, type_name(type), length));
            break;
        }
        ++r_.records;
        if (open_) ++all_records_;
        if (!record(type, b)) break;
    }
    r_.bytes = in.offset();
    if (!r_.violation && r_.disks > 0 && !disks_read_ && !r_.torn_record) r_.ends_before_disks = true;
    if (!r_.violation && open_) {
        r_.torn_epoch = epoch_;
        r_.torn_checkpoint_offset = begin_off_;
        r_.torn_checkpoint_records = all_records_;
    }
    return {};
}

bool Verifier::record(uint32_t type, std::span<const uint8_t> body) {
    // With disks, the DISKS record comes right after the header, before anything else.
    if (r_.disks > 0 && !disks_read_ && type != tDisks)
        return fail(rec_off_, fmt::format("{} record at offset {} where the DISKS record belongs (the header announces {} disks; "
                                          "DISKS comes right after it)",
                                          type_name(type), rec_off_, r_.disks));
    if (type == tHeartbeat) {
        // Allowed anywhere; not counted by CHECKPOINT_END.
        if (body.size() != 16) return fail(rec_off_, fmt::format("HEARTBEAT body has {} bytes, expected 16", body.size()));
        ++r_.heartbeats;
        return true;
    }
    auto count = [&] {
        ++records_;
        uint64_t v = XXH3_64bits(body.data(), body.size()) ^ type;
        XXH3_64bits_update(digest_, &v, 8);
    };
    if (type == tVerify) return verify(body);
    if (type == tVerifyResult)
        return fail(rec_off_, fmt::format("VERIFY_RESULT record at offset {}: the backup sends it, the primary's stream must not "
                                          "contain it",
                                          rec_off_));
    if (type & kOptional) {
        // Unknown optional: skipped, but counted by the END of an open checkpoint.
        ++r_.optional_records;
        if (open_) count();
        return true;
    }
    switch (type) {
    case tBegin: return begin(body);
    case tEnd: return end(body);
    case tDisks: return disks(body);
    case tAck:
    case tAccept:
    case tReject:
    case tDiskWant:
        return fail(rec_off_, fmt::format("{} record at offset {}: the backup sends it, the primary's stream must not contain it",
                                          type_name(type), rec_off_));
    case tPages:
    case tVcpu:
    case tVm:
    case tDevice:
    case tDiskBlocks:
    case tDiskZero:
    case tDiskDigests: break;
    default:
        return fail(rec_off_, fmt::format("unknown mandatory record type {} ({:#x}) at offset {}", type, type, rec_off_));
    }
    std::string name = type_name(type);
    if (!open_) return fail(rec_off_, fmt::format("{} record at offset {} outside a checkpoint", name, rec_off_));
    if (body.size() < 8) return fail(at(0), fmt::format("{} body of {} bytes has no room for its epoch", name, body.size()));
    uint64_t epoch = load<uint64_t>(body.data());
    if (epoch != epoch_) return fail(at(0), fmt::format("{} record of epoch {} inside checkpoint {}", name, epoch, epoch_));
    count();
    const char* order = " (a checkpoint is PAGES and disk records, VCPU_STATE x vCPUs, VM_STATE, DEVICE_STATE*)";
    switch (type) {
    case tPages:
    case tDiskBlocks:
    case tDiskZero:
    case tDiskDigests:
        if (phase_ > 0)
            return fail(rec_off_, fmt::format("{} record after the state records of checkpoint {}{}", name, epoch_, order));
        switch (type) {
        case tPages: return pages(body);
        case tDiskBlocks: return disk_blocks(body);
        case tDiskZero: return disk_zero(body);
        default: return disk_digests(body);
        }
    case tVcpu:
        if (phase_ > 1) return fail(rec_off_, fmt::format("VCPU_STATE record after the VM_STATE of checkpoint {}{}", epoch_, order));
        phase_ = 1;
        return vcpu(body);
    case tVm:
        if (vm_seen_) return fail(rec_off_, fmt::format("a second VM_STATE in checkpoint {}", epoch_));
        phase_ = 2;
        vm_seen_ = true;
        return vm(body);
    default:
        if (!vm_seen_) return fail(rec_off_, fmt::format("DEVICE_STATE record before the VM_STATE of checkpoint {}{}", epoch_, order));
        phase_ = 3;
        ++r_.device_states;
        return device(body);
    }
}

bool Verifier::begin(std::span<const uint8_t> body) {
    if (body.size() != 16) return fail(rec_off_, fmt::format("CHECKPOINT_BEGIN body has {} bytes, expected 16", body.size()));
    uint64_t epoch = load<uint64_t>(body.data());
    uint32_t flags = load<uint32_t>(body.data() + 8), zero = load<uint32_t>(body.data() + 12);
    if (open_)
        return fail(rec_off_, fmt::format("CHECKPOINT_BEGIN({}) while checkpoint {} (begun at offset {}) is still open", epoch,
                                          epoch_, begin_off_));
    if (flags & ~1u) return fail(at(8), fmt::format("CHECKPOINT_BEGIN({}) has unknown flags {:#x}", epoch, flags));
    if (zero != 0) return fail(at(12), fmt::format("CHECKPOINT_BEGIN({}): the reserved u32 is {:#x}, not 0", epoch, zero));
    bool initial = flags & 1;
    if (!seen_checkpoint_ && !initial)
        return fail(at(8), fmt::format("the session's first checkpoint ({}) lacks the initial-synchronization flag", epoch));
    if (seen_checkpoint_ && initial)
        return fail(at(8), fmt::format("checkpoint {} carries the initial-synchronization flag, but only a session's first "
                                       "checkpoint may",
                                       epoch));
    if (seen_checkpoint_ && epoch != committed_ + 1)
        return fail(at(0), fmt::format("checkpoint {} follows checkpoint {}: epochs must be consecutive (expected {})", epoch,
                                       committed_, committed_ + 1));
    seen_checkpoint_ = true;
    open_ = true;
    epoch_ = epoch;
    initial_ = initial;
    begin_off_ = rec_off_;
    records_ = 0;
    all_records_ = 1;
    XXH3_64bits_reset(digest_);
    phase_ = 0;
    vcpu_seen_.assign(r_.vcpus, false);
    vm_seen_ = false;
    for (uint64_t w : touched_) page_seen_[w] = 0;
    touched_.clear();
    block_seen_.clear();
    return true;
}

// docs/wire-format.md, "Online verification".
bool Verifier::verify(std::span<const uint8_t> body) {
    if (open_) return fail(rec_off_, fmt::format("VERIFY at offset {} inside checkpoint {} (it follows a CHECKPOINT_END)", rec_off_, epoch_));
    if (body.size() < 40) return fail(rec_off_, fmt::format("VERIFY body has {} bytes, fewer than its 40-byte head", body.size()));
    const uint8_t* p = body.data();
    const uint64_t epoch = load<uint64_t>(p), pass = load<uint64_t>(p + 8), first = load<uint64_t>(p + 16);
    const uint32_t pages = load<uint32_t>(p + 24), flags = load<uint32_t>(p + 28), states = load<uint32_t>(p + 32),
                   zero = load<uint32_t>(p + 36);
    if (!seen_checkpoint_ || epoch != committed_ || verified_epoch_ == epoch)
        return fail(at(0), fmt::format("VERIFY({}) does not follow the END of checkpoint {} (once per checkpoint)", epoch, epoch));
    if (flags & ~1u) return fail(at(28), fmt::format("VERIFY({}) has unknown flags {:#x}", epoch, flags));
    if (zero != 0) return fail(at(36), fmt::format("VERIFY({}): the reserved u32 is {:#x}, not 0", epoch, zero));
    if (states != r_.vcpus + 2)
        return fail(at(32), fmt::format("VERIFY({}) has {} state digests; {} vCPUs need {}", epoch, states, r_.vcpus, r_.vcpus + 2));
    if (pages == 0 || pages > 65536 || first >= memory_pages_ || pages > memory_pages_ - first)
        return fail(at(16), fmt::format("VERIFY({}): pages {} + {} are not a slice of 1 .. 65536 of the guest's {} pages", epoch,
                                        first, pages, memory_pages_));
    if (body.size() != 40 + 8 * (uint64_t(states) + pages))
        return fail(rec_off_, fmt::format("VERIFY({}) body has {} bytes, expected {}", epoch, body.size(),
                                          40 + 8 * (uint64_t(states) + pages)));
    // A pass starts at page 0 with a higher number and goes on where its last slice ended.
    const bool continues = pass_next_page_ != 0;
    if (continues ? (pass != pass_ || first != pass_next_page_) : (pass <= pass_ || first != 0))
        return fail(at(8), continues ? fmt::format("VERIFY({}): pass {} page {}, expected pass {} page {}", epoch, pass, first, pass_,
                                                   pass_next_page_)
                                     : fmt::format("VERIFY({}): pass {} begins at page {}; a new pass (after {}) begins at page 0",
                                                   epoch, pass, first, pass_));
    const bool last = flags & 1;
    if (last != (first + pages == memory_pages_))
        return fail(at(28), fmt::format("VERIFY({}): the last-slice flag is {} for a slice ending at page {} of {}", epoch,
                                        last ? "set" : "clear", first + pages, memory_pages_));
    pass_ = pass;
    pass_next_page_ = last ? 0 : first + pages;
    verified_epoch_ = epoch;
    ++r_.verify_slices;
    return true;
}

bool Verifier::end(std::span<const uint8_t> body) {
    if (!open_) return fail(rec_off_, fmt::format("CHECKPOINT_END at offset {} outside a checkpoint", rec_off_));
    if (body.size() != 24) return fail(rec_off_, fmt::format("CHECKPOINT_END body has {} bytes, expected 24", body.size()));
    uint64_t epoch = load<uint64_t>(body.data()), records = load<uint64_t>(body.data() + 8),
             digest = load<uint64_t>(body.data() + 16);
    if (epoch != epoch_) return fail(at(0), fmt::format("CHECKPOINT_END({}) closes checkpoint {}", epoch, epoch_));
    if (records != records_)
        return fail(at(8), fmt::format("checkpoint {}: CHECKPOINT_END announces {} records, {} were sent (BEGIN, END and "
                                       "HEARTBEAT not counted)",
                                       epoch, records, records_));
    uint64_t want = XXH3_64bits_digest(digest_);
    if (digest != want)
        return fail(at(16), fmt::format("checkpoint {}: CHECKPOINT_END's digest {:#018x} does not match its records ({:#018x})",
                                        epoch, digest, want));
    for (uint32_t i = 0; i < r_.vcpus; ++i)
        if (!vcpu_seen_[i])
            return fail(rec_off_, fmt::format("checkpoint {} lacks the state of vCPU {} (every checkpoint carries all {})", epoch, i,
                                              r_.vcpus));
    if (!vm_seen_) return fail(rec_off_, fmt::format("checkpoint {} has no VM_STATE", epoch));
    open_ = false;
    committed_ = epoch;
    if (r_.checkpoints == 0) {
        r_.first_epoch = epoch;
        r_.first_initial = initial_;
    }
    r_.last_epoch = epoch;
    ++r_.checkpoints;
    return true;
}

bool Verifier::pages(std::span<const uint8_t> body) {
    const std::string ctx = fmt::format("PAGES record at offset {} (checkpoint {})", rec_off_, epoch_);
    size_t pos = 8; // after the epoch
    if (body.size() - pos < kBatchHeader)
        return fail(at(pos), ctx + fmt::format(": {} bytes cannot hold the 8-byte batch header", body.size() - pos));
    uint32_t version = load<uint32_t>(body.data() + pos), count = load<uint32_t>(body.data() + pos + 4);
    if (version != 1) return fail(at(pos), ctx + fmt::format(": page batch version {} (expected 1)", version));
    if (count < 1 || count > kMaxBatchPages)
        return fail(at(pos + 4), ctx + fmt::format(": the batch claims {} pages (1 to {})", count, kMaxBatchPages));
    pos += kBatchHeader;
    if (uint64_t{count} * kPageHeader > body.size() - pos)
        return fail(at(pos - 4), ctx + fmt::format(": the batch claims {} pages, but its {} bytes cannot hold their headers", count,
                                                   body.size() - pos));
    ++r_.page_records;
    for (uint32_t i = 0; i < count; ++i) {
        if (body.size() - pos < kPageHeader)
            return fail(at(pos), ctx + fmt::format(": the header of page {} of {} is truncated", i, count));
        const size_t hdr = pos;
        const uint8_t* h = body.data() + pos;
        uint64_t index = load<uint64_t>(h);
        uint8_t enc = h[16];
        uint32_t length = load<uint32_t>(h + 20);
        std::string page = fmt::format(": page {} of the batch (index {})", i, index);
        if (index >= memory_pages_)
            return fail(at(pos), ctx + page + fmt::format(" is beyond guest memory ({} pages)", memory_pages_));
        if (enc > eRaw) return fail(at(pos + 16), ctx + page + fmt::format(" has unknown encoding {}", enc));
        for (size_t k = 17; k < 20; ++k)
            if (h[k] != 0) return fail(at(pos + k), ctx + page + ": reserved bytes are not zero");
        bool no_payload = enc == eZero || enc == eSame;
        bool ok = no_payload ? length == 0 : enc == eRaw ? length == kPage : (length >= 1 && length < kPage);
        if (!ok) {
            const char* want = no_payload ? "0" : enc == eRaw ? "4096" : "1 to 4095";
            return fail(at(pos + 20), ctx + page + fmt::format(": a {} payload of {} bytes (must be {})", kEncodingNames[enc], length, want));
        }
        pos += kPageHeader;
        if (uint64_t{length} + pad8(length) > body.size() - pos)
            return fail(at(pos), ctx + page + fmt::format(": its {}-byte payload and padding overrun the batch", length));
        for (size_t k = pos + length; k < pos + length + pad8(length); ++k)
            if (body[k] != 0) return fail(at(k), ctx + page + ": non-zero padding after the payload");
        pos += length + pad8(length);
        // Later checkpoints carry each dirty page once; the initial one may resend pages.
        uint64_t& word = page_seen_[index / 64];
        uint64_t bit = 1ull << (index % 64);
        if ((word & bit) && !initial_)
            return fail(at(hdr), ctx + page + fmt::format(": page {} appears twice in checkpoint {}", index, epoch_));
        if (word == 0) touched_.push_back(index / 64);
        word |= bit;
        ++r_.pages;
        ++r_.pages_by_encoding[enc];
        r_.payload_bytes += length;
    }
    if (pos != body.size())
        return fail(at(pos), ctx + fmt::format(": {} trailing bytes after the last page of the batch", body.size() - pos));
    return true;
}

// docs/wire-format.md, "Disks": the DISKS record, right after the header when it
// announces disks, and nowhere else.
bool Verifier::disks(std::span<const uint8_t> body) {
    if (r_.disks == 0)
        return fail(rec_off_, fmt::format("DISKS record at offset {}, but the header announces no disks", rec_off_));
    if (disks_read_)
        return fail(rec_off_, fmt::format("a second DISKS record at offset {} (it comes once, right after the header)", rec_off_));
    disks_read_ = true;
    if (body.size() != uint64_t{r_.disks} * kDiskEntry)
        return fail(rec_off_, fmt::format("DISKS body has {} bytes; {} disks need {} ({} each)", body.size(), r_.disks,
                                          uint64_t{r_.disks} * kDiskEntry, kDiskEntry));
    for (uint32_t i = 0; i < r_.disks; ++i) {
        const size_t e = i * kDiskEntry;
        const uint64_t size = load<uint64_t>(body.data() + e);
        const uint32_t flags = load<uint32_t>(body.data() + e + 8), zero = load<uint32_t>(body.data() + e + 12);
        if (size == 0 || size % 512 != 0)
            return fail(at(e), fmt::format("DISKS: disk {} has {} bytes, not a positive multiple of 512", i, size));
        if (flags & ~(kDiskReadonly | kDiskConsistent))
            return fail(at(e + 8), fmt::format("DISKS: disk {} has unknown flags {:#x} (only bit 0, read-only, and bit 1, "
                                               "identity consistent)",
                                               i, flags & ~(kDiskReadonly | kDiskConsistent)));
        if (zero != 0) return fail(at(e + 12), fmt::format("DISKS: disk {}'s reserved u32 is {:#x}, not 0", i, zero));
        // 16..103: the disk's identity (disk_id, generation, history); any value.
        r_.disk_sizes.push_back(size);
        disk_limit_.push_back(size / kDiskBlock + (size % kDiskBlock != 0));
        disk_chunks_.push_back(size / kDiskChunk + (size % kDiskChunk != 0));
    }
    return true;
}

// DISK_BLOCKS: u64 epoch, u32 disk, u32 count, u32 encoding, u32 encoded_bytes, u64 check,
// count u64 indices, then encoded_bytes of data. The data is neither decompressed nor
// checked (the check covers the raw bytes, which only the backup reconstructs).
bool Verifier::disk_blocks(std::span<const uint8_t> body) {
    const std::string ctx = fmt::format("DISK_BLOCKS record at offset {} (checkpoint {})", rec_off_, epoch_);
    if (body.size() < kDiskBlocksHead)
        return fail(rec_off_, ctx + fmt::format(": a body of {} bytes, shorter than its {}-byte head", body.size(), kDiskBlocksHead));
    const uint8_t* p = body.data();
    const uint32_t disk = load<uint32_t>(p + 8), count = load<uint32_t>(p + 12), encoding = load<uint32_t>(p + 16),
                   encoded = load<uint32_t>(p + 20);
    if (disk >= disk_limit_.size())
        return fail(at(8), ctx + fmt::format(": disk {}, but the stream has {} disks", disk, disk_limit_.size()));
    if (count < 1 || count > kMaxDiskBlocks)
        return fail(at(12), ctx + fmt::format(": {} blocks (1 to {})", count, kMaxDiskBlocks));
    if (encoding > 1) return fail(at(16), ctx + fmt::format(": unknown encoding {} (0 raw, 1 LZ4)", encoding));
    const uint64_t indices = uint64_t{count} * 8;
    if (indices > body.size() - kDiskBlocksHead)
        return fail(at(12), ctx + fmt::format(": {} blocks need {} bytes of indices, {} remain", count, indices,
                                              body.size() - kDiskBlocksHead));
    const uint64_t data = body.size() - kDiskBlocksHead - indices;
    if (encoded != data)
        return fail(at(20), ctx + fmt::format(": encoded_bytes is {}, but {} bytes follow the indices", encoded, data));
    if (encoding == 0 && encoded != uint64_t{count} * kDiskBlock)
        return fail(at(20), ctx + fmt::format(": raw data of {} bytes for {} blocks (must be {})", encoded, count,
                                              uint64_t{count} * kDiskBlock));
    if (encoding == 1 && (encoded == 0 || encoded >= uint64_t{count} * kDiskBlock))
        return fail(at(20), ctx + fmt::format(": LZ4 data of {} bytes for {} blocks (1 to {} allowed: LZ4 only when smaller than raw)",
                                              encoded, count, uint64_t{count} * kDiskBlock - 1));
    const uint64_t limit = disk_limit_[disk];
    for (uint32_t i = 0; i < count; ++i) {
        const size_t off = kDiskBlocksHead + size_t{i} * 8;
        const uint64_t block = load<uint64_t>(p + off);
        if (block >= limit)
            return fail(at(off), ctx + fmt::format(": block {} (index {} of the record) is outside disk {} ({} blocks)", block, i,
                                                   disk, limit));
        if (i > 0 && block <= load<uint64_t>(p + off - 8))
            return fail(at(off), ctx + fmt::format(": block indices are not strictly increasing (index {} is block {}, after {})", i,
                                                   block, load<uint64_t>(p + off - 8)));
        // Later checkpoints carry each written block once; the initial one may resend blocks.
        if (!initial_ && !block_seen_.insert(uint64_t{disk} << 52 | block).second)
            return fail(at(off), ctx + fmt::format(": block {} of disk {} appears twice in checkpoint {}", block, disk, epoch_));
    }
    ++r_.disk_block_records;
    ++r_.disk_records_by_encoding[encoding];
    r_.disk_blocks += count;
    r_.disk_data_bytes += encoded;
    return true;
}

// DISK_ZERO: u64 epoch, u32 disk, u32 0, u64 first_block, u64 blocks; the initial
// checkpoint only, anywhere among its disk records (it drops what earlier records of the
// checkpoint staged in its range).
bool Verifier::disk_zero(std::span<const uint8_t> body) {
    const std::string ctx = fmt::format("DISK_ZERO record at offset {} (checkpoint {})", rec_off_, epoch_);
    if (body.size() != kDiskZeroBody)
        return fail(rec_off_, ctx + fmt::format(": a body of {} bytes, expected {}", body.size(), kDiskZeroBody));
    if (!initial_)
        return fail(rec_off_, ctx + ": DISK_ZERO belongs to the initial synchronization only, and this checkpoint is not flagged initial");
    const uint8_t* p = body.data();
    const uint32_t disk = load<uint32_t>(p + 8), zero = load<uint32_t>(p + 12);
    const uint64_t first = load<uint64_t>(p + 16), blocks = load<uint64_t>(p + 24);
    if (disk >= disk_limit_.size())
        return fail(at(8), ctx + fmt::format(": disk {}, but the stream has {} disks", disk, disk_limit_.size()));
    if (zero != 0) return fail(at(12), ctx + fmt::format(": the reserved u32 is {:#x}, not 0", zero));
    if (blocks == 0) return fail(at(24), ctx + ": a range of 0 blocks");
    const uint64_t limit = disk_limit_[disk];
    if (first >= limit || blocks > limit - first)
        return fail(at(16), ctx + fmt::format(": blocks {} + {} are not inside disk {} ({} blocks)", first, blocks, disk, limit));
    ++r_.disk_zero_ranges;
    r_.disk_zero_blocks += blocks;
    return true;
}

// DISK_DIGESTS: u64 epoch, u32 disk, u32 count, u64 first_chunk, then count 16-byte
// XXH3-128 digests of 256 KiB chunks; the initial checkpoint only. The digests are not
// checked (they cover disk content the verifier does not have); the backup answers each
// record with a DISK_WANT, which travels the other way and is not in a capture.
bool Verifier::disk_digests(std::span<const uint8_t> body) {
    const std::string ctx = fmt::format("DISK_DIGESTS record at offset {} (checkpoint {})", rec_off_, epoch_);
    if (body.size() < kDiskDigestsHead)
        return fail(rec_off_, ctx + fmt::format(": a body of {} bytes, shorter than its {}-byte head", body.size(), kDiskDigestsHead));
    if (!initial_)
        return fail(rec_off_,
                    ctx + ": DISK_DIGESTS belongs to the initial synchronization only, and this checkpoint is not flagged initial");
    const uint8_t* p = body.data();
    const uint32_t disk = load<uint32_t>(p + 8), count = load<uint32_t>(p + 12);
    const uint64_t first = load<uint64_t>(p + 16);
    if (disk >= disk_chunks_.size())
        return fail(at(8), ctx + fmt::format(": disk {}, but the stream has {} disks", disk, disk_chunks_.size()));
    if (count < 1 || count > kMaxDigests) return fail(at(12), ctx + fmt::format(": {} chunks (1 to {})", count, kMaxDigests));
    const uint64_t chunks = disk_chunks_[disk];
    if (first >= chunks || count > chunks - first)
        return fail(at(16), ctx + fmt::format(": chunks {} + {} are not inside disk {} ({} chunks of 256 KiB)", first, count, disk,
                                              chunks));
    const uint64_t want = kDiskDigestsHead + uint64_t{count} * kDigestBytes;
    if (body.size() != want)
        return fail(rec_off_, ctx + fmt::format(": a body of {} bytes; {} digests need {} (16 bytes each after the {}-byte head)",
                                                body.size(), count, want, kDiskDigestsHead));
    ++r_.disk_digest_records;
    r_.disk_digest_chunks += count;
    return true;
}

template <class F>
bool Verifier::fields(const std::string& what, std::span<const uint8_t> body, size_t from, F&& on_field) {
    size_t pos = from;
    while (pos < body.size()) {
        if (body.size() - pos < 8)
            return fail(at(pos), fmt::format("{}: {} stray bytes after the last field (a field header has 8)", what, body.size() - pos));
        uint32_t tag = load<uint32_t>(body.data() + pos), length = load<uint32_t>(body.data() + pos + 4);
        size_t rest = body.size() - pos - 8;
        if (length > rest)
            return fail(at(pos + 4), fmt::format("{}: field {} claims {} bytes, {} remain", what, tag, length, rest));
        if (pad8(length) > rest - length) return fail(at(pos + 8 + length), fmt::format("{}: field {} lacks its padding", what, tag));
        for (size_t k = pos + 8 + length; k < pos + 8 + length + pad8(length); ++k)
            if (body[k] != 0) return fail(at(k), fmt::format("{}: field {} has non-zero padding", what, tag));
        if (!on_field(tag, body.subspan(pos + 8, length), pos)) return false;
        pos += 8 + length + pad8(length);
    }
    return true;
}

bool Verifier::vcpu(std::span<const uint8_t> body) {
    if (body.size() < 16)
        return fail(rec_off_, fmt::format("VCPU_STATE body of {} bytes has no room for epoch, index and reserved word", body.size()));
    uint32_t index = load<uint32_t>(body.data() + 8), zero = load<uint32_t>(body.data() + 12);
    if (index >= r_.vcpus)
        return fail(at(8), fmt::format("VCPU_STATE for vCPU {} in checkpoint {}; the VM has {} vCPUs", index, epoch_, r_.vcpus));
    if (zero != 0) return fail(at(12), fmt::format("VCPU_STATE of vCPU {}: the reserved u32 is {:#x}, not 0", index, zero));
    if (vcpu_seen_[index]) return fail(rec_off_, fmt::format("vCPU {}'s state sent twice in checkpoint {}", index, epoch_));
    vcpu_seen_[index] = true;
    const std::string what = fmt::format("VCPU_STATE of vCPU {} at offset {}", index, rec_off_);
    uint32_t seen = 0;
    bool ok = fields(what, body, 16, [&](uint32_t tag, std::span<const uint8_t> f, size_t off) {
        if (tag >= 1 && tag <= 10) seen |= 1u << tag;
        switch (tag) {
        case 1:
            if (!field_size<uint32_t>(what, tag, "version", f, off)) return false;
            if (load<uint32_t>(f.data()) != 1)
                return fail(at(off + 8), fmt::format("{}: state version {} (expected 1)", what, load<uint32_t>(f.data())));
            return true;
        case 2:
            if (f.size() % sizeof(kvm_cpuid_entry2) != 0)
                return fail(at(off + 4), fmt::format("{}: CPUID field of {} bytes is not a whole number of {}-byte entries", what,
                                                     f.size(), sizeof(kvm_cpuid_entry2)));
            return true;
        case 3: return field_size<kvm_mp_state>(what, tag, "kvm_mp_state", f, off);
        case 4: return field_size<kvm_regs>(what, tag, "kvm_regs", f, off);
        case 5: return field_size<kvm_sregs>(what, tag, "kvm_sregs", f, off);
        case 6:
            if (f.size() < 4096) return fail(at(off + 4), fmt::format("{}: XSAVE area of {} bytes (at least 4096)", what, f.size()));
            return true;
        case 7: return field_size<kvm_xcrs>(what, tag, "kvm_xcrs", f, off);
        case 8: return field_size<kvm_debugregs>(what, tag, "kvm_debugregs", f, off);
        case 9:
            if (f.size() % 16 != 0)
                return fail(at(off + 4), fmt::format("{}: MSR field of {} bytes is not a whole number of 16-byte entries", what, f.size()));
            for (size_t k = 0; k < f.size(); k += 16)
                if (load<uint32_t>(f.data() + k + 4) != 0)
                    return fail(at(off + 8 + k + 4), fmt::format("{}: MSR entry {}'s reserved u32 is not 0", what, k / 16));
            return true;
        case 10: return field_size<kvm_vcpu_events>(what, tag, "kvm_vcpu_events", f, off);
        default: return true; // a newer writer's field
        }
    });
    if (!ok) return false;
    for (uint32_t tag = 1; tag <= 10; ++tag)
        if (!(seen & (1u << tag))) return fail(rec_off_, fmt::format("{}: field {} is missing", what, tag));
    return true;
}

bool Verifier::vm(std::span<const uint8_t> body) {
    const std::string what = fmt::format("VM_STATE at offset {}", rec_off_);
    uint32_t seen = 0;
    bool ok = fields(what, body, 8, [&](uint32_t tag, std::span<const uint8_t> f, size_t off) {
        if (tag >= 1 && tag <= 3) seen |= 1u << tag;
        switch (tag) {
        case 1:
            if (!field_size<uint32_t>(what, tag, "version", f, off)) return false;
            if (load<uint32_t>(f.data()) != 1)
                return fail(at(off + 8), fmt::format("{}: state version {} (expected 1)", what, load<uint32_t>(f.data())));
            return true;
        case 2: return field_size<uint64_t>(what, tag, "guest time", f, off);
        case 3: return field_size<kvm_clock_data>(what, tag, "kvm_clock_data", f, off);
        default: return true;
        }
    });
    if (!ok) return false;
    for (uint32_t tag = 1; tag <= 3; ++tag)
        if (!(seen & (1u << tag))) return fail(rec_off_, fmt::format("{}: field {} is missing", what, tag));
    return true;
}

bool Verifier::device(std::span<const uint8_t> body) {
    const std::string what = fmt::format("DEVICE_STATE at offset {}", rec_off_);
    bool have_name = false, have_version = false;
    bool ok = fields(what, body, 8, [&](uint32_t tag, std::span<const uint8_t> f, size_t off) {
        switch (tag) {
        case 1:
            have_name = true;
            if (f.empty() || f.size() > 64)
                return fail(at(off + 4), fmt::format("{}: device name of {} bytes (1 to 64)", what, f.size()));
            return true;
        case 2: have_version = true; return field_size<uint32_t>(what, tag, "version", f, off);
        default: return true; // 3: device-defined bytes, any length
        }
    });
    if (!ok) return false;
    if (!have_name) return fail(rec_off_, what + ": the device name (field 1) is missing");
    if (!have_version) return fail(rec_off_, what + ": the device version (field 2) is missing");
    return true;
}

} // namespace

Result<StreamReport> verify_stream(StreamSource& src) {
    StreamReport r;
    Reader in(src);
    Verifier v(r);
    US_TRYV(v.run(in));
    return r;
}

StreamReport verify_stream(std::span<const uint8_t> bytes) {
    SpanSource src(bytes);
    return *verify_stream(src); // a span never fails to read
}

Result<StreamReport> verify_stream_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening " + path);
    FileSource src(std::move(fd), path);
    return verify_stream(src);
}

std::string format_report(const StreamReport& r) {
    std::string s;
    if (r.header_read)
        s += fmt::format("header: version {}, {} MiB of guest memory ({} pages), {} vCPUs, {} disks, session {:#018x}\n",
                         r.version, r.memory_bytes >> 20, r.memory_bytes / kPage, r.vcpus, r.disks, r.session_id);
    s += fmt::format("bytes: {}, records: {}\n", r.bytes, r.records);
    if (r.checkpoints)
        s += fmt::format("checkpoints: {} complete, epochs {}{} .. {}\n", r.checkpoints, *r.first_epoch,
                         r.first_initial ? " (initial synchronization)" : "", *r.last_epoch);
    else
        s += "checkpoints: none complete\n";
    s += fmt::format("pages: {} in {} batches:", r.pages, r.page_records);
    for (size_t e = 0; e < r.pages_by_encoding.size(); ++e) s += fmt::format(" {} {}", kEncodingNames[e], r.pages_by_encoding[e]);
    s += fmt::format("; {} payload bytes\n", r.payload_bytes);
    if (r.disks > 0 || r.disk_block_records > 0 || r.disk_zero_ranges > 0 || r.disk_digest_records > 0) {
        s += "disks:";
        for (size_t i = 0; i < r.disk_sizes.size(); ++i) s += fmt::format("{} {} bytes", i ? "," : "", r.disk_sizes[i]);
        s += fmt::format("{}{} blocks in {} batches (raw {}, LZ4 {}), {} data bytes; {} zero ranges of {} blocks; "
                         "{} digest records comparing {} chunks of 256 KiB\n",
                         r.disk_sizes.empty() ? " " : "; ", r.disk_blocks, r.disk_block_records, r.disk_records_by_encoding[0],
                         r.disk_records_by_encoding[1], r.disk_data_bytes, r.disk_zero_ranges, r.disk_zero_blocks,
                         r.disk_digest_records, r.disk_digest_chunks);
    }
    s += fmt::format("other: {} device states, {} heartbeats, {} verification slices, {} unknown optional records skipped\n",
                     r.device_states, r.heartbeats, r.verify_slices, r.optional_records);
    if (r.torn_epoch)
        s += fmt::format("tail: the capture ends inside checkpoint {} (begun at offset {}, {} of its records complete){}; "
                         "a torn tail, not an error\n",
                         *r.torn_epoch, r.torn_checkpoint_offset, r.torn_checkpoint_records,
                         r.torn_record ? fmt::format(", in the middle of the record at offset {}", *r.torn_record) : "");
    else if (r.ends_before_disks)
        s += fmt::format("tail: the capture ends after the header, before the DISKS record of its {} disks; a torn tail, not an "
                         "error\n",
                         r.disks);
    else if (r.torn_record)
        s += fmt::format("tail: the capture ends in the middle of the record at offset {}, between checkpoints; "
                         "a torn tail, not an error\n",
                         *r.torn_record);
    if (r.violation)
        s += fmt::format("result: INVALID at offset {} (record at offset {}): {}\n", r.violation->offset,
                         r.violation->record_offset, r.violation->message);
    else
        s += "result: valid (structure only: LZ4 payloads, page and disk block checks and chunk digests are not verified, the "
             "verifier holds no guest memory or disk)\n";
    return s;
}

} // namespace understudy::replicator
