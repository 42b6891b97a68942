// The output buffer holds each epoch's packets until that epoch is acknowledged,
// releases them in order, never drops while full (it refuses and counts a stall), and
// discards only unacknowledged epochs on promotion.
#include <catch2/catch.hpp>

#include "netbuffer/output_buffer.hpp"

using namespace understudy;
using namespace understudy::netbuffer;

namespace {
std::vector<uint8_t> pkt(uint8_t tag, size_t len = 100) { return std::vector<uint8_t>(len, tag); }
} // namespace

TEST_CASE("packets are released only through the acknowledged epoch, in order", "[netbuffer]") {
    std::vector<uint8_t> wire;
    auto buf = OutputBuffer::create({}, [&](std::span<const uint8_t> p) { wire.push_back(p[0]); });
    REQUIRE(buf);
    for (uint8_t e = 1; e <= 3; ++e)
        for (uint8_t i = 0; i < 2; ++i) REQUIRE(*buf->hold(e, pkt(uint8_t(e * 10 + i))) == HoldResult::held);
    CHECK(wire.empty());
    CHECK(buf->release_through(0) == 0);
    CHECK(buf->release_through(2) == 4);
    CHECK(wire == std::vector<uint8_t>{10, 11, 20, 21});
    CHECK(buf->stats().packets_held == 2);
    CHECK(buf->release_through(3) == 2);
    CHECK(wire.size() == 6);
    CHECK(buf->stats().bytes_held == 0);
    CHECK(buf->stats().packets_released == 6);
}

TEST_CASE("a full buffer refuses and counts a stall; nothing held is dropped", "[netbuffer]") {
    size_t sent = 0;
    auto buf = OutputBuffer::create({65536, 64}, [&](std::span<const uint8_t>) { ++sent; });
    REQUIRE(buf);
    for (int i = 0; i < 64; ++i) REQUIRE(*buf->hold(1, pkt(1)) == HoldResult::held);
    CHECK(*buf->hold(1, pkt(1)) == HoldResult::full);
    CHECK(buf->stats().stalls == 1);
    CHECK(buf->stats().packets_held == 64);
    CHECK(buf->release_through(1) == 64);
    CHECK(sent == 64);
    CHECK(*buf->hold(2, pkt(2)) == HoldResult::held);
    // Byte limit too.
    auto small = OutputBuffer::create({65536, 1000}, [](std::span<const uint8_t>) {});
    REQUIRE(*small->hold(1, pkt(1, 60000)) == HoldResult::held);
    CHECK(*small->hold(1, pkt(1, 6000)) == HoldResult::full);
}

TEST_CASE("unprotected mode passes packets straight through", "[netbuffer]") {
    size_t sent = 0;
    auto buf = OutputBuffer::create({}, [&](std::span<const uint8_t>) { ++sent; });
    buf->set_protected(false);
    CHECK(*buf->hold(5, pkt(1)) == HoldResult::passed_through);
    CHECK(sent == 1);
    CHECK(buf->stats().packets_held == 0);
}

TEST_CASE("promotion discards only epochs after the committed one", "[netbuffer]") {
    std::vector<uint8_t> wire;
    auto buf = OutputBuffer::create({}, [&](std::span<const uint8_t> p) { wire.push_back(p[0]); });
    for (uint8_t e = 1; e <= 4; ++e) REQUIRE(*buf->hold(e, pkt(e)) == HoldResult::held);
    CHECK(buf->discard_after(2) == 2);
    CHECK(buf->release_through(10) == 2);
    CHECK(wire == std::vector<uint8_t>{1, 2});
    CHECK(buf->stats().packets_discarded == 2);
}

TEST_CASE("out-of-order epochs and bad limits are refused", "[netbuffer]") {
    auto buf = OutputBuffer::create({}, [](std::span<const uint8_t>) {});
    REQUIRE(*buf->hold(5, pkt(1)) == HoldResult::held);
    CHECK(!buf->hold(4, pkt(1)));
    CHECK(!OutputBuffer::create({10, 10}, [](std::span<const uint8_t>) {}));
    CHECK(!OutputBuffer::create({}, nullptr));
}

TEST_CASE("hold times are measured from hold to release", "[netbuffer]") {
    auto buf = OutputBuffer::create({}, [](std::span<const uint8_t>) {});
    auto t0 = Clock::now();
    for (int i = 0; i < 100; ++i) REQUIRE(*buf->hold(1, pkt(1), t0) == HoldResult::held);
    buf->release_through(1, t0 + std::chrono::milliseconds(25));
    CHECK(buf->stats().hold_p50_us == Approx(25000).margin(1));
    CHECK(buf->stats().hold_p99_us == Approx(25000).margin(1));
}
