#include "common/codec.hpp"

namespace understudy {

void Encoder::field(uint32_t tag, std::span<const uint8_t> body) {
    u32(tag);
    u32(static_cast<uint32_t>(body.size()));
    bytes(body);
    out_.insert(out_.end(), (8 - body.size() % 8) % 8, 0);
}

Result<std::span<const uint8_t>> Decoder::bytes(size_t n) {
    if (n > remaining())
        return error("truncated: needs " + std::to_string(n) + " more bytes at offset " + std::to_string(pos_) + ", has " +
                     std::to_string(remaining()));
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
}

Result<Decoder::Field> Decoder::field() {
    uint32_t tag = US_TRY(u32());
    uint32_t len = US_TRY(u32());
    auto body = US_TRY(bytes(len));
    size_t pad = (8 - (len % 8)) % 8;
    if (pad > remaining()) return error("truncated padding after field " + std::to_string(tag));
    for (size_t i = 0; i < pad; ++i)
        if (in_[pos_ + i] != 0) return error("non-zero padding after field " + std::to_string(tag));
    pos_ += pad;
    return Field{tag, body};
}

} // namespace understudy
