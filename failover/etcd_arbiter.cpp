#include "failover/etcd_arbiter.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <cstdio>

#include "common/utf8.hpp"

namespace understudy::failover {

namespace etcd_detail {

// ---------------------------------------------------------------------------------------
// JSON

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

// ---------------------------------------------------------------------------------------
// base64

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

// ---------------------------------------------------------------------------------------
// HTTP

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Result<tcp::endpoint> parse_endpoint(std::string_view ep) {
    auto bad = [&](const std::string& why) {
        return make_error(Errc::invalid_input, "etcd endpoint \"" + std::string(ep) + "\": " + why +
                                                   " (expected IP:port, e.g. 127.0.0.1:2379 or [::1]:2379)");
    };
    std::string_view host, port;
    if (ep.starts_with('[')) {
        const auto close = ep.find(']');
        if (close == std::string_view::npos || close + 1 >= ep.size() || ep[close + 1] != ':') return bad("bad [IPv6]:port");
        host = ep.substr(1, close - 1);
        port = ep.substr(close + 2);
    } else {
        const auto colon = ep.rfind(':');
        if (colon == std::string_view::npos) return bad("no port");
        host = ep.substr(0, colon);
        port = ep.substr(colon + 1);
    }
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
        return bad("bad port");
    boost::system::error_code aec;
    const auto addr = asio::ip::make_address(std::string(host), aec);
    if (aec) return bad("not an IP address (host names are not resolved: that cannot be bounded by a deadline)");
    return tcp::endpoint(addr, static_cast<unsigned short>(p));
}

Result<HttpReply> http_request(std::string_view endpoint, std::string_view method, std::string_view target,
                               std::string_view body, std::chrono::milliseconds timeout) {
    const auto ep = US_TRY(parse_endpoint(endpoint));
    const std::string what = "etcd " + std::string(endpoint) + " " + std::string(method) + " " + std::string(target);
    const auto verb = http::string_to_verb(beast::string_view(method.data(), method.size()));
    if (verb == http::verb::unknown) return make_error(Errc::invalid_input, what + ": unknown HTTP method");

    asio::io_context ioc;
    beast::tcp_stream stream(ioc);
    // One deadline for connect, send and answer together.
    stream.expires_after(timeout);
    beast::error_code ec;
    auto run = [&] {
        ioc.run();
        ioc.restart();
    };
    auto failed = [&](const char* stage) -> Error {
        if (ec == beast::error::timeout)
            return make_error(Errc::timeout, what + ": no answer within " + std::to_string(timeout.count()) + " ms (" +
                                                 stage + ")");
        if (ec.category() == http::make_error_code(http::error::end_of_stream).category() || ec == asio::error::eof)
            return make_error(Errc::invalid_input, what + ": malformed or truncated HTTP answer: " + ec.message());
        if (ec.category() == boost::system::system_category())
            return sys_error(what + ": " + stage + " failed", ec.value()); // describe() adds strerror
        return make_error(Errc::system, what + ": " + stage + " failed: " + ec.message());
    };

    ec = asio::error::would_block;
    stream.async_connect(ep, [&](beast::error_code e) { ec = e; });
    run();
    if (ec) return failed("connect");

    http::request<http::string_body> req{verb, std::string(target), 11};
    req.set(http::field::host, std::string(endpoint));
    req.set(http::field::content_type, "application/json");
    req.keep_alive(false);
    if (verb != http::verb::get || !body.empty()) {
        req.body() = std::string(body);
        req.prepare_payload();
    }
    ec = asio::error::would_block;
    http::async_write(stream, req, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("send");

    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    constexpr std::uint64_t max_body = 64 * 1024;
    parser.body_limit(max_body); // applies to chunked and read-to-EOF bodies
    ec = asio::error::would_block;
    http::async_read_header(stream, buf, parser, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("answer");
    // Boost 1.74's parser lets a Content-Length over the body limit through when the
    // header arrives on its own: checked here, before reading any of the body.
    if (auto len = parser.content_length(); len && *len > max_body)
        return make_error(Errc::invalid_input, what + ": answer body of " + std::to_string(*len) +
                                                   " bytes is over the body limit of 64 KiB");
    ec = asio::error::would_block;
    http::async_read(stream, buf, parser, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("answer");
    if (parser.get().body().size() > max_body)
        return make_error(Errc::invalid_input, what + ": answer body is over the body limit of 64 KiB");

    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    auto res = parser.release();
    return HttpReply{res.result_int(), std::move(res.body())};
}

} // namespace etcd_detail

// ---------------------------------------------------------------------------------------
// The arbiter

using etcd_detail::Json;
using namespace std::chrono_literals;

namespace {

Error bad_answer(std::string_view where, const std::string& what) {
    return make_error(Errc::invalid_input, "etcd answer to " + std::string(where) + ": " + what);
}

// A printable excerpt of an unexpected body for error messages.
std::string excerpt(std::string_view body) {
    std::string out;
    for (char c : body.substr(0, 160)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    if (body.size() > 160) out += "...";
    return out.empty() ? "(empty body)" : out;
}

// POST a JSON body; the answer must be HTTP 200 with a JSON object.
Result<Json> post(const EtcdOptions& o, std::string_view target, const std::string& body) {
    auto reply = US_TRY(etcd_detail::http_request(o.endpoint, "POST", target, body, o.settings.request_timeout));
    auto doc = etcd_detail::parse_json(reply.body);
    if (reply.status != 200) {
        std::string msg = excerpt(reply.body);
        if (doc)
            if (const Json* m = doc->find("message"); m && m->kind == Json::Kind::string) msg = m->text;
        return bad_answer(target, "HTTP status " + std::to_string(reply.status) + ": " + msg);
    }
    if (!doc) return bad_answer(target, doc.error().message + " in: " + excerpt(reply.body));
    if (doc->kind != Json::Kind::object) return bad_answer(target, "not a JSON object: " + excerpt(reply.body));
    return std::move(*doc);
}

Result<const Json*> member(const Json& obj, std::string_view name, Json::Kind kind, std::string_view where) {
    const Json* m = obj.find(name);
    if (!m) return bad_answer(where, "field \"" + std::string(name) + "\" is missing");
    if (m->kind != kind) return bad_answer(where, "field \"" + std::string(name) + "\" has the wrong type");
    return m;
}

Result<std::int64_t> int_member(const Json& obj, std::string_view name, std::string_view where) {
    const Json* m = obj.find(name);
    if (!m) return bad_answer(where, "field \"" + std::string(name) + "\" is missing");
    auto v = etcd_detail::json_int64(*m, name);
    if (!v) return bad_answer(where, v.error().message);
    return *v;
}

// LeaseGrantResponse and friends carry an "error" string; non-empty means failure.
Result<void> no_error_field(const Json& obj, std::string_view where) {
    if (const Json* e = obj.find("error")) {
        if (e->kind == Json::Kind::string && e->text.empty()) return {};
        std::string msg = e->kind == Json::Kind::string ? e->text : "(non-string error)";
        if (e->kind == Json::Kind::object)
            if (const Json* m = e->find("message"); m && m->kind == Json::Kind::string) msg = m->text;
        return bad_answer(where, "etcd reports an error: " + msg);
    }
    return {};
}

std::string lease_hex(std::int64_t id) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(id));
    return buf;
}

std::string printable_check(std::string_view s, std::string_view what, size_t max_len) {
    if (s.empty()) return std::string(what) + " is empty";
    if (s.size() > max_len) return std::string(what) + " is longer than " + std::to_string(max_len) + " bytes";
    for (char c : s)
        if (c < 0x20 || c > 0x7e) return std::string(what) + " has a non-printable character";
    return {};
}

} // namespace

struct EtcdArbiter::Keepalive {
    std::chrono::seconds ttl{0};
    Clock::time_point sent;
};

Result<std::unique_ptr<EtcdArbiter>> EtcdArbiter::create(EtcdOptions o) {
    US_TRYV(validate(o.settings));
    if (o.endpoint.empty())
        return make_error(Errc::invalid_input, "arbiter etcd needs an endpoint (IP:port of an etcd client URL)");
    // Parsed now so that a bad endpoint is refused at start-up, not at failover.
    US_TRYV(etcd_detail::parse_endpoint(o.endpoint));
    if (auto why = printable_check(o.key, "arbiter key", 1024); !why.empty())
        return make_error(Errc::invalid_input, why);
    if (!o.clock) return make_error(Errc::invalid_input, "arbiter etcd: no clock");
    return std::unique_ptr<EtcdArbiter>(new EtcdArbiter(std::move(o)));
}

Result<void> EtcdArbiter::check_cluster(std::string_view where, const Json& reply) {
    const Json* header = US_TRY(member(reply, "header", Json::Kind::object, where));
    const Json* cid = US_TRY(member(*header, "cluster_id", Json::Kind::string, where));
    // A uint64 as a decimal string (it does not fit int64).
    if (cid->text.empty() || cid->text.size() > 20 || cid->text.find_first_not_of("0123456789") != std::string::npos)
        return bad_answer(where, "header.cluster_id is not a decimal number");
    std::lock_guard lk(mu_);
    if (!cluster_id_) cluster_id_ = cid->text;
    else if (*cluster_id_ != cid->text)
        return bad_answer(where, "answer from cluster " + cid->text + ", but our leases live in cluster " +
                                     *cluster_id_ + " (endpoint now points at another etcd?)");
    return {};
}

void EtcdArbiter::set_valid_until(Clock::time_point t) { valid_until_.store(t.time_since_epoch().count()); }

void EtcdArbiter::drop_validity() { valid_until_.store(std::numeric_limits<Clock::rep>::min()); }

bool EtcdArbiter::valid_at(Clock::time_point t) const {
    return t.time_since_epoch().count() < valid_until_.load();
}

Result<EtcdArbiter::Keepalive> EtcdArbiter::keepalive(std::int64_t id) {
    constexpr std::string_view where = "/v3/lease/keepalive";
    Keepalive k;
    k.sent = opts_.clock();
    const Json reply = US_TRY(post(opts_, where, "{\"ID\":\"" + std::to_string(id) + "\"}"));
    // A streaming call through the gateway: {"result":{...}} or {"error":{...}}.
    US_TRYV(no_error_field(reply, where));
    const Json* result = US_TRY(member(reply, "result", Json::Kind::object, where));
    US_TRYV(check_cluster(where, *result));
    const std::int64_t rid = US_TRY(int_member(*result, "ID", where));
    if (rid != id) return bad_answer(where, "lease " + lease_hex(rid) + " instead of " + lease_hex(id));
    std::int64_t ttl = 0;
    if (result->find("TTL")) ttl = US_TRY(int_member(*result, "TTL", where));
    if (ttl <= 0)
        return make_error(Errc::state, "lease " + lease_hex(id) + " is lost: etcd says it expired or was revoked");
    k.ttl = std::chrono::seconds(ttl);
    return k;
}

void EtcdArbiter::revoke(std::int64_t id) {
    constexpr std::string_view where = "/v3/lease/revoke";
    auto r = post(opts_, where, "{\"ID\":\"" + std::to_string(id) + "\"}");
    if (r) {
        if (auto c = check_cluster(where, *r); !c) r = std::move(c.error());
    }
    if (!r) {
        std::lock_guard lk(mu_);
        last_error_ = "revoking lease " + lease_hex(id) + ": " + r.error().describe() + " (it expires by itself)";
    }
}

Result<Lease> EtcdArbiter::acquire(std::string holder_id) {
    if (auto why = printable_check(holder_id, "arbiter holder id", 128); !why.empty())
        return make_error(Errc::invalid_input, why);
    bool already = false;
    {
        std::lock_guard lk(mu_);
        if (held_ && holder_ != holder_id)
            return make_error(Errc::state, "arbiter: already holding the role as '" + holder_ + "', not '" + holder_id + "'");
        already = held_;
    }
    if (already) return renew(); // already ours: acquiring again is a renewal
    const std::string context = "acquiring " + opts_.key + " in etcd " + opts_.endpoint;
    auto fail = [&](Error e) -> Error {
        e = std::move(e).wrap(context);
        std::lock_guard lk(mu_);
        last_error_ = e.describe();
        return e;
    };

    // 1. A fresh lease.
    const Clock::time_point t0 = opts_.clock();
    constexpr std::string_view grant_at = "/v3/lease/grant";
    const auto ttl_s = std::chrono::duration_cast<std::chrono::seconds>(opts_.settings.ttl).count();
    auto grant = post(opts_, grant_at, "{\"TTL\":\"" + std::to_string(ttl_s) + "\"}");
    if (!grant) return fail(std::move(grant.error()));
    if (auto c = check_cluster(grant_at, *grant); !c) return fail(std::move(c.error()));
    if (auto c = no_error_field(*grant, grant_at); !c) return fail(std::move(c.error()));
    auto id = int_member(*grant, "ID", grant_at);
    if (!id) return fail(std::move(id.error()));
    if (*id <= 0) return fail(bad_answer(grant_at, "lease ID " + std::to_string(*id) + " is not positive"));
    auto granted = int_member(*grant, "TTL", grant_at);
    if (!granted) {
        revoke(*id);
        return fail(std::move(granted.error()));
    }
    if (*granted <= 0) {
        revoke(*id);
        return fail(bad_answer(grant_at, "granted TTL " + std::to_string(*granted) + " is not positive"));
    }
    const std::int64_t lease = *id;

    // 2. The key, if nobody has it; otherwise who has it.
    constexpr std::string_view txn_at = "/v3/kv/txn";
    const std::string k64 = etcd_detail::base64_encode(opts_.key);
    const std::string body = "{\"compare\":[{\"key\":\"" + k64 +
                             "\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
                             "\"success\":[{\"request_put\":{\"key\":\"" + k64 + "\",\"value\":\"" +
                             etcd_detail::base64_encode(holder_id) + "\",\"lease\":\"" + std::to_string(lease) +
                             "\"}}],\"failure\":[{\"request_range\":{\"key\":\"" + k64 + "\"}}]}";
    auto txn = [&]() -> Result<Lease> {
        const Json reply = US_TRY(post(opts_, txn_at, body));
        US_TRYV(check_cluster(txn_at, reply));
        bool succeeded = false; // proto3 JSON leaves false out
        if (const Json* s = reply.find("succeeded")) {
            if (s->kind != Json::Kind::boolean) return bad_answer(txn_at, "field \"succeeded\" is not a boolean");
            succeeded = s->boolean;
        }
        const Json* responses = US_TRY(member(reply, "responses", Json::Kind::array, txn_at));
        if (responses->items.size() != 1)
            return bad_answer(txn_at, std::to_string(responses->items.size()) + " responses instead of 1");
        const Json& r0 = responses->items[0];
        if (r0.kind != Json::Kind::object) return bad_answer(txn_at, "responses[0] is not an object");
        if (succeeded) {
            US_TRYV(member(r0, "response_put", Json::Kind::object, txn_at));
            return Lease{.holder = holder_id, .id = lease, .ttl = std::chrono::seconds(*granted),
                         .valid_until = lease_valid_until(t0, std::chrono::seconds(*granted), opts_.settings.margin)};
        }
        // Held already: by whom?
        const Json* range = US_TRY(member(r0, "response_range", Json::Kind::object, txn_at));
        const Json* kvs = range->find("kvs");
        if (!kvs || kvs->kind != Json::Kind::array || kvs->items.size() != 1 || kvs->items[0].kind != Json::Kind::object)
            return bad_answer(txn_at, "the compare failed but the range holds no single key-value");
        const Json& kv = kvs->items[0];
        const Json* key = US_TRY(member(kv, "key", Json::Kind::string, txn_at));
        auto key_raw = etcd_detail::base64_decode(key->text);
        if (!key_raw || *key_raw != opts_.key) return bad_answer(txn_at, "the range returned another key");
        std::string owner;
        if (const Json* v = kv.find("value")) { // an empty value is left out
            if (v->kind != Json::Kind::string) return bad_answer(txn_at, "value is not a string");
            auto raw = etcd_detail::base64_decode(v->text);
            if (!raw) return bad_answer(txn_at, "value: " + raw.error().message);
            owner = std::move(*raw);
        }
        std::int64_t their_lease = 0;
        if (kv.find("lease")) their_lease = US_TRY(int_member(kv, "lease", txn_at));
        const std::string shown = "'" + excerpt(owner) + "'";
        if (their_lease == 0)
            return make_error(Errc::state, "the role is held by " + shown +
                                               " with no lease (put by hand?); it never expires: delete the key");
        if (owner != holder_id)
            return make_error(Errc::state, "the role is held by " + shown + " (lease " + lease_hex(their_lease) +
                                               "); it is free once that holder releases it or stops renewing "
                                               "for its TTL");
        // Ours already (an earlier run of this holder): adopt that lease if it is alive.
        auto k = keepalive(their_lease);
        if (!k) {
            if (k.error().code == Errc::state)
                return make_error(Errc::state, "the role is held under our holder id by lease " +
                                                   lease_hex(their_lease) + ", which is expiring; retry");
            return std::move(k.error());
        }
        return Lease{.holder = holder_id, .id = their_lease, .ttl = k->ttl,
                     .valid_until = lease_valid_until(k->sent, k->ttl, opts_.settings.margin)};
    }();
    if (!txn) {
        revoke(lease); // it would expire by itself; revoking frees it sooner
        return fail(std::move(txn.error()));
    }
    if (txn->id != lease) revoke(lease); // adopted the earlier lease
    txn->round_trip = std::chrono::duration_cast<std::chrono::microseconds>(opts_.clock() - t0);
    {
        std::lock_guard lk(mu_);
        held_ = true;
        holder_ = holder_id;
        lease_id_ = txn->id;
        granted_ttl_ = txn->ttl;
        last_rtt_ = txn->round_trip;
        last_error_.clear();
    }
    set_valid_until(txn->valid_until);
    return txn;
}

Result<Lease> EtcdArbiter::renew() {
    std::int64_t id;
    std::string holder;
    {
        std::lock_guard lk(mu_);
        if (!held_) return make_error(Errc::state, "arbiter etcd: renew without a lease (acquire first)");
        id = lease_id_;
        holder = holder_;
    }
    auto k = keepalive(id);
    if (!k) {
        Error e = std::move(k.error()).wrap("renewing " + opts_.key + " in etcd " + opts_.endpoint);
        if (e.code == Errc::state) drop_validity(); // lost: stop releasing now
        std::lock_guard lk(mu_);
        if (e.code == Errc::state) held_ = false;
        last_error_ = e.describe();
        return e;
    }
    const auto until = lease_valid_until(k->sent, k->ttl, opts_.settings.margin);
    set_valid_until(until);
    const auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(opts_.clock() - k->sent);
    {
        std::lock_guard lk(mu_);
        granted_ttl_ = k->ttl;
        last_rtt_ = rtt;
        last_error_.clear();
    }
    return Lease{.holder = holder, .id = id, .ttl = k->ttl, .valid_until = until, .round_trip = rtt};
}

void EtcdArbiter::release() {
    drop_validity(); // output stops before the lease is given up
    std::int64_t id = 0;
    {
        std::lock_guard lk(mu_);
        if (held_) id = lease_id_;
        held_ = false;
    }
    if (id) revoke(id);
}

Result<void> EtcdArbiter::retire_session(uint64_t session) {
    std::int64_t id;
    {
        std::lock_guard lk(mu_);
        if (!held_) return make_error(Errc::state, "arbiter etcd: retiring a session without holding the role");
        id = lease_id_;
    }
    constexpr std::string_view txn_at = "/v3/kv/txn";
    const std::string k64 = etcd_detail::base64_encode(opts_.key);
    const std::string body = "{\"compare\":[{\"key\":\"" + k64 + "\",\"target\":\"LEASE\",\"result\":\"EQUAL\",\"lease\":\"" +
                             std::to_string(id) + "\"}],\"success\":[{\"request_put\":{\"key\":\"" +
                             etcd_detail::base64_encode(opts_.key + "/retired") + "\",\"value\":\"" +
                             etcd_detail::base64_encode(std::to_string(session)) + "\"}}]}";
    auto reply = post(opts_, txn_at, body);
    if (!reply) return std::move(reply.error()).wrap("retiring replication session in etcd " + opts_.endpoint);
    US_TRYV(check_cluster(txn_at, *reply));
    const Json* ok = reply->find("succeeded"); // proto3 JSON leaves false out
    if (ok && ok->kind != Json::Kind::boolean) return bad_answer(txn_at, "field \"succeeded\" is not a boolean");
    if (!ok || !ok->boolean)
        return make_error(Errc::state, "arbiter etcd: " + opts_.key + " is no longer attached to our lease " +
                                           lease_hex(id) + "; another host may hold the role");
    return {};
}

Result<bool> EtcdArbiter::session_retired(uint64_t session) {
    constexpr std::string_view range_at = "/v3/kv/range";
    auto reply = post(opts_, range_at, "{\"key\":\"" + etcd_detail::base64_encode(opts_.key + "/retired") + "\"}");
    if (!reply) return std::move(reply.error()).wrap("reading retired sessions in etcd " + opts_.endpoint);
    US_TRYV(check_cluster(range_at, *reply));
    const Json* kvs = reply->find("kvs"); // absent when the key does not exist
    if (!kvs) return false;
    if (kvs->kind != Json::Kind::array || kvs->items.size() != 1 || kvs->items[0].kind != Json::Kind::object)
        return bad_answer(range_at, "kvs is not a single key-value");
    const Json* v = kvs->items[0].find("value");
    if (!v) return false; // an empty value is left out
    if (v->kind != Json::Kind::string) return bad_answer(range_at, "value is not a string");
    auto raw = etcd_detail::base64_decode(v->text);
    if (!raw) return bad_answer(range_at, "value: " + raw.error().message);
    return *raw == std::to_string(session);
}

std::string EtcdArbiter::describe() const {
    const auto now = opts_.clock();
    const auto until = Clock::time_point(Clock::duration(valid_until_.load()));
    std::lock_guard lk(mu_);
    std::string s = "arbiter etcd " + opts_.endpoint + " key " + opts_.key + ": ";
    if (held_) {
        s += "held by '" + holder_ + "', lease " + lease_hex(lease_id_) + " (TTL " +
             std::to_string(granted_ttl_.count()) + " s, margin " + std::to_string(opts_.settings.margin.count()) + " ms), ";
        if (until > now)
            s += "output allowed for " +
                 std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count()) + " ms more";
        else
            s += "output NOT allowed (lease not confirmed in time)";
        char rtt[32];
        std::snprintf(rtt, sizeof rtt, ", last round trip %.2f ms", last_rtt_.count() / 1000.0);
        s += rtt;
    } else {
        s += "not held";
    }
    if (!last_error_.empty()) s += "; last error: " + last_error_;
    return s;
}

} // namespace understudy::failover
