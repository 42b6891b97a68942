// The monotonic clock as a plain count, for figures measured in nanoseconds (pauses,
// harvests, sends) and stored in integer fields.
#pragma once

#include <chrono>
#include <cstdint>

namespace understudy {

inline uint64_t now_ns() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

} // namespace understudy
