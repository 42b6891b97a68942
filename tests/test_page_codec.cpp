// The page codec without KVM: each encoding on content that should select it, replica
// equals source across epochs (pipelined, with eviction, randomized), and hostile batches
// rejected without touching the staging area.
#include <catch2/catch.hpp>
#include <lz4.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <random>

#include "replicator/page_codec.hpp"

using namespace understudy;
using namespace understudy::replicator;

namespace {

constexpr uint64_t kSeed = 0x5eed'1234'abcd'0001;

// Primary memory, the backup's committed replica, and the codec pair between them.
struct Pair {
    explicit Pair(uint64_t pages, uint64_t cache_pages = 1024)
        : n(pages), primary(pages * kPageSize), replica(pages * kPageSize),
          enc(*PageEncoder::create({.page_count = pages, .cache_pages = cache_pages, .hash_seed = kSeed})),
          dec(*PageDecoder::create({.page_count = pages, .hash_seed = kSeed})) {}

    uint8_t* page(uint64_t i) { return &primary[i * kPageSize]; }
    PageDecoder::BaseLookup base() {
        return [this](uint64_t i) { return &replica[i * kPageSize]; };
    }
    // Copies the pages as the primary does during the pause, then encodes them.
    std::vector<uint8_t> encode(const std::vector<uint64_t>& idx, CodecStats* stats = nullptr) {
        std::vector<uint8_t> copy;
        for (uint64_t i : idx) copy.insert(copy.end(), page(i), page(i) + kPageSize);
        std::vector<uint8_t> out;
        auto s = enc.encode(idx, copy, out);
        REQUIRE(s);
        if (stats) *stats = *s;
        return out;
    }
    Result<CodecStats> apply(std::span<const uint8_t> batch) {
        StagedPages staged;
        auto s = dec.decode(batch, base(), staged);
        if (!s) return s;
        for (size_t k = 0; k < staged.indices.size(); ++k)
            std::memcpy(&replica[staged.indices[k] * kPageSize], staged.page(k).data(), kPageSize);
        return s;
    }
    bool in_sync() const { return primary == replica; }

    uint64_t n;
    std::vector<uint8_t> primary, replica;
    PageEncoder enc;
    PageDecoder dec;
};

void fill_random(uint8_t* p, std::mt19937_64& rng) {
    for (size_t i = 0; i < kPageSize; i += 8) {
        uint64_t v = rng();
        std::memcpy(p + i, &v, 8);
    }
}

// Text-like: compresses well with plain LZ4.
void fill_compressible(uint8_t* p, uint64_t salt) {
    for (size_t i = 0; i < kPageSize; ++i) p[i] = static_cast<uint8_t>("checkpoint "[i % 11] + (i / 512) + salt);
}

PageEncoding only_encoding(const CodecStats& s) {
    REQUIRE(s.page_total() == 1);
    for (size_t e = 0; e < kEncodingCount; ++e)
        if (s.pages[e]) return static_cast<PageEncoding>(e);
    FAIL("no page counted");
    return PageEncoding::raw;
}

} // namespace

TEST_CASE("each encoding is chosen on suitable content and round-trips", "[page_codec]") {
    Pair p(16);
    std::mt19937_64 rng(1);
    auto step = [&](uint64_t i) {
        CodecStats s;
        auto batch = p.encode({i}, &s);
        REQUIRE(p.apply(batch));
        CHECK(p.in_sync());
        CHECK(s.raw_bytes == kPageSize);
        CHECK(s.encoded_bytes == batch.size());
        return only_encoding(s);
    };

    CHECK(step(0) == PageEncoding::zero);
    fill_random(p.page(1), rng);
    CHECK(step(1) == PageEncoding::raw);
    CHECK(step(1) == PageEncoding::same);
    p.page(1)[100] ^= 0x5a;
    CHECK(step(1) == PageEncoding::xor_lz4);
    fill_compressible(p.page(2), 0);
    CHECK(step(2) == PageEncoding::lz4);
    std::memset(p.page(1), 0, kPageSize);
    CHECK(step(1) == PageEncoding::zero);

    // A zero page leaves the cache, so its next content cannot be an XOR against it.
    CHECK(p.enc.cached_pages() == 1);
    fill_random(p.page(1), rng);
    CHECK(step(1) == PageEncoding::raw);
}

TEST_CASE("the shortcuts (a dense delta skips the XOR, an incompressible sample skips LZ4) choose as before and round-trip", "[page_codec]") {
    Pair p(4);
    std::mt19937_64 rng(5);
    auto step = [&](uint64_t i) {
        CodecStats s;
        REQUIRE(p.apply(p.encode({i}, &s)));
        CHECK(p.in_sync());
        return std::pair{only_encoding(s), s.encoded_bytes};
    };
    // Text rewritten throughout (a cached copy exists, but the delta is dense): plain LZ4,
    // as small as LZ4 of the page alone.
    fill_compressible(p.page(0), 0);
    CHECK(step(0).first == PageEncoding::lz4);
    fill_compressible(p.page(0), 3);
    std::vector<char> alone(LZ4_compressBound(kPageSize));
    const int alone_bytes = LZ4_compress_default(reinterpret_cast<const char*>(p.page(0)), alone.data(), kPageSize,
                                                 int(alone.size()));
    auto [e, bytes] = step(0);
    CHECK(e == PageEncoding::lz4);
    CHECK(bytes <= sizeof(PageBatchHeader) + sizeof(PageRecordHeader) + size_t(alone_bytes) + 8);
    // Random content rewritten: raw, the probe having refused both LZ4 passes.
    fill_random(p.page(1), rng);
    CHECK(step(1).first == PageEncoding::raw);
    fill_random(p.page(1), rng);
    CHECK(step(1).first == PageEncoding::raw);
    // A few bytes changed in a random page go as an XOR: the probe is not asked when the
    // delta is sparse and small.
    p.page(1)[2000] ^= 0x11;
    CHECK(step(1).first == PageEncoding::xor_lz4);
    // Random first half, zeros after: the probe's sample covers both, so LZ4 is tried.
    std::memset(p.page(2), 0, kPageSize);
    for (size_t i = 0; i < kPageSize / 2; i += 8) {
        uint64_t v = rng();
        std::memcpy(p.page(2) + i, &v, 8);
    }
    CHECK(step(2).first == PageEncoding::lz4);
}

TEST_CASE("small deltas are far smaller than the page; same pages cost only a header", "[page_codec]") {
    Pair p(64);
    std::mt19937_64 rng(2);
    std::vector<uint64_t> all(64);
    for (uint64_t i = 0; i < 64; ++i) all[i] = i, fill_random(p.page(i), rng);
    REQUIRE(p.apply(p.encode(all)));
    for (uint64_t i = 0; i < 64; ++i) p.page(i)[i * 7] ^= 1;
    CodecStats s;
    REQUIRE(p.apply(p.encode(all, &s)));
    CHECK(s.count(PageEncoding::xor_lz4) == 64);
    CHECK(s.encoded_bytes < s.raw_bytes / 40);
    REQUIRE(p.apply(p.encode(all, &s)));
    CHECK(s.count(PageEncoding::same) == 64);
    CHECK(s.encoded_bytes == sizeof(PageBatchHeader) + 64 * sizeof(PageRecordHeader));
    CHECK(p.in_sync());
}

TEST_CASE("without a cached copy SAME rests on the hash and nothing is XORed", "[page_codec]") {
    Pair p(4, /*cache_pages=*/0);
    std::mt19937_64 rng(3);
    fill_random(p.page(0), rng);
    CodecStats s;
    REQUIRE(p.apply(p.encode({0}, &s)));
    CHECK(only_encoding(s) == PageEncoding::raw);
    REQUIRE(p.apply(p.encode({0}, &s)));
    CHECK(only_encoding(s) == PageEncoding::same);
    p.page(0)[5] ^= 1;
    REQUIRE(p.apply(p.encode({0}, &s)));
    CHECK(only_encoding(s) == PageEncoding::raw);
    CHECK(p.enc.cached_pages() == 0);
    CHECK(p.in_sync());
}

TEST_CASE("pipelined checkpoints: N+1 is encoded before N is applied and XORs against N", "[page_codec]") {
    Pair p(8);
    std::mt19937_64 rng(4);
    for (uint64_t i = 0; i < 8; ++i) fill_random(p.page(i), rng);
    auto c0 = p.encode({0, 1, 2, 3, 4, 5, 6, 7});
    for (uint64_t i = 0; i < 8; ++i) p.page(i)[9] ^= 0xff;
    CodecStats s1;
    auto c1 = p.encode({0, 1, 2, 3, 4, 5, 6, 7}, &s1);
    CHECK(s1.count(PageEncoding::xor_lz4) == 8);

    // Out of order the base is wrong: refused, nothing written.
    auto before = p.replica;
    auto r = p.apply(c1);
    REQUIRE(!r);
    CHECK(r.error().code == Errc::invalid_input);
    CHECK_THAT(r.error().message, Catch::Contains("XOR base"));
    CHECK(p.replica == before);

    REQUIRE(p.apply(c0));
    REQUIRE(p.apply(c1));
    CHECK(p.in_sync());
}

TEST_CASE("reset forgets what was sent: a resync carries no SAME or XOR", "[page_codec]") {
    Pair p(8);
    std::mt19937_64 rng(5);
    std::vector<uint64_t> all{0, 1, 2, 3, 4, 5, 6, 7};
    for (uint64_t i : all) fill_random(p.page(i), rng);
    REQUIRE(p.apply(p.encode(all)));
    p.enc.reset();
    CHECK(p.enc.cached_pages() == 0);
    CodecStats s;
    REQUIRE(p.apply(p.encode(all, &s)));
    CHECK(s.count(PageEncoding::raw) == 8);
    CHECK(p.in_sync());
}

TEST_CASE("a page rewritten throughout leaves the cache, stays out for a doubling while, and comes back", "[page_codec]") {
    Pair p(4, /*cache_pages=*/2);
    std::mt19937_64 rng(8);
    auto send = [&](uint64_t i) {
        CodecStats s;
        REQUIRE(p.apply(p.encode({i}, &s)));
        REQUIRE(p.in_sync());
        return only_encoding(s);
    };
    // Page 0 rewritten with random bytes and sent; how many pages are cached after.
    auto rewrite = [&] {
        fill_random(p.page(0), rng);
        CHECK(send(0) == PageEncoding::raw);
        return p.enc.cached_pages();
    };
    CHECK(rewrite() == 1); // first send: cached
    CHECK(rewrite() == 1); // one dense delta: still cached
    CHECK(rewrite() == 0); // the second in a row: out, for 2 sends
    // Its slot serves a page that XORs well.
    fill_random(p.page(1), rng);
    send(1);
    p.page(1)[7] ^= 1;
    CHECK(send(1) == PageEncoding::xor_lz4);
    // Out for two sends: a small change meanwhile goes without XOR.
    for (int k = 0; k < 2; ++k) {
        p.page(0)[100 + k] ^= 1;
        CHECK(send(0) == PageEncoding::raw);
        CHECK(p.enc.cached_pages() == 1);
    }
    // Admitted again on the next send; a sparse delta then ends the streak.
    CHECK(rewrite() == 2);
    p.page(0)[9] ^= 1;
    CHECK(send(0) == PageEncoding::xor_lz4);
    // With the streak ended, one dense delta does not evict; a new streak of two does,
    // for 2 sends again.
    CHECK(rewrite() == 2);
    CHECK(rewrite() == 1);
    // While the deltas stay dense, the time out doubles: 2 sends out, then cached, then
    // a third dense delta in a row evicts for 4 sends.
    std::vector<uint64_t> cached;
    for (int k = 0; k < 9; ++k) cached.push_back(rewrite());
    CHECK(cached == std::vector<uint64_t>{1, 1, 2, 1, 1, 1, 1, 1, 2});
    // reset() forgets the history too: after it, a page is cached at its first send.
    p.enc.reset();
    CHECK(rewrite() == 1);
}

TEST_CASE("a cache smaller than the working set evicts and still round-trips", "[page_codec]") {
    Pair p(256, /*cache_pages=*/8);
    std::mt19937_64 rng(6);
    std::vector<uint64_t> hot{0, 1, 2, 3};
    std::vector<uint64_t> all;
    for (uint64_t i = 0; i < 256; ++i) all.push_back(i), fill_random(p.page(i), rng);
    REQUIRE(p.apply(p.encode(all)));
    CodecStats total;
    for (int epoch = 0; epoch < 20; ++epoch) {
        std::vector<uint64_t> dirty = hot;
        for (int k = 0; k < 3; ++k) dirty.push_back(4 + rng() % 252);
        std::sort(dirty.begin(), dirty.end());
        dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
        for (uint64_t i : dirty) p.page(i)[rng() % kPageSize] ^= 0x80;
        CodecStats s;
        REQUIRE(p.apply(p.encode(dirty, &s)));
        REQUIRE(p.in_sync());
        CHECK(p.enc.cached_pages() <= 8);
        total += s;
    }
    CHECK(total.count(PageEncoding::xor_lz4) > 0);
    CHECK(total.count(PageEncoding::raw) > 0); // evicted pages fall back
}

TEST_CASE("encoder refuses bad calls and stays unchanged", "[page_codec]") {
    Pair p(4);
    std::vector<uint8_t> page(kPageSize, 7), out;
    std::vector<uint64_t> beyond{4}, one{0};
    CHECK(!p.enc.encode(beyond, page, out));
    CHECK(!p.enc.encode(one, std::span(page).first(100), out));
    CHECK(!p.enc.encode({}, {}, out));
    CHECK(out.empty());
    CHECK(!PageEncoder::create({.page_count = 0}));
    CHECK(!PageEncoder::create({.page_count = 4, .lz4_max_bytes = 5000}));
    CHECK(!PageDecoder::create({.page_count = 0}));
}

namespace {

// A batch with one page of every encoding, and the replica state it is decoded against.
struct HostileFixture {
    HostileFixture() : p(8) {
        std::mt19937_64 rng(7);
        fill_random(p.page(1), rng); // same
        fill_random(p.page(2), rng); // xor_lz4
        fill_random(p.page(4), rng); // raw
        REQUIRE(p.apply(p.encode({1, 2})));
        p.page(2)[17] ^= 1;
        fill_compressible(p.page(3), 1);
        batch = p.encode({0, 1, 2, 3, 4}, &stats);
        for (size_t e = 0; e < kEncodingCount; ++e) REQUIRE(stats.pages[e] == 1);
        REQUIRE(p.dec.decode(batch, p.base(), good));
    }
    // Offset of page record k's header.
    size_t record(size_t k) const {
        size_t at = sizeof(PageBatchHeader);
        for (size_t i = 0; i < k; ++i) {
            PageRecordHeader h;
            std::memcpy(&h, &batch[at], sizeof h);
            at += sizeof h + (h.length + 7) / 8 * 8;
        }
        return at;
    }
    PageRecordHeader header(size_t k) const {
        PageRecordHeader h;
        std::memcpy(&h, &batch[record(k)], sizeof h);
        return h;
    }
    void set_header(std::vector<uint8_t>& b, size_t k, const PageRecordHeader& h) const {
        std::memcpy(&b[record(k)], &h, sizeof h);
    }
    // Decoding must fail with invalid_input and leave previously staged pages untouched.
    std::string rejected(std::span<const uint8_t> b) {
        StagedPages staged;
        staged.indices = {5};
        std::memset(staged.data.extend(kPageSize), 0xee, kPageSize);
        auto r = p.dec.decode(b, p.base(), staged);
        if (r) return "accepted";
        CHECK(r.error().code == Errc::invalid_input);
        CHECK(staged.indices == std::vector<uint64_t>{5});
        CHECK(std::ranges::equal(staged.data.bytes(), std::vector<uint8_t>(kPageSize, 0xee)));
        return r.error().message;
    }

    Pair p;
    std::vector<uint8_t> batch;
    CodecStats stats;
    StagedPages good;
};

} // namespace

TEST_CASE("hostile batches are rejected with an error", "[page_codec]") {
    HostileFixture f;
    const auto& b = f.batch;

    SECTION("every truncation") {
        for (size_t n = 0; n < b.size(); ++n) CHECK(f.rejected(std::span(b).first(n)) != "accepted");
    }
    SECTION("trailing bytes") {
        auto x = b;
        x.insert(x.end(), 8, 0);
        CHECK_THAT(f.rejected(x), Catch::Contains("after the last page record"));
    }
    SECTION("batch header: version, zero and huge counts") {
        for (auto [field, value] : {std::pair{0, 2u}, {4, 0u}, {4, kMaxBatchPages + 1}, {4, 6u}, {4, 4u}}) {
            auto x = b;
            std::memcpy(&x[field], &value, 4);
            CHECK(f.rejected(x) != "accepted");
        }
    }
    SECTION("lengths lying") {
        for (size_t k = 0; k < 5; ++k)
            for (uint32_t len : {0u, 1u, 8u, 4095u, 4096u, 4097u, 0xffffffffu}) {
                auto h = f.header(k);
                if (h.length == len) continue;
                auto x = b;
                h.length = len;
                f.set_header(x, k, h);
                CHECK(f.rejected(x) != "accepted");
            }
    }
    SECTION("page index out of range") {
        for (uint64_t idx : {uint64_t(8), uint64_t(1) << 40, ~uint64_t(0)}) {
            auto x = b;
            auto h = f.header(4);
            h.page_index = idx;
            f.set_header(x, 4, h);
            CHECK_THAT(f.rejected(x), Catch::Contains("beyond 8 pages"));
        }
    }
    SECTION("page index moved to another valid page") {
        auto x = b;
        auto h = f.header(4);
        h.page_index = 6;
        f.set_header(x, 4, h);
        CHECK_THAT(f.rejected(x), Catch::Contains("content hash mismatch"));
    }
    SECTION("unknown encoding and reserved bytes") {
        auto x = b;
        auto h = f.header(4);
        h.encoding = 9;
        f.set_header(x, 4, h);
        CHECK_THAT(f.rejected(x), Catch::Contains("unknown encoding 9"));
        x = b;
        h = f.header(4);
        h.reserved[1] = 1;
        f.set_header(x, 4, h);
        CHECK_THAT(f.rejected(x), Catch::Contains("reserved"));
    }
    SECTION("LZ4 payload of the wrong decompressed size") {
        // A valid LZ4 stream of 2048 bytes where a page's 4096 are due.
        std::vector<uint8_t> half(2048, 'a');
        std::vector<uint8_t> comp(LZ4_COMPRESSBOUND(2048));
        int n = LZ4_compress_default(reinterpret_cast<const char*>(half.data()), reinterpret_cast<char*>(comp.data()),
                                     2048, int(comp.size()));
        REQUIRE(n > 0);
        std::vector<uint8_t> x(b.begin(), b.begin() + f.record(3));
        PageRecordHeader h = f.header(3);
        h.length = uint32_t(n);
        x.resize(x.size() + sizeof h);
        std::memcpy(&x[x.size() - sizeof h], &h, sizeof h);
        x.insert(x.end(), comp.begin(), comp.begin() + n);
        x.insert(x.end(), (8 - n % 8) % 8, 0);
        x.insert(x.end(), b.begin() + f.record(4), b.end());
        CHECK_THAT(f.rejected(x), Catch::Contains("decodes to 2048 bytes"));
    }
    SECTION("non-zero padding") {
        auto h = f.header(3);
        REQUIRE(h.length % 8 != 0);
        auto x = b;
        x[f.record(4) - 1] = 1;
        CHECK_THAT(f.rejected(x), Catch::Contains("padding"));
    }
    SECTION("SAME when the backup's copy differs") {
        f.p.replica[1 * kPageSize + 3] ^= 1;
        CHECK_THAT(f.rejected(b), Catch::Contains("backup's copy differs"));
    }
    SECTION("a decoder with another hash seed") {
        auto other = *PageDecoder::create({.page_count = 8, .hash_seed = kSeed + 1});
        StagedPages staged;
        CHECK(!other.decode(b, f.p.base(), staged));
    }
    SECTION("every single flipped bit is refused or decodes to the very same pages") {
        size_t refused = 0, total = 0;
        for (size_t i = 0; i < b.size(); ++i)
            for (int bit = 0; bit < 8; bit += 3) {
                auto x = b;
                x[i] ^= uint8_t(1 << bit);
                StagedPages staged;
                ++total;
                if (!f.p.dec.decode(x, f.p.base(), staged)) {
                    ++refused;
                    continue;
                }
                CHECK(staged.indices == f.good.indices);
                CHECK(std::ranges::equal(staged.data.bytes(), f.good.data.bytes()));
            }
        // LZ4 is redundant (a match offset moved onto identical bytes decodes the same): such
        // flips pass, but only with identical output, checked above.
        CHECK(refused > total * 99 / 100);
    }
}

TEST_CASE("randomized: 200 epochs over 2,048 pages, pipelined, replica equals source", "[page_codec]") {
    constexpr uint64_t kPages = 2048;
    Pair p(kPages, /*cache_pages=*/512);
    std::mt19937_64 rng(8);
    for (uint64_t i = 0; i < kPages; i += 3) fill_random(p.page(i), rng);
    std::vector<uint64_t> all(kPages);
    for (uint64_t i = 0; i < kPages; ++i) all[i] = i;

    // Checkpoint N+1 is encoded while N is still in flight; the backup applies in order.
    struct Checkpoint {
        std::vector<std::vector<uint8_t>> batches;
        std::vector<uint8_t> expect;
    };
    std::deque<Checkpoint> in_flight;
    CodecStats total;
    auto send = [&](std::vector<uint64_t> dirty) {
        Checkpoint c;
        for (size_t at = 0; at < dirty.size(); at += 700) {
            std::vector<uint64_t> part(dirty.begin() + at, dirty.begin() + std::min(dirty.size(), at + 700));
            CodecStats s;
            c.batches.push_back(p.encode(part, &s));
            total += s;
        }
        c.expect = p.primary;
        in_flight.push_back(std::move(c));
    };
    auto commit_oldest = [&] {
        auto& c = in_flight.front();
        std::vector<StagedPages> staged(c.batches.size());
        for (size_t k = 0; k < c.batches.size(); ++k) REQUIRE(p.dec.decode(c.batches[k], p.base(), staged[k]));
        for (auto& s : staged)
            for (size_t k = 0; k < s.indices.size(); ++k)
                std::memcpy(&p.replica[s.indices[k] * kPageSize], s.page(k).data(), kPageSize);
        REQUIRE(p.replica == c.expect);
        in_flight.pop_front();
    };

    send(all);
    for (int epoch = 0; epoch < 200; ++epoch) {
        std::vector<uint64_t> dirty;
        size_t n = 50 + rng() % 400;
        for (size_t k = 0; k < n; ++k) {
            uint64_t i = (rng() % 8 == 0) ? rng() % 32 : rng() % kPages; // a hot set and the rest
            dirty.push_back(i);
            uint8_t* pg = p.page(i);
            switch (rng() % 6) {
            case 0: std::memset(pg, 0, kPageSize); break;
            case 1: fill_random(pg, rng); break;
            case 2: fill_compressible(pg, rng() % 4); break;
            case 3: break; // dirty but rewritten with the same bytes
            default:
                for (int e = 0, m = 1 + rng() % 8; e < m; ++e) pg[rng() % kPageSize] = uint8_t(rng());
            }
        }
        std::sort(dirty.begin(), dirty.end());
        dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
        send(dirty);
        if (in_flight.size() > 2) commit_oldest();
    }
    while (!in_flight.empty()) commit_oldest();
    CHECK(p.in_sync());
    for (size_t e = 0; e < kEncodingCount; ++e) CHECK(total.pages[e] > 0);
}
