// hv::ConsoleBuffer: the guest's console never waits for its reader. No KVM needed.
#include <catch2/catch.hpp>

#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "hv/console_buffer.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace std::chrono;

namespace {
// A sink that records lines and can be held, as a stdout pipe nobody reads.
struct HeldSink {
    std::mutex mu;
    std::vector<std::string> lines;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    bool hold = false;
    hv::ConsoleBuffer::Sink sink() {
        return [this](std::string_view line) {
            if (hold) released.wait();
            std::lock_guard lock(mu);
            lines.emplace_back(line);
        };
    }
};
} // namespace

TEST_CASE("console lines reach the sink in order, split at newlines and at 4096 bytes", "[console]") {
    HeldSink s;
    hv::ConsoleBuffer c(s.sink());
    c.write("one\r\ntw");
    c.write("o\nthree");
    c.write(std::string(5000, 'x') + "\n");
    REQUIRE(c.flush(test::scaled(seconds(5))));
    std::lock_guard lock(s.mu);
    REQUIRE(s.lines.size() == 4);
    CHECK(s.lines[0] == "one");
    CHECK(s.lines[1] == "two");
    CHECK(s.lines[2] == "three" + std::string(4096 - 5, 'x'));
    CHECK(s.lines[3] == std::string(5000 - (4096 - 5), 'x'));
    CHECK(c.dropped_lines() == 0);
}

TEST_CASE("a stalled console reader never holds the writer: lines beyond the bound are dropped and counted", "[console]") {
    HeldSink s;
    s.hold = true;
    {
        hv::ConsoleBuffer c(s.sink(), 64 * 1024);
        const std::string line(99, 'a'); // 100 bytes with its newline
        auto t0 = steady_clock::now();
        for (int i = 0; i < 2000; ++i) c.write(line + "\n"); // 200 KB into a 64 KiB bound
        // Done at once although the sink has not taken a line (a blocking console would
        // hang here for good).
        CHECK(steady_clock::now() - t0 < test::scaled(seconds(5)));
        CHECK(c.dropped_lines() > 1000);
        CHECK(c.dropped_bytes() == c.dropped_lines() * 100);
        CHECK_FALSE(c.flush(milliseconds(50))); // the reader is still stalled
        c.write("after\n");
        s.release.set_value();
        REQUIRE(c.flush(test::scaled(seconds(5))));
    }
    std::lock_guard lock(s.mu);
    // The kept lines, then a notice of what was dropped, then what came after.
    REQUIRE(s.lines.size() >= 3);
    CHECK(s.lines.back() == "after");
    CHECK_THAT(s.lines[s.lines.size() - 2], Catch::StartsWith("[understudy: ") && Catch::Contains("console lines dropped"));
    CHECK(s.lines.size() < 700);
}
