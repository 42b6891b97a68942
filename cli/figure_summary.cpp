#include "cli/figure_summary.hpp"

#include <bit>

#include <fmt/format.h>

namespace understudy::cli {

namespace {
// Bucket i < 32 holds the value i; above, a power of two's range is split in 32.
size_t bucket_of(uint64_t ns) {
    if (ns < 32) return size_t(ns);
    const unsigned top = 63u - unsigned(std::countl_zero(ns)); // 5 .. 63
    const uint64_t sub = (ns >> (top - 5)) & 31;
    return size_t(top - 4) * 32 + size_t(sub);
}
uint64_t bucket_floor(size_t i) {
    if (i < 32) return i;
    const unsigned top = unsigned(i / 32) + 4;
    return (uint64_t(32 + i % 32)) << (top - 5);
}
} // namespace

void NsHistogram::add(uint64_t ns) {
    ++buckets_[bucket_of(ns)];
    ++count_;
    if (ns > max_) max_ = ns;
}

double NsHistogram::quantile_us(double q) const {
    if (count_ == 0) return 0;
    if (q >= 1.0) return double(max_) / 1000.0;
    // The same rank as the sorted list's [q * count] that the summary always used.
    const uint64_t rank = std::min(count_ - 1, uint64_t(q * double(count_)));
    uint64_t seen = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
        seen += buckets_[i];
        if (seen > rank) return double(std::min(bucket_floor(i), max_)) / 1000.0;
    }
    return double(max_) / 1000.0;
}

void FigureSummary::add(const replicator::EpochFigures& f) {
    pause.add(f.pause_ns);
    stop.add(f.stop_ns);
    harvest.add(f.harvest_ns);
    state.add(f.state_ns);
    copy.add(f.copy_ns);
    ack.add(f.ack_ns);
    ++checkpoints;
    last_epoch = f.epoch;
    dirty_pages += f.dirty_pages;
    raw_bytes += f.raw_bytes;
    wire_bytes += f.wire_bytes;
}

std::string FigureSummary::lines(const char* label, double seconds) const {
    if (checkpoints == 0) return fmt::format("{}: no checkpoint acknowledged\n", label);
    const double n = double(checkpoints);
    return fmt::format("{}: epoch {} | {:.1f} ckpt/s | pause p50 {:.0f} us p99 {:.0f} us max {:.0f} us | {:.0f} dirty "
                       "pages/ckpt | raw {:.1f} MB/s, wire {:.1f} MB/s ({:.1f}%) | ACK p50 {:.1f} ms\n"
                       "  pause parts p50/p99 (us): stop {:.0f}/{:.0f}, harvest {:.0f}/{:.0f}, state {:.0f}/{:.0f}, "
                       "copy {:.0f}/{:.0f}\n",
                       label, last_epoch, n / seconds, pause.quantile_us(0.5), pause.quantile_us(0.99),
                       pause.quantile_us(1.0), double(dirty_pages) / n, double(raw_bytes) / seconds / 1e6,
                       double(wire_bytes) / seconds / 1e6, raw_bytes ? 100.0 * double(wire_bytes) / double(raw_bytes) : 0.0,
                       ack.quantile_us(0.5) / 1000.0, stop.quantile_us(0.5), stop.quantile_us(0.99),
                       harvest.quantile_us(0.5), harvest.quantile_us(0.99), state.quantile_us(0.5),
                       state.quantile_us(0.99), copy.quantile_us(0.5), copy.quantile_us(0.99));
}

} // namespace understudy::cli
