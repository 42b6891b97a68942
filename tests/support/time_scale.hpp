// How long tests wait, on hosts of different speeds. Every wait of a test for something
// to happen (epochs, a log line, a lease, a promotion, a drill) goes through scaled() or
// deadline_in(): its limit is multiplied by UNDERSTUDY_TEST_TIME_SCALE (default 1; the
// nested runner, scripts/nested-kvm.sh, sets 10). What the tests check never changes with
// it: only how long they wait before deciding that it did not happen (docs/testing.md,
// "Deadlines on slow hosts").
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace understudy::test {

// The factor, read once: a number from 1 to 1000, or the test binary stops at once
// with a message (a typo must not pass as "no scaling").
inline double time_scale() {
    static const double scale = [] {
        const char* text = std::getenv("UNDERSTUDY_TEST_TIME_SCALE");
        if (!text || !*text) return 1.0;
        char* end = nullptr;
        double v = std::strtod(text, &end);
        if (*end != '\0' || !(v >= 1.0 && v <= 1000.0)) {
            std::fprintf(stderr, "UNDERSTUDY_TEST_TIME_SCALE=%s: not a number from 1 to 1000\n", text);
            std::abort();
        }
        return v;
    }();
    return scale;
}

// Scaling never makes a wait longer than 10 minutes (a limit already longer stays as it
// is): every suite passed nested well within that, and a longer wait only makes a stuck
// suite (a guest that died under a client's 300 s limit) cost the run more.
inline constexpr std::chrono::milliseconds kLongestScaledWait{600'000};

template <class Rep, class Period>
std::chrono::milliseconds scaled(std::chrono::duration<Rep, Period> limit) {
    auto ms = std::chrono::duration_cast<std::chrono::duration<double, std::milli>>(limit).count();
    auto longer = std::chrono::milliseconds(static_cast<long long>(ms * time_scale()));
    auto plain = std::chrono::duration_cast<std::chrono::milliseconds>(limit);
    return std::max(plain, std::min(longer, kLongestScaledWait));
}

// A deadline `limit` from now, scaled.
template <class Rep, class Period>
std::chrono::steady_clock::time_point deadline_in(std::chrono::duration<Rep, Period> limit) {
    return std::chrono::steady_clock::now() + scaled(limit);
}

// Polls `pred` every millisecond until it holds (true) or `limit`, scaled, has passed
// (false, after one last look).
template <class Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto end = deadline_in(limit);
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return pred();
}

} // namespace understudy::test
