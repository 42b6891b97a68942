#include "fuzz/fuzz_support.hpp"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>

namespace understudy::fuzz {

void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz target: %s\n", what.c_str());
    std::abort();
}

void quiet_logs() {
    static const bool once = [] {
        spdlog::set_level(spdlog::level::off);
        return true;
    }();
    (void)once;
}

} // namespace understudy::fuzz
