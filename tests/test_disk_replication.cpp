// Disks replicated with each checkpoint (docs/disks.md, "Replication"), without KVM: the
// record codec, the backup's staging and apply fed by hand (torn, corrupt and misplaced
// records leave the disks as the last committed checkpoint had them), and the epoch
// engine against a fake VM whose vCPUs write its disks: at every committed checkpoint the
// backup's disks equal the primary's at that checkpoint's pause, byte for byte.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "common/codec.hpp"
#include "common/file_io.hpp"
#include "hv/disk_identity.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/primary.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/fake_vm.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/stream_builder.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace understudy::test;
using namespace std::chrono;

namespace {

constexpr uint64_t kBlock = hv::kDiskBlockBytes;

// A fresh directory for one test case's disk files.
std::string temp_dir() {
    std::string t = (std::filesystem::temp_directory_path() / "us-disk-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()));
    return t;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::vector<uint8_t> out(std::filesystem::file_size(path));
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(pread_full(fd, 0, out));
    ::close(fd);
    return out;
}

void write_file(const std::string& path, const std::vector<uint8_t>& data) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite_full(fd, 0, data));
    ::close(fd);
}

uint64_t file_digest(const std::string& path) {
    auto b = read_file(path);
    return XXH3_64bits(b.data(), b.size());
}

std::vector<uint8_t> pattern(size_t bytes, uint64_t seed) {
    std::vector<uint8_t> out(bytes);
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t v = rng() & 0x0f0f0f0f0f0f0f0full; // compressible, not trivially
        std::memcpy(out.data() + i, &v, std::min<size_t>(8, bytes - i));
    }
    return out;
}

Record disk_record(uint32_t type, uint64_t epoch, const std::vector<uint8_t>& rest) {
    std::vector<uint8_t> body;
    Encoder(body).u64(epoch);
    body.insert(body.end(), rest.begin(), rest.end());
    return rec(type, std::move(body));
}

Record blocks_record(uint64_t epoch, uint32_t disk, std::vector<uint64_t> blocks, const std::vector<uint8_t>& data,
                     uint64_t seed = 42) {
    std::vector<uint8_t> body, lz4;
    encode_disk_blocks(disk, blocks, data, seed, lz4, body);
    return disk_record(kDiskBlocks, epoch, body);
}

Record zero_record(uint64_t epoch, DiskZero z) {
    std::vector<uint8_t> body;
    encode_disk_zero(z, body);
    return disk_record(kDiskZero, epoch, body);
}

// A StreamBuilder checkpoint with `extra` records after its pages, END recomputed.
std::vector<Record> with_records(std::vector<Record> cp, const std::vector<Record>& extra) {
    cp.insert(cp.begin() + 2, extra.begin(), extra.end()); // after BEGIN and the PAGES record
    CheckpointDigest d;
    for (size_t i = 1; i + 1 < cp.size(); ++i) d.add(cp[i].type, cp[i].body);
    const uint64_t epoch = Decoder(cp.front().body, "BEGIN").u64().value();
    cp.back() = rec(kCheckpointEnd, encode_u64s({epoch, d.records(), d.value()}));
    return cp;
}

Result<std::optional<uint64_t>> feed_all(BackupReplica& r, const std::vector<Record>& recs) {
    std::optional<uint64_t> last;
    for (const auto& x : recs) {
        auto c = US_TRY(r.feed(x));
        if (c) last = c;
    }
    return last;
}

// A replica over one backup disk file of `bytes`, in a session with a primary that has
// one disk of that size.
struct DiskStream {
    std::string dir = temp_dir();
    std::string path = dir + "/backup.img";
    uint64_t bytes;
    StreamBuilder b;
    std::unique_ptr<BackupReplica> replica;

    explicit DiskStream(uint64_t size, uint64_t staging_memory = 1 << 20) : bytes(size) {
        write_file(path, std::vector<uint8_t>(size, 0xaa)); // whatever was there before
        auto disks = DiskReplica::open({.paths = {path}, .staging_memory = staging_memory, .spill_dir = dir});
        REQUIRE(disks);
        auto r = BackupReplica::create(kMem, 1, std::move(*disks));
        REQUIRE(r);
        replica = std::move(*r);
        auto h = b.header();
        h.disks = 1;
        const DiskInfo info{size, false};
        REQUIRE(replica->begin_session(h, {&info, 1}));
    }
    ~DiskStream() { std::filesystem::remove_all(dir); }
};

} // namespace

TEST_CASE("disk block records round-trip, compressed or raw, and every field is checked", "[disk_replication]") {
    const std::vector<DiskInfo> disks{{64 * kBlock + 512, false}};
    std::vector<uint64_t> blocks{0, 3, 64}; // 64: the last, partial block
    auto data = pattern(3 * kBlock, 1);
    std::vector<uint8_t> body, lz4;
    encode_disk_blocks(0, blocks, data, 7, lz4, body);
    CHECK(body.size() < data.size()); // compressible: LZ4
    DiskBlocks out;
    REQUIRE(decode_disk_blocks(body, 7, disks, out));
    CHECK(out.blocks == blocks);
    CHECK(out.data == data);

    std::mt19937_64 rng(2);
    std::vector<uint8_t> noise(kBlock);
    for (auto& x : noise) x = uint8_t(rng());
    body.clear();
    encode_disk_blocks(0, std::vector<uint64_t>{5}, noise, 7, lz4, body);
    REQUIRE(decode_disk_blocks(body, 7, disks, out)); // incompressible: raw
    CHECK(out.data == noise);

    auto refused = [&](std::vector<uint8_t> b, uint64_t seed, const std::string& why) {
        auto r = decode_disk_blocks(b, seed, disks, out);
        INFO(why);
        REQUIRE(!r);
        CHECK(r.error().message.find(why) != std::string::npos);
    };
    refused(body, 8, "fail their check");          // another session
    auto bad = body;
    bad[0] = 1;                                     // disk 1 of 1
    refused(bad, 7, "disk 1, but the stream has 1");
    bad = body;
    bad.back() ^= 1;                                // a data byte
    refused(bad, 7, "fail their check");
    bad.clear();
    encode_disk_blocks(0, std::vector<uint64_t>{65}, noise, 7, lz4, bad);
    refused(bad, 7, "outside disk 0");
    bad.clear();
    encode_disk_blocks(0, std::vector<uint64_t>{4, 4}, pattern(2 * kBlock, 3), 7, lz4, bad);
    refused(bad, 7, "not strictly increasing");
    bad = body;
    bad.pop_back();
    refused(bad, 7, "announces");
    bad.clear();
    encode_disk_blocks(0, blocks, data, 7, lz4, bad);
    std::memset(bad.data() + 8, 0, 4); // LZ4 data relabelled raw: the lengths no longer fit
    refused(bad, 7, "raw data of");

    std::vector<uint8_t> z;
    encode_disk_zero({0, 60, 5}, z);
    auto zr = decode_disk_zero(z, disks);
    REQUIRE(zr);
    CHECK(zr->blocks == 5);
    z.clear();
    encode_disk_zero({0, 60, 6}, z);
    CHECK(!decode_disk_zero(z, disks)); // past the end
    CHECK(!decode_disks(encode_disks(std::vector<DiskInfo>{{1000, false}}), 1)); // not a multiple of 512
    CHECK(decode_disks(encode_disks(disks), 1).value() == disks);
}

TEST_CASE("a checkpoint's blocks reach the backup's disk only when it commits; torn or corrupt ones never",
          "[disk_replication]") {
    const uint64_t size = 32 * kBlock + 1024;
    DiskStream s(size, 8 * kBlock); // 8 blocks in memory; the rest spill
    // Checkpoint 1, initial: holes zeroed, then data; a block sent twice, the last copy counts.
    auto d1 = pattern(16 * kBlock, 10);
    std::vector<uint64_t> first16(16);
    for (uint64_t i = 0; i < 16; ++i) first16[i] = i;
    auto again = pattern(kBlock, 11);
    auto cp1 = with_records(s.b.checkpoint(1, kCheckpointInitial, {1}, 1),
                            {zero_record(1, {0, 16, 17}), blocks_record(1, 0, first16, d1),
                             blocks_record(1, 0, {3}, again)});
    auto c1 = feed_all(*s.replica, cp1);
    INFO((c1 ? "" : c1.error().message));
    REQUIRE(c1);
    REQUIRE(*c1 == 1u);
    std::vector<uint8_t> expect(size, 0);
    std::memcpy(expect.data(), d1.data(), d1.size());
    std::memcpy(expect.data() + 3 * kBlock, again.data(), kBlock);
    REQUIRE(read_file(s.path) == expect);

    // Checkpoint 2: 20 blocks, more than staging memory holds; the last (partial) block too.
    std::vector<uint64_t> b2;
    for (uint64_t i = 12; i <= 32; ++i) b2.push_back(i);
    auto d2 = pattern(b2.size() * kBlock, 20);
    auto cp2 = with_records(s.b.checkpoint(2, 0, {2}, 2), {blocks_record(2, 0, b2, d2)});
    // Torn before its END: nothing of it on the disk.
    auto torn = cp2;
    torn.pop_back();
    REQUIRE(feed_all(*s.replica, torn));
    CHECK(s.replica->receiving());
    s.replica->abort_open_checkpoint();
    CHECK(read_file(s.path) == expect);
    // Whole: applied, spilled blocks included, the partial block only up to the disk's end.
    auto c2 = feed_all(*s.replica, cp2);
    INFO((c2 ? "" : c2.error().message));
    REQUIRE(c2);
    REQUIRE(*c2 == 2u);
    std::memcpy(expect.data() + 12 * kBlock, d2.data(), size - 12 * kBlock);
    CHECK(read_file(s.path) == expect);
    CHECK(s.replica->disk_stats().spilled_blocks >= 12);

    // Refused, the disk and the committed checkpoint untouched: a corrupt block record, a
    // DISK_ZERO outside the initial checkpoint, a record of another epoch, a block twice
    // outside an initial checkpoint (each with a
    // page never sent before, so that the pages decode whatever the earlier cases left).
    auto corrupt = blocks_record(3, 0, {5}, pattern(kBlock, 30));
    corrupt.body[40] ^= 0xff;
    corrupt = rec(kDiskBlocks, corrupt.body); // framing intact, content not
    std::vector<std::pair<std::string, std::vector<Record>>> hostile = {
        {"fail their check", with_records(s.b.checkpoint(3, 0, {4}, 3), {corrupt})},
        {"DISK_ZERO outside the initial checkpoint", with_records(s.b.checkpoint(3, 0, {5}, 3), {zero_record(3, {0, 0, 1})})},
        {"of epoch 9", with_records(s.b.checkpoint(3, 0, {6}, 3), {blocks_record(9, 0, {5}, pattern(kBlock, 31))})},
        {"block 5 of disk 0 sent twice in one checkpoint",
         with_records(s.b.checkpoint(3, 0, {7}, 3),
                      {blocks_record(3, 0, {5}, pattern(kBlock, 32)), blocks_record(3, 0, {5}, pattern(kBlock, 33))})},
    };
    for (auto& [why, recs] : hostile) {
        auto r = feed_all(*s.replica, recs);
        INFO(why);
        REQUIRE(!r);
        INFO(r.error().message);
        CHECK(r.error().message.find(why) != std::string::npos);
        CHECK(s.replica->committed_epoch() == 2);
        CHECK(read_file(s.path) == expect);
    }
}

TEST_CASE("the backup refuses a primary whose disks differ from its own", "[disk_replication]") {
    DiskStream s(8 * kBlock);
    auto h = s.b.header();
    h.disks = 1;
    const DiskInfo other{16 * kBlock, false};
    auto r = s.replica->begin_session(h, {&other, 1});
    REQUIRE(!r);
    CHECK(r.error().message.find("has 65536 bytes, this backup's") != std::string::npos);
    h.disks = 0;
    r = s.replica->begin_session(h, {});
    REQUIRE(!r);
    CHECK(r.error().message.find("0 disks, this backup 1") != std::string::npos);
    // A backup without disks refuses a primary with some.
    auto bare = BackupReplica::create(kMem, 1);
    REQUIRE(bare);
    h.disks = 1;
    r = (*bare)->begin_session(h, {&other, 1});
    REQUIRE(!r);
    CHECK(r.error().message.find("this backup none") != std::string::npos);
}

TEST_CASE("every committed checkpoint's disks equal the primary's at its pause, byte for byte", "[disk_replication][epoch]") {
    const std::string dir = temp_dir();
    const uint64_t size = 4 * hv::kMiB + 1536; // a partial last block
    FakeVmConfig fc;
    fc.memory_bytes = 16 * hv::kMiB;
    fc.vcpus = 2;
    fc.pages = 300;
    fc.disk_bytes = size;
    fc.disk_paths = {dir + "/a.img", dir + "/b.img"};
    // Disk a starts with data in its first MiB and holes after; the backup's copies start
    // with other bytes everywhere, which the initial synchronization must replace.
    {
        auto head = pattern(hv::kMiB, 5);
        int fd = ::open(fc.disk_paths[0].c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(pwrite_full(fd, 0, head));
        ::close(fd);
    }
    std::vector<std::string> copies{dir + "/a.copy", dir + "/b.copy"};
    for (const auto& c : copies) write_file(c, std::vector<uint8_t>(size, 0x5a));

    std::mutex mu;
    std::map<uint64_t, std::pair<uint64_t, uint64_t>> primary, backup; // epoch -> disk digests
    BackupHooks bh;
    bh.on_commit = [&](uint64_t epoch, const BackupReplica&) { // the disks are written before the ACK
        auto d = std::make_pair(file_digest(copies[0]), file_digest(copies[1]));
        std::lock_guard lock(mu);
        backup[epoch] = d;
    };
    // 64 KiB of staging memory: bursts spill.
    // --disk-ack synced: each checkpoint with writes is fdatasynced before its ACK.
    BackupThread bt(bh, false, {.paths = copies, .staging_memory = 64 * 1024, .spill_dir = dir, .sync_before_ack = true});
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    vm->start();
    vm->resume_all();
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = milliseconds(10);
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    PrimaryHooks ph;
    ph.on_capture = [&](uint64_t epoch, hv::Checkpointable&) { // paused: the disks hold still
        auto d = std::make_pair(file_digest(fc.disk_paths[0]), file_digest(fc.disk_paths[1]));
        std::lock_guard lock(mu);
        primary[epoch] = d;
    };
    auto data = connect_to(*bt.server);
    auto p = Primary::start(*vm, std::move(data), pc, ph, connect_to(*bt.server));
    REQUIRE(p);
    const bool reached = wait_until([&] { return (*p)->acked_epoch() >= 120 || (*p)->failure(); }, seconds(90));
    INFO(((*p)->failure() ? (*p)->failure()->describe() : std::string("no failure")));
    REQUIRE(reached);
    REQUIRE(!(*p)->failure());
    auto figures = (*p)->recent_epochs();
    (*p)->stop();
    CHECK((*p)->wait());
    bt.wait_sessions(1);
    {
        std::lock_guard lock(bt.mu);
        INFO((bt.session_errors.empty() ? std::string() : bt.session_errors.front()));
        CHECK(bt.session_errors.empty());
    }
    uint64_t blocks = 0;
    for (const auto& f : figures) blocks += f.disk_blocks;
    CHECK(blocks > 500); // checkpoints carried disk blocks
    const auto stats = bt.server->replica()->disk_stats();
    CHECK(stats.spilled_blocks > 0);
    CHECK(stats.zero_ranges >= 1); // disk a's holes (and all of b)
    CHECK(stats.syncs >= 100);     // every checkpoint had writes to sync

    std::lock_guard lock(mu);
    REQUIRE(backup.size() >= 120);
    for (auto [epoch, d] : backup) {
        INFO("checkpoint " << epoch);
        auto it = primary.find(epoch);
        REQUIRE(it != primary.end());
        CHECK(it->second == d);
    }
    vm.reset();
    std::filesystem::remove_all(dir);
}

TEST_CASE("disk identities: generations chain, and a sync onto an unrelated or newer copy is refused", "[disk_replication]") {
    const std::string dir = temp_dir();
    const std::string disk = dir + "/d.img", copy = dir + "/copy.img";
    write_file(disk, std::vector<uint8_t>(8 * kBlock, 1));
    REQUIRE(!hv::read_identity(disk).value()); // none yet
    auto g1 = hv::begin_generation(disk);
    REQUIRE(g1);
    auto g2 = hv::begin_generation(disk); // the next run
    REQUIRE(g2);
    CHECK(g2->disk_id == g1->disk_id);
    CHECK(g2->generation != g1->generation);
    CHECK(g2->history[0] == g1->generation);
    CHECK(hv::read_identity(disk).value() == *g2);

    // Onto a copy: unknown or inconsistent copies are overwritten; the same generation or
    // an ancestor's are synchronized; another disk, a newer copy, a diverged one refused.
    CHECK(!hv::sync_refusal(*g2, std::nullopt, copy));
    hv::DiskIdentity partial = *g2;
    partial.consistent = false;
    CHECK(!hv::sync_refusal(*g2, partial, copy));
    CHECK(!hv::sync_refusal(*g2, *g2, copy));
    CHECK(!hv::sync_refusal(*g2, *g1, copy));
    hv::DiskIdentity other = *g1;
    other.disk_id[0] ^= 1;
    CHECK(hv::sync_refusal(*g2, other, copy).value().find("holds another disk") != std::string::npos);
    hv::DiskIdentity newer = *g2; // promoted from g2 and written since
    newer.generation = 77;
    newer.history = {g2->generation};
    CHECK(hv::sync_refusal(*g2, newer, copy).value().find("is newer than the primary's disk") != std::string::npos);
    hv::DiskIdentity diverged = *g1;
    diverged.generation = 78;
    diverged.history = {1234};
    CHECK(hv::sync_refusal(*g2, diverged, copy).value().find("diverged") != std::string::npos);

    // A damaged identity file is an error, not an unknown disk.
    write_file(hv::identity_path(disk), std::vector<uint8_t>(128, 7));
    auto bad = hv::read_identity(disk);
    REQUIRE(!bad);
    CHECK(bad.error().message.find("bad magic") != std::string::npos);

    // The backup refuses a session whose primary disk its copy must not take.
    write_file(copy, std::vector<uint8_t>(8 * kBlock, 2));
    REQUIRE(hv::write_identity(copy, newer));
    auto files = DiskReplica::open({.paths = {copy}, .spill_dir = dir});
    REQUIRE(files);
    auto replica = BackupReplica::create(kMem, 1, std::move(*files));
    REQUIRE(replica);
    StreamBuilder b;
    auto h = b.header();
    h.disks = 1;
    const DiskInfo info{8 * kBlock, false, *g2};
    auto r = (*replica)->begin_session(h, {&info, 1});
    REQUIRE(!r);
    CHECK(r.error().message.find("disk 0: the backup's copy " + copy + " is newer") != std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST_CASE("the initial synchronization sends only the chunks where the backup's copy differs, and records the identity",
          "[disk_replication][epoch]") {
    const std::string dir = temp_dir();
    const uint64_t size = 8 * hv::kMiB; // 32 chunks of 256 KiB
    const std::string disk = dir + "/d.img", copy = dir + "/copy.img";
    auto content = pattern(size, 9);
    write_file(disk, content);
    // The copy: the same disk except three chunks (the writes an old primary made in epochs
    // that never committed, say), and one chunk that is a hole on the primary.
    auto stale = content;
    for (uint64_t c : {2, 17, 31}) std::memset(stale.data() + c * kDiskChunkBytes + 100, 0xee, 5000);
    write_file(copy, stale);
    {
        int fd = ::open(disk.c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(zero_range(fd, 9 * kDiskChunkBytes, kDiskChunkBytes)); // a hole here, data on the copy
        ::close(fd);
    }
    std::memset(content.data() + 9 * kDiskChunkBytes, 0, kDiskChunkBytes);

    FakeVmConfig fc;
    fc.vcpus = 1;
    fc.pages = 64;
    fc.disk_bytes = size;
    fc.disk_paths = {disk};
    fc.disk_writes_per_burst = 0; // the guest leaves the disk alone: the counts are exact
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    const hv::DiskIdentity id = vm->disks()[0]->identity();
    vm->start();
    vm->resume_all();
    BackupThread bt({}, false, {.paths = {copy}, .spill_dir = dir});
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = milliseconds(10);
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    auto data = connect_to(*bt.server);
    auto p = Primary::start(*vm, std::move(data), pc, {}, connect_to(*bt.server));
    REQUIRE(p);
    const bool ok = wait_until([&] { return (*p)->acked_epoch() >= 5 || (*p)->failure(); }, seconds(60));
    INFO(((*p)->failure() ? (*p)->failure()->describe() : std::string("no failure")));
    REQUIRE(ok);
    REQUIRE(!(*p)->failure());
    const auto figures = (*p)->disk_sync();
    (*p)->stop();
    CHECK((*p)->wait());
    bt.wait_sessions(1);
    REQUIRE(figures.size() == 1);
    CHECK(figures[0].chunks == 32);
    CHECK(figures[0].chunks_differing == 4);            // 2, 9 (a zero range), 17, 31
    CHECK(figures[0].bytes_sent == 3 * kDiskChunkBytes); // the hole went as DISK_ZERO
    CHECK(read_file(copy) == content);
    // The copy now records the primary's identity, whole.
    auto recorded = hv::read_identity(copy);
    REQUIRE(recorded);
    REQUIRE(*recorded);
    CHECK(**recorded == id);
    vm.reset();
    std::filesystem::remove_all(dir);
}

TEST_CASE("a primary cut off during the disks' initial synchronization leaves no checkpoint and a copy marked "
          "inconsistent; the next session finishes the copy",
          "[disk_replication][epoch]") {
    const std::string dir = temp_dir();
    const uint64_t size = 16 * hv::kMiB; // 64 chunks, all different on the empty copy
    const std::string disk = dir + "/d.img", copy = dir + "/copy.img";
    const auto content = pattern(size, 12);
    write_file(disk, content);
    write_file(copy, std::vector<uint8_t>(size, 0));
    FakeVmConfig fc;
    fc.vcpus = 1;
    fc.pages = 64;
    fc.disk_bytes = size;
    fc.disk_paths = {disk};
    fc.disk_writes_per_burst = 0;
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    vm->start();
    vm->resume_all();

    // The backup cuts the first primary off once three chunks' blocks have arrived: the
    // primary stops (its connections close), the checkpoint stays open.
    std::mutex mu;
    Primary* first = nullptr;
    int blocks_seen = 0;
    bool cut = false;
    BackupHooks bh;
    bh.on_receive = [&](std::span<const uint8_t> bytes, bool start) {
        if (start || bytes.size() < 16) return;
        uint32_t type;
        std::memcpy(&type, bytes.data(), 4);
        std::lock_guard lock(mu);
        if (type == kDiskBlocks && ++blocks_seen == 3 && first) {
            cut = true;
            std::thread([p = first] { p->stop(); }).detach(); // not on the backup's own thread
        }
    };
    BackupThread bt(bh, false, {.paths = {copy}, .spill_dir = dir});
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = milliseconds(10);
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    {
        auto data = connect_to(*bt.server);
        auto p = Primary::start(*vm, std::move(data), pc, {}, connect_to(*bt.server));
        REQUIRE(p);
        {
            std::lock_guard lock(mu);
            first = p->get();
        }
        (void)(*p)->wait();
        bt.wait_sessions(1);
        std::lock_guard lock(mu);
        first = nullptr;
        REQUIRE(cut);
        CHECK(!(*p)->is_protected());
    }
    REQUIRE(bt.server->replica());
    CHECK(!bt.server->replica()->has_committed());
    auto marked = hv::read_identity(copy);
    REQUIRE(marked);
    REQUIRE(*marked);
    CHECK(!(*marked)->consistent); // half written: never taken for a whole disk
    CHECK(read_file(copy) != content);

    // The next session compares again and sends what is still missing.
    auto data = connect_to(*bt.server);
    auto p = Primary::start(*vm, std::move(data), pc, {}, connect_to(*bt.server));
    REQUIRE(p);
    const bool ok = wait_until([&] { return (*p)->acked_epoch() >= 3 || (*p)->failure(); }, seconds(60));
    INFO(((*p)->failure() ? (*p)->failure()->describe() : std::string("no failure")));
    REQUIRE(ok);
    const auto figures = (*p)->disk_sync();
    (*p)->stop();
    CHECK((*p)->wait());
    bt.wait_sessions(2);
    REQUIRE(figures.size() == 1);
    CHECK(figures[0].chunks == 64);
    CHECK(figures[0].chunks_differing >= 1);
    CHECK(figures[0].chunks_differing <= 64 - 3); // the chunks written before the cut stay
    CHECK(read_file(copy) == content);
    auto whole = hv::read_identity(copy);
    REQUIRE(whole);
    REQUIRE(*whole);
    CHECK((*whole)->consistent);
    vm.reset();
    std::filesystem::remove_all(dir);
}
