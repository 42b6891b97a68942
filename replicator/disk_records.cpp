#include "replicator/disk_records.hpp"

#include <lz4.h>
#include <xxhash.h>

#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "common/codec.hpp"

namespace understudy::replicator {

namespace {

constexpr uint32_t kDiskReadonly = 1, kDiskConsistent = 2;
constexpr uint64_t kDiskEntryBytes = 16 + 16 + 8 + 8 * hv::kDiskHistory; // 104
constexpr uint32_t kEncodingRaw = 0, kEncodingLz4 = 1;
constexpr uint64_t kBlock = hv::kDiskBlockBytes;

Error bad(const std::string& what, const std::string& why) { return make_error(Errc::invalid_input, what + ": " + why); }

// XXH3-64, seeded with the session id, over the disk index, the count, the indices and
// the raw data: a block cannot be moved to another place, disk or session unnoticed.
uint64_t blocks_check(uint32_t disk, std::span<const uint64_t> blocks, std::span<const uint8_t> data, uint64_t seed) {
    // The library allocates its state: a caller's XXH3_state_t may be laid out otherwise
    // than the library's (its alignment attributes depend on the compiler), and one on the
    // stack was overrun in the clang build.
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), &XXH3_freeState);
    if (!st) throw std::bad_alloc();
    XXH3_64bits_reset_withSeed(st.get(), seed);
    const uint32_t head[2] = {disk, uint32_t(blocks.size())};
    XXH3_64bits_update(st.get(), head, sizeof head);
    XXH3_64bits_update(st.get(), blocks.data(), blocks.size_bytes());
    XXH3_64bits_update(st.get(), data.data(), data.size());
    return XXH3_64bits_digest(st.get());
}

Result<const DiskInfo*> disk_of(uint32_t disk, std::span<const DiskInfo> disks, const std::string& what) {
    if (disk >= disks.size())
        return bad(what, "disk " + std::to_string(disk) + ", but the stream has " + std::to_string(disks.size()));
    return &disks[disk];
}

} // namespace

std::vector<uint8_t> encode_disks(std::span<const DiskInfo> disks) {
    std::vector<uint8_t> out;
    Encoder e(out);
    for (const DiskInfo& d : disks) {
        e.u64(d.size_bytes);
        e.u32((d.readonly ? kDiskReadonly : 0) | (d.identity.consistent ? kDiskConsistent : 0));
        e.u32(0);
        e.raw(d.identity.disk_id.data(), 16);
        e.u64(d.identity.generation);
        for (uint64_t h : d.identity.history) e.u64(h);
    }
    return out;
}

Result<std::vector<DiskInfo>> decode_disks(std::span<const uint8_t> body, uint32_t expected) {
    const std::string what = "DISKS record";
    if (body.size() != uint64_t(expected) * kDiskEntryBytes)
        return bad(what, std::to_string(body.size()) + " bytes for " + std::to_string(expected) + " disks (" +
                             std::to_string(kDiskEntryBytes) + " bytes each)");
    Decoder d(body, what);
    std::vector<DiskInfo> out;
    for (uint32_t i = 0; i < expected; ++i) {
        DiskInfo info;
        info.size_bytes = US_TRY(d.u64());
        const uint32_t flags = US_TRY(d.u32());
        if (US_TRY(d.u32()) != 0) return bad(what, "disk " + std::to_string(i) + ": the reserved word is not zero");
        if (flags & ~(kDiskReadonly | kDiskConsistent)) return bad(what, "disk " + std::to_string(i) + ": unknown flags");
        if (info.size_bytes == 0 || info.size_bytes % 512)
            return bad(what, "disk " + std::to_string(i) + " has " + std::to_string(info.size_bytes) +
                                 " bytes, not a positive multiple of 512");
        info.readonly = flags & kDiskReadonly;
        info.identity.consistent = flags & kDiskConsistent;
        std::memcpy(info.identity.disk_id.data(), US_TRY(d.bytes(16)).data(), 16);
        info.identity.generation = US_TRY(d.u64());
        for (auto& h : info.identity.history) h = US_TRY(d.u64());
        out.push_back(info);
    }
    return out;
}

ChunkDigest chunk_digest(std::span<const uint8_t> chunk, uint64_t seed) {
    const XXH128_hash_t h = XXH3_128bits_withSeed(chunk.data(), chunk.size(), seed);
    return {h.low64, h.high64};
}

void encode_disk_digests(const DiskDigests& d, std::vector<uint8_t>& out) {
    Encoder e(out);
    e.u32(d.disk);
    e.u32(uint32_t(d.digests.size()));
    e.u64(d.first_chunk);
    for (const ChunkDigest& c : d.digests) {
        e.u64(c.lo);
        e.u64(c.hi);
    }
}

Result<DiskDigests> decode_disk_digests(std::span<const uint8_t> body, std::span<const DiskInfo> disks) {
    const std::string what = "DISK_DIGESTS record";
    Decoder d(body, what);
    DiskDigests out;
    out.disk = US_TRY(d.u32());
    const DiskInfo* info = US_TRY(disk_of(out.disk, disks, what));
    const uint32_t count = US_TRY(d.u32());
    out.first_chunk = US_TRY(d.u64());
    const uint64_t chunks = disk_chunks(info->size_bytes);
    if (count == 0 || count > kMaxDigestsPerRecord || out.first_chunk >= chunks || count > chunks - out.first_chunk)
        return bad(what, "chunks " + std::to_string(out.first_chunk) + "+" + std::to_string(count) + " are not inside disk " +
                             std::to_string(out.disk) + " (" + std::to_string(chunks) + " chunks, at most " +
                             std::to_string(kMaxDigestsPerRecord) + " a record)");
    if (d.remaining() != uint64_t(count) * 16)
        return bad(what, std::to_string(d.remaining()) + " bytes of digests for " + std::to_string(count) + " chunks");
    out.digests.resize(count);
    for (auto& c : out.digests) {
        c.lo = US_TRY(d.u64());
        c.hi = US_TRY(d.u64());
    }
    return out;
}

std::vector<uint8_t> encode_disk_want(const DiskWant& w) {
    std::vector<uint8_t> out;
    Encoder e(out);
    e.u32(w.disk);
    e.u32(uint32_t(w.differs.size()));
    e.u64(w.first_chunk);
    std::vector<uint8_t> bits((w.differs.size() + 7) / 8, 0);
    for (size_t i = 0; i < w.differs.size(); ++i)
        if (w.differs[i]) bits[i / 8] |= uint8_t(1u << (i % 8));
    e.bytes(bits);
    return out;
}

Result<DiskWant> decode_disk_want(std::span<const uint8_t> body) {
    const std::string what = "DISK_WANT record";
    Decoder d(body, what);
    DiskWant w;
    w.disk = US_TRY(d.u32());
    const uint32_t count = US_TRY(d.u32());
    w.first_chunk = US_TRY(d.u64());
    if (count == 0 || count > kMaxDigestsPerRecord) return bad(what, std::to_string(count) + " chunks");
    auto bits = US_TRY(d.bytes((count + 7) / 8));
    if (!d.done()) return bad(what, "trailing bytes");
    if (count % 8 && (bits.back() >> (count % 8)) != 0) return bad(what, "bits past the last chunk are set");
    w.differs.resize(count);
    for (uint32_t i = 0; i < count; ++i) w.differs[i] = (bits[i / 8] >> (i % 8)) & 1;
    return w;
}

void encode_disk_blocks(uint32_t disk, std::span<const uint64_t> blocks, std::span<const uint8_t> data, uint64_t seed,
                        std::vector<uint8_t>& lz4_state, std::vector<uint8_t>& out) {
    if (lz4_state.size() < size_t(LZ4_sizeofState())) lz4_state.resize(size_t(LZ4_sizeofState()));
    Encoder e(out);
    e.u32(disk);
    e.u32(uint32_t(blocks.size()));
    const size_t head = out.size();
    e.u32(kEncodingLz4);
    e.u32(0); // encoded bytes, below
    e.u64(blocks_check(disk, blocks, data, seed));
    e.bytes({reinterpret_cast<const uint8_t*>(blocks.data()), blocks.size_bytes()});
    const size_t at = out.size();
    const int bound = LZ4_compressBound(int(data.size()));
    out.resize(at + size_t(bound));
    int n = LZ4_compress_fast_extState(lz4_state.data(), reinterpret_cast<const char*>(data.data()),
                                       reinterpret_cast<char*>(out.data() + at), int(data.size()), bound, 1);
    uint32_t encoding = kEncodingLz4;
    if (n <= 0 || size_t(n) >= data.size()) { // incompressible: raw
        encoding = kEncodingRaw;
        n = int(data.size());
        std::memcpy(out.data() + at, data.data(), data.size());
    }
    out.resize(at + size_t(n));
    std::memcpy(out.data() + head, &encoding, 4);
    const uint32_t encoded = uint32_t(n);
    std::memcpy(out.data() + head + 4, &encoded, 4);
}

Result<void> decode_disk_blocks(std::span<const uint8_t> body, uint64_t seed, std::span<const DiskInfo> disks, DiskBlocks& out) {
    const std::string what = "DISK_BLOCKS record";
    Decoder d(body, what);
    out.disk = US_TRY(d.u32());
    const DiskInfo* info = US_TRY(disk_of(out.disk, disks, what));
    const uint32_t count = US_TRY(d.u32());
    const uint32_t encoding = US_TRY(d.u32());
    const uint32_t encoded = US_TRY(d.u32());
    const uint64_t check = US_TRY(d.u64());
    if (count == 0 || count > kMaxDiskBlocksPerRecord)
        return bad(what, std::to_string(count) + " blocks (1 to " + std::to_string(kMaxDiskBlocksPerRecord) + " allowed)");
    auto idx = US_TRY(d.bytes(size_t(count) * 8));
    out.blocks.resize(count);
    std::memcpy(out.blocks.data(), idx.data(), idx.size());
    const uint64_t limit = hv::disk_blocks(info->size_bytes);
    for (uint32_t i = 0; i < count; ++i) {
        if (out.blocks[i] >= limit)
            return bad(what, "block " + std::to_string(out.blocks[i]) + " is outside disk " + std::to_string(out.disk) + " (" +
                                 std::to_string(limit) + " blocks)");
        if (i > 0 && out.blocks[i] <= out.blocks[i - 1]) return bad(what, "block indices are not strictly increasing");
    }
    if (encoded != d.remaining())
        return bad(what, "announces " + std::to_string(encoded) + " bytes of data, carries " + std::to_string(d.remaining()));
    auto payload = US_TRY(d.bytes(encoded));
    const size_t raw = size_t(count) * kBlock;
    out.data.resize(raw);
    if (encoding == kEncodingRaw) {
        if (encoded != raw) return bad(what, "raw data of " + std::to_string(encoded) + " bytes for " + std::to_string(count) + " blocks");
        std::memcpy(out.data.data(), payload.data(), raw);
    } else if (encoding == kEncodingLz4) {
        // Chosen only when smaller: bounds what a peer can make this side decompress.
        if (encoded == 0 || encoded >= raw)
            return bad(what, "LZ4 data of " + std::to_string(encoded) + " bytes for " + std::to_string(count) +
                                 " blocks (it is used only when smaller than the raw " + std::to_string(raw) + ")");
        const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload.data()), reinterpret_cast<char*>(out.data.data()),
                                          int(encoded), int(raw));
        if (n != int(raw)) return bad(what, "its LZ4 data does not decode to " + std::to_string(count) + " blocks");
    } else {
        return bad(what, "unknown encoding " + std::to_string(encoding));
    }
    if (blocks_check(out.disk, out.blocks, out.data, seed) != check) return bad(what, "the blocks fail their check");
    out.encoded_bytes = encoded;
    return {};
}

void encode_disk_zero(const DiskZero& z, std::vector<uint8_t>& out) {
    Encoder e(out);
    e.u32(z.disk);
    e.u32(0);
    e.u64(z.first_block);
    e.u64(z.blocks);
}

Result<DiskZero> decode_disk_zero(std::span<const uint8_t> body, std::span<const DiskInfo> disks) {
    const std::string what = "DISK_ZERO record";
    Decoder d(body, what);
    DiskZero z;
    z.disk = US_TRY(d.u32());
    const DiskInfo* info = US_TRY(disk_of(z.disk, disks, what));
    if (US_TRY(d.u32()) != 0) return bad(what, "the reserved word is not zero");
    z.first_block = US_TRY(d.u64());
    z.blocks = US_TRY(d.u64());
    if (!d.done()) return bad(what, std::to_string(body.size()) + " bytes, expected 24");
    const uint64_t limit = hv::disk_blocks(info->size_bytes);
    if (z.blocks == 0 || z.first_block >= limit || z.blocks > limit - z.first_block)
        return bad(what, "blocks " + std::to_string(z.first_block) + "+" + std::to_string(z.blocks) + " are not inside disk " +
                             std::to_string(z.disk) + " (" + std::to_string(limit) + " blocks)");
    return z;
}

} // namespace understudy::replicator
