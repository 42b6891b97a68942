#include "fuzz/fuzz_support.hpp"

#include <cstdio>
#include <cstdlib>

#include "common/log.hpp"

namespace understudy::fuzz {

void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz target: %s\n", what.c_str());
    std::abort();
}

void quiet_logs() {
    static const bool once = [] {
        log::silence();
        return true;
    }();
    (void)once;
}

} // namespace understudy::fuzz
