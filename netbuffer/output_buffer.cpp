#include "netbuffer/output_buffer.hpp"

#include <algorithm>

namespace understudy::netbuffer {

namespace {
constexpr size_t kHoldSamples = 4096;
}

Result<OutputBuffer> OutputBuffer::create(BufferLimits limits, Sink sink) {
    if (limits.max_bytes < 65536 || limits.max_packets < 64)
        return make_error(Errc::invalid_input, "output buffer limits must allow at least 64 KiB and 64 packets");
    if (!sink) return make_error(Errc::invalid_input, "output buffer needs a sink");
    return OutputBuffer(limits, std::move(sink));
}

void OutputBuffer::set_protected(bool on, Clock::time_point now) {
    if (!on) release_through(UINT64_MAX, now);
    // Packets still held from the unprotected time (fenced) stay releasable; newer ones wait.
    if (on && !protected_) releasable_through_ = held_.empty() ? 0 : held_.back().epoch;
    protected_ = on;
}

Result<HoldResult> OutputBuffer::hold(uint64_t epoch, std::span<const uint8_t> packet, Clock::time_point now) {
    if (!protected_ && held_.empty() && permitted()) {
        sink_(packet);
        ++totals_.packets_released;
        totals_.bytes_released += packet.size();
        return HoldResult::passed_through;
    }
    if (!held_.empty() && epoch < held_.back().epoch)
        return make_error(Errc::state, "packet of epoch " + std::to_string(epoch) + " after one of epoch " +
                                           std::to_string(held_.back().epoch));
    if (packet.size() > limits_.max_bytes)
        return make_error(Errc::invalid_input, "a packet of " + std::to_string(packet.size()) + " bytes exceeds the buffer");
    if (held_.size() >= limits_.max_packets || bytes_held_ + packet.size() > limits_.max_bytes) {
        ++totals_.stalls;
        return HoldResult::full;
    }
    held_.push_back({epoch, now, std::vector<uint8_t>(packet.begin(), packet.end())});
    bytes_held_ += packet.size();
    if (!protected_ && flush(now) > 0 && held_.empty()) return HoldResult::passed_through; // behind fenced packets
    return HoldResult::held;
}

uint64_t OutputBuffer::release_through(uint64_t epoch, Clock::time_point now) {
    releasable_through_ = std::max(releasable_through_, epoch);
    return flush(now);
}

uint64_t OutputBuffer::flush(Clock::time_point now) {
    uint64_t n = 0;
    while (!held_.empty() && held_.front().epoch <= releasable_through_) {
        if (!permitted()) {
            ++totals_.fenced;
            break;
        }
        Packet& p = held_.front();
        sink_(p.bytes);
        record_hold_time(now - p.held_at);
        bytes_held_ -= p.bytes.size();
        totals_.bytes_released += p.bytes.size();
        ++totals_.packets_released;
        held_.pop_front();
        ++n;
    }
    return n;
}

uint64_t OutputBuffer::discard_after(uint64_t epoch) {
    uint64_t n = 0;
    while (!held_.empty() && held_.back().epoch > epoch) {
        bytes_held_ -= held_.back().bytes.size();
        held_.pop_back();
        ++n;
    }
    totals_.packets_discarded += n;
    return n;
}

void OutputBuffer::record_hold_time(Clock::duration d) {
    float us = std::chrono::duration<float, std::micro>(d).count();
    if (hold_us_.size() < kHoldSamples)
        hold_us_.push_back(us);
    else
        hold_us_[hold_next_] = us;
    hold_next_ = (hold_next_ + 1) % kHoldSamples;
}

BufferStats OutputBuffer::stats() const {
    BufferStats s = totals_;
    s.packets_held = held_.size();
    s.bytes_held = bytes_held_;
    if (!hold_us_.empty()) {
        std::vector<float> v = hold_us_;
        auto pick = [&](double q) {
            size_t i = std::min(v.size() - 1, static_cast<size_t>(q * double(v.size())));
            std::nth_element(v.begin(), v.begin() + static_cast<long>(i), v.end());
            return double(v[i]);
        };
        s.hold_p50_us = pick(0.50);
        s.hold_p99_us = pick(0.99);
    }
    return s;
}

} // namespace understudy::netbuffer
