#include <catch2/catch.hpp>

#include "failover/failure_detector.hpp"

using namespace understudy;
using namespace understudy::failover;
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
