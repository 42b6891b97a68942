// Checkpoint figures summarized in constant memory, for the one-line-a-second window and
// the run's closing totals (cli/protection.hpp): a protected run of days at 25 ms epochs
// must not keep every checkpoint's figures (about 0.6 GB a day).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "replicator/primary.hpp" // EpochFigures

namespace understudy::cli {

// Quantiles of nanosecond values from log-linear buckets: exact below 32 ns, then 32
// buckets per power of two, so a quantile is at most 1/32 (3.1 %) below the value it
// stands for. The maximum is kept exactly.
class NsHistogram {
public:
    void add(uint64_t ns);
    // The q-quantile (0..1), in microseconds; 0 when empty.
    double quantile_us(double q) const;
    uint64_t count() const { return count_; }

private:
    static constexpr unsigned kSub = 32;
    std::array<uint64_t, 60 * kSub> buckets_{};
    uint64_t count_ = 0, max_ = 0;
};

struct FigureSummary {
    NsHistogram pause, stop, harvest, state, copy, ack;
    uint64_t checkpoints = 0, last_epoch = 0, dirty_pages = 0, raw_bytes = 0, wire_bytes = 0;

    void add(const replicator::EpochFigures& f);
    // One line of figures, and one of the pause's parts, for `seconds` of checkpoints.
    std::string lines(const char* label, double seconds) const;
};

} // namespace understudy::cli
