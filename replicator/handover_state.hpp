// The primary's side of a planned handover (docs/failover.md, "Planned switchover") as one
// value and one transition function: what may happen next depends on the phase alone, not
// on a combination of flags. Pure logic, no I/O and no lock of its own: replicator::Primary
// holds it under its mutex and does what each phase calls for.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "common/error.hpp"

namespace understudy::replicator {

enum class HandoverPhase {
    idle,             // none under way; a handover may be requested
    requested,        // hand_over() waits: the next checkpoint is the last, the VM stays paused after it
    draining,         // the last checkpoint is queued: waiting for every ACK and the output's release
    asking,           // HANDOVER sent: the backup shutting the stream is expected
    unanswered,       // no answer in time and the VM runs on: until the backup acknowledges a later
                      // checkpoint it may still accept, so a failure must ask it first
    awaiting_verdict, // replication failed while unanswered: asking the control link whether it took over
    handed_over,      // the backup runs the VM (final)
    uncertain,        // the backup had the request but its answer never came: the VM stays paused (final)
};

enum class HandoverEvent {
    request,            // hand_over() called
    captured,           // the last checkpoint (epoch) is captured and queued, the VM paused
    abandoned,          // before HANDOVER went: capture or replication failed, no ACK in time, the check refused
    asked,              // HANDOVER (epoch of the last checkpoint) is being sent
    accepted,           // the backup accepted in time
    refused,            // the backup said no, or failed, in time: the VM runs on
    no_answer,          // no answer within the limit, the stream still open: the VM runs on (grace)
    answer_lost,        // the backup shut the stream but neither answer arrived
    acked,              // the backup acknowledged checkpoint epoch
    replication_failed, // replication failed
    verdict_accepted,   // asked after a failure: the backup had taken over
    verdict_none,       // asked after a failure: it had not
};

std::string_view handover_phase_name(HandoverPhase p);
std::string_view handover_event_name(HandoverEvent e);

class HandoverState {
public:
    // The one transition function. An event the phase does not allow changes nothing and
    // is refused with an error naming both (a `request` refused is the caller's answer).
    // `epoch` goes with captured and acked; `grace` with no_answer: how long a late answer
    // may still take.
    Result<void> on(HandoverEvent e, uint64_t epoch = 0, std::chrono::milliseconds grace = {});

    HandoverPhase phase() const { return phase_; }
    // The last checkpoint of the handover under way or ended (0 before one is captured).
    uint64_t epoch() const { return epoch_; }
    std::chrono::milliseconds grace() const { return grace_; }
    // The backup took over after hand_over() had stopped waiting for its answer.
    bool late() const { return late_; }

private:
    HandoverPhase phase_ = HandoverPhase::idle;
    uint64_t epoch_ = 0;
    std::chrono::milliseconds grace_{};
    bool late_ = false;
};

} // namespace understudy::replicator
