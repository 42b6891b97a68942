// The page codec's decoder (replicator/page_codec.hpp), which checks and decodes every
// page batch a primary sends, plus an encoder-to-decoder round trip.
//
// Input: byte 0 = mode and flags, u64 hash seed, u8 page count (1..64), u8 base pattern,
// then:
//   mode 0 (bit 7 clear): a page batch, decoded against base pages the harness fills from
//     the pattern. Bit 0: recompute the per-page checks first (fuzz/page_fixup.hpp).
//     Checks the decoder's contract: on success one staged page per non-SAME record, on
//     error the staging area exactly as it was.
//   mode 1 (bit 7 set): two rounds of (count, indices, page bytes) that the encoder turns
//     into batches; the decoder, applying them to a replica of the bases, must
//     reproduce every page exactly (SAME and XOR_LZ4 appear in the second round).
#include <array>
#include <cstring>
#include <map>

#include "fuzz/fuzz_support.hpp"
#include "fuzz/page_fixup.hpp"
#include "replicator/page_codec.hpp"

using namespace understudy;
using namespace understudy::replicator;

namespace {

std::vector<uint8_t> make_bases(uint64_t pages, uint8_t pattern) {
    std::vector<uint8_t> b(pages * kPageSize);
    for (uint64_t p = 0; p < pages; ++p) {
        if ((p + pattern) % 3 == 0) continue; // some zero pages
        for (size_t i = 0; i < kPageSize; ++i)
            b[p * kPageSize + i] = static_cast<uint8_t>((i * (p + 1)) >> (pattern % 8)) ^ pattern;
    }
    return b;
}

void decode_batch(fuzz::Input& in, uint8_t flags, uint64_t seed, uint64_t pages, std::vector<uint8_t>& bases) {
    auto dec = PageDecoder::create({pages, seed});
    if (!dec) fuzz::fail("page_codec: PageDecoder::create refused a valid configuration");
    auto rest = in.rest();
    std::vector<uint8_t> batch(rest.begin(), rest.end());
    auto base = [&](uint64_t i) -> const uint8_t* {
        if (i >= pages) fuzz::fail("page_codec: base lookup beyond the page count");
        return bases.data() + i * kPageSize;
    };
    if (flags & 1) fuzz::fix_page_checks(batch, seed, pages, base);

    StagedPages out;
    out.indices.push_back(0); // something already staged, which an error must leave alone
    std::memset(out.data.extend(kPageSize), 0xA5, kPageSize);
    auto r = dec->decode(batch, base, out);
    if (!r) {
        if (out.indices.size() != 1 || out.data.size() != kPageSize) fuzz::fail("page_codec: a failed decode changed the staging area");
        for (uint8_t b : out.data.bytes())
            if (b != 0xA5) fuzz::fail("page_codec: a failed decode changed a staged page");
        return;
    }
    uint64_t staged = r->page_total() - r->count(PageEncoding::same);
    if (out.indices.size() != 1 + staged || out.data.size() != out.indices.size() * kPageSize)
        fuzz::fail("page_codec: staged pages do not match the decoded records");
    for (size_t i = 1; i < out.indices.size(); ++i)
        if (out.indices[i] >= pages) fuzz::fail("page_codec: staged a page beyond the page count");
}

// One round: n pages (indices from the input, deduplicated), contents from the input.
bool encode_round(fuzz::Input& in, PageEncoder& enc, const PageDecoder& dec, uint64_t pages,
                  std::vector<uint8_t>& replica) {
    size_t n = 1 + in.u8() % 8;
    std::vector<uint64_t> idx;
    for (size_t k = 0; k < n; ++k) {
        uint64_t i = in.u8() % pages;
        if (std::find(idx.begin(), idx.end(), i) == idx.end()) idx.push_back(i);
    }
    std::vector<uint8_t> content(idx.size() * kPageSize);
    for (size_t k = 0; k < idx.size(); ++k) {
        // Start from the replica's page so small edits (XOR deltas, SAME) are likely.
        std::memcpy(&content[k * kPageSize], &replica[idx[k] * kPageSize], kPageSize);
        uint8_t edits = in.u8() % 16;
        for (uint8_t e = 0; e < edits; ++e) {
            uint16_t off = in.u16() % kPageSize;
            auto run = in.bytes(1 + in.u8() % 64);
            if (!run.empty())
                std::memcpy(&content[k * kPageSize + off], run.data(), std::min<size_t>(run.size(), kPageSize - off));
        }
    }
    std::vector<uint8_t> batch;
    auto s = enc.encode(idx, content, batch);
    if (!s) fuzz::fail("page_codec: the encoder refused a valid batch");
    StagedPages out;
    auto r = dec.decode(batch, [&](uint64_t i) { return replica.data() + i * kPageSize; }, out);
    if (!r) fuzz::fail("page_codec: the decoder refused the encoder's batch: " + r.error().describe());
    std::map<uint64_t, size_t> staged;
    for (size_t k = 0; k < out.indices.size(); ++k) staged[out.indices[k]] = k;
    for (size_t k = 0; k < idx.size(); ++k) {
        const uint8_t* got = staged.count(idx[k]) ? out.page(staged[idx[k]]).data() : &replica[idx[k] * kPageSize];
        if (std::memcmp(got, &content[k * kPageSize], kPageSize) != 0) fuzz::fail("page_codec: round trip changed a page");
    }
    for (auto [i, k] : staged) std::memcpy(&replica[i * kPageSize], out.page(k).data(), kPageSize);
    return true;
}

void round_trip(fuzz::Input& in, uint64_t seed, uint64_t pages) {
    // The encoder starts knowing nothing, so the replica starts as the guest's zero pages.
    std::vector<uint8_t> replica(pages * kPageSize, 0);
    auto enc = PageEncoder::create({.page_count = pages, .cache_pages = uint64_t(1 + in.u8() % 32), .hash_seed = seed});
    auto dec = PageDecoder::create({pages, seed});
    if (!enc || !dec) fuzz::fail("page_codec: codec creation refused a valid configuration");
    for (int round = 0; round < 3 && in.remaining() > 0; ++round) encode_round(in, *enc, *dec, pages, replica);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    fuzz::Input in(data, size);
    uint8_t flags = in.u8();
    uint64_t seed = in.u64();
    uint64_t pages = 1 + in.u8() % 64;
    uint8_t pattern = in.u8();
    if (flags & 0x80) {
        round_trip(in, seed, pages);
        return 0;
    }
    auto bases = make_bases(pages, pattern);
    decode_batch(in, flags, seed, pages, bases);
    return 0;
}
