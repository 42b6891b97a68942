#include "fuzz/page_fixup.hpp"

#include <lz4.h>
#include <xxhash.h>

#include <array>
#include <cstring>

#include "fuzz/fuzz_support.hpp"
#include "replicator/page_codec.hpp"

namespace understudy::fuzz {

using replicator::PageBatchHeader;
using replicator::PageEncoding;
using replicator::PageRecordHeader;

void fix_page_checks(std::span<uint8_t> batch, uint64_t hash_seed, uint64_t page_count,
                     const std::function<const uint8_t*(uint64_t)>& base) {
    constexpr size_t kPage = replicator::kPageSize;
    if (batch.size() < sizeof(PageBatchHeader)) return;
    PageBatchHeader bh;
    std::memcpy(&bh, batch.data(), sizeof bh);
    size_t at = sizeof bh;
    std::array<uint8_t, kPage> page;
    for (uint32_t k = 0; k < bh.page_count && batch.size() - at >= sizeof(PageRecordHeader); ++k) {
        PageRecordHeader h;
        std::memcpy(&h, batch.data() + at, sizeof h);
        size_t payload_at = at + sizeof h;
        if (h.length > batch.size() - payload_at) return;
        const uint8_t* payload = batch.data() + payload_at;
        bool known = h.page_index < page_count;
        const uint8_t* b = known ? base(h.page_index) : nullptr;
        switch (static_cast<PageEncoding>(h.encoding)) {
        case PageEncoding::zero: page.fill(0); break;
        case PageEncoding::same:
            if (b) std::memcpy(page.data(), b, kPage);
            else known = false;
            break;
        case PageEncoding::raw:
            if (h.length == kPage) std::memcpy(page.data(), payload, kPage);
            else known = false;
            break;
        case PageEncoding::lz4:
        case PageEncoding::xor_lz4: {
            int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload), reinterpret_cast<char*>(page.data()),
                                        static_cast<int>(h.length), kPage);
            if (n != static_cast<int>(kPage)) known = false;
            else if (h.encoding == static_cast<uint8_t>(PageEncoding::xor_lz4)) {
                if (!b) known = false;
                else
                    for (size_t i = 0; i < kPage; ++i) page[i] ^= b[i];
            }
            break;
        }
        default: known = false; break;
        }
        if (known) {
            h.check = replicator::page_check(XXH3_64bits_withSeed(page.data(), kPage, hash_seed), h.page_index,
                                             static_cast<PageEncoding>(h.encoding));
            std::memcpy(batch.data() + at, &h, sizeof h);
        }
        at = payload_at + h.length + pad8(h.length);
        if (at > batch.size()) return;
    }
}

} // namespace understudy::fuzz
