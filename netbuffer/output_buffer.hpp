// Output commit (DESIGN.md invariants 1 and 4): packets the guest sends during epoch N
// are held until the backup has acknowledged checkpoint N, then released in order.
// Held packets are never dropped while the primary lives: when the buffer is full,
// hold() refuses and the caller stalls the guest's transmit queue until a release
// frees room. Knows packets and epoch numbers only.
//
// Fencing (invariant 5): a release permit, when set, is asked before each packet goes to
// the sink; while it refuses, acknowledged and unprotected packets alike stay held (in
// order, subject to the same limits) until flush() finds it granting again.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <vector>

#include "common/error.hpp"

namespace understudy::netbuffer {

using Clock = std::chrono::steady_clock;

struct BufferLimits {
    uint64_t max_bytes = 64ull << 20;
    uint64_t max_packets = 65536;
};

struct BufferStats {
    uint64_t packets_held = 0; // now
    uint64_t bytes_held = 0;   // now
    uint64_t packets_released = 0;
    uint64_t bytes_released = 0;
    uint64_t packets_discarded = 0;
    uint64_t stalls = 0;       // hold() refusals for lack of room
    uint64_t fenced = 0;       // releases the permit refused (each counted once per flush)
    double hold_p50_us = 0;    // over the most recent releases
    double hold_p99_us = 0;
};

enum class HoldResult { held, passed_through, full };

class OutputBuffer {
public:
    // `sink` puts a released packet on the wire; it runs in release order.
    using Sink = std::function<void(std::span<const uint8_t>)>;
    // May a packet go to the sink at this instant? Unset: always.
    using Permit = std::function<bool(Clock::time_point)>;

    static Result<OutputBuffer> create(BufferLimits limits, Sink sink);

    // Protected: hold until the epoch is acknowledged. Unprotected: straight to the sink;
    // turning protection off first releases what is held, so packets keep their order.
    void set_protected(bool on, Clock::time_point now = Clock::now());
    bool is_protected() const { return protected_; }
    void set_release_permit(Permit p) { permit_ = std::move(p); }

    // `epoch` must not be older than the newest epoch already held (packets keep order).
    Result<HoldResult> hold(uint64_t epoch, std::span<const uint8_t> packet, Clock::time_point now = Clock::now());
    // The backup acknowledged checkpoint `epoch`: release every packet of epochs <= it.
    uint64_t release_through(uint64_t epoch, Clock::time_point now = Clock::now());
    // Releases what is releasable (acknowledged, or anything when unprotected) while the
    // permit grants; returns the packets released. Call it when the permit may have
    // turned to granting again.
    uint64_t flush(Clock::time_point now = Clock::now());
    // Failover on a promoted backup: output of epochs after the last committed one was
    // never acknowledged and must not be sent. Returns the packets dropped.
    uint64_t discard_after(uint64_t epoch);

    BufferStats stats() const;

private:
    struct Packet {
        uint64_t epoch;
        Clock::time_point held_at;
        std::vector<uint8_t> bytes;
    };
    OutputBuffer(BufferLimits limits, Sink sink) : limits_(limits), sink_(std::move(sink)) {}
    void record_hold_time(Clock::duration d);
    // Asked at the moment of each release (a sink may block), never with a caller's `now`.
    bool permitted() const { return !permit_ || permit_(Clock::now()); }

    BufferLimits limits_;
    Sink sink_;
    Permit permit_;
    bool protected_ = true;
    uint64_t releasable_through_ = 0; // the newest acknowledged epoch (all of them when unprotected)
    std::deque<Packet> held_;
    uint64_t bytes_held_ = 0;
    BufferStats totals_;
    std::vector<float> hold_us_; // ring of recent hold times
    size_t hold_next_ = 0;
};

} // namespace understudy::netbuffer
