// Heartbeat-based failure detection, fed by the control connection (control_link.hpp). The peer is alive while a
// heartbeat arrived within `timeout`; silence longer than that declares it failed.
// Pure logic on caller-supplied times, so it is testable without clocks or sockets.
#pragma once

#include <chrono>

#include "common/error.hpp"

namespace understudy::replicator {

using Clock = std::chrono::steady_clock;

struct DetectorConfig {
    std::chrono::milliseconds heartbeat_interval{10};
    std::chrono::milliseconds timeout{100};
};

// A timeout shorter than three heartbeats would declare a healthy peer dead after one
// late packet; such settings are refused.
Result<void> validate(const DetectorConfig& c);

enum class PeerState { unknown, alive, failed };
const char* peer_state_name(PeerState s);

class FailureDetector {
public:
    static Result<FailureDetector> create(DetectorConfig c);
    void heartbeat(Clock::time_point now);
    // Once failed, the peer stays failed until reset(): a late heartbeat from a peer we
    // already failed over from must not resurrect it.
    PeerState state(Clock::time_point now);
    // This host did not run for `stall` up to `now` (the watcher woke that late): the
    // peer's heartbeats of that time may be waiting unread, so that time is not counted
    // as the peer's silence.
    void discount_stall(Clock::duration stall, Clock::time_point now);
    void reset() { state_ = PeerState::unknown; }
    const DetectorConfig& config() const { return cfg_; }

private:
    explicit FailureDetector(DetectorConfig c) : cfg_(c) {}
    DetectorConfig cfg_;
    PeerState state_ = PeerState::unknown;
    Clock::time_point last_{};
};

} // namespace understudy::replicator
