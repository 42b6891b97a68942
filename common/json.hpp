// JSON for the project: a strict reader (etcd's answers, control-socket answers, log
// lines in tests) and string quoting for the writers (cli/status.hpp's JsonWriter).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.hpp"

namespace understudy {

// A strict JSON reader for the few answers etcd's gateway gives (RFC 8259: no trailing
// commas, comments, duplicate keys, bare control characters, strings that are not UTF-8
// or trailing garbage; depth at most 32). Boost.JSON is not in Debian 12's Boost 1.74 and libboost1.81-dev conflicts
// with libboost1.74-dev, so this small reader is ours.
struct Json {
    enum class Kind { null, boolean, number, string, array, object };
    Kind kind = Kind::null;
    bool boolean = false;
    std::string text; // a string's decoded value, or a number's literal text
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;

    const Json* find(std::string_view name) const; // objects only; null if absent

    // Defined where Json is complete: clang instantiates the members' destructors at an
    // implicit inline one, while std::pair<std::string, Json> is still incomplete.
    Json();
    ~Json();
    Json(const Json&);
    Json(Json&&) noexcept;
    Json& operator=(const Json&);
    Json& operator=(Json&&) noexcept;
};
Result<Json> parse_json(std::string_view in);

// JSON string literal for `s` (quotes included).
std::string json_quote(std::string_view s);

// grpc-gateway writes int64 as a JSON string of digits; a plain integer number is
// accepted too. Anything else (fractions, exponents, out of range) is refused.
Result<std::int64_t> json_int64(const Json& v, std::string_view what);

} // namespace understudy
