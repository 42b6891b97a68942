// The independent stream verifier (wire format version 2): a valid hand-built stream
// passes; each kind of violation is found with its message and byte offset; a torn tail
// is reported as such.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>

#include "common/codec.hpp"
#include "common/records.hpp"
#include "hv/snapshot.hpp"
#include "hv/vcpu_state.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/stream_verifier.hpp"
#include "replicator/verification.hpp"
#include "replicator/wire.hpp"

using namespace understudy;
using namespace understudy::replicator;

namespace {

constexpr uint64_t kMem = 16 * hv::kMiB;
constexpr uint64_t kGuestPages = kMem / hv::kPageSize;
constexpr uint32_t kVcpus = 2;

struct Rec {
    uint32_t type;
    std::vector<uint8_t> body;
};
using Checkpoint = std::vector<Rec>; // BEGIN .. END

// One page of a hand-built batch.
struct Page {
    uint64_t index;
    uint8_t encoding;
    uint32_t length; // payload bytes
};

StreamHeader header(uint64_t session = 7, uint32_t disks = 0) {
    auto mem = hv::GuestMemory::create(kMem);
    REQUIRE(mem);
    auto h = make_stream_header(kMem, kVcpus, hv::memory_layout_digest(*mem), 0x1234, session, 0, disks);
    REQUIRE(h.version == 2);
    return h;
}

// u64 epoch, then a page batch built byte by byte from the README's layout.
std::vector<uint8_t> pages_body(uint64_t epoch, const std::vector<Page>& pages) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(1);
    e.u32(static_cast<uint32_t>(pages.size()));
    for (const auto& p : pages) {
        e.u64(p.index);
        e.u64(0x1234 ^ p.index); // the check: not verified (needs the page content)
        uint8_t enc[4] = {p.encoding, 0, 0, 0};
        e.raw(enc, 4);
        e.u32(p.length);
        b.insert(b.end(), p.length, 0xA5);
        b.insert(b.end(), (8 - p.length % 8) % 8, 0);
    }
    return b;
}

std::vector<uint8_t> begin_body(uint64_t epoch, uint32_t flags) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(flags);
    e.u32(0);
    return b;
}

std::vector<uint8_t> vcpu_body(uint64_t epoch, uint32_t index) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(index);
    e.u32(0);
    hv::VcpuState vs;
    vs.regs.rip = epoch;
    vs.xsave.assign(4096, 0);
    vs.cpuid.resize(3);
    vs.msrs = {{0x10, 5}, {0xc0000080, 0x500}};
    hv::encode_vcpu_state(vs, b);
    return b;
}

std::vector<uint8_t> vm_body(uint64_t epoch) {
    std::vector<uint8_t> b;
    Encoder(b).u64(epoch);
    hv::VmState vm;
    vm.guest_time_ns = epoch * 1000;
    hv::encode_vm_clock(vm, b);
    return b;
}

std::vector<uint8_t> device_body(uint64_t epoch) {
    std::vector<uint8_t> b;
    Encoder(b).u64(epoch);
    hv::encode_device_state({"uart", 1, {1, 2, 3, 4, 5}}, b);
    return b;
}

// Recomputes END's count and digest over the records between BEGIN and END.
void reseal(Checkpoint& cp) {
    CheckpointDigest d;
    uint64_t epoch;
    std::memcpy(&epoch, cp.front().body.data(), 8);
    for (size_t i = 1; i + 1 < cp.size(); ++i)
        if (cp[i].type != kHeartbeat) d.add(cp[i].type, cp[i].body);
    cp.back().body = encode_u64s({epoch, d.records(), d.value()});
}

Checkpoint checkpoint(uint64_t epoch, bool initial, std::vector<Page> pages) {
    Checkpoint cp;
    cp.push_back({kCheckpointBegin, begin_body(epoch, initial ? kCheckpointInitial : 0)});
    cp.push_back({kPages, pages_body(epoch, pages)});
    for (uint32_t i = 0; i < kVcpus; ++i) cp.push_back({kVcpuState, vcpu_body(epoch, i)});
    cp.push_back({kVmState, vm_body(epoch)});
    cp.push_back({kDeviceState, device_body(epoch)});
    cp.push_back({kCheckpointEnd, {}});
    reseal(cp);
    return cp;
}

// Record indices within a checkpoint.
constexpr size_t kBeginAt = 0, kPagesAt = 1, kVcpu0At = 2, kVcpu1At = 3, kVmAt = 4;

// Three valid checkpoints with every encoding.
std::vector<Checkpoint> valid_checkpoints() {
    std::vector<Checkpoint> cps;
    cps.push_back(checkpoint(1, true, {{0, 4, 4096}, {1, 0, 0}, {2, 3, 100}, {0, 4, 4096}})); // initial: resend allowed
    cps.push_back(checkpoint(2, false, {{0, 2, 37}, {5, 1, 0}, {kGuestPages - 1, 4, 4096}}));
    cps.push_back(checkpoint(3, false, {{7, 3, 4095}, {8, 2, 1}}));
    return cps;
}

// The serialized stream and where each record starts: offsets[c][i] for record i of checkpoint c.
struct Stream {
    std::vector<uint8_t> bytes;
    std::vector<std::vector<uint64_t>> offsets;
};

// `first`: records between the header and the first checkpoint (the DISKS record).
Stream serialize(const StreamHeader& h, const std::vector<Checkpoint>& cps, const std::vector<Rec>& first = {}) {
    Stream s;
    auto* hp = reinterpret_cast<const uint8_t*>(&h);
    s.bytes.assign(hp, hp + sizeof h);
    for (const auto& r : first) append_record(s.bytes, r.type, r.body);
    for (const auto& cp : cps) {
        s.offsets.emplace_back();
        for (const auto& r : cp) {
            s.offsets.back().push_back(s.bytes.size());
            append_record(s.bytes, r.type, r.body);
        }
    }
    return s;
}

Stream serialize(const std::vector<Checkpoint>& cps) { return serialize(header(), cps); }

// Expects the first violation at `offset` with a message containing `what`.
void expect_violation(const StreamReport& r, uint64_t offset, const std::string& what) {
    INFO(format_report(r));
    REQUIRE(r.violation);
    CHECK_THAT(r.violation->message, Catch::Contains(what));
    CHECK(r.violation->offset == offset);
}

template <class T>
void put(std::vector<uint8_t>& b, size_t at, T v) {
    std::memcpy(b.data() + at, &v, sizeof v);
}

} // namespace

TEST_CASE("a valid stream passes, with its figures", "[verifier]") {
    auto cps = valid_checkpoints();
    // Optional records anywhere: a heartbeat (not counted by END) and an unknown optional
    // record (counted), inside a checkpoint; and both between checkpoints.
    cps[1].insert(cps[1].begin() + 1, Rec{kHeartbeat, encode_u64s({1, 2})});
    cps[1].insert(cps[1].begin() + 2, Rec{kRecordOptional | 500, {1, 2, 3}});
    reseal(cps[1]);
    cps[1].push_back(Rec{kHeartbeat, encode_u64s({3, 4})}); // after END: between checkpoints
    auto s = serialize(cps);
    auto r = verify_stream(s.bytes);
    INFO(format_report(r));
    CHECK(r.valid());
    CHECK(r.checkpoints == 3);
    CHECK(r.first_epoch == 1u);
    CHECK(r.last_epoch == 3u);
    CHECK(r.first_initial);
    CHECK(r.pages == 9);
    CHECK(r.pages_by_encoding == std::array<uint64_t, 5>{1, 1, 2, 2, 3});
    CHECK(r.payload_bytes == 3 * 4096 + 100 + 37 + 4095 + 1);
    CHECK(r.heartbeats == 2);
    CHECK(r.optional_records == 1);
    CHECK(r.device_states == 3);
    CHECK(r.bytes == s.bytes.size());
    CHECK(!r.torn_epoch);
    CHECK(!r.torn_record);
    CHECK(r.memory_bytes == kMem);
    CHECK(r.vcpus == kVcpus);
    CHECK(r.session_id == 7);
    CHECK_THAT(format_report(r), Catch::Contains("result: valid"));
}

namespace {
// A VERIFY record body for checkpoint `epoch`: pages [first, first + count) of `pass`.
Rec verify_rec(uint64_t epoch, uint64_t pass, uint64_t first, uint64_t count, uint32_t states = kVcpus + 2) {
    VerifySlice v;
    v.epoch = epoch;
    v.pass = pass;
    v.first_page = first;
    v.flags = first + count == kGuestPages ? kVerifyLastSlice : 0;
    v.state.assign(states, 9);
    v.pages.assign(count, 3);
    return {kVerify, encode_verify(v)};
}
} // namespace

TEST_CASE("verification slices follow their checkpoints and cover memory pass by pass", "[verifier]") {
    auto cps = valid_checkpoints();
    cps[0].push_back(verify_rec(1, 1, 0, 2048));
    cps[1].push_back(verify_rec(2, 1, 2048, kGuestPages - 2048));
    cps[2].push_back(verify_rec(3, 2, 0, kGuestPages));
    {
        auto r = verify_stream(serialize(cps).bytes);
        INFO(format_report(r));
        CHECK(r.valid());
        CHECK(r.verify_slices == 3);
        CHECK(r.optional_records == 0);
    }
    auto broken = [&](size_t c, Rec rec, const std::string& what) {
        auto bad = valid_checkpoints();
        if (c > 0) bad[0].push_back(verify_rec(1, 1, 0, 2048));
        bad[c].push_back(std::move(rec));
        auto st = serialize(bad);
        auto r = verify_stream(st.bytes);
        INFO(format_report(r));
        REQUIRE(r.violation);
        CHECK_THAT(r.violation->message, Catch::Contains(what));
        CHECK(r.violation->record_offset == st.offsets[c].back());
    };
    broken(1, verify_rec(1, 1, 2048, 2048), "does not follow the END of checkpoint 1");       // another checkpoint's
    broken(1, verify_rec(2, 1, 1024, 3072), "expected pass 1 page 2048");                      // a gap in the pass
    broken(1, verify_rec(2, 2, 0, kGuestPages), "expected pass 1 page 2048");                  // a pass left unfinished
    broken(0, verify_rec(1, 1, 0, 2048, kVcpus), "state digests");                             // a digest per vCPU + 2
    broken(0, verify_rec(1, 1, 4000, 200), "are not a slice");                                 // beyond memory
    broken(0, Rec{kVerifyResult, std::vector<uint8_t>(48, 0)}, "the backup sends it");
    auto last_flag = verify_rec(1, 1, 0, 2048);
    last_flag.body[28] = 1;
    broken(0, last_flag, "the last-slice flag is set");
    // Inside a checkpoint.
    auto inside = valid_checkpoints();
    inside[1].insert(inside[1].begin() + 1, verify_rec(1, 1, 0, 2048));
    reseal(inside[1]);
    auto r = verify_stream(serialize(inside).bytes);
    REQUIRE(r.violation);
    CHECK_THAT(r.violation->message, Catch::Contains("inside checkpoint 2"));
}

TEST_CASE("the writer's own page batches pass", "[verifier]") {
    // Batches from the real PageEncoder (content-dependent encodings, deltas) must agree
    // with the verifier's reading of the README.
    auto enc = PageEncoder::create({kGuestPages, 64, 7});
    REQUIRE(enc);
    std::vector<uint8_t> memory(kMem, 0);
    std::mt19937 noise(1);
    std::vector<Checkpoint> cps;
    for (uint64_t epoch = 1; epoch <= 4; ++epoch) {
        std::vector<uint64_t> idx;
        std::vector<uint8_t> data;
        for (uint64_t p = epoch; p < 200; p += epoch) {
            for (size_t k = 0; k < 4096; k += 64) memory[p * 4096 + k] = static_cast<uint8_t>(epoch * p + k / 64);
            if (p % 7 == 0) std::memset(&memory[p * 4096], 0, 4096);
            if (p % 11 == 0) // incompressible: RAW
                for (size_t k = 0; k < 4096; ++k) memory[p * 4096 + k] = static_cast<uint8_t>(noise());
            idx.push_back(p);
            data.insert(data.end(), memory.begin() + long(p * 4096), memory.begin() + long((p + 1) * 4096));
        }
        if (epoch == 3) { // an unchanged page: SAME
            idx.push_back(300 + epoch);
            data.insert(data.end(), memory.begin() + 300 * 4096, memory.begin() + 301 * 4096);
        }
        auto cp = checkpoint(epoch, epoch == 1, {});
        std::vector<uint8_t> body;
        Encoder(body).u64(epoch);
        REQUIRE(enc->encode(idx, data, body));
        cp[kPagesAt].body = body;
        reseal(cp);
        cps.push_back(cp);
    }
    auto r = verify_stream(serialize(cps).bytes);
    INFO(format_report(r));
    CHECK(r.valid());
    CHECK(r.checkpoints == 4);
    CHECK(r.pages_by_encoding[0] > 0);
    CHECK(r.pages_by_encoding[2] > 0);
    CHECK(r.pages_by_encoding[4] > 0);
}

TEST_CASE("bad stream headers", "[verifier]") {
    auto cps = valid_checkpoints();
    auto h = header();
    SECTION("bad magic") {
        h.magic[0] = 'X';
        expect_violation(verify_stream(serialize(h, cps).bytes), 0, "bad magic \"XSREPL\\r\\n\"");
    }
    SECTION("wrong version") {
        h.version = 7;
        expect_violation(verify_stream(serialize(h, cps).bytes), 8, "format version 7");
    }
    SECTION("version 1 (before disks)") {
        h.version = 1;
        expect_violation(verify_stream(serialize(h, cps).bytes), 8, "format version 1 (this verifier speaks version 2)");
    }
    SECTION("wrong page size") {
        h.page_size = 8192;
        expect_violation(verify_stream(serialize(h, cps).bytes), 12, "page size 8192");
    }
    SECTION("memory not a multiple of 2 MiB") {
        h.memory_bytes += 4096;
        expect_violation(verify_stream(serialize(h, cps).bytes), 16, "multiple of 2 MiB");
    }
    SECTION("flags") {
        h.flags = 3; // bit 0 is defined (a control connection follows), bit 1 is not
        expect_violation(verify_stream(serialize(h, cps).bytes), 28, "unknown flags 0x2");
    }
    SECTION("layout digest") {
        h.layout_digest ^= 1;
        expect_violation(verify_stream(serialize(h, cps).bytes), 32, "layout digest");
    }
    SECTION("reserved") {
        h.reserved = 1u << 8;
        expect_violation(verify_stream(serialize(h, cps).bytes), 61, "reserved byte 61");
    }
    SECTION("more than 16 disks") {
        h.disks = 17;
        expect_violation(verify_stream(serialize(h, cps).bytes), 56, "17 disks (at most 16)");
    }
    SECTION("a stream shorter than its header") {
        auto b = serialize(h, cps).bytes;
        b.resize(40);
        expect_violation(verify_stream(b), 40, "inside its 64-byte header");
    }
}

TEST_CASE("corrupt record framing", "[verifier]") {
    auto cps = valid_checkpoints();
    SECTION("bad checksum") {
        auto s = serialize(cps);
        uint64_t at = s.offsets[1][kPagesAt];
        s.bytes[at + 16 + 30] ^= 0x40; // a bit in the body
        expect_violation(verify_stream(s.bytes), at + 8, "(PAGES, ");
        expect_violation(verify_stream(s.bytes), at + 8, "fails its checksum");
    }
    SECTION("non-zero padding") {
        cps[1].insert(cps[1].end() - 1, Rec{kRecordOptional | 77, {1, 2, 3}}); // 3 bytes + 5 padding
        reseal(cps[1]);
        auto s = serialize(cps);
        uint64_t at = s.offsets[1][cps[1].size() - 2];
        s.bytes[at + 16 + 3 + 2] = 9;
        expect_violation(verify_stream(s.bytes), at + 16 + 5, "non-zero padding");
    }
    SECTION("oversized length") {
        auto s = serialize(cps);
        uint64_t at = s.offsets[2][kVmAt];
        put<uint32_t>(s.bytes, at + 4, (64u << 20) + 1);
        expect_violation(verify_stream(s.bytes), at + 4, "over the 64 MiB limit");
    }
}

TEST_CASE("record and checkpoint structure", "[verifier]") {
    auto cps = valid_checkpoints();
    SECTION("unknown mandatory record") {
        cps[1].insert(cps[1].begin() + 2, Rec{77, {1, 2, 3, 4, 5, 6, 7, 8}});
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][2], "unknown mandatory record type 77");
    }
    SECTION("a backup-to-primary record in the primary's stream") {
        cps[1].insert(cps[1].begin(), Rec{kAck, encode_u64s({1})});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][0], "ACK record");
    }
    SECTION("interleaved epochs") {
        cps[1].insert(cps[1].begin() + 2, cps[2][kPagesAt]); // a PAGES(3) inside checkpoint 2
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][2] + 16, "PAGES record of epoch 3 inside checkpoint 2");
    }
    SECTION("a BEGIN inside an open checkpoint") {
        cps[1].insert(cps[1].begin() + 2, cps[2][kBeginAt]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][2], "CHECKPOINT_BEGIN(3) while checkpoint 2");
    }
    SECTION("wrong END count") {
        auto& end = cps[1].back().body;
        uint64_t n;
        std::memcpy(&n, end.data() + 8, 8);
        put<uint64_t>(end, 8, n + 1);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back() + 16 + 8,
                         "CHECKPOINT_END announces " + std::to_string(n + 1) + " records, " + std::to_string(n) + " were sent");
    }
    SECTION("wrong digest") {
        cps[2].back().body[16] ^= 1;
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[2].back() + 16 + 16, "checkpoint 3: CHECKPOINT_END's digest");
    }
    SECTION("a digest that counts a heartbeat") {
        cps[1].insert(cps[1].begin() + 1, Rec{kHeartbeat, encode_u64s({1, 2})});
        CheckpointDigest d; // wrongly including the heartbeat
        for (size_t i = 1; i + 1 < cps[1].size(); ++i) d.add(cps[1][i].type, cps[1][i].body);
        cps[1].back().body = encode_u64s({2, d.records(), d.value()});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back() + 16 + 8, "HEARTBEAT not counted");
    }
    SECTION("missing vCPU state") {
        cps[1].erase(cps[1].begin() + kVcpu1At);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back(), "checkpoint 2 lacks the state of vCPU 1");
    }
    SECTION("a vCPU state sent twice") {
        cps[1].insert(cps[1].begin() + kVcpu1At, cps[1][kVcpu0At]);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVcpu1At], "vCPU 0's state sent twice");
    }
    SECTION("a vCPU index beyond the VM's vCPUs") {
        cps[1][kVcpu1At].body = vcpu_body(2, 2);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVcpu1At] + 16 + 8, "VCPU_STATE for vCPU 2");
    }
    SECTION("missing VM state") {
        cps[1].erase(cps[1].begin() + kVmAt, cps[1].end() - 1); // VM and device state
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back(), "checkpoint 2 has no VM_STATE");
    }
    SECTION("records out of the spec's order") {
        std::swap(cps[1][kPagesAt], cps[1][kVcpu0At]);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVcpu0At], "PAGES record after the state records");
    }
    SECTION("a record outside a checkpoint") {
        cps[1].push_back(Rec{kVmState, vm_body(2)});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back(), "VM_STATE record at offset");
        expect_violation(verify_stream(s.bytes), s.offsets[1].back(), "outside a checkpoint");
    }
    SECTION("non-consecutive epoch") {
        cps[2] = checkpoint(4, false, {{7, 0, 0}});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[2][kBeginAt] + 16,
                         "checkpoint 4 follows checkpoint 2: epochs must be consecutive (expected 3)");
    }
    SECTION("a first checkpoint without the initial flag") {
        cps[0] = checkpoint(1, false, {{7, 0, 0}});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0][kBeginAt] + 16 + 8, "lacks the initial-synchronization flag");
    }
    SECTION("a later checkpoint flagged initial") {
        cps[2] = checkpoint(3, true, {{7, 0, 0}});
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[2][kBeginAt] + 16 + 8, "only a session's first checkpoint");
    }
    SECTION("a malformed vCPU state field") {
        auto& b = cps[1][kVcpu0At].body;
        // First field after epoch, index, 0: version {tag 1, len 4, u32 1, 4 bytes padding}.
        b[16 + 8 + 4 + 1] = 1;
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVcpu0At] + 16 + 16 + 13, "field 1 has non-zero padding");
    }
    SECTION("a vCPU state field that overruns its record") {
        auto& b = cps[1][kVcpu0At].body;
        put<uint32_t>(b, 16 + 4, 1u << 20);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVcpu0At] + 16 + 20, "field 1 claims 1048576 bytes");
    }
    SECTION("a VM state without its guest time") {
        std::vector<uint8_t> b;
        Encoder e(b);
        e.u64(2);
        e.field_pod(1, uint32_t{1});
        e.field_pod(3, kvm_clock_data{});
        cps[1][kVmAt].body = b;
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVmAt], "field 2 is missing");
    }
}

TEST_CASE("page batches", "[verifier]") {
    auto cps = valid_checkpoints();
    auto pages_at = [&](const Stream& s) { return s.offsets[1][kPagesAt]; };
    // Body: epoch (8), batch header (8), then the first page header.
    constexpr uint64_t kFirstPage = 16 + 8 + 8;
    auto with = [&](std::vector<Page> p) {
        cps[1][kPagesAt].body = pages_body(2, p);
        reseal(cps[1]);
        return serialize(cps);
    };
    SECTION("page index out of range") {
        auto s = with({{3, 0, 0}, {kGuestPages, 0, 0}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 24,
                         "page 1 of the batch (index 4096) is beyond guest memory (4096 pages)");
    }
    SECTION("bad encoding length: RAW") {
        auto s = with({{3, 4, 4095}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 20, "a RAW payload of 4095 bytes (must be 4096)");
    }
    SECTION("bad encoding length: ZERO") {
        auto s = with({{3, 0, 8}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 20, "a ZERO payload of 8 bytes (must be 0)");
    }
    SECTION("bad encoding length: LZ4") {
        auto s = with({{3, 3, 4096}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 20, "a LZ4 payload of 4096 bytes (must be 1 to 4095)");
    }
    SECTION("bad encoding length: empty XOR_LZ4") {
        auto s = with({{3, 2, 0}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 20, "a XOR_LZ4 payload of 0 bytes");
    }
    SECTION("unknown encoding") {
        auto s = with({{3, 5, 0}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 16, "unknown encoding 5");
    }
    SECTION("reserved bytes") {
        cps[1][kPagesAt].body = pages_body(2, {{3, 0, 0}});
        cps[1][kPagesAt].body[16 + 18] = 1;
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 18, "reserved bytes are not zero");
    }
    SECTION("payload padding") {
        cps[1][kPagesAt].body = pages_body(2, {{3, 3, 5}});
        cps[1][kPagesAt].body[16 + 24 + 6] = 1;
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 30, "non-zero padding after the payload");
    }
    SECTION("trailing bytes") {
        cps[1][kPagesAt].body = pages_body(2, {{3, 0, 0}});
        cps[1][kPagesAt].body.insert(cps[1][kPagesAt].body.end(), 8, 0);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 24, "8 trailing bytes");
    }
    SECTION("page count beyond the bound") {
        auto& b = cps[1][kPagesAt].body;
        put<uint32_t>(b, 12, 8193);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + 16 + 12, "claims 8193 pages (1 to 8192)");
    }
    SECTION("page count beyond the batch") {
        auto& b = cps[1][kPagesAt].body;
        put<uint32_t>(b, 12, 8000);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + 16 + 12, "cannot hold their headers");
    }
    SECTION("batch version") {
        put<uint32_t>(cps[1][kPagesAt].body, 8, 2);
        reseal(cps[1]);
        auto s = serialize(cps);
        expect_violation(verify_stream(s.bytes), pages_at(s) + 16 + 8, "page batch version 2");
    }
    SECTION("a page twice in a later checkpoint") {
        auto s = with({{3, 0, 0}, {9, 4, 4096}, {3, 0, 0}});
        expect_violation(verify_stream(s.bytes), pages_at(s) + kFirstPage + 2 * 24 + 4096, "page 3 appears twice in checkpoint 2");
    }
}

TEST_CASE("a capture that ends inside a checkpoint is torn, not invalid", "[verifier]") {
    auto cps = valid_checkpoints();
    auto s = serialize(cps);
    SECTION("in the middle of a record") {
        uint64_t at = s.offsets[2][kPagesAt];
        s.bytes.resize(at + 100);
        auto r = verify_stream(s.bytes);
        INFO(format_report(r));
        CHECK(r.valid());
        CHECK(r.checkpoints == 2);
        CHECK(r.last_epoch == 2u);
        CHECK(r.torn_epoch == 3u);
        CHECK(r.torn_checkpoint_offset == s.offsets[2][kBeginAt]);
        CHECK(r.torn_checkpoint_records == 1);
        CHECK(r.torn_record == at);
        CHECK_THAT(format_report(r), Catch::Contains("ends inside checkpoint 3"));
    }
    SECTION("between two of its records") {
        s.bytes.resize(s.offsets[2][kVmAt]);
        auto r = verify_stream(s.bytes);
        INFO(format_report(r));
        CHECK(r.valid());
        CHECK(r.torn_epoch == 3u);
        CHECK(r.torn_checkpoint_records == 4);
        CHECK(!r.torn_record);
    }
    SECTION("in a record header between checkpoints") {
        s.bytes.resize(s.offsets[2][kBeginAt] + 10);
        auto r = verify_stream(s.bytes);
        CHECK(r.valid());
        CHECK(!r.torn_epoch);
        CHECK(r.torn_record == s.offsets[2][kBeginAt]);
    }
    SECTION("a torn record is still checked for its length bound") {
        put<uint32_t>(s.bytes, s.offsets[2][kPagesAt] + 4, 0xffffffffu);
        s.bytes.resize(s.offsets[2][kPagesAt] + 100);
        expect_violation(verify_stream(s.bytes), s.offsets[2][kPagesAt] + 4, "over the 64 MiB limit");
    }
}

TEST_CASE("a file is read in chunks, record by record", "[verifier]") {
    // About 5 MiB of RAW pages: records larger and smaller than the reader's buffer.
    std::vector<Checkpoint> cps;
    for (uint64_t e = 1; e <= 5; ++e) {
        std::vector<Page> pages;
        for (uint64_t p = 0; p < 260 * e % 700 + 1; ++p) pages.push_back({p, 4, 4096});
        cps.push_back(checkpoint(e, e == 1, pages));
    }
    auto s = serialize(cps);
    s.bytes.resize(s.bytes.size() - 3); // torn in the last END
    char path[] = "/tmp/us-verifier-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, s.bytes.data(), s.bytes.size()) == static_cast<ssize_t>(s.bytes.size()));
    ::close(fd);
    auto from_file = verify_stream_file(path);
    ::unlink(path);
    REQUIRE(from_file);
    auto from_memory = verify_stream(s.bytes);
    CHECK(from_file->valid());
    CHECK(format_report(*from_file) == format_report(from_memory));
    CHECK(from_file->checkpoints == 4);
    CHECK(from_file->torn_epoch == 5u);
    CHECK(from_file->bytes == s.bytes.size());
    CHECK(!verify_stream_file("/nonexistent/capture"));
}

namespace {
// Two disks: 576 KiB (144 blocks; 3 chunks of 256 KiB, the last one partial) and 10752
// bytes (3 blocks, the last one partial; 1 chunk).
constexpr uint64_t kDisk0 = 576 * 1024, kDisk1 = 10752;
constexpr uint32_t kDiskCount = 2;
constexpr size_t kDiskEntry = 104; // bytes per disk in the DISKS body

// DISKS byte by byte from docs/wire-format.md ("Disks"): disk 0 with a consistent
// identity, disk 1 read-only with an unknown one.
std::vector<uint8_t> disks_body(const std::vector<uint64_t>& sizes) {
    std::vector<uint8_t> b;
    Encoder e(b);
    for (size_t i = 0; i < sizes.size(); ++i) {
        e.u64(sizes[i]);
        e.u32(i == 1 ? 1 : 2); // bit 0 read-only, bit 1 identity consistent
        e.u32(0);
        std::vector<uint8_t> id(16, i == 1 ? 0 : uint8_t(0xd0 + i));
        e.raw(id.data(), id.size()); // disk_id
        e.u64(i == 1 ? 0 : 0x6e6e + i); // generation
        for (uint64_t h = 0; h < 8; ++h) e.u64(i == 1 || h > 1 ? 0 : 0x1000 + h); // history
    }
    REQUIRE(b.size() == sizes.size() * kDiskEntry);
    return b;
}
Rec disks_rec() { return {kDisks, disks_body({kDisk0, kDisk1})}; }

// u64 epoch, then DISK_BLOCKS byte by byte from docs/wire-format.md ("Disks"): raw data
// of count x 4096 bytes, or `lz4_bytes` standing for LZ4 data (not decompressed).
std::vector<uint8_t> blocks_body(uint64_t epoch, uint32_t disk, const std::vector<uint64_t>& blocks, uint32_t encoding = 0,
                                 uint32_t lz4_bytes = 100) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(disk);
    e.u32(static_cast<uint32_t>(blocks.size()));
    e.u32(encoding);
    const uint32_t data = encoding == 0 ? static_cast<uint32_t>(blocks.size() * 4096) : lz4_bytes;
    e.u32(data);
    e.u64(0x5555); // the check: not verified (needs the raw data)
    for (uint64_t i : blocks) e.u64(i);
    b.insert(b.end(), data, 0x3C);
    return b;
}

// u64 epoch, then DISK_DIGESTS byte by byte: `count` 16-byte digests from first_chunk
// (`digests` overrides how many follow the head).
std::vector<uint8_t> digests_body(uint64_t epoch, uint32_t disk, uint64_t first_chunk, uint32_t count, int digests = -1) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(disk);
    e.u32(count);
    e.u64(first_chunk);
    for (int i = 0; i < (digests < 0 ? int(count) : digests); ++i) {
        e.u64(0x1111 * (first_chunk + i)); // low 64 bits: not verified (needs the disk)
        e.u64(0x2222 * (first_chunk + i)); // high
    }
    return b;
}

std::vector<uint8_t> zero_body(uint64_t epoch, uint32_t disk, uint64_t first, uint64_t blocks) {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(epoch);
    e.u32(disk);
    e.u32(0);
    e.u64(first);
    e.u64(blocks);
    return b;
}

// Inserts records into a checkpoint before record `at` and reseals it.
void insert(Checkpoint& cp, size_t at, std::vector<Rec> recs) {
    cp.insert(cp.begin() + static_cast<long>(at), recs.begin(), recs.end());
    reseal(cp);
}

// The valid checkpoints with disk records: the initial one carries the digests of every
// chunk (disk 0 in two records), then zero ranges and blocks interleaved with pages (a
// pre-copy round resends a block; a zero range follows blocks of its disk), the second
// blocks of both disks.
constexpr size_t kDigestsAt = kPagesAt + 1; // the first DISK_DIGESTS in checkpoint 1
std::vector<Checkpoint> disk_checkpoints() {
    auto cps = valid_checkpoints();
    insert(cps[0], kDigestsAt,
           {{kDiskDigests, digests_body(1, 0, 0, 2)},
            {kDiskDigests, digests_body(1, 1, 0, 1)},
            {kDiskDigests, digests_body(1, 0, 2, 1)},
            {kDiskZero, zero_body(1, 0, 0, 4)},
            {kDiskZero, zero_body(1, 0, 6, 9)},
            {kDiskBlocks, blocks_body(1, 0, {4, 5, 15, 143})},
            {kDiskZero, zero_body(1, 1, 0, 1)},
            {kDiskBlocks, blocks_body(1, 1, {1, 2}, 1)},
            {kPages, pages_body(1, {{3, 0, 0}})},
            {kDiskBlocks, blocks_body(1, 0, {4})},
            {kDiskZero, zero_body(1, 0, 128, 16)}});
    insert(cps[1], kPagesAt + 1, {{kDiskBlocks, blocks_body(2, 1, {0, 2})}, {kDiskBlocks, blocks_body(2, 0, {3}, 1)}});
    return cps;
}

Stream disk_stream(const std::vector<Checkpoint>& cps) { return serialize(header(7, kDiskCount), cps, {disks_rec()}); }
} // namespace

TEST_CASE("a valid stream with disks passes, with its figures", "[verifier][disks]") {
    auto s = disk_stream(disk_checkpoints());
    auto r = verify_stream(s.bytes);
    INFO(format_report(r));
    REQUIRE(r.valid());
    CHECK(r.checkpoints == 3);
    CHECK(r.disks == 2);
    CHECK(r.disk_sizes == std::vector<uint64_t>{kDisk0, kDisk1});
    CHECK(r.disk_block_records == 5);
    CHECK(r.disk_records_by_encoding == std::array<uint64_t, 2>{3, 2});
    CHECK(r.disk_blocks == 4 + 2 + 1 + 2 + 1);
    CHECK(r.disk_data_bytes == 7 * 4096 + 2 * 100);
    CHECK(r.disk_zero_ranges == 4);
    CHECK(r.disk_zero_blocks == 4 + 9 + 1 + 16);
    CHECK(r.disk_digest_records == 3);
    CHECK(r.disk_digest_chunks == 4);
    CHECK(r.pages == 10);
    CHECK(r.bytes == s.bytes.size());
    auto text = format_report(r);
    CHECK_THAT(text, Catch::Contains("2 disks"));
    CHECK_THAT(text, Catch::Contains("disks: 589824 bytes, 10752 bytes; 10 blocks in 5 batches (raw 3, LZ4 2)"));
    CHECK_THAT(text, Catch::Contains("; 4 zero ranges of 30 blocks; 3 digest records comparing 4 chunks of 256 KiB"));

    SECTION("a capture that ends after the header is torn before its DISKS record") {
        s.bytes.resize(64);
        auto t = verify_stream(s.bytes);
        CHECK(t.valid());
        CHECK(t.ends_before_disks);
        CHECK_THAT(format_report(t), Catch::Contains("before the DISKS record of its 2 disks"));
    }
    SECTION("without disks, a stream has no disk line") {
        CHECK_THAT(format_report(verify_stream(serialize(valid_checkpoints()).bytes)), !Catch::Contains("disks:"));
    }
}

TEST_CASE("the writer's own disk records pass", "[verifier][disks]") {
    // Records from the real encoders (LZ4 when it pays, raw otherwise) must agree with
    // the verifier's reading of docs/wire-format.md.
    std::vector<DiskInfo> info{{kDisk0, false}, {kDisk1, true}};
    info[0].identity.disk_id.fill(0xab);
    info[0].identity.generation = 0x1234;
    info[0].identity.history = {0x1233, 0x1232};
    info[0].identity.consistent = true;
    auto cps = valid_checkpoints();
    std::vector<uint8_t> lz4_state, data(3 * 4096);
    std::mt19937 noise(3);
    for (auto& c : data) c = static_cast<uint8_t>(noise());
    std::vector<uint8_t> digests, zero, incompressible, compressible;
    Encoder(digests).u64(1);
    DiskDigests dd{0, 1, {}};
    for (uint64_t c = 1; c < 3; ++c)
        dd.digests.push_back(chunk_digest(std::vector<uint8_t>(kDiskChunkBytes, uint8_t(c)), 7));
    encode_disk_digests(dd, digests);
    Encoder(zero).u64(1);
    encode_disk_zero({0, 0, 8}, zero);
    Encoder(incompressible).u64(1);
    encode_disk_blocks(0, std::vector<uint64_t>{8, 9, 12}, data, 7, lz4_state, incompressible);
    Encoder(compressible).u64(2);
    encode_disk_blocks(1, std::vector<uint64_t>{0, 1, 2}, std::vector<uint8_t>(3 * 4096, 0x11), 7, lz4_state, compressible);
    insert(cps[0], kPagesAt + 1, {{kDiskDigests, digests}, {kDiskBlocks, incompressible}, {kDiskZero, zero}});
    insert(cps[1], kPagesAt + 1, {{kDiskBlocks, compressible}});
    auto r = verify_stream(serialize(header(7, kDiskCount), cps, {{kDisks, encode_disks(info)}}).bytes);
    INFO(format_report(r));
    CHECK(r.valid());
    CHECK(r.disk_records_by_encoding == std::array<uint64_t, 2>{1, 1});
    CHECK(r.disk_zero_blocks == 8);
    CHECK(r.disk_digest_chunks == 2);
}

TEST_CASE("the DISKS record comes right after the header, when the header announces disks", "[verifier][disks]") {
    SECTION("missing") {
        auto s = serialize(header(7, kDiskCount), disk_checkpoints());
        expect_violation(verify_stream(s.bytes), 64, "CHECKPOINT_BEGIN record at offset 64 where the DISKS record belongs");
    }
    SECTION("after a heartbeat") {
        auto s = serialize(header(7, kDiskCount), disk_checkpoints(), {{kHeartbeat, encode_u64s({1, 2})}, disks_rec()});
        expect_violation(verify_stream(s.bytes), 64, "HEARTBEAT record at offset 64 where the DISKS record belongs");
    }
    SECTION("with a header that announces no disks") {
        auto s = serialize(header(), valid_checkpoints(), {disks_rec()});
        expect_violation(verify_stream(s.bytes), 64, "DISKS record at offset 64, but the header announces no disks");
    }
    SECTION("twice") {
        auto cps = disk_checkpoints();
        cps[0].push_back(disks_rec()); // between checkpoints
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0].back(), "a second DISKS record");
    }
    SECTION("a body for another number of disks") {
        auto s = serialize(header(7, 3), disk_checkpoints(), {disks_rec()});
        expect_violation(verify_stream(s.bytes), 64, "DISKS body has 208 bytes; 3 disks need 312 (104 each)");
    }
    SECTION("entries of the old 16 bytes") {
        std::vector<uint8_t> b;
        Encoder e(b);
        for (uint64_t size : {kDisk0, kDisk1}) {
            e.u64(size);
            e.u32(0);
            e.u32(0);
        }
        auto s = serialize(header(7, kDiskCount), disk_checkpoints(), {{kDisks, b}});
        expect_violation(verify_stream(s.bytes), 64, "DISKS body has 32 bytes; 2 disks need 208 (104 each)");
    }
    SECTION("a size that is not a multiple of 512") {
        auto s = serialize(header(7, kDiskCount), disk_checkpoints(), {{kDisks, disks_body({kDisk0, 1000})}});
        expect_violation(verify_stream(s.bytes), 64 + 16 + kDiskEntry, "disk 1 has 1000 bytes, not a positive multiple of 512");
    }
    SECTION("unknown flags") {
        auto b = disks_body({kDisk0, kDisk1});
        put<uint32_t>(b, kDiskEntry + 8, 7); // read-only, consistent, and bit 2
        auto s = serialize(header(7, kDiskCount), disk_checkpoints(), {{kDisks, b}});
        expect_violation(verify_stream(s.bytes), 64 + 16 + kDiskEntry + 8, "disk 1 has unknown flags 0x4");
    }
    SECTION("a reserved word that is not zero") {
        auto b = disks_body({kDisk0, kDisk1});
        put<uint32_t>(b, kDiskEntry + 12, 1);
        auto s = serialize(header(7, kDiskCount), disk_checkpoints(), {{kDisks, b}});
        expect_violation(verify_stream(s.bytes), 64 + 16 + kDiskEntry + 12, "disk 1's reserved u32 is 0x1");
    }
    SECTION("the identity fields take any value") {
        auto b = disks_body({kDisk0, kDisk1});
        for (size_t i = 16; i < kDiskEntry; ++i) b[kDiskEntry + i] = uint8_t(0xff - i);
        put<uint32_t>(b, kDiskEntry + 8, 3);
        auto r = verify_stream(serialize(header(7, kDiskCount), disk_checkpoints(), {{kDisks, b}}).bytes);
        INFO(format_report(r));
        CHECK(r.valid());
    }
}

TEST_CASE("disk blocks and zero ranges", "[verifier][disks]") {
    auto cps = disk_checkpoints();
    constexpr size_t kAt = kPagesAt + 1; // where the test's record goes in checkpoint 2
    auto in_second = [&](Rec rec) {
        insert(cps[1], kAt, {std::move(rec)});
        return disk_stream(cps);
    };
    auto rec_at = [&](const Stream& s) { return s.offsets[1][kAt]; };
    SECTION("indices out of order") {
        auto s = in_second({kDiskBlocks, blocks_body(2, 0, {7, 9, 8})});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 32 + 16, "block indices are not strictly increasing");
    }
    SECTION("a block twice in one record") {
        auto s = in_second({kDiskBlocks, blocks_body(2, 0, {7, 7})});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 32 + 8, "not strictly increasing");
    }
    SECTION("a disk index beyond DISKS") {
        auto s = in_second({kDiskBlocks, blocks_body(2, 2, {0})});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 8, "disk 2, but the stream has 2 disks");
    }
    SECTION("a block beyond its disk") {
        auto s = in_second({kDiskBlocks, blocks_body(2, 1, {1, 3})});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 32 + 8, "block 3 (index 1 of the record) is outside disk 1 (3 blocks)");
    }
    SECTION("a block twice in a later checkpoint") {
        auto s = in_second({kDiskBlocks, blocks_body(2, 1, {2})}); // disk_checkpoints() sends block 2 of disk 1 too
        auto r = verify_stream(s.bytes);
        REQUIRE(r.violation);
        CHECK_THAT(r.violation->message, Catch::Contains("block 2 of disk 1 appears twice in checkpoint 2"));
        CHECK(r.violation->record_offset == s.offsets[1][kAt + 1]);
    }
    SECTION("a count of 0 or over 1024") {
        auto b = blocks_body(2, 0, {1});
        put<uint32_t>(b, 12, 1025);
        auto s = in_second({kDiskBlocks, b});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 12, "1025 blocks (1 to 1024)");
    }
    SECTION("more indices than the body holds") {
        auto b = blocks_body(2, 0, {1, 2}, 1, 4);
        put<uint32_t>(b, 12, 3);
        auto s = in_second({kDiskBlocks, b});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 12, "3 blocks need 24 bytes of indices, 20 remain");
    }
    SECTION("an unknown encoding") {
        auto b = blocks_body(2, 0, {1});
        put<uint32_t>(b, 16, 2);
        auto s = in_second({kDiskBlocks, b});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 16, "unknown encoding 2");
    }
    SECTION("encoded_bytes that is not what follows the indices") {
        auto b = blocks_body(2, 0, {1}, 1, 100);
        put<uint32_t>(b, 20, 99);
        auto s = in_second({kDiskBlocks, b});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 20, "encoded_bytes is 99, but 100 bytes follow the indices");
    }
    SECTION("raw data of the wrong length") {
        auto b = blocks_body(2, 0, {1}, 1, 100);
        put<uint32_t>(b, 16, 0); // raw, but 100 bytes
        auto s = in_second({kDiskBlocks, b});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16 + 20, "raw data of 100 bytes for 1 blocks (must be 4096)");
    }
    SECTION("a disk record after the state records") {
        insert(cps[1], kVmAt + 4, {{kDiskBlocks, blocks_body(2, 0, {1})}}); // after the VM and its device state
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kVmAt + 4], "DISK_BLOCKS record after the state records of checkpoint 2");
    }
    SECTION("a disk record of another epoch") {
        auto s = in_second({kDiskBlocks, blocks_body(3, 0, {1})});
        expect_violation(verify_stream(s.bytes), rec_at(s) + 16, "DISK_BLOCKS record of epoch 3 inside checkpoint 2");
    }
    SECTION("DISK_ZERO in a checkpoint not flagged initial") {
        auto s = in_second({kDiskZero, zero_body(2, 0, 0, 1)});
        expect_violation(verify_stream(s.bytes), rec_at(s), "this checkpoint is not flagged initial");
    }
    SECTION("DISK_ZERO after blocks of its disk is allowed (it drops what they staged)") {
        insert(cps[0], kDigestsAt + 6, {{kDiskZero, zero_body(1, 0, 15, 1)}}); // right after DISK_BLOCKS(disk 0, {4, 5, 15, 143})
        REQUIRE(cps[0][kDigestsAt + 5].type == kDiskBlocks);
        auto r = verify_stream(disk_stream(cps).bytes);
        INFO(format_report(r));
        CHECK(r.valid());
        CHECK(r.disk_zero_ranges == 5);
    }
    SECTION("DISK_ZERO beyond its disk, empty, or with a reserved word") {
        insert(cps[0], kPagesAt + 1, {{kDiskZero, zero_body(1, 1, 2, 2)}});
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0][kPagesAt + 1] + 16 + 16, "blocks 2 + 2 are not inside disk 1 (3 blocks)");
        cps[0][kPagesAt + 1].body = zero_body(1, 1, 2, 0);
        reseal(cps[0]);
        expect_violation(verify_stream(disk_stream(cps).bytes), s.offsets[0][kPagesAt + 1] + 16 + 24, "a range of 0 blocks");
        put<uint64_t>(cps[0][kPagesAt + 1].body, 24, 1);
        put<uint32_t>(cps[0][kPagesAt + 1].body, 12, 1);
        reseal(cps[0]);
        expect_violation(verify_stream(disk_stream(cps).bytes), s.offsets[0][kPagesAt + 1] + 16 + 12, "reserved u32 is 0x1");
    }
    SECTION("disk records without disks") {
        auto plain = valid_checkpoints();
        insert(plain[0], kPagesAt + 1, {{kDiskZero, zero_body(1, 0, 0, 1)}});
        auto s = serialize(plain);
        expect_violation(verify_stream(s.bytes), s.offsets[0][kPagesAt + 1] + 16 + 8, "disk 0, but the stream has 0 disks");
    }
    SECTION("an END that does not count the disk records") {
        auto& end = cps[1].back().body;
        put<uint64_t>(end, 8, cps[1].size() - 2 - 2); // without the two DISK_BLOCKS
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1].back() + 16 + 8, "CHECKPOINT_END announces");
    }
}

TEST_CASE("disk digests of the initial synchronization", "[verifier][disks]") {
    auto cps = disk_checkpoints();
    const auto digests_at = [](const Stream& s) { return s.offsets[0][kDigestsAt]; };
    auto first_replaced = [&](std::vector<uint8_t> body) {
        cps[0][kDigestsAt].body = std::move(body);
        reseal(cps[0]);
        return disk_stream(cps);
    };
    SECTION("outside an initial checkpoint") {
        insert(cps[1], kPagesAt + 1, {{kDiskDigests, digests_body(2, 0, 0, 3)}});
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[1][kPagesAt + 1],
                         "DISK_DIGESTS belongs to the initial synchronization only, and this checkpoint is not flagged initial");
    }
    SECTION("between checkpoints") {
        cps[0].push_back({kDiskDigests, digests_body(1, 0, 0, 1)});
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0].back(), "DISK_DIGESTS record at offset");
        expect_violation(verify_stream(s.bytes), s.offsets[0].back(), "outside a checkpoint");
    }
    SECTION("a range past the end of the disk") {
        auto s = first_replaced(digests_body(1, 0, 2, 2)); // disk 0 has chunks 0 .. 2
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 16, "chunks 2 + 2 are not inside disk 0 (3 chunks of 256 KiB)");
    }
    SECTION("a range that starts past the end of the disk") {
        auto s = first_replaced(digests_body(1, 1, 1, 1)); // disk 1 has chunk 0 only
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 16, "chunks 1 + 1 are not inside disk 1 (1 chunks");
    }
    SECTION("a first chunk so large that first + count wraps") {
        auto s = first_replaced(digests_body(1, 0, ~uint64_t{0}, 2));
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 16, "are not inside disk 0");
    }
    SECTION("a count of 0 or over 65536") {
        auto s = first_replaced(digests_body(1, 0, 0, 0));
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 12, ": 0 chunks (1 to 65536)");
        auto b = digests_body(1, 0, 0, 1);
        put<uint32_t>(b, 12, 65537);
        s = first_replaced(b);
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 12, ": 65537 chunks (1 to 65536)");
    }
    SECTION("a disk index beyond DISKS") {
        auto s = first_replaced(digests_body(1, 2, 0, 1));
        expect_violation(verify_stream(s.bytes), digests_at(s) + 16 + 8, "disk 2, but the stream has 2 disks");
    }
    SECTION("a body whose length does not fit its count") {
        auto s = first_replaced(digests_body(1, 0, 0, 2, 1)); // a digest missing
        expect_violation(verify_stream(s.bytes), digests_at(s), "a body of 40 bytes; 2 digests need 56");
        s = first_replaced(digests_body(1, 0, 0, 2, 3)); // one too many
        expect_violation(verify_stream(s.bytes), digests_at(s), "a body of 72 bytes; 2 digests need 56");
        auto b = digests_body(1, 0, 0, 2);
        b.push_back(0); // not a whole digest
        s = first_replaced(b);
        expect_violation(verify_stream(s.bytes), digests_at(s), "a body of 57 bytes; 2 digests need 56");
        b = digests_body(1, 0, 0, 1);
        b.resize(20); // not even the head
        s = first_replaced(b);
        expect_violation(verify_stream(s.bytes), digests_at(s), "a body of 20 bytes, shorter than its 24-byte head");
    }
    SECTION("after the state records") {
        insert(cps[0], cps[0].size() - 1, {{kDiskDigests, digests_body(1, 0, 0, 1)}}); // before END, after DEVICE_STATE
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0][cps[0].size() - 2], "DISK_DIGESTS record after the state records of checkpoint 1");
    }
    SECTION("the backup's DISK_WANT answer in a capture") {
        std::vector<uint8_t> want;
        Encoder e(want);
        e.u32(0);
        e.u32(2);
        e.u64(0);
        want.push_back(0x1); // chunk 0 differs
        insert(cps[0], kDigestsAt + 1, {{kDiskWant, want}}); // where the backup would answer the first digests
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0][kDigestsAt + 1],
                         "DISK_WANT record at offset " + std::to_string(s.offsets[0][kDigestsAt + 1]) +
                             ": the backup sends it, the primary's stream must not contain it");
        // Between checkpoints as well.
        cps = disk_checkpoints();
        cps[0].push_back({kDiskWant, want});
        s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0].back(), "DISK_WANT record");
    }
    SECTION("an END that does not count the digest records") {
        put<uint64_t>(cps[0].back().body, 8, cps[0].size() - 2 - 3); // without the three DISK_DIGESTS
        auto s = disk_stream(cps);
        expect_violation(verify_stream(s.bytes), s.offsets[0].back() + 16 + 8, "CHECKPOINT_END announces");
    }
}
