// The planned handover's state machine (replicator/handover_state.hpp), every phase
// against every event: the allowed transitions land where the table says, every other
// event is refused and changes nothing.
#include <catch2/catch.hpp>

#include <map>
#include <optional>
#include <utility>

#include "replicator/handover_state.hpp"

using namespace understudy;
using namespace understudy::replicator;
using P = HandoverPhase;
using E = HandoverEvent;
using std::chrono::milliseconds;

namespace {

constexpr uint64_t kLast = 7; // the handover's last checkpoint

const P kPhases[] = {P::idle,       P::requested,        P::draining,    P::asking,
                     P::unanswered, P::awaiting_verdict, P::handed_over, P::uncertain};
const E kEvents[] = {E::request,  E::captured, E::abandoned, E::asked,
                     E::accepted, E::refused,  E::no_answer, E::answer_lost,
                     E::acked,    E::replication_failed,     E::verdict_accepted, E::verdict_none};

// A machine brought to `p` by allowed events only.
HandoverState reach(P p) {
    HandoverState s;
    auto step = [&](E e, uint64_t epoch = 0) { REQUIRE(s.on(e, epoch, milliseconds(5000))); };
    if (p == P::idle) return s;
    step(E::request);
    if (p == P::requested) return s;
    step(E::captured, kLast);
    if (p == P::draining) return s;
    step(E::asked);
    if (p == P::asking) return s;
    if (p == P::handed_over) step(E::accepted);
    else if (p == P::uncertain) step(E::answer_lost);
    else {
        step(E::no_answer);
        if (p == P::awaiting_verdict) step(E::replication_failed);
    }
    REQUIRE(s.phase() == p);
    return s;
}

// Where each allowed (phase, event) leads; acked is tried with kLast + 1 (a later checkpoint).
const std::map<std::pair<P, E>, P> kAllowed = {
    {{P::idle, E::request}, P::requested},
    {{P::requested, E::captured}, P::draining},
    {{P::requested, E::abandoned}, P::idle},
    {{P::draining, E::abandoned}, P::idle},
    {{P::draining, E::asked}, P::asking},
    {{P::asking, E::accepted}, P::handed_over},
    {{P::asking, E::refused}, P::idle},
    {{P::asking, E::no_answer}, P::unanswered},
    {{P::asking, E::answer_lost}, P::uncertain},
    {{P::unanswered, E::acked}, P::idle},
    {{P::unanswered, E::replication_failed}, P::awaiting_verdict},
    {{P::awaiting_verdict, E::verdict_accepted}, P::handed_over},
    {{P::awaiting_verdict, E::verdict_none}, P::idle},
};

} // namespace

TEST_CASE("every phase against every event: the table's transitions, every other event refused", "[handover]") {
    for (P p : kPhases)
        for (E e : kEvents) {
            INFO("phase " << handover_phase_name(p) << ", event " << handover_event_name(e));
            HandoverState s = reach(p);
            const uint64_t epoch_before = s.epoch();
            auto r = s.on(e, kLast + 1, milliseconds(3000));
            auto it = kAllowed.find({p, e});
            if (it != kAllowed.end()) {
                CHECK(r);
                CHECK(s.phase() == it->second);
            } else if (e == E::acked) {
                CHECK(r); // ACKs come in every phase and change nothing outside unanswered
                CHECK(s.phase() == p);
            } else {
                REQUIRE(!r);
                CHECK(r.error().code == Errc::state);
                CHECK(s.phase() == p);
                CHECK(s.epoch() == epoch_before);
            }
        }
}

TEST_CASE("an unanswered handover ends only with the ACK of a later checkpoint", "[handover]") {
    HandoverState s = reach(P::unanswered);
    CHECK(s.epoch() == kLast);
    CHECK(s.grace() == milliseconds(5000));
    REQUIRE(s.on(E::acked, kLast - 1));
    REQUIRE(s.on(E::acked, kLast));
    CHECK(s.phase() == P::unanswered);
    // Meanwhile a new handover is refused, saying why and that it will pass.
    auto again = s.on(E::request);
    REQUIRE(!again);
    CHECK(again.error().message.find("may still accept the handover of checkpoint 7") != std::string::npos);
    REQUIRE(s.on(E::acked, kLast + 1));
    CHECK(s.phase() == P::idle);
    CHECK(s.on(E::request));
}

TEST_CASE("a late acceptance is told apart from one in time, and both keep the checkpoint", "[handover]") {
    HandoverState in_time = reach(P::handed_over);
    CHECK(in_time.epoch() == kLast);
    CHECK(!in_time.late());
    HandoverState late = reach(P::awaiting_verdict);
    REQUIRE(late.on(E::verdict_accepted));
    CHECK(late.phase() == P::handed_over);
    CHECK(late.epoch() == kLast);
    CHECK(late.late());
    // A new request after an abandoned or refused one starts clean.
    HandoverState s = reach(P::asking);
    REQUIRE(s.on(E::refused));
    REQUIRE(s.on(E::request));
    CHECK(s.epoch() == 0);
    CHECK(!s.late());
}
