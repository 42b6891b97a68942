// The output buffer holds each epoch's packets until that epoch is acknowledged,
// releases them in order, never drops while full (it refuses and counts a stall), and
// discards only unacknowledged epochs on promotion; the output-commit gate in front of
// it tags frames with their checkpoint and releases them on its ACK.
#include <catch2/catch.hpp>

#include "netbuffer/output_buffer.hpp"
#include "netbuffer/output_commit.hpp"

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

TEST_CASE("turning protection off releases what is held first, so order is kept", "[netbuffer]") {
    std::vector<uint8_t> wire;
    auto buf = OutputBuffer::create({}, [&](std::span<const uint8_t> p) { wire.push_back(p[0]); });
    REQUIRE(buf);
    REQUIRE(*buf->hold(4, pkt(1)) == HoldResult::held);
    REQUIRE(*buf->hold(5, pkt(2)) == HoldResult::held);
    buf->set_protected(false);
    REQUIRE(*buf->hold(6, pkt(3)) == HoldResult::passed_through);
    CHECK(wire == std::vector<uint8_t>{1, 2, 3});
    CHECK(buf->stats().packets_held == 0);
}

TEST_CASE("output commit: frames pass until the first capture, then wait for their checkpoint's ACK", "[netbuffer]") {
    using Accept = hv::virtio::EgressSink::Accept;
    std::vector<uint8_t> wire;
    int asked = 0, room = 0;
    auto gate = OutputCommit::create({}, {[&](std::span<const uint8_t> p) { wire.push_back(p[0]); },
                                          [&] { ++room; }, [&](Clock::time_point) { ++asked; }});
    REQUIRE(gate);
    auto& g = **gate;
    CHECK(g.transmit(pkt(1)) == Accept::sent_or_held); // not yet protected
    CHECK(wire == std::vector<uint8_t>{1});
    CHECK(asked == 0);
    g.captured(1); // from here, frames belong to checkpoint 2
    CHECK(g.transmit(pkt(2)) == Accept::sent_or_held);
    CHECK(g.transmit(pkt(3)) == Accept::sent_or_held);
    CHECK(asked == 1); // once per epoch
    g.acknowledged(1);
    CHECK(wire.size() == 1);
    g.captured(2);
    CHECK(g.transmit(pkt(4)) == Accept::sent_or_held);
    CHECK(asked == 2);
    g.acknowledged(2);
    CHECK(wire == std::vector<uint8_t>{1, 2, 3});
    g.acknowledged(3);
    CHECK(wire == std::vector<uint8_t>{1, 2, 3, 4});
    CHECK(room == 0); // nothing was ever refused
}

TEST_CASE("output commit: a full buffer refuses, and the release that frees room says so once", "[netbuffer]") {
    using Accept = hv::virtio::EgressSink::Accept;
    size_t sent = 0;
    int room = 0;
    auto gate = OutputCommit::create({65536, 64}, {[&](std::span<const uint8_t>) { ++sent; }, [&] { ++room; }, nullptr});
    REQUIRE(gate);
    auto& g = **gate;
    g.captured(1);
    for (int i = 0; i < 64; ++i) REQUIRE(g.transmit(pkt(uint8_t(i))) == Accept::sent_or_held);
    CHECK(g.transmit(pkt(99)) == Accept::full);
    CHECK(g.transmit(pkt(99)) == Accept::full);
    CHECK(g.stats().stalls == 2);
    CHECK(sent == 0);
    g.acknowledged(2);
    CHECK(sent == 64);
    CHECK(room == 1);
    g.acknowledged(3);
    CHECK(room == 1);
}

TEST_CASE("output commit: losing the backup releases everything held, then frames pass", "[netbuffer]") {
    std::vector<uint8_t> wire;
    auto gate = OutputCommit::create({}, {[&](std::span<const uint8_t> p) { wire.push_back(p[0]); }, nullptr, nullptr});
    REQUIRE(gate);
    auto& g = **gate;
    g.captured(1);
    (void)g.transmit(pkt(1));
    g.captured(2);
    (void)g.transmit(pkt(2));
    CHECK(wire.empty());
    g.unprotect();
    CHECK(wire == std::vector<uint8_t>{1, 2});
    (void)g.transmit(pkt(3));
    g.captured(3); // a late capture does not turn holding back on
    (void)g.transmit(pkt(4));
    CHECK(wire == std::vector<uint8_t>{1, 2, 3, 4});
}

TEST_CASE("output commit: a new session after losing the backup holds frames again, epochs from 1", "[netbuffer]") {
    std::vector<uint8_t> wire;
    bool permit = true;
    auto gate = OutputCommit::create({}, {[&](std::span<const uint8_t> p) { wire.push_back(p[0]); }, nullptr, nullptr});
    REQUIRE(gate);
    auto& g = **gate;
    for (uint64_t e = 1; e <= 40; ++e) g.captured(e);
    g.unprotect();
    g.set_release_permit([&](Clock::time_point) { return permit; });
    permit = false; // fenced: this frame stays held, tagged with the old session's epoch
    (void)g.transmit(pkt(1));
    g.new_session();
    (void)g.transmit(pkt(2)); // before the new session's first capture: behind the held one
    permit = true;
    g.retry_release();
    CHECK(wire == std::vector<uint8_t>{1, 2});
    g.captured(1); // the new session's epoch 1: holding again
    REQUIRE(g.transmit(pkt(3)) == hv::virtio::EgressSink::Accept::sent_or_held);
    CHECK(wire.size() == 2);
    g.captured(2);
    g.acknowledged(1);
    CHECK(wire.size() == 2); // frame 3 belongs to checkpoint 2
    g.acknowledged(2);
    CHECK(wire == std::vector<uint8_t>{1, 2, 3});
}

TEST_CASE("fencing: while the release permit refuses, acknowledged and unprotected packets stay held, in order",
          "[netbuffer][fencing]") {
    std::vector<uint8_t> wire;
    bool permit = true;
    auto buf = OutputBuffer::create({65536, 64}, [&](std::span<const uint8_t> p) { wire.push_back(p[0]); });
    REQUIRE(buf);
    buf->set_release_permit([&](Clock::time_point) { return permit; });
    REQUIRE(*buf->hold(1, pkt(1)) == HoldResult::held);
    REQUIRE(*buf->hold(2, pkt(2)) == HoldResult::held);
    permit = false;
    CHECK(buf->release_through(1) == 0); // acknowledged, but the lease is not valid
    CHECK(buf->stats().fenced == 1);
    CHECK(wire.empty());
    buf->set_protected(false);           // the backup failed: still nothing may go out
    REQUIRE(*buf->hold(3, pkt(3)) == HoldResult::held);
    CHECK(wire.empty());
    CHECK(buf->stats().packets_held == 3);
    permit = true;
    CHECK(buf->flush() == 3);            // renewed: everything, in order
    CHECK(wire == std::vector<uint8_t>{1, 2, 3});
    CHECK(*buf->hold(4, pkt(4)) == HoldResult::passed_through);
    permit = false;
    for (int i = 0; i < 64; ++i) REQUIRE(*buf->hold(5, pkt(5)) == HoldResult::held);
    CHECK(*buf->hold(5, pkt(5)) == HoldResult::full); // backpressure, not loss
    CHECK(buf->stats().packets_discarded == 0);
    permit = true;
    CHECK(*buf->hold(6, pkt(6)) == HoldResult::full); // granted again, but full until a flush
    CHECK(buf->flush() == 64);
    CHECK(*buf->hold(6, pkt(6)) == HoldResult::passed_through);
    CHECK(wire.size() == 4 + 64 + 1);
}

TEST_CASE("fencing: turning protection on after a fenced spell keeps new packets waiting for their ACK",
          "[netbuffer][fencing]") {
    std::vector<uint8_t> wire;
    bool permit = false;
    auto gate = OutputCommit::create({}, {[&](std::span<const uint8_t> p) { wire.push_back(p[0]); }, nullptr, nullptr});
    REQUIRE(gate);
    auto& g = **gate;
    g.set_release_permit([&](Clock::time_point) { return permit; });
    (void)g.transmit(pkt(1)); // before the first capture: would pass, but the role is not held
    g.captured(1);
    (void)g.transmit(pkt(2)); // epoch 2: waits for ACK 2
    permit = true;
    g.retry_release();
    CHECK(wire == std::vector<uint8_t>{1});
    g.acknowledged(2);
    CHECK(wire == std::vector<uint8_t>{1, 2});
}
