#include "replicator/failure_detector.hpp"

#include <algorithm>

namespace understudy::replicator {

const char* peer_state_name(PeerState s) {
    switch (s) {
    case PeerState::unknown: return "unknown";
    case PeerState::alive: return "alive";
    case PeerState::failed: return "failed";
    }
    return "?";
}

Result<void> validate(const DetectorConfig& c) {
    if (c.heartbeat_interval.count() < 1)
        return make_error(Errc::invalid_input, "heartbeat interval must be at least 1 ms");
    if (c.timeout < 3 * c.heartbeat_interval)
        return make_error(Errc::invalid_input, "failure timeout " + std::to_string(c.timeout.count()) +
                                                   " ms is shorter than three heartbeats (" +
                                                   std::to_string(3 * c.heartbeat_interval.count()) +
                                                   " ms); one late heartbeat would cause a failover");
    return {};
}

Result<FailureDetector> FailureDetector::create(DetectorConfig c) {
    US_TRYV(validate(c));
    return FailureDetector(c);
}

void FailureDetector::heartbeat(Clock::time_point now) {
    if (state_ == PeerState::failed) return;
    last_ = now;
    state_ = PeerState::alive;
}

void FailureDetector::discount_stall(Clock::duration stall, Clock::time_point now) {
    if (state_ == PeerState::alive) last_ = std::min(now, last_ + stall);
}

PeerState FailureDetector::state(Clock::time_point now) {
    if (state_ == PeerState::alive && now - last_ > cfg_.timeout) state_ = PeerState::failed;
    return state_;
}

} // namespace understudy::replicator
