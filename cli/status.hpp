// The status object of docs/status.md ("format": 1): encoding a StatusSnapshot as JSON,
// reading it back strictly (the `status` command and the tests), and the human summary
// that `understudy status` prints.
#pragma once

#include <string>
#include <string_view>

#include "cli/metrics.hpp"
#include "common/error.hpp"

namespace understudy::cli {

constexpr int kStatusFormat = 1;

// One line of JSON, no trailing newline.
std::string status_to_json(const StatusSnapshot& s);
// Checks "format" == 1 and every documented field's presence and type.
Result<StatusSnapshot> status_from_json(std::string_view json);
// A few lines for people.
std::string status_to_text(const StatusSnapshot& s);
// One verification pass and its verdict, naming what differs.
std::string verify_pass_text(const VerifyPassFigures& p);

// A small JSON writer: members in the order written, numbers as JSON allows (a
// non-finite double is written as null).
class JsonWriter {
public:
    JsonWriter& begin_object(std::string_view key = {});
    JsonWriter& end_object();
    JsonWriter& key(std::string_view k);
    JsonWriter& string(std::string_view key, std::string_view v);
    JsonWriter& string_or_null(std::string_view key, const std::optional<std::string>& v);
    JsonWriter& boolean(std::string_view key, bool v);
    JsonWriter& integer(std::string_view key, uint64_t v);
    JsonWriter& integer(std::string_view key, int64_t v);
    JsonWriter& number(std::string_view key, double v);
    JsonWriter& number(std::string_view key, std::optional<double> v);
    JsonWriter& integer(std::string_view key, std::optional<uint64_t> v);
    JsonWriter& null(std::string_view key);
    JsonWriter& raw(std::string_view key, std::string_view json); // an already-encoded value
    const std::string& str() const { return out_; }

private:
    void sep(std::string_view key);
    std::string out_;
    bool first_ = true;
};

} // namespace understudy::cli
