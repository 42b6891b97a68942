#include "replicator/page_codec.hpp"

#include <lz4.h>
#include <xxhash.h>
#include <xxh_x86dispatch.h> // XXH3 on the widest vector unit the CPU has (same values)

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "common/codec.hpp"

namespace understudy::replicator {

namespace {

using Clock = std::chrono::steady_clock;

// A real hash equal to this only costs a missed SAME, never a wrong one.
constexpr uint64_t kNeverSent = 0;
constexpr uint32_t kNoSlot = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kNoPage = std::numeric_limits<uint64_t>::max();

uint64_t page_hash(const uint8_t* p, uint64_t seed) { return XXH3_64bits_withSeed(p, kPageSize, seed); }

uint64_t zero_page_hash(uint64_t seed) {
    static const std::array<uint8_t, kPageSize> zeros{};
    return page_hash(zeros.data(), seed);
}

// Word-wise with an early exit per 256 bytes: most non-zero pages fail in the first block.
bool is_zero(const uint8_t* p) {
    for (size_t off = 0; off < kPageSize; off += 256) {
        uint64_t acc = 0;
        for (size_t i = 0; i < 256; i += 8) {
            uint64_t w;
            std::memcpy(&w, p + off + i, 8);
            acc |= w;
        }
        if (acc) return false;
    }
    return true;
}

void xor_page(uint8_t* dst, const uint8_t* a, const uint8_t* b) {
    for (size_t i = 0; i < kPageSize; i += 8) {
        uint64_t x, y;
        std::memcpy(&x, a + i, 8);
        std::memcpy(&y, b + i, 8);
        x ^= y;
        std::memcpy(dst + i, &x, 8);
    }
}

// delta = cached ^ page and cached = page, in one pass over the three pages. Returns the
// number of 8-byte words of the delta that are zero.
size_t xor_and_replace(uint8_t* delta, uint8_t* cached, const uint8_t* page) {
    size_t zero_words = 0;
    for (size_t i = 0; i < kPageSize; i += 8) {
        uint64_t x, y;
        std::memcpy(&x, cached + i, 8);
        std::memcpy(&y, page + i, 8);
        std::memcpy(cached + i, &y, 8);
        x ^= y;
        zero_words += (x == 0);
        std::memcpy(delta + i, &x, 8);
    }
    return zero_words;
}

// A delta with fewer zero words than this is dense: the page changed throughout, and
// LZ4 of the page itself does at least as well as LZ4 of the delta.
constexpr size_t kSparseDeltaZeroWords = kPageSize / 8 / 4;
// A page whose deltas came out dense this many times in a row (random or encrypted data
// rewritten, a buffer refilled) leaves the cache: its copy costs a page of reads and writes
// each time and saves nothing. It is kept out for 2^(streak - kDenseStreakToEvict + 1)
// sends, at most kMaxUncachedSends, then tried again.
constexpr uint8_t kDenseStreakToEvict = 2;
constexpr uint8_t kMaxUncachedSends = 64;
// The incompressibility probe: LZ4 of kProbeChunks chunks of kProbeChunkBytes spread over
// the page (an eighth of it) that does not save 1/16 of the sample.
constexpr size_t kProbeChunks = 8, kProbeChunkBytes = 64, kProbeBytes = kProbeChunks * kProbeChunkBytes;

size_t pad8(size_t n) { return (8 - n % 8) % 8; }

} // namespace

const char* encoding_name(PageEncoding e) {
    switch (e) {
    case PageEncoding::zero: return "zero";
    case PageEncoding::same: return "same";
    case PageEncoding::xor_lz4: return "xor_lz4";
    case PageEncoding::lz4: return "lz4";
    case PageEncoding::raw: return "raw";
    }
    return "unknown";
}

uint64_t CodecStats::page_total() const {
    uint64_t n = 0;
    for (uint64_t c : pages) n += c;
    return n;
}

CodecStats& CodecStats::operator+=(const CodecStats& o) {
    for (size_t i = 0; i < kEncodingCount; ++i) pages[i] += o.pages[i];
    raw_bytes += o.raw_bytes;
    encoded_bytes += o.encoded_bytes;
    elapsed += o.elapsed;
    return *this;
}

// ---- encoder ----

struct PageEncoder::State {
    State(uint64_t slots, uint64_t page_count)
        : data(new uint8_t[slots * kPageSize]), slot_page(slots, kNoPage), referenced(slots, 0), page_slot(page_count, kNoSlot),
          dense(page_count), lz4_state(LZ4_sizeofState()) {
        free_all();
    }

    // Per page: how its recent deltas went, and whether it is kept out of the cache now.
    struct DenseHistory {
        uint8_t streak = 0;         // dense deltas in a row
        uint8_t uncached_sends = 0; // sends left before the page may be cached again
    };

    uint8_t* find(uint64_t page) {
        uint32_t s = page_slot[page];
        return s == kNoSlot ? nullptr : &data[s * kPageSize];
    }
    void touch(uint64_t page) {
        if (uint32_t s = page_slot[page]; s != kNoSlot) referenced[s] = 1;
    }
    // Records `content` as the last-sent copy of an uncached `page`, evicting by CLOCK.
    void insert(uint64_t page, const uint8_t* content) {
        if (slot_page.empty()) return;
        uint32_t s = take_slot();
        slot_page[s] = page;
        page_slot[page] = s;
        referenced[s] = 1;
        std::memcpy(&data[s * kPageSize], content, kPageSize);
    }
    void drop(uint64_t page) {
        uint32_t s = page_slot[page];
        if (s == kNoSlot) return;
        page_slot[page] = kNoSlot;
        slot_page[s] = kNoPage;
        referenced[s] = 0;
        free_slots.push_back(s);
    }
    void clear() {
        std::fill(slot_page.begin(), slot_page.end(), kNoPage);
        std::fill(referenced.begin(), referenced.end(), 0);
        std::fill(page_slot.begin(), page_slot.end(), kNoSlot);
        std::fill(dense.begin(), dense.end(), DenseHistory{});
        free_all();
    }
    void free_all() {
        free_slots.resize(slot_page.size());
        for (size_t s = 0; s < free_slots.size(); ++s) free_slots[s] = uint32_t(free_slots.size() - 1 - s);
    }
    // After an XOR against the cached copy of `page`, with a dense delta or not.
    void note_delta(uint64_t page, bool was_dense) {
        DenseHistory& d = dense[page];
        if (!was_dense) {
            d.streak = 0;
            return;
        }
        d.streak = uint8_t(std::min<int>(d.streak + 1, 8));
        if (d.streak < kDenseStreakToEvict) return;
        d.uncached_sends = uint8_t(std::min<int>(1 << (d.streak - kDenseStreakToEvict + 1), kMaxUncachedSends));
        drop(page);
    }
    // Whether an uncached page just sent may take a slot now.
    bool admit(uint64_t page) {
        DenseHistory& d = dense[page];
        if (d.uncached_sends == 0) return true;
        --d.uncached_sends;
        return false;
    }
    // A free slot if there is one, else CLOCK: at most two sweeps, the first clears every
    // reference bit.
    uint32_t take_slot() {
        if (!free_slots.empty()) { // a dropped page's slot before any live copy
            uint32_t s = free_slots.back();
            free_slots.pop_back();
            return s;
        }
        for (;;) {
            uint32_t s = static_cast<uint32_t>(hand);
            hand = (hand + 1) % slot_page.size();
            if (referenced[s]) {
                referenced[s] = 0;
                continue;
            }
            page_slot[slot_page[s]] = kNoSlot;
            return s;
        }
    }
    // Compresses one page into dst; 0 when the result would not be below `limit` bytes.
    // (extState measured faster on 4 KiB pages than resetStream_fast + continue.)
    int compress(const uint8_t* src, uint8_t* dst, uint32_t limit, int accel) {
        return LZ4_compress_fast_extState(lz4_state.data(), reinterpret_cast<const char*>(src),
                                          reinterpret_cast<char*>(dst), kPageSize, static_cast<int>(limit) - 1, accel);
    }

    // Slot s holds the last-sent copy of page slot_page[s]. Left uninitialized: a slot is
    // written before it is read, and zero-filling the whole cache at start-up (64 MiB by
    // default) cost the primary's handshake 80-160 ms where a page fault costs 10-20 us.
    std::unique_ptr<uint8_t[]> data;
    std::vector<uint64_t> slot_page;
    std::vector<uint8_t> referenced;
    std::vector<uint32_t> page_slot;
    std::vector<DenseHistory> dense; // per page
    std::vector<uint32_t> free_slots; // holding no page; taken from the back
    size_t hand = 0;
    std::vector<char> lz4_state;
    // True when a sample of the page does not compress: LZ4 of the whole page would not
    // either (random or encrypted data), and costs 10 to 20 times more than the probe.
    bool looks_incompressible(const uint8_t* src, int accel) {
        for (size_t c = 0; c < kProbeChunks; ++c)
            std::memcpy(probe + c * kProbeChunkBytes, src + c * (kPageSize / kProbeChunks), kProbeChunkBytes);
        return LZ4_compress_fast_extState(lz4_state.data(), reinterpret_cast<const char*>(probe), probe_out,
                                          int(kProbeBytes), int(kProbeBytes - kProbeBytes / 16), accel) == 0;
    }

    alignas(64) uint8_t probe[kProbeBytes];
    alignas(64) char probe_out[kProbeBytes];
    alignas(64) uint8_t delta[kPageSize];
    alignas(64) uint8_t xor_out[kPageSize];
    alignas(64) uint8_t lz4_out[kPageSize];
};

Result<PageEncoder> PageEncoder::create(const EncoderConfig& cfg) {
    auto bad = [](const std::string& m) { return make_error(Errc::invalid_input, "page encoder: " + m); };
    if (cfg.page_count == 0 || cfg.page_count >= kNoPage / kPageSize) return bad("page count out of range");
    if (cfg.cache_pages >= kNoSlot) return bad("cache of " + std::to_string(cfg.cache_pages) + " pages is too large");
    if (cfg.lz4_max_bytes < 2 || cfg.lz4_max_bytes > kPageSize)
        return bad("lz4_max_bytes must be in [2, 4096], is " + std::to_string(cfg.lz4_max_bytes));
    if (cfg.lz4_acceleration < 1) return bad("lz4_acceleration must be at least 1");
    return PageEncoder(cfg);
}

PageEncoder::PageEncoder(const EncoderConfig& cfg)
    : cfg_(cfg), zero_hash_(zero_page_hash(cfg.hash_seed)), last_hash_(cfg.page_count, kNeverSent),
      st_(std::make_unique<State>(std::min(cfg.cache_pages, cfg.page_count), cfg.page_count)) {}

PageEncoder::PageEncoder(PageEncoder&&) noexcept = default;
PageEncoder& PageEncoder::operator=(PageEncoder&&) noexcept = default;
PageEncoder::~PageEncoder() = default;

void PageEncoder::reset() {
    std::fill(last_hash_.begin(), last_hash_.end(), kNeverSent);
    st_->clear();
}

uint64_t PageEncoder::cached_pages() const {
    return std::count_if(st_->slot_page.begin(), st_->slot_page.end(), [](uint64_t p) { return p != kNoPage; });
}

namespace {
void emit(std::vector<uint8_t>& out, uint64_t index, uint64_t hash, PageEncoding e, const uint8_t* payload,
          size_t len) {
    PageRecordHeader h{index, page_check(hash, index, e), static_cast<uint8_t>(e), {0, 0, 0}, static_cast<uint32_t>(len)};
    // Appended, not resized and then overwritten: a resize would first zero the payload.
    static constexpr uint8_t kPad[8] = {};
    auto* hp = reinterpret_cast<const uint8_t*>(&h);
    out.insert(out.end(), hp, hp + sizeof h);
    out.insert(out.end(), payload, payload + len);
    out.insert(out.end(), kPad, kPad + pad8(len));
}
} // namespace

PageEncoding PageEncoder::encode_page(uint64_t index, const uint8_t* page, std::vector<uint8_t>& out) {
    State& st = *st_;
    if (is_zero(page)) {
        last_hash_[index] = zero_hash_;
        st.drop(index); // XOR against zero is plain LZ4: the slot is better used elsewhere
        emit(out, index, zero_hash_, PageEncoding::zero, nullptr, 0);
        return PageEncoding::zero;
    }
    uint64_t h = page_hash(page, cfg_.hash_seed);
    uint8_t* prev = st.find(index);
    // SAME trusts a 64-bit match only where no copy is cached; a cached copy is compared.
    if (last_hash_[index] != kNeverSent && h == last_hash_[index] &&
        (!prev || std::memcmp(prev, page, kPageSize) == 0)) {
        st.touch(index);
        emit(out, index, h, PageEncoding::same, nullptr, 0);
        return PageEncoding::same;
    }

    PageEncoding e = PageEncoding::raw;
    const uint8_t* payload = page;
    int len = kPageSize;
    if (prev) {
        const size_t zero_words = xor_and_replace(st.delta, prev, page);
        st.touch(index);
        if (zero_words >= kSparseDeltaZeroWords) {
            if (int n = st.compress(st.delta, st.xor_out, cfg_.lz4_max_bytes, cfg_.lz4_acceleration); n > 0)
                e = PageEncoding::xor_lz4, payload = st.xor_out, len = n;
        }
        st.note_delta(index, zero_words < kSparseDeltaZeroWords);
    }
    // Plain LZ4 is slow, most of all on incompressible pages: skip it when the delta is
    // already small, or when a sample of the page does not compress.
    if ((e == PageEncoding::raw || len > static_cast<int>(cfg_.xor_accept_bytes)) &&
        !st.looks_incompressible(page, cfg_.lz4_acceleration)) {
        int n = st.compress(page, st.lz4_out, cfg_.lz4_max_bytes, cfg_.lz4_acceleration);
        if (n > 0 && n < len) e = PageEncoding::lz4, payload = st.lz4_out, len = n;
    }
    emit(out, index, h, e, payload, len);
    last_hash_[index] = h;
    if (!prev && st.admit(index)) st.insert(index, page);
    return e;
}

Result<CodecStats> PageEncoder::encode(std::span<const uint64_t> indices, std::span<const uint8_t> pages,
                                       std::vector<uint8_t>& out) {
    auto start = Clock::now();
    if (indices.empty() || indices.size() > kMaxBatchPages)
        return make_error(Errc::invalid_input, "page encoder: a batch holds 1.." + std::to_string(kMaxBatchPages) +
                                                   " pages, not " + std::to_string(indices.size()));
    if (pages.size() != indices.size() * kPageSize)
        return make_error(Errc::invalid_input, "page encoder: " + std::to_string(indices.size()) + " indices but " +
                                                   std::to_string(pages.size()) + " bytes of pages");
    for (uint64_t i : indices)
        if (i >= cfg_.page_count)
            return make_error(Errc::invalid_input, "page encoder: page " + std::to_string(i) + " beyond " +
                                                       std::to_string(cfg_.page_count) + " pages");

    size_t at = out.size();
    PageBatchHeader bh{kPageBatchVersion, static_cast<uint32_t>(indices.size())};
    Encoder(out).pod(bh);
    CodecStats s;
    for (size_t k = 0; k < indices.size(); ++k)
        ++s.pages[static_cast<size_t>(encode_page(indices[k], pages.data() + k * kPageSize, out))];
    s.raw_bytes = indices.size() * kPageSize;
    s.encoded_bytes = out.size() - at;
    s.elapsed = Clock::now() - start;
    return s;
}

// ---- decoder ----

Result<PageDecoder> PageDecoder::create(const DecoderConfig& cfg) {
    if (cfg.page_count == 0 || cfg.page_count >= kNoPage / kPageSize)
        return make_error(Errc::invalid_input, "page decoder: page count out of range");
    return PageDecoder(cfg);
}

PageDecoder::PageDecoder(const DecoderConfig& cfg) : cfg_(cfg), zero_hash_(zero_page_hash(cfg.hash_seed)) {}

Result<CodecStats> PageDecoder::decode(std::span<const uint8_t> batch, const BaseLookup& base,
                                       StagedPages& out) const {
    auto start = Clock::now();
    size_t staged_before = out.indices.size();
    auto result = [&]() -> Result<CodecStats> {
        Decoder d(batch, "page batch");
        auto bh = US_TRY(d.get<PageBatchHeader>());
        if (bh.version != kPageBatchVersion) return d.error("unknown version " + std::to_string(bh.version));
        if (bh.page_count == 0 || bh.page_count > kMaxBatchPages)
            return d.error("page count " + std::to_string(bh.page_count) + " outside 1.." +
                           std::to_string(kMaxBatchPages));
        if (d.remaining() < size_t(bh.page_count) * sizeof(PageRecordHeader))
            return d.error("truncated: " + std::to_string(bh.page_count) + " pages cannot fit in " +
                           std::to_string(d.remaining()) + " bytes");
        CodecStats s;
        for (uint32_t k = 0; k < bh.page_count; ++k) {
            auto h = US_TRY(d.get<PageRecordHeader>());
            auto payload = US_TRY(d.bytes(h.length));
            auto pad = US_TRY(d.bytes(pad8(h.length)));
            if (std::any_of(pad.begin(), pad.end(), [](uint8_t b) { return b != 0; }))
                return d.error("page record " + std::to_string(k) + ": non-zero padding");
            if (auto r = decode_page(h, payload, base, out); !r)
                return std::move(r.error()).wrap("page batch: page record " + std::to_string(k));
            ++s.pages[h.encoding];
        }
        if (!d.done()) return d.error(std::to_string(d.remaining()) + " bytes after the last page record");
        s.raw_bytes = uint64_t(bh.page_count) * kPageSize;
        s.encoded_bytes = batch.size();
        return s;
    }();
    if (!result) {
        out.indices.resize(staged_before);
        out.data.truncate(staged_before * kPageSize);
        return result;
    }
    result->elapsed = Clock::now() - start;
    return result;
}

Result<void> PageDecoder::decode_page(const PageRecordHeader& h, std::span<const uint8_t> payload,
                                      const BaseLookup& base, StagedPages& out) const {
    auto bad = [&](const std::string& m) {
        return make_error(Errc::invalid_input, "page " + std::to_string(h.page_index) + ": " + m);
    };
    if (h.page_index >= cfg_.page_count) return bad("beyond " + std::to_string(cfg_.page_count) + " pages");
    if (h.reserved[0] | h.reserved[1] | h.reserved[2]) return bad("reserved bytes set");
    if (h.encoding >= kEncodingCount) return bad("unknown encoding " + std::to_string(h.encoding));
    auto e = static_cast<PageEncoding>(h.encoding);
    const size_t len = payload.size();
    auto want_len = [&](bool ok) { return ok ? Result<void>{} : bad(std::string(encoding_name(e)) + " with a " +
                                                                    std::to_string(len) + "-byte payload"); };

    if (e == PageEncoding::same) {
        US_TRYV(want_len(len == 0));
        if (page_check(page_hash(base(h.page_index), cfg_.hash_seed), h.page_index, e) != h.check)
            return bad("marked same, but the backup's copy differs from the primary's");
        return {};
    }
    switch (e) {
    case PageEncoding::zero:
        US_TRYV(want_len(len == 0));
        if (page_check(zero_hash_, h.page_index, e) != h.check) return bad("zero page with a wrong check value");
        break;
    case PageEncoding::raw: US_TRYV(want_len(len == kPageSize)); break;
    default: US_TRYV(want_len(len > 0 && len < kPageSize)); break;
    }

    size_t at = out.data.size();
    uint8_t* dst = out.data.extend(kPageSize);
    if (e == PageEncoding::raw) std::memcpy(dst, payload.data(), kPageSize);
    if (e == PageEncoding::zero) std::memset(dst, 0, kPageSize);
    auto unstage = [&](const std::string& m) {
        out.data.truncate(at);
        return bad(m);
    };
    if (e != PageEncoding::raw && e != PageEncoding::zero) {
        int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload.data()), reinterpret_cast<char*>(dst),
                                    static_cast<int>(len), kPageSize);
        if (n != static_cast<int>(kPageSize))
            return unstage(n < 0 ? "corrupt LZ4 payload" : "LZ4 payload decodes to " + std::to_string(n) + " bytes");
        if (e == PageEncoding::xor_lz4) xor_page(dst, dst, base(h.page_index));
    }
    if (e != PageEncoding::zero && page_check(page_hash(dst, cfg_.hash_seed), h.page_index, e) != h.check)
        return unstage(e == PageEncoding::xor_lz4 ? "content hash mismatch (XOR base differs from the primary's?)"
                                                  : "content hash mismatch");
    out.indices.push_back(h.page_index);
    return {};
}

} // namespace understudy::replicator
