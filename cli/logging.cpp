#include "cli/logging.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "common/json.hpp"

namespace understudy::cli {

namespace {

// {"ts":"2026-11-22T09:30:00.123Z","level":"info","msg":"..."} and a newline. The message
// is quoted by json_quote: control characters escaped, bytes that are not UTF-8 replaced,
// so every line is valid JSON whatever a peer's or guest's text put into it.
class JsonLineFormatter final : public spdlog::formatter {
public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        using namespace std::chrono;
        auto since = msg.time.time_since_epoch();
        std::time_t secs = duration_cast<seconds>(since).count();
        auto millis = duration_cast<milliseconds>(since).count() % 1000;
        std::tm utc{};
        gmtime_r(&secs, &utc);
        char ts[40];
        size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &utc);
        std::snprintf(ts + n, sizeof ts - n, ".%03dZ", static_cast<int>(millis));
        auto level = spdlog::level::to_string_view(msg.level);
        std::string line = std::string("{\"ts\":\"") + ts + "\",\"level\":\"" + std::string(level.data(), level.size()) +
                           "\",\"msg\":" + json_quote({msg.payload.data(), msg.payload.size()}) + "}\n";
        dest.append(line.data(), line.data() + line.size());
    }
    std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonLineFormatter>(); }
};

} // namespace

Result<LogFormat> parse_log_format(std::string_view text) {
    if (text == "human") return LogFormat::human;
    if (text == "json") return LogFormat::json;
    return make_error(Errc::invalid_input, "'" + std::string(text) + "': expected human or json");
}

void set_log_format(LogFormat format) {
    if (format == LogFormat::json)
        spdlog::set_formatter(std::make_unique<JsonLineFormatter>());
    else
        spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
}

Result<std::optional<LogFormat>> take_log_format(std::vector<std::string>& args) {
    std::optional<LogFormat> format;
    for (size_t i = 0; i < args.size();) {
        std::string_view a = args[i];
        size_t taken = a == "--log-format" ? 2 : a.starts_with("--log-format=") ? 1 : 0;
        if (taken == 0) {
            ++i;
            continue;
        }
        if (i + taken > args.size()) return make_error(Errc::invalid_input, "--log-format needs a value (human or json)");
        auto parsed = parse_log_format(taken == 2 ? std::string_view(args[i + 1]) : a.substr(13));
        if (!parsed) return make_error(Errc::invalid_input, "--log-format " + parsed.error().message);
        format = *parsed;
        args.erase(args.begin() + long(i), args.begin() + long(i + taken));
    }
    return format;
}

} // namespace understudy::cli
