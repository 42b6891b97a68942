// One direction of a secured link: AES-256-GCM frames (docs/wire-format.md, "Frames").
//
//   u32 length (plaintext bytes, 1 .. kMaxFramePlain, little-endian) | ciphertext | 16-byte tag
//
// The length is the additional authenticated data; the 96-bit nonce is the direction's
// IV XOR the frame counter (big-endian in the last 8 bytes), so a frame that is dropped,
// repeated, reordered or moved to the other direction fails its tag. After
// kRekeyBytes of plaintext both ends replace the key with HKDF-Expand(key, "key update")
// at the same frame boundary, without a message.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>

#include "common/error.hpp"

namespace understudy::replicator {

inline constexpr size_t kFrameHeaderBytes = 4;
inline constexpr size_t kFrameTagBytes = 16;
inline constexpr size_t kFrameOverhead = kFrameHeaderBytes + kFrameTagBytes;
inline constexpr size_t kMaxFramePlain = 256u << 10; // senders may use less; receivers refuse more
inline constexpr uint64_t kRekeyBytes = uint64_t(1) << 34; // 16 GiB per key and direction

using LinkSecret = std::array<uint8_t, 32>;
using LinkIv = std::array<uint8_t, 12>;

class FrameCipher {
public:
    // `rekey_bytes` other than kRekeyBytes only in tests.
    static Result<std::unique_ptr<FrameCipher>> create(const LinkSecret& key, const LinkIv& iv, bool sealing,
                                                       uint64_t rekey_bytes = kRekeyBytes);
    ~FrameCipher();
    FrameCipher(const FrameCipher&) = delete;
    FrameCipher& operator=(const FrameCipher&) = delete;

    // Seals the concatenation of `pieces` (1 .. kMaxFramePlain bytes in all) into
    // out[0 .. kFrameOverhead + total). Reads each piece once; no copy of its own.
    Result<void> seal(std::span<const std::span<const uint8_t>> pieces, size_t total, uint8_t* out);
    // Opens one frame: `frame` is header, ciphertext and tag; the plaintext goes to
    // `plain` (frame.size() - kFrameOverhead bytes). On an error `plain` holds garbage
    // that must not be used; the error is Errc::invalid_input.
    Result<void> open(std::span<const uint8_t> frame, uint8_t* plain);
    uint64_t frames() const { return counter_; }

private:
    FrameCipher() = default;
    Result<void> set_key();
    Result<void> account(size_t bytes);
    struct Ctx;
    std::unique_ptr<Ctx> ctx_;
    LinkSecret key_{};
    LinkIv iv_{};
    bool sealing_ = true;
    uint64_t counter_ = 0, keyed_bytes_ = 0, rekey_bytes_ = kRekeyBytes;
    std::array<uint8_t, 12> nonce(uint64_t n) const;
};

// HKDF-SHA256 (RFC 5869) through OpenSSL: Extract(salt, ikm) then Expand(info, out).
Result<void> hkdf_sha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt, std::span<const uint8_t> info,
                         std::span<uint8_t> out);
// HKDF-Expand only, with `prk` as the pseudorandom key.
Result<void> hkdf_expand_sha256(std::span<const uint8_t> prk, std::span<const uint8_t> info, std::span<uint8_t> out);

} // namespace understudy::replicator
