// Hostile replication streams: each is rejected with a clear error, the backup keeps its
// last committed checkpoint, and a later valid stream is still accepted.
#include <catch2/catch.hpp>

#include <cstring>
#include <thread>

#include "common/codec.hpp"
#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/wire.hpp"
#include "support/link_key.hpp"
#include "support/stream_builder.hpp"

using namespace understudy;
using namespace understudy::replicator;
using test::kGuestPages;
using test::kMem;
using test::rec;
using test::StreamBuilder;

namespace {

Result<std::optional<uint64_t>> feed_all(BackupReplica& r, const std::vector<Record>& recs) {
    std::optional<uint64_t> last;
    for (const auto& x : recs) {
        auto c = r.feed(x);
        if (!c) return c;
        if (*c) last = *c;
    }
    return last;
}

// A replica with epochs 1 and 2 committed.
std::unique_ptr<BackupReplica> committed_replica(StreamBuilder& b) {
    auto r = BackupReplica::create(kMem, 1);
    REQUIRE(r);
    REQUIRE((*r)->begin_session(b.header()));
    auto first = feed_all(**r, b.checkpoint(1, kCheckpointInitial, {0, 1, 2, 100}, 1));
    INFO((first ? std::string("ok") : first.error().message));
    REQUIRE(first);
    REQUIRE(*first == 1u);
    REQUIRE(*feed_all(**r, b.checkpoint(2, 0, {1, 200}, 2)) == 2u);
    return std::move(*r);
}

bool replica_matches(const BackupReplica& r, const StreamBuilder& b, uint64_t epoch) {
    return r.committed_epoch() == epoch && std::memcmp(r.memory().page_ptr(0), b.memory.data(), kMem) == 0 &&
           r.state().vcpus.at(0).regs.rip == epoch;
}

} // namespace

TEST_CASE("a valid stream commits checkpoint by checkpoint", "[stream]") {
    StreamBuilder b;
    auto r = committed_replica(b);
    CHECK(replica_matches(*r, b, 2));
    CHECK(r->stats().checkpoints_committed == 2);
}

TEST_CASE("bad stream headers are refused with a clear error", "[stream]") {
    StreamBuilder b;
    auto r = *BackupReplica::create(kMem, 1);
    auto h = b.header();
    h.magic[0] = 'X';
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("bad magic"));
    h = b.header();
    h.version = 7;
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("version 7"));
    h = b.header();
    REQUIRE(h.version == 2);
    h.version = 1; // before disks: its u64 reserved field at 56 is now disks and a reserved u32
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("format version 1 is not supported (this build speaks 2"));
    h = b.header();
    h.reserved = 1;
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("reserved field is not zero"));
    h = b.header();
    h.disks = 17;
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("17 disks; at most 16"));
    h = b.header();
    h.memory_bytes = 2 * kMem;
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("MiB of memory"));
    CHECK_THAT(r->begin_session(b.header(2)).error().message, Catch::Contains("vCPUs"));
    h = b.header();
    h.flags = 2; // bit 0 (a control connection follows) is the only one defined
    CHECK_THAT(r->begin_session(h).error().message, Catch::Contains("flags"));
    CHECK(r->begin_session(b.header()));
}

TEST_CASE("hostile records leave the committed checkpoint intact", "[stream]") {
    StreamBuilder b;
    auto r = committed_replica(b);
    auto snapshot = b.memory; // the committed image
    auto expect_rejected = [&](const std::vector<Record>& recs, const char* why) {
        auto res = feed_all(*r, recs);
        REQUIRE(!res);
        CHECK(res.error().code == Errc::invalid_input);
        CHECK_THAT(res.error().message, Catch::Contains(why));
        CHECK(r->committed_epoch() == 2);
        CHECK(std::memcmp(r->memory().page_ptr(0), snapshot.data(), kMem) == 0);
        CHECK(!r->receiving());
    };
    StreamBuilder scratch; // changes that must never reach the replica (fresh encoder: no deltas)
    scratch.memory = b.memory;

    SECTION("a truncated page batch") {
        auto recs = scratch.checkpoint(3, 0, {5, 6}, 3);
        recs[1].body.resize(recs[1].body.size() / 2);
        expect_rejected(recs, "");
    }
    SECTION("a truncated END") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        recs.back().body.resize(12);
        expect_rejected(recs, "truncated");
    }
    SECTION("an unknown mandatory record") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        recs.insert(recs.begin() + 1, rec(77, {1, 2, 3}));
        expect_rejected(recs, "unknown mandatory record type 77");
    }
    SECTION("records of two epochs interleaved") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        auto other = scratch.checkpoint(4, 0, {6}, 4);
        recs.insert(recs.begin() + 2, other[1]);
        expect_rejected(recs, "of epoch 4 inside checkpoint 3");
    }
    SECTION("a checkpoint out of order") { expect_rejected(scratch.checkpoint(5, 0, {5}, 5), "out of order"); }
    SECTION("a BEGIN inside an open checkpoint") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        recs.insert(recs.begin() + 2, recs[0]);
        expect_rejected(recs, "while epoch 3 is open");
    }
    SECTION("a record count that does not match") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        recs.erase(recs.begin() + 2); // drop the vCPU state
        expect_rejected(recs, "announced");
    }
    SECTION("a digest that does not match") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        auto& end = recs.back().body;
        end[16] ^= 1;
        expect_rejected(recs, "digest");
    }
    SECTION("a checkpoint missing its vCPU state") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        recs.erase(recs.begin() + 2);
        CheckpointDigest d;
        for (size_t i = 1; i + 1 < recs.size(); ++i) d.add(recs[i].type, recs[i].body);
        recs.back().body = encode_u64s({3, d.records(), d.value()});
        expect_rejected(recs, "lacks vCPU 0");
    }
    SECTION("a device's state twice in one checkpoint") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        std::vector<uint8_t> body;
        Encoder(body).u64(3);
        hv::encode_device_state({"virtio-net", 1, {1, 2, 3}}, body);
        recs.insert(recs.end() - 1, {rec(kDeviceState, body), rec(kDeviceState, body)});
        CheckpointDigest d;
        for (size_t i = 1; i + 1 < recs.size(); ++i) d.add(recs[i].type, recs[i].body);
        recs.back().body = encode_u64s({3, d.records(), d.value()});
        expect_rejected(recs, "device 'virtio-net' is listed twice in one checkpoint");
    }
    SECTION("pages for a page index beyond guest memory") {
        auto recs = scratch.checkpoint(3, 0, {5}, 3);
        // PAGES body: u64 epoch, batch header (8), then the page header's u64 index.
        uint64_t bogus = kGuestPages + 10;
        std::memcpy(recs[1].body.data() + 16, &bogus, 8);
        expect_rejected(recs, "");
    }
    // After any of these, a new session with a fresh initial checkpoint still works.
    REQUIRE(r->begin_session(b.header()));
    StreamBuilder fresh;
    fresh.memory = b.memory;
    REQUIRE(*feed_all(*r, fresh.checkpoint(9, kCheckpointInitial, {7}, 9)) == 9u);
    CHECK(replica_matches(*r, fresh, 9));
}

TEST_CASE("pages sent again within a checkpoint are staged once; the last version commits", "[stream]") {
    StreamBuilder b;
    auto r = committed_replica(b);
    // 40 rounds of the same 3 pages: staging would hold 120 copies if each took a slot.
    auto recs = b.checkpoint(3, 0, {5, 6, 300}, 3, 40);
    for (size_t i = 0; i + 1 < recs.size(); ++i) REQUIRE(r->feed(recs[i]));
    CHECK(r->staged_pages() == 3);
    auto end = r->feed(recs.back());
    REQUIRE(end);
    REQUIRE(*end == 3u);
    CHECK(r->staged_pages() == 0);
    CHECK(replica_matches(*r, b, 3)); // b.memory holds round 40's stamps
    CHECK(r->memory().page_ptr(300)[0] == static_cast<uint8_t>(3 + 39));
}

TEST_CASE("a fresh replica takes its first checkpoint batch by batch; later ones wait for their END", "[stream]") {
    StreamBuilder b;
    auto r = BackupReplica::create(kMem, 1);
    REQUIRE(r);
    REQUIRE((*r)->begin_session(b.header()));
    // Nothing committed yet: each PAGES record lands at once, nothing is staged.
    auto first = b.checkpoint(1, kCheckpointInitial, {0, 1, 2, 100}, 1, 3);
    for (size_t i = 0; i + 1 < first.size(); ++i) REQUIRE((*r)->feed(first[i]));
    CHECK((*r)->staged_pages() == 0);
    CHECK((*r)->memory().page_ptr(100)[0] == 1 + 2); // the third round's stamp
    CHECK(!(*r)->has_committed());
    // A first checkpoint torn before its END leaves no committed checkpoint.
    (*r)->abort_open_checkpoint();
    CHECK(!(*r)->has_committed());
    // Sent again whole, it commits, and matches.
    REQUIRE((*r)->begin_session(b.header()));
    auto again = feed_all(**r, b.checkpoint(1, kCheckpointInitial, {0, 1, 2, 100}, 7));
    REQUIRE(again);
    CHECK(*again == 1u);
    CHECK(replica_matches(**r, b, 1));
    // From now on the committed replica is what a failover runs: a new initial checkpoint
    // (a new session) is staged and, torn, leaves it exactly as it was.
    auto committed = std::vector<uint8_t>((*r)->memory().page_ptr(0), (*r)->memory().page_ptr(0) + kMem);
    REQUIRE((*r)->begin_session(b.header()));
    StreamBuilder other;
    auto resync = other.checkpoint(5, kCheckpointInitial, {0, 1, 2, 100, 200}, 9);
    for (size_t i = 0; i + 1 < resync.size(); ++i) REQUIRE((*r)->feed(resync[i]));
    CHECK((*r)->staged_pages() == 5);
    (*r)->abort_open_checkpoint();
    CHECK(std::memcmp((*r)->memory().page_ptr(0), committed.data(), kMem) == 0);
    CHECK((*r)->committed_epoch() == 1);
}

TEST_CASE("unknown optional records are skipped", "[stream]") {
    StreamBuilder b;
    auto r = committed_replica(b);
    auto recs = b.checkpoint(3, 0, {9}, 3);
    recs.insert(recs.begin(), rec(kRecordOptional | 500, {1, 2, 3, 4}));
    recs.insert(recs.begin(), rec(kHeartbeat, encode_u64s({1, 2})));
    REQUIRE(*feed_all(*r, recs) == 3u);
    CHECK(replica_matches(*r, b, 3));
}

TEST_CASE("a corrupt record on the wire ends the session; the backup keeps running", "[stream]") {
    StreamBuilder b;
    BackupConfig cfg;
    cfg.security = test::link_security();
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, cfg);
    REQUIRE(server);
    std::vector<Result<SessionEnd>> results;
    std::thread t([&] {
        for (int i = 0; i < 3; ++i) results.push_back((*server)->serve_one(std::chrono::seconds(20)));
    });
    auto send_session = [&](auto&& mutate) {
        auto c = Connection::connect((*server)->local(), std::chrono::seconds(5));
        REQUIRE(c);
        REQUIRE(secure_client(**c, *test::shared_link_key(), LinkChannel::stream));
        auto h = b.header();
        std::span<const uint8_t> hb(reinterpret_cast<const uint8_t*>(&h), sizeof h);
        REQUIRE((*c)->send({&hb, 1}));
        auto accept = (*c)->recv_record();
        REQUIRE(accept);
        REQUIRE(accept->type == kAccept);
        mutate(**c);
        (*c)->shutdown();
    };
    // 1: a valid initial checkpoint, ACKed.
    send_session([&](Connection& c) {
        for (const auto& x : b.checkpoint(1, kCheckpointInitial, {3}, 1)) REQUIRE(c.send_record(x.type, x.body));
        auto ack = c.recv_record();
        REQUIRE(ack);
        CHECK(ack->type == kAck);
    });
    // 2: a record whose checksum does not match its body.
    send_session([&](Connection& c) {
        StreamBuilder other;
        auto recs = other.checkpoint(2, 0, {4}, 2);
        std::vector<uint8_t> raw;
        append_record(raw, recs[0].type, recs[0].body);
        raw[20] ^= 0xff; // inside the body, after the header's checksum was computed
        std::span<const uint8_t> s(raw);
        REQUIRE(c.send({&s, 1}));
        (void)c.recv_record(); // the backup answers REJECT or closes
    });
    // 3: a header claiming more than the maximum record length.
    send_session([&](Connection& c) {
        RecordHeader h{replicator::kPages, kMaxRecordLength + 8, 0};
        std::span<const uint8_t> s(reinterpret_cast<const uint8_t*>(&h), sizeof h);
        REQUIRE(c.send({&s, 1}));
        (void)c.recv_record();
    });
    t.join();
    REQUIRE(results.size() == 3);
    CHECK(results[0]);
    REQUIRE(!results[1]);
    CHECK_THAT(results[1].error().message, Catch::Contains("checksum"));
    REQUIRE(!results[2]);
    CHECK(results[2].error().code == Errc::invalid_input);
    REQUIRE((*server)->replica());
    CHECK((*server)->replica()->committed_epoch() == 1);
}
