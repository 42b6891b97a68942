#include "common/json.hpp"

#include <charconv>
#include <cstdio>

#include "common/utf8.hpp"

namespace understudy {

Json::Json() = default;
Json::~Json() = default;
Json::Json(const Json&) = default;
Json::Json(Json&&) noexcept = default;
Json& Json::operator=(const Json&) = default;
Json& Json::operator=(Json&&) noexcept = default;

const Json* Json::find(std::string_view name) const {
    if (kind != Kind::object) return nullptr;
    for (const auto& [k, v] : members)
        if (k == name) return &v;
    return nullptr;
}

namespace {

class JsonParser {
public:
    explicit JsonParser(std::string_view in) : in_(in) {}

    Result<Json> document() {
        auto v = US_TRY(value(0));
        skip_ws();
        if (pos_ != in_.size()) return fail("unexpected data after the JSON value");
        return v;
    }

private:
    static constexpr int max_depth = 32;

    Error fail(const std::string& what) const {
        return make_error(Errc::invalid_input, "malformed JSON at byte " + std::to_string(pos_) + ": " + what);
    }
    void skip_ws() {
        while (pos_ < in_.size() && (in_[pos_] == ' ' || in_[pos_] == '\t' || in_[pos_] == '\n' || in_[pos_] == '\r'))
            ++pos_;
    }
    bool eat(char c) {
        if (pos_ < in_.size() && in_[pos_] == c) {
            ++pos_;
            return true;
        }
        return false;
    }
    bool literal(std::string_view word) {
        if (in_.substr(pos_, word.size()) != word) return false;
        pos_ += word.size();
        return true;
    }

    Result<Json> value(int depth) {
        if (depth > max_depth) return fail("nested deeper than " + std::to_string(max_depth));
        skip_ws();
        if (pos_ >= in_.size()) return fail("unexpected end of input");
        Json v;
        const char c = in_[pos_];
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') {
            v.kind = Json::Kind::string;
            v.text = US_TRY(string());
            return v;
        }
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        if (literal("true")) {
            v.kind = Json::Kind::boolean;
            v.boolean = true;
            return v;
        }
        if (literal("false")) {
            v.kind = Json::Kind::boolean;
            return v;
        }
        if (literal("null")) return v;
        return fail(std::string("unexpected character '") + c + "'");
    }

    Result<Json> object(int depth) {
        ++pos_; // '{'
        Json v;
        v.kind = Json::Kind::object;
        skip_ws();
        if (eat('}')) return v;
        for (;;) {
            skip_ws();
            if (pos_ >= in_.size() || in_[pos_] != '"') return fail("expected a member name");
            std::string name = US_TRY(string());
            if (v.find(name)) return fail("duplicate member \"" + name + "\"");
            skip_ws();
            if (!eat(':')) return fail("expected ':'");
            Json member = US_TRY(value(depth + 1));
            v.members.emplace_back(std::move(name), std::move(member));
            skip_ws();
            if (eat('}')) return v;
            if (!eat(',')) return fail("expected ',' or '}'");
        }
    }

    Result<Json> array(int depth) {
        ++pos_; // '['
        Json v;
        v.kind = Json::Kind::array;
        skip_ws();
        if (eat(']')) return v;
        for (;;) {
            v.items.push_back(US_TRY(value(depth + 1)));
            skip_ws();
            if (eat(']')) return v;
            if (!eat(',')) return fail("expected ',' or ']'");
        }
    }

    Result<unsigned> hex4() {
        if (in_.size() - pos_ < 4) return fail("truncated \\u escape");
        unsigned u = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = in_[pos_++];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') u |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') u |= unsigned(h - 'A' + 10);
            else return fail("bad hex digit in \\u escape");
        }
        return u;
    }

    static void put_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    Result<std::string> string() {
        ++pos_; // '"'
        std::string out;
        for (;;) {
            if (pos_ >= in_.size()) return fail("unterminated string");
            const char c = in_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
            if (static_cast<unsigned char>(c) >= 0x80) {
                size_t n = utf8_sequence(in_, pos_ - 1);
                if (n == 0) return fail("a string is not UTF-8");
                out.append(in_.substr(pos_ - 1, n));
                pos_ += n - 1;
                continue;
            }
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= in_.size()) return fail("unterminated escape");
            switch (in_[pos_++]) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                unsigned cp = US_TRY(hex4());
                if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (!literal("\\u")) return fail("high surrogate without its low half");
                    const unsigned lo = US_TRY(hex4());
                    if (lo < 0xDC00 || lo > 0xDFFF) return fail("high surrogate without its low half");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                put_utf8(out, cp);
                break;
            }
            default: return fail("unknown escape");
            }
        }
    }

    Result<Json> number() {
        const size_t start = pos_;
        auto digits = [&] {
            const size_t s = pos_;
            while (pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9') ++pos_;
            return pos_ - s;
        };
        eat('-');
        if (eat('0')) {
            if (pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9') return fail("leading zero in a number");
        } else if (digits() == 0) {
            return fail("expected digits");
        }
        if (eat('.') && digits() == 0) return fail("expected digits after '.'");
        if (eat('e') || eat('E')) {
            if (!eat('+')) eat('-');
            if (digits() == 0) return fail("expected exponent digits");
        }
        Json v;
        v.kind = Json::Kind::number;
        v.text = std::string(in_.substr(start, pos_ - start));
        return v;
    }

    std::string_view in_;
    size_t pos_ = 0;
};

} // namespace

Result<Json> parse_json(std::string_view in) { return JsonParser(in).document(); }

std::string json_quote(std::string_view s) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size();) {
        char c = s[i];
        if (static_cast<unsigned char>(c) >= 0x80) {
            // Bytes that are not UTF-8 (from a peer, a file, a guest) become U+FFFD, so the
            // result is always valid JSON text.
            size_t n = utf8_sequence(s, i);
            if (n == 0) {
                out += "\\ufffd";
                ++i;
            } else {
                out.append(s.substr(i, n));
                i += n;
            }
            continue;
        }
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(static_cast<unsigned char>(c)));
                out += buf;
            } else {
                out += c;
            }
        }
        ++i;
    }
    return out + "\"";
}

Result<std::int64_t> json_int64(const Json& v, std::string_view what) {
    std::string_view t;
    if (v.kind == Json::Kind::string) t = v.text;
    else if (v.kind == Json::Kind::number) t = v.text;
    else return make_error(Errc::invalid_input, std::string(what) + " is not an integer");
    std::int64_t n = 0;
    const bool leading_zero = t.size() > 1 && (t[0] == '0' || (t[0] == '-' && t[1] == '0'));
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), n);
    if (t.empty() || leading_zero || ec != std::errc() || end != t.data() + t.size())
        return make_error(Errc::invalid_input,
                          std::string(what) + " is not an integer in int64 range: \"" + std::string(t.substr(0, 40)) + "\"");
    return n;
}

} // namespace understudy
