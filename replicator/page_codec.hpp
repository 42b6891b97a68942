// The page codec: turns the dirty pages of one checkpoint into a compact batch on the
// primary (zero / same / XOR-delta+LZ4 / LZ4 / raw, chosen per page) and checks and
// decodes such a batch on the backup into a staging area. Pure: no KVM, no sockets.
// Batch layout and the XOR-base agreement rule: replicator/README.md.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "common/error.hpp"
#include "common/prefault.hpp"
#include "hv/guest_memory.hpp"

namespace understudy::replicator {

inline constexpr uint64_t kPageSize = hv::kPageSize;

enum class PageEncoding : uint8_t {
    zero = 0,    // all-zero page; no payload
    same = 1,    // backup already holds this content; no payload
    xor_lz4 = 2, // LZ4(new XOR base), base = the backup's page before this checkpoint
    lz4 = 3,     // LZ4(new)
    raw = 4,     // the 4096 bytes
};
inline constexpr size_t kEncodingCount = 5;
const char* encoding_name(PageEncoding e);

inline constexpr uint32_t kPageBatchVersion = 1;
// Keeps the worst case (every page raw) under common/records.hpp's kMaxRecordLength.
inline constexpr uint32_t kMaxBatchPages = 8192;

struct PageBatchHeader {
    uint32_t version;    // 0: kPageBatchVersion
    uint32_t page_count; // 4: page records that follow, 1..kMaxBatchPages
};
static_assert(std::is_standard_layout_v<PageBatchHeader> && sizeof(PageBatchHeader) == 8);

struct PageRecordHeader {
    uint64_t page_index;   // 0: dense page index (hv::GuestMemory::page_index)
    uint64_t check;        // 8: page_check(): the decoded content bound to its index
    uint8_t encoding;      // 16: PageEncoding
    uint8_t reserved[3];   // 17: zero
    uint32_t length;       // 20: payload bytes, zero padding to 8 excluded
};
static_assert(std::is_standard_layout_v<PageRecordHeader> && sizeof(PageRecordHeader) == 24);

// xxh3-64(content, session seed) XOR (index, encoding) times an odd constant, a bijection
// (indices stay far below 2^61): a record whose index or encoding was altered cannot pass
// the check with the content it would then decode to, unless the hash itself collides.
inline uint64_t page_check(uint64_t content_hash, uint64_t index, PageEncoding e) {
    return content_hash ^ ((index << 3 | static_cast<uint64_t>(e)) * 0x9E3779B97F4A7C15ull);
}

// Per encode or decode call.
struct CodecStats {
    std::array<uint64_t, kEncodingCount> pages{}; // indexed by PageEncoding
    uint64_t raw_bytes = 0;                       // pages x 4096
    uint64_t encoded_bytes = 0;                   // batch bytes, headers included
    std::chrono::nanoseconds elapsed{};

    uint64_t count(PageEncoding e) const { return pages[static_cast<size_t>(e)]; }
    uint64_t page_total() const;
    CodecStats& operator+=(const CodecStats& o);
};

struct EncoderConfig {
    uint64_t page_count = 0;         // guest pages; indices must be below
    uint64_t cache_pages = 16384;    // last-sent copies kept for XOR (64 MiB)
    uint64_t hash_seed = 0;          // per session, shared with the backup
    uint32_t lz4_max_bytes = 3584;   // LZ4 payloads at or above this go raw
    uint32_t xor_accept_bytes = 512; // an XOR payload this small skips the plain-LZ4 try
    int lz4_acceleration = 1;
};

// Primary side. Remembers, per page, the hash of what it last emitted and (bounded, CLOCK)
// a copy of it. That memory is only right while every batch it produced reaches the backup
// and is applied in order: after any break in the stream, call reset() and resend all.
class PageEncoder {
public:
    static Result<PageEncoder> create(const EncoderConfig& cfg);
    PageEncoder(PageEncoder&&) noexcept;
    PageEncoder& operator=(PageEncoder&&) noexcept;
    ~PageEncoder();

    // Appends one batch for pages[i] = content of page indices[i] (pages.size() ==
    // indices.size() * 4096, contents stable during the call; an index at most once per
    // checkpoint). On error nothing is appended and the encoder state is unchanged.
    Result<CodecStats> encode(std::span<const uint64_t> indices, std::span<const uint8_t> pages,
                              std::vector<uint8_t>& out);
    // Forget everything sent: the next batches carry no SAME and no XOR_LZ4.
    void reset();

    uint64_t page_count() const { return cfg_.page_count; }
    uint64_t cached_pages() const;

private:
    struct State; // CLOCK cache of last-sent copies, LZ4 state, scratch pages
    explicit PageEncoder(const EncoderConfig& cfg);
    PageEncoding encode_page(uint64_t index, const uint8_t* page, std::vector<uint8_t>& out);

    EncoderConfig cfg_;
    uint64_t zero_hash_;
    std::vector<uint64_t> last_hash_; // 0 = never sent, else xxh3 of the last content emitted
    std::unique_ptr<State> st_;
};

// Where decoded pages go until the caller applies the whole checkpoint at once.
struct StagedPages {
    std::vector<uint64_t> indices;
    PrefaultedBuffer data; // indices.size() pages, in the same order; kept faulted in between checkpoints
    std::span<const uint8_t> page(size_t i) const { return {data.data() + i * kPageSize, kPageSize}; }
    void clear() {
        indices.clear();
        data.clear();
    }
};

struct DecoderConfig {
    uint64_t page_count = 0;
    uint64_t hash_seed = 0; // must equal the encoder's
};

// Backup side. Stateless across batches: the reference for SAME and XOR_LZ4 is the page as
// it stands before this checkpoint, which the caller supplies (its committed replica).
class PageDecoder {
public:
    // Returns the 4096 bytes of page `index` (< page_count) before this checkpoint.
    using BaseLookup = std::function<const uint8_t*(uint64_t index)>;

    static Result<PageDecoder> create(const DecoderConfig& cfg);

    // Checks one batch completely and appends its pages (SAME pages excepted: nothing to
    // write) to out. Errors are Errc::invalid_input and leave out as it was.
    Result<CodecStats> decode(std::span<const uint8_t> batch, const BaseLookup& base, StagedPages& out) const;

private:
    explicit PageDecoder(const DecoderConfig& cfg);
    Result<void> decode_page(const PageRecordHeader& h, std::span<const uint8_t> payload, const BaseLookup& base,
                             StagedPages& out) const;

    DecoderConfig cfg_;
    uint64_t zero_hash_;
};

} // namespace understudy::replicator
