#include "fuzz/page_fixup.hpp"

#include <lz4.h>
#include <xxhash.h>

#include <array>
#include <cstring>
#include <vector>

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

void fix_disk_block_check(std::span<uint8_t> body, uint64_t session_id) {
    constexpr size_t kHead = 24, kBlock = 4096, kMaxBlocks = 1024;
    if (body.size() < kHead) return;
    uint32_t head[4]; // disk, count, encoding, encoded bytes
    std::memcpy(head, body.data(), sizeof head);
    const uint32_t count = head[1], encoding = head[2];
    if (count == 0 || count > kMaxBlocks || uint64_t{count} * 8 > body.size() - kHead) return;
    const size_t data_at = kHead + size_t{count} * 8;
    std::span<const uint8_t> data = body.subspan(data_at);
    std::vector<uint8_t> raw(size_t{count} * kBlock);
    if (encoding == 0 && data.size() == raw.size()) std::memcpy(raw.data(), data.data(), raw.size());
    else if (encoding != 1 || LZ4_decompress_safe(reinterpret_cast<const char*>(data.data()), reinterpret_cast<char*>(raw.data()),
                                                  static_cast<int>(data.size()), static_cast<int>(raw.size())) != static_cast<int>(raw.size()))
        return;
    XXH3_state_t* st = XXH3_createState();
    if (!st) return;
    XXH3_64bits_reset_withSeed(st, session_id);
    XXH3_64bits_update(st, head, 8); // u32 disk, u32 count
    XXH3_64bits_update(st, body.data() + kHead, size_t{count} * 8);
    XXH3_64bits_update(st, raw.data(), raw.size());
    const uint64_t check = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    std::memcpy(body.data() + 16, &check, 8);
}

} // namespace understudy::fuzz
