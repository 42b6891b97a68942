#include <catch2/catch.hpp>

#include "replicator/failure_detector.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace std::chrono;

TEST_CASE("settings with a timeout shorter than three heartbeats are refused", "[failover]") {
    CHECK(validate({milliseconds(10), milliseconds(100)}));
    auto r = validate({milliseconds(10), milliseconds(25)});
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("shorter than three heartbeats"));
    CHECK(!validate({milliseconds(0), milliseconds(100)}));
}

TEST_CASE("the peer fails after the timeout of silence and stays failed", "[failover]") {
    auto d = FailureDetector::create({milliseconds(10), milliseconds(100)});
    REQUIRE(d);
    auto t = Clock::time_point{} + seconds(100);
    CHECK(d->state(t) == PeerState::unknown);
    d->heartbeat(t);
    CHECK(d->state(t + milliseconds(100)) == PeerState::alive);
    d->heartbeat(t + milliseconds(90));
    CHECK(d->state(t + milliseconds(180)) == PeerState::alive);
    CHECK(d->state(t + milliseconds(191)) == PeerState::failed);
    d->heartbeat(t + milliseconds(200)); // too late: no resurrection
    CHECK(d->state(t + milliseconds(201)) == PeerState::failed);
    d->reset();
    d->heartbeat(t + milliseconds(300));
    CHECK(d->state(t + milliseconds(301)) == PeerState::alive);
}

TEST_CASE("a stall of this host is not counted as the peer's silence", "[failover]") {
    auto d = FailureDetector::create({milliseconds(10), milliseconds(100)});
    REQUIRE(d);
    auto t = Clock::time_point{} + seconds(100);
    d->heartbeat(t);
    // 30 ms of silence, then this host froze for 120 ms: 150 ms since the heartbeat, of
    // which the peer is answerable for 30.
    d->discount_stall(milliseconds(120), t + milliseconds(150));
    CHECK(d->state(t + milliseconds(150)) == PeerState::alive);
    CHECK(d->state(t + milliseconds(220)) == PeerState::alive);
    CHECK(d->state(t + milliseconds(221)) == PeerState::failed); // 101 ms of its own silence
    // A stall is never credited beyond the present, nor to a peer already failed.
    auto e = FailureDetector::create({milliseconds(10), milliseconds(100)});
    REQUIRE(e);
    e->heartbeat(t);
    e->discount_stall(seconds(10), t + milliseconds(50));
    CHECK(e->state(t + milliseconds(150)) == PeerState::alive);
    CHECK(e->state(t + milliseconds(151)) == PeerState::failed);
    e->discount_stall(seconds(10), t + milliseconds(160));
    CHECK(e->state(t + milliseconds(161)) == PeerState::failed);
}
