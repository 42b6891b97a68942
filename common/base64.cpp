#include "common/base64.hpp"

namespace understudy {

namespace {
constexpr char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}
} // namespace

std::string base64_encode(std::string_view in) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= in.size(); i += 3) {
        const unsigned n = unsigned(static_cast<unsigned char>(in[i])) << 16 |
                           unsigned(static_cast<unsigned char>(in[i + 1])) << 8 |
                           unsigned(static_cast<unsigned char>(in[i + 2]));
        out += b64_alphabet[n >> 18];
        out += b64_alphabet[(n >> 12) & 63];
        out += b64_alphabet[(n >> 6) & 63];
        out += b64_alphabet[n & 63];
    }
    if (in.size() - i == 1) {
        const unsigned n = unsigned(static_cast<unsigned char>(in[i])) << 16;
        out += b64_alphabet[n >> 18];
        out += b64_alphabet[(n >> 12) & 63];
        out += "==";
    } else if (in.size() - i == 2) {
        const unsigned n = unsigned(static_cast<unsigned char>(in[i])) << 16 |
                           unsigned(static_cast<unsigned char>(in[i + 1])) << 8;
        out += b64_alphabet[n >> 18];
        out += b64_alphabet[(n >> 12) & 63];
        out += b64_alphabet[(n >> 6) & 63];
        out += '=';
    }
    return out;
}

Result<std::string> base64_decode(std::string_view in) {
    auto bad = [](const char* why) { return make_error(Errc::invalid_input, std::string("bad base64: ") + why); };
    if (in.size() % 4 != 0) return bad("length is not a multiple of 4");
    std::string out;
    for (size_t i = 0; i < in.size(); i += 4) {
        const bool last = i + 4 == in.size();
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; ++j) {
            const char c = in[i + j];
            if (c == '=' && last && j >= 2) {
                v[j] = 0;
                ++pad;
                continue;
            }
            if (pad) return bad("data after padding");
            v[j] = b64_value(c);
            if (v[j] < 0) return bad("character outside the alphabet");
        }
        const unsigned n = unsigned(v[0]) << 18 | unsigned(v[1]) << 12 | unsigned(v[2]) << 6 | unsigned(v[3]);
        // Bits below the last encoded byte must be zero (canonical encoding).
        if ((pad == 1 && (n & 0xFF)) || (pad == 2 && (n & 0xFFFF))) return bad("non-zero bits in padding");
        out += char(n >> 16);
        if (pad < 2) out += char((n >> 8) & 0xFF);
        if (pad < 1) out += char(n & 0xFF);
    }
    return out;
}

} // namespace understudy
