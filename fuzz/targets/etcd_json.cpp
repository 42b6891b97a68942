// The etcd arbiter's JSON reader and the value helpers it applies to etcd's answers
// (common/json.hpp, common/base64.hpp): parse_json on the reply body, json_int64 on
// numbers and digit strings, base64_decode on bytes fields. No network: these are the
// functions every byte of an etcd reply goes through after HTTP framing.
// Round trips checked: a decoded string re-quoted by json_quote parses back to itself;
// base64_decode accepts only what base64_encode of its result gives back.

#include "common/base64.hpp"
#include "common/json.hpp"
#include "fuzz/fuzz_support.hpp"

using namespace understudy;

namespace {

void walk(const Json& v, int depth) {
    if (depth > 40) fuzz::fail("etcd_json: parse_json returned a document deeper than its limit of 32");
    switch (v.kind) {
    case Json::Kind::string: {
        auto again = parse_json(json_quote(v.text));
        if (!again || again->kind != Json::Kind::string || again->text != v.text)
            fuzz::fail("etcd_json: json_quote of a parsed string does not parse back to it");
        if (auto b = base64_decode(v.text); b && base64_encode(*b) != v.text)
            fuzz::fail("etcd_json: base64_decode accepted a non-canonical encoding");
        (void)json_int64(v, "fuzz");
        break;
    }
    case Json::Kind::number: (void)json_int64(v, "fuzz"); break;
    case Json::Kind::array:
        for (const auto& i : v.items) walk(i, depth + 1);
        break;
    case Json::Kind::object:
        for (const auto& [name, m] : v.members) {
            if (v.find(name) == nullptr) fuzz::fail("etcd_json: find() misses a member that is there");
            walk(m, depth + 1);
        }
        break;
    default: break;
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    std::string_view in(reinterpret_cast<const char*>(data), size);
    if (auto doc = parse_json(in)) walk(*doc, 0);
    if (auto b = base64_decode(in); b && base64_encode(*b) != in) fuzz::fail("etcd_json: base64_decode accepted a non-canonical input");
    return 0;
}
