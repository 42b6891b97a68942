// Writes the seed corpora of fuzz/corpus/<target>/ from the project's own encoders, and
// checks each seed against the real reader before writing it (the replication seeds must
// commit on a BackupReplica and pass the stream verifier). Run by hand after a format
// change: `build/fuzz/fuzz_make_seeds fuzz/corpus` (docs/fuzzing.md). Seeds that come
// from files rather than encoders (guest images, JSON, TOML) are copied by scripts/fuzz.sh
// --seeds, not written here.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <fcntl.h>
#include <unistd.h>

#include "common/codec.hpp"
#include "fuzz/fuzz_support.hpp"
#include "hv/snapshot.hpp"
#include "hv/virtio/virtqueue.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/control_link.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/stream_verifier.hpp"

using namespace understudy;
using namespace understudy::replicator;
namespace fs = std::filesystem;

namespace {

fs::path g_out;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "make_seeds: %s\n", what.c_str());
    std::exit(1);
}

void write_seed(const std::string& target, const std::string& name, std::span<const uint8_t> bytes) {
    fs::create_directories(g_out / target);
    std::ofstream f(g_out / target / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) die("writing " + (g_out / target / name).string());
    std::printf("%s/%s: %zu bytes\n", target.c_str(), name.c_str(), bytes.size());
}

std::vector<uint8_t> with_flags(uint8_t flags, std::span<const uint8_t> b) {
    std::vector<uint8_t> v{flags};
    v.insert(v.end(), b.begin(), b.end());
    return v;
}

hv::VcpuState vcpu_state(uint64_t rip) {
    hv::VcpuState s;
    s.cpuid.resize(2);
    s.cpuid[0].function = 0;
    s.cpuid[0].eax = 0xd;
    s.cpuid[1].function = 1;
    s.cpuid[1].ecx = 0x80000000u;
    s.mp_state.mp_state = KVM_MP_STATE_RUNNABLE;
    s.regs.rip = rip;
    s.regs.rflags = 0x3202;
    s.sregs.cr0 = 0x80050033;
    s.sregs.cr4 = 0x20;
    s.sregs.efer = 0x500;
    s.xsave.assign(4096, 0);
    s.xsave[0] = 0x7f;
    s.msrs = {{0xc0000080, 0x500}, {0x10, 12345}};
    return s;
}

// One checkpoint as CheckpointWriter frames it.
struct StreamBuilder {
    std::vector<uint8_t> out;
    CheckpointDigest digest;
    void record(uint32_t type, std::span<const uint8_t> body) {
        if (type != kCheckpointBegin && type != kCheckpointEnd && type != kHeartbeat) digest.add(type, body);
        append_record(out, type, body);
    }
    void begin(uint64_t epoch, uint32_t flags) {
        digest.clear();
        std::vector<uint8_t> b;
        Encoder e(b);
        e.u64(epoch);
        e.u32(flags);
        e.u32(0);
        record(kCheckpointBegin, b);
    }
    void pages(PageEncoder& enc, uint64_t epoch, std::span<const uint64_t> idx, std::span<const uint8_t> data) {
        std::vector<uint8_t> b;
        Encoder(b).u64(epoch);
        if (!enc.encode(idx, data, b)) die("encoding pages");
        record(kPages, b);
    }
    void disk_digests(uint64_t epoch, const DiskDigests& d) {
        std::vector<uint8_t> b;
        Encoder(b).u64(epoch);
        encode_disk_digests(d, b);
        record(kDiskDigests, b);
    }
    void disk_zero(uint64_t epoch, const DiskZero& z) {
        std::vector<uint8_t> b;
        Encoder(b).u64(epoch);
        encode_disk_zero(z, b);
        record(kDiskZero, b);
    }
    // `blocks` strictly increasing; `data` their 4 KiB each.
    void disk_blocks(uint64_t epoch, uint64_t session, uint32_t disk, std::vector<uint64_t> blocks, std::span<const uint8_t> data) {
        std::vector<uint8_t> b, lz4_state;
        Encoder(b).u64(epoch);
        encode_disk_blocks(disk, blocks, data, session, lz4_state, b);
        record(kDiskBlocks, b);
    }
    void state(uint64_t epoch, const hv::VmState& s) {
        for (uint32_t i = 0; i < s.vcpus.size(); ++i) {
            std::vector<uint8_t> b;
            Encoder e(b);
            e.u64(epoch);
            e.u32(i);
            e.u32(0);
            hv::encode_vcpu_state(s.vcpus[i], b);
            record(kVcpuState, b);
        }
        std::vector<uint8_t> b;
        Encoder(b).u64(epoch);
        hv::encode_vm_clock(s, b);
        record(kVmState, b);
        for (const auto& d : s.devices) {
            b.clear();
            Encoder(b).u64(epoch);
            hv::encode_device_state(d, b);
            record(kDeviceState, b);
        }
    }
    void end(uint64_t epoch) { append_record(out, kCheckpointEnd, encode_u64s({epoch, digest.records(), digest.value()})); }
};

// A stream of `checkpoints` checkpoints for a 16 MiB guest, each dirtying a few pages;
// with `disks`, the disks of the wire target (fuzz::kWireDiskBytes), disk 0 with a
// consistent identity and disk 1 read-only with none: the initial checkpoint carries the
// digests of every chunk, then zero ranges and blocks (as the primary sends them for
// chunks that differ, and then a pre-copy round), the later ones a few blocks each.
std::vector<uint8_t> make_stream(uint32_t vcpus, int checkpoints, bool extras, uint64_t session, bool disks = false) {
    auto mem = hv::GuestMemory::create(hv::kMinMemory);
    if (!mem) die("guest memory");
    uint64_t pages = mem->page_count();
    std::vector<DiskInfo> info;
    if (disks)
        for (uint64_t bytes : fuzz::kWireDiskBytes) info.push_back({bytes, info.size() == 1});
    if (disks) {
        hv::DiskIdentity& id = info[0].identity;
        for (size_t i = 0; i < id.disk_id.size(); ++i) id.disk_id[i] = uint8_t(0xd0 + i);
        id.generation = session ^ 0x6e6e6e6e;
        id.history = {session ^ 0x5e5e5e5e, session ^ 0x4e4e4e4e};
        id.consistent = true;
    }
    StreamHeader h = make_stream_header(mem->size(), vcpus, hv::memory_layout_digest(*mem), 0xC0FFEEull, session, 0,
                                        static_cast<uint32_t>(info.size()));
    StreamBuilder sb;
    sb.out.assign(reinterpret_cast<const uint8_t*>(&h), reinterpret_cast<const uint8_t*>(&h) + sizeof h);
    if (disks) append_record(sb.out, kDisks, encode_disks(info)); // right after the header
    std::vector<uint8_t> blocks(4 * 4096);
    auto enc = PageEncoder::create({.page_count = pages, .hash_seed = session});
    if (!enc) die("encoder");
    std::mt19937_64 rng(session);
    std::vector<uint8_t> content(8 * 4096);
    for (int cp = 0; cp < checkpoints; ++cp) {
        uint64_t epoch = 1 + cp;
        sb.begin(epoch, cp == 0 ? kCheckpointInitial : 0);
        if (extras) sb.record(kHeartbeat, encode_u64s({1, 1000}));
        std::vector<uint64_t> idx = {0, 1, 2, 100, 101, pages - 1};
        for (size_t k = 0; k < idx.size(); ++k) {
            uint8_t* p = &content[k * 4096];
            switch ((k + cp) % 4) {
            case 0: std::memset(p, 0, 4096); break;                          // ZERO
            case 1: for (size_t i = 0; i < 4096; ++i) p[i] = uint8_t(i / 64 + cp); break; // LZ4, then XOR
            case 2: for (size_t i = 0; i < 4096; ++i) p[i] = uint8_t(rng()); break;      // RAW
            case 3: if (cp == 0) std::memset(p, 0x11, 4096); break;          // SAME after the first
            }
        }
        sb.pages(*enc, epoch, idx, {content.data(), idx.size() * 4096});
        if (disks) {
            for (size_t i = 0; i < blocks.size(); ++i) // compressible, then a random block
                blocks[i] = i < 3 * 4096 ? uint8_t(i / 512 + cp) : uint8_t(rng());
            if (cp == 0) { // each disk is one chunk; disk 0: blocks 0-7 and 11-14 are holes; disk 1: block 0
                for (uint32_t disk = 0; disk < info.size(); ++disk) {
                    std::vector<uint8_t> chunk(kDiskChunkBytes, 0);
                    if (disk == 0) std::memcpy(&chunk[8 * 4096], blocks.data(), blocks.size());
                    sb.disk_digests(epoch, {disk, 0, {chunk_digest(chunk, session)}});
                }
                sb.disk_zero(epoch, {0, 0, 8});
                sb.disk_zero(epoch, {1, 0, 1});
                sb.disk_blocks(epoch, session, 0, {8, 9, 10, 15}, blocks);
                sb.disk_zero(epoch, {0, 11, 4}); // after blocks of its disk
                sb.disk_blocks(epoch, session, 1, {1, 2}, {blocks.data() + 2 * 4096, 2 * 4096});
                sb.disk_blocks(epoch, session, 0, {9}, {blocks.data(), 4096}); // a pre-copy round sends it again
            } else {
                sb.disk_blocks(epoch, session, 0, {3, uint64_t(9 + cp % 6)}, {blocks.data() + 2 * 4096, 2 * 4096});
                sb.disk_blocks(epoch, session, 1, {2}, {blocks.data(), 4096});
            }
        }
        hv::VmState st;
        for (uint32_t i = 0; i < vcpus; ++i) st.vcpus.push_back(vcpu_state(0x100000 + cp * 16 + i));
        st.guest_time_ns = 1000000ull * (cp + 1);
        st.devices.push_back({"virtio-net", 1, {1, 2, 3, 4, 5}});
        if (extras) sb.record(kRecordOptional | 0x77, std::vector<uint8_t>{9, 9, 9}); // an unknown optional record
        sb.state(epoch, st);
        sb.end(epoch);
    }
    return sb.out;
}

// Disk files of the given sizes in a new temporary directory (removed by the caller).
DiskReplicaConfig disk_files(std::span<const DiskInfo> disks) {
    std::string dir = (fs::temp_directory_path() / "understudy-seeds-XXXXXX").string();
    if (!::mkdtemp(dir.data())) die("mkdtemp");
    DiskReplicaConfig cfg;
    cfg.spill_dir = dir;
    for (size_t i = 0; i < disks.size(); ++i) {
        cfg.paths.push_back(dir + "/disk" + std::to_string(i));
        int fd = ::open(cfg.paths.back().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(disks[i].size_bytes)) != 0) die("disk file " + cfg.paths.back());
        ::close(fd);
    }
    return cfg;
}

void check_stream(const std::vector<uint8_t>& s, int want_commits) {
    StreamHeader h;
    std::memcpy(&h, s.data(), sizeof h);
    auto rep = verify_stream(std::span<const uint8_t>(s));
    if (!rep.valid()) die("verifier: " + rep.violation->message);
    size_t at = sizeof h;
    std::vector<DiskInfo> disks;
    std::unique_ptr<DiskReplica> files;
    std::string dir;
    if (h.disks > 0) { // the DISKS record, then a replica with disk files of those sizes
        RecordHeader rh;
        std::memcpy(&rh, &s[at], sizeof rh);
        if (rh.type != kDisks) die("no DISKS record after the header");
        auto d = decode_disks({s.data() + at + 16, rh.length}, h.disks);
        if (!d) die("DISKS: " + d.error().message);
        disks = std::move(*d);
        at += 16 + rh.length + (8 - rh.length % 8) % 8;
        auto cfg = disk_files(disks);
        dir = cfg.spill_dir;
        auto opened = DiskReplica::open(std::move(cfg));
        if (!opened) die("disk replica: " + opened.error().describe());
        files = std::move(*opened);
    }
    auto replica = BackupReplica::create(h.memory_bytes, h.vcpus, std::move(files));
    if (!replica || !(*replica)->begin_session(h, disks)) die("replica session");
    int commits = 0;
    uint64_t answers = 0;
    for (; at < s.size();) {
        RecordHeader rh;
        std::memcpy(&rh, &s[at], sizeof rh);
        Record r{rh.type, std::vector<uint8_t>(s.begin() + at + 16, s.begin() + at + 16 + rh.length)};
        auto fed = (*replica)->feed(r);
        if (!fed) die("replica: " + fed.error().message);
        // The backup answers each DISK_DIGESTS with a DISK_WANT (BackupServer sends it).
        if (auto reply = (*replica)->take_reply()) {
            if (r.type != kDiskDigests || reply->type != kDiskWant || !decode_disk_want(reply->body))
                die("the replica answered a record other than DISK_DIGESTS, or not with a DISK_WANT");
            ++answers;
        }
        commits += fed->has_value();
        at += 16 + rh.length + (8 - rh.length % 8) % 8;
    }
    if (commits != want_commits) die("replica committed " + std::to_string(commits) + " checkpoints");
    if (h.disks > 0 && (rep.disk_blocks == 0 || rep.disk_zero_ranges == 0 || rep.disk_digest_records == 0 ||
                        (*replica)->disk_stats().blocks_applied == 0))
        die("the stream's disk records did not arrive");
    if (answers != rep.disk_digest_records) die("the replica answered " + std::to_string(answers) + " of the DISK_DIGESTS records");
    replica->reset(); // closes the disk files
    if (!dir.empty()) fs::remove_all(dir);
}

void wire_seeds() {
    auto a = make_stream(1, 2, false, 0x1111);
    check_stream(a, 2);
    write_seed("wire", "two-checkpoints-1vcpu", with_flags(0, a));
    auto b = make_stream(2, 2, true, 0x2222);
    check_stream(b, 2);
    write_seed("wire", "heartbeat-optional-2vcpu", with_flags(7, b));
    // Torn inside the second checkpoint: the first commits, the rest is discarded.
    std::vector<uint8_t> torn(a.begin(), a.begin() + static_cast<long>(a.size() - 100));
    write_seed("wire", "torn-second-checkpoint", with_flags(7, torn));
    // Two disks (DISKS with identities, DISK_DIGESTS, DISK_ZERO, DISK_BLOCKS raw and LZ4), as
    // the target's replicas have.
    auto d = make_stream(1, 3, false, 0x3333, true);
    check_stream(d, 3);
    write_seed("wire", "disks-three-checkpoints", with_flags(7, d)); // fix-ups on: a mutated record stays honest
}

void page_codec_seeds() {
    // Mode 0: a batch against the target's base pages (pattern p, page count n), made by
    // an encoder that has "sent" those bases first, so SAME and XOR_LZ4 appear.
    for (uint8_t pattern : {0, 5}) {
        uint64_t n = 8, seed = 0xABCDEF;
        std::vector<uint8_t> bases(n * 4096);
        for (uint64_t p = 0; p < n; ++p) {
            if ((p + pattern) % 3 == 0) continue;
            for (size_t i = 0; i < 4096; ++i) bases[p * 4096 + i] = uint8_t((i * (p + 1)) >> (pattern % 8)) ^ pattern;
        }
        auto enc = PageEncoder::create({.page_count = n, .hash_seed = seed});
        std::vector<uint64_t> all(n);
        for (uint64_t i = 0; i < n; ++i) all[i] = i;
        std::vector<uint8_t> ignored;
        if (!enc || !enc->encode(all, bases, ignored)) die("page encoder");
        std::vector<uint8_t> now = bases;
        now[1 * 4096 + 7] ^= 0xFF;                                  // XOR_LZ4
        std::memset(&now[2 * 4096], 0, 4096);                       // ZERO
        for (size_t i = 0; i < 4096; ++i) now[4 * 4096 + i] = uint8_t(i * 7919 >> 3); // LZ4 or RAW
        std::vector<uint8_t> batch;
        if (!enc->encode(all, now, batch)) die("page encoder");
        std::vector<uint8_t> in(11 + batch.size());
        in[0] = uint8_t(pattern ? 1 : 0);
        std::memcpy(&in[1], &seed, 8);
        in[9] = uint8_t(n - 1); // page count = 1 + byte % 64
        in[10] = pattern;
        std::copy(batch.begin(), batch.end(), in.begin() + 11);
        write_seed("page_codec", "batch-pattern-" + std::to_string(pattern), in);
    }
    // Mode 1: a round trip script (count, indices, edits), twice.
    std::vector<uint8_t> rt{0x80, 1, 2, 3, 4, 5, 6, 7, 8, 15, 7, 4, 0, 1, 2, 3, 2, 0x10, 0, 8, 'h', 'e', 'l', 'l', 'o', ' ',
                            'w', 'o', 3, 0, 0, 1, 2, 3, 2, 0x10, 0, 8, 'h', 'e', 'L', 'l', 'o', ' ', 'w', 'o'};
    write_seed("page_codec", "round-trip", rt);
}

void control_link_seeds() {
    constexpr uint64_t kSession = 0x5EED5EED5EED5EEDull;
    auto hello = make_control_hello(kSession, {});
    std::vector<uint8_t> s(reinterpret_cast<uint8_t*>(&hello), reinterpret_cast<uint8_t*>(&hello) + sizeof hello);
    for (uint64_t seq = 1; seq <= 3; ++seq) append_record(s, kHeartbeat, encode_u64s({seq, seq * 10000000}));
    write_seed("control_link", "heartbeats-then-close", with_flags(0, s));
    append_record(s, kRecordOptional | 0x99, std::vector<uint8_t>{1, 2, 3});
    append_record(s, kGoodbye, {});
    write_seed("control_link", "heartbeats-optional-goodbye", with_flags(1, s));
    // A planned switchover as the backup hears it, and an answer nobody asked for.
    s.resize(sizeof hello);
    append_record(s, kHeartbeat, encode_u64s({1, 10000000}));
    append_record(s, kHandover, encode_u64s({42}));
    append_record(s, kHandoverAccept, encode_u64s({42}));
    append_record(s, kHeartbeat, encode_u64s({2, 20000000}));
    write_seed("control_link", "handover", with_flags(0, s));
}

void virtqueue_seeds() {
    using namespace understudy::hv::virtio;
    // size 8, max 256; desc @0x1000, avail @0x2000, used @0x3000; next 0/0; bound 64 KiB;
    // a 16 KiB window: two chains (readable+writable, and a single readable).
    std::vector<uint8_t> in;
    Encoder e(in);
    auto u16 = [&](uint16_t v) { e.raw(&v, 2); };
    u16(8);
    u16(256);
    e.u64(0x1000);
    e.u64(0x2000);
    e.u64(0x3000);
    u16(0);
    u16(0);
    e.u32(65536);
    in.push_back(64); // 64 x 256 = 16 KiB window
    std::vector<uint8_t> win(16384, 0);
    auto desc = [&](int i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
        VirtqDesc d{addr, len, flags, next};
        std::memcpy(&win[0x1000 + 16 * i], &d, 16);
    };
    desc(0, 0x800, 12, kDescFNext, 1);
    desc(1, 0x900, 256, kDescFWrite, 0);
    desc(2, 0xA00, 64, 0, 0);
    uint16_t avail[4] = {0, 2, 0, 2}; // flags, idx 2, ring[0]=0, ring[1]=2
    std::memcpy(&win[0x2000], avail, sizeof avail);
    in.insert(in.end(), win.begin(), win.end());
    // steps: consume, consume with NO_NOTIFY, guest bumps avail idx to 3 and ring[2]=1, peek-only, restore, consume
    for (uint8_t op : {0, 2}) in.push_back(op);
    in.push_back(4); u16(0x2002); u16(3);
    in.push_back(4); u16(0x2008); u16(1);
    for (uint8_t op : {3, 6, 0, 1}) in.push_back(op);
    write_seed("virtqueue", "two-chains-then-guest-update", in);
}

// The virtio_blk target's steps (fuzz/targets/virtio_blk.cpp): a config byte, then
// requests built by the target's driver, publish-and-notify, raw ring writes.
struct BlkSeed {
    std::vector<uint8_t> b;
    explicit BlkSeed(uint8_t config) : b{config} {}
    BlkSeed& u8(uint8_t v) { b.push_back(v); return *this; }
    BlkSeed& u16(uint16_t v) { return raw(&v, 2); }
    BlkSeed& u32(uint32_t v) { return raw(&v, 4); }
    BlkSeed& u64(uint64_t v) { return raw(&v, 8); }
    BlkSeed& raw(const void* p, size_t n) {
        b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
        return *this;
    }
    // op 0: type selector (0 IN, 1 OUT, 2 FLUSH, 3 GET_ID), sector (< 0x8000), shape
    // (bits 0-2 segments, 8 status, 0x10 split header, 0x20 short header, 0x40 wrong
    // direction, 0x80 trailing empty writable), segment lengths after the previous buffer.
    BlkSeed& request(uint8_t type, uint16_t sector, uint8_t shape, std::initializer_list<uint16_t> lens) {
        u8(0).u8(type).u16(sector).u8(shape);
        for (uint16_t l : lens) u16(l);
        return *this;
    }
    BlkSeed& notify() { return u8(1); }
};

void virtio_blk_seeds() {
    constexpr uint8_t kFlush = 2, kReadOnly = 1, kQueue8 = 4;
    constexpr uint8_t kStatus = 8;
    write_seed("virtio_blk", "read", BlkSeed(kFlush).request(0, 5, kStatus | 2, {512, 1024}).notify().b);
    write_seed("virtio_blk", "write-write-through",
               BlkSeed(0).request(1, 8, kStatus | 2, {512, 4096}).notify().request(0, 8, kStatus | 1, {4608}).notify().b);
    write_seed("virtio_blk", "flush-then-write",
               BlkSeed(kFlush | kQueue8).request(2, 0, kStatus, {}).request(1, 127, kStatus | 1, {512}).notify().b);
    write_seed("virtio_blk", "get-id",
               BlkSeed(kFlush).request(3, 0, kStatus | 1, {20}).request(3, 0, kStatus | 2, {4, 8}).notify().b);
    {
        BlkSeed s(kFlush);
        s.u8(0).u8(4).u32(11).u16(0).u8(kStatus);   // DISCARD, as a raw u32 type
        s.u8(0).u8(107).u16(0).u8(kStatus);         // selector 107: type 107 >> 3 = 13, WRITE_ZEROES
        s.u8(0).u8(4).u32(0xffffffff).u16(0).u8(kStatus | 1).u16(512);
        write_seed("virtio_blk", "unsupported-types", s.notify().b);
    }
    {
        BlkSeed s(kFlush);
        s.request(1, 127, kStatus | 1, {1024});          // runs past the end (128 sectors)
        s.request(0, 128, kStatus | 1, {512});           // starts at the end
        s.u8(0).u8(1).u16(0x8000).u64(~0ull - 1).u8(kStatus | 1).u16(1024); // sector overflow
        s.request(1, 0, kStatus | 1, {700});             // not whole sectors
        write_seed("virtio_blk", "past-the-end", s.notify().b);
    }
    write_seed("virtio_blk", "no-status-byte",
               BlkSeed(kFlush).request(0, 0, 1, {512}).request(1, 0, 0x20 | kStatus | 1, {512}).notify().b);
    write_seed("virtio_blk", "read-only-disk",
               BlkSeed(kReadOnly | kFlush)
                   .request(1, 0, kStatus | 1, {512})
                   .request(2, 0, kStatus, {})
                   .request(0, 0, kStatus | 1, {512})
                   .notify()
                   .b);
    // Shapes: a split header, a trailing empty writable descriptor, data in the wrong
    // direction, a buffer reused, a segment at a raw address in other RAM; then two chains
    // made available without a notify, served by the resume after a restore.
    {
        BlkSeed s(kFlush);
        s.request(1, 2, 0x10 | kStatus | 1, {512});
        s.request(0, 2, 0x80 | kStatus | 1, {512});
        s.request(0, 2, 0x40 | kStatus | 1, {512});
        s.request(0, 4, kStatus | 2, {512, 0x4000 | 512}); // 15 descriptors of 16 so far
        s.notify();
        s.u8(0).u8(0).u16(6).u8(kStatus | 1).u16(0xc000 | 1024).u64(0x200000);
        s.request(1, 9, kStatus | 1, {512}).request(0, 9, kStatus | 1, {512});
        s.u8(1).notify(); // op 1 twice: the second finds nothing new
        s.request(2, 0, kStatus, {}).request(0, 1, kStatus | 1, {512});
        s.u8(4).u16(8); // a raw avail idx: 8 of the 9 chains offered
        s.request(0, 3, kStatus | 1, {512});
        s.u8(5).u16(0x800 + 2).u64(10);   // the guest publishes avail idx 10 itself
        s.u8(6).u8(1);                    // a checkpoint and restore: resume serves it
        write_seed("virtio_blk", "shapes-and-restore", s.b);
    }
    // A hostile ring: a descriptor loop, an avail idx far ahead, a reset, a head beyond the
    // queue, a queue moved by register writes.
    {
        BlkSeed s(kFlush | kQueue8);
        s.u8(2).u8(0).u64(0x2000).u32(16).u16(1).u16(0); // descriptor 0 chains to itself
        s.u8(3).u16(0).notify();
        s.u8(6).u8(0);
        s.request(0, 0, kStatus | 1, {512}).u8(4).u16(100);
        s.u8(6).u8(0);
        s.u8(3).u16(9).notify();
        s.u8(6).u8(0);
        s.u8(7).u8(0x44 / 4).u32(0);      // QueueReady 0
        s.u8(7).u8(0xa0 / 4).u32(0x3000); // the used ring moves
        s.u8(7).u8(0x44 / 4).u32(1);
        s.request(0, 1, kStatus | 1, {512}).notify();
        write_seed("virtio_blk", "hostile-ring", s.b);
    }
}

void snapshot_seeds() {
    auto mem = hv::GuestMemory::create(hv::kMinMemory);
    if (!mem) die("guest memory");
    std::memset(mem->page_ptr(3), 0x5A, 4096);
    hv::VmState st;
    st.vcpus = {vcpu_state(0x100000)};
    st.guest_time_ns = 42;
    st.devices.push_back({"virtio-net", 1, std::vector<uint8_t>(40, 7)});
    fs::path tmp = fs::temp_directory_path() / "understudy-seed.snap";
    if (!hv::write_snapshot(*mem, st, tmp.string())) die("write_snapshot");
    std::ifstream f(tmp, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    fs::remove(tmp);
    write_seed("snapshot_records", "one-page-one-vcpu", with_flags(0, bytes));
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 2) die("usage: fuzz_make_seeds CORPUS_DIR");
    g_out = argv[1];
    wire_seeds();
    page_codec_seeds();
    control_link_seeds();
    virtqueue_seeds();
    snapshot_seeds();
    virtio_blk_seeds();
    return 0;
}
