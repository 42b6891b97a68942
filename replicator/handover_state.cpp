#include "replicator/handover_state.hpp"

#include <string>

namespace understudy::replicator {

std::string_view handover_phase_name(HandoverPhase p) {
    switch (p) {
    case HandoverPhase::idle: return "idle";
    case HandoverPhase::requested: return "requested";
    case HandoverPhase::draining: return "draining";
    case HandoverPhase::asking: return "asking";
    case HandoverPhase::unanswered: return "unanswered";
    case HandoverPhase::awaiting_verdict: return "awaiting_verdict";
    case HandoverPhase::handed_over: return "handed_over";
    case HandoverPhase::uncertain: return "uncertain";
    }
    return "?";
}

std::string_view handover_event_name(HandoverEvent e) {
    switch (e) {
    case HandoverEvent::request: return "request";
    case HandoverEvent::captured: return "captured";
    case HandoverEvent::abandoned: return "abandoned";
    case HandoverEvent::asked: return "asked";
    case HandoverEvent::accepted: return "accepted";
    case HandoverEvent::refused: return "refused";
    case HandoverEvent::no_answer: return "no_answer";
    case HandoverEvent::answer_lost: return "answer_lost";
    case HandoverEvent::acked: return "acked";
    case HandoverEvent::replication_failed: return "replication_failed";
    case HandoverEvent::verdict_accepted: return "verdict_accepted";
    case HandoverEvent::verdict_none: return "verdict_none";
    }
    return "?";
}

Result<void> HandoverState::on(HandoverEvent e, uint64_t epoch, std::chrono::milliseconds grace) {
    using P = HandoverPhase;
    using E = HandoverEvent;
    auto go = [this](P next) -> Result<void> {
        phase_ = next;
        return {};
    };
    switch (e) {
    case E::request:
        if (phase_ == P::idle) {
            epoch_ = 0;
            late_ = false;
            return go(P::requested);
        }
        if (phase_ == P::unanswered || phase_ == P::awaiting_verdict)
            return make_error(Errc::state, "the backup may still accept the handover of checkpoint " + std::to_string(epoch_) +
                                               " until it acknowledges a later checkpoint; try again");
        if (phase_ == P::handed_over || phase_ == P::uncertain) return make_error(Errc::state, "replication has ended");
        return make_error(Errc::state, "another action on the checkpoints is under way");
    case E::captured:
        if (phase_ != P::requested) break;
        epoch_ = epoch;
        return go(P::draining);
    case E::abandoned:
        if (phase_ != P::requested && phase_ != P::draining) break;
        return go(P::idle);
    case E::asked:
        if (phase_ != P::draining) break;
        return go(P::asking);
    case E::accepted:
        if (phase_ != P::asking) break;
        return go(P::handed_over);
    case E::refused:
        if (phase_ != P::asking) break;
        return go(P::idle);
    case E::no_answer:
        if (phase_ != P::asking) break;
        grace_ = grace;
        return go(P::unanswered);
    case E::answer_lost:
        if (phase_ != P::asking) break;
        return go(P::uncertain);
    case E::acked:
        // ACKs come in every phase; only a later checkpoint's ends an unanswered request
        // (the backup refuses a HANDOVER for a checkpoint older than its latest).
        if (phase_ == P::unanswered && epoch > epoch_) return go(P::idle);
        return {};
    case E::replication_failed:
        if (phase_ != P::unanswered) break;
        return go(P::awaiting_verdict);
    case E::verdict_accepted:
        if (phase_ != P::awaiting_verdict) break;
        late_ = true;
        return go(P::handed_over);
    case E::verdict_none:
        if (phase_ != P::awaiting_verdict) break;
        return go(P::idle);
    }
    return make_error(Errc::state, std::string("handover: event ") + std::string(handover_event_name(e)) + " in phase " +
                                       std::string(handover_phase_name(phase_)));
}

} // namespace understudy::replicator
