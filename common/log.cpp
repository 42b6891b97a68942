#include "common/log.hpp"

#include <spdlog/spdlog.h>

namespace understudy::log {

namespace {

spdlog::level::level_enum to_spdlog(Level level) {
    switch (level) {
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
    }
    return spdlog::level::err;
}

} // namespace

namespace detail {

void vwrite(Level level, fmt::string_view format, fmt::format_args args) {
    auto lvl = to_spdlog(level);
    if (!spdlog::should_log(lvl)) return; // no formatting for a dropped line
    spdlog::log(lvl, "{}", fmt::vformat(format, args));
}

} // namespace detail

void set_level(Level level) { spdlog::set_level(to_spdlog(level)); }
void silence() { spdlog::set_level(spdlog::level::off); }

} // namespace understudy::log
