// The log every module writes to: fmt-style messages ("{}" fields, checked at compile
// time) at four levels. Only <fmt/core.h> is included here and the formatting happens in
// log.cpp: spdlog's own templates cost seconds of compile time in every file that logs.
// Where the lines go and how they look (human or JSON) is the command's choice
// (cli/logging.hpp).
#pragma once

#include <fmt/core.h>

#include <string_view>

namespace understudy::log {

enum class Level { debug, info, warn, error };

namespace detail {
void vwrite(Level level, fmt::string_view format, fmt::format_args args);
} // namespace detail

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
    detail::vwrite(Level::debug, format, fmt::make_format_args(args...));
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
    detail::vwrite(Level::info, format, fmt::make_format_args(args...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
    detail::vwrite(Level::warn, format, fmt::make_format_args(args...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
    detail::vwrite(Level::error, format, fmt::make_format_args(args...));
}

// Lines below `level` are dropped (the default shows info and above).
void set_level(Level level);
// Every level dropped: for fuzz targets and benchmarks whose output is their table.
void silence();

} // namespace understudy::log
