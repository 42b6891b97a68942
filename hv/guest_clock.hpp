// The clock behind the TIME and HALT hypercalls: host monotonic time plus an offset, so
// that a restored or promoted VM continues from the time it was captured at.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace understudy::hv {

class GuestClock {
public:
    GuestClock() { set(0); }
    uint64_t now_ns() const { return static_cast<uint64_t>(host_ns() + offset_.load(std::memory_order_relaxed)); }
    void set(uint64_t guest_ns) { offset_.store(static_cast<int64_t>(guest_ns) - host_ns(), std::memory_order_relaxed); }
    // Host steady-clock deadline for a guest-time deadline; time_point::max() (never) for
    // one beyond the host clock's range. UINT64_MAX is how the guest says "no deadline"
    // (us_halt_forever): cast to int64_t it was -1, a deadline in the past, and a halted
    // vCPU spun on HALT hypercalls instead of sleeping.
    std::chrono::steady_clock::time_point host_deadline(uint64_t guest_ns) const {
        int64_t offset = offset_.load(std::memory_order_relaxed), host = 0;
        if (guest_ns > static_cast<uint64_t>(INT64_MAX) || __builtin_sub_overflow(static_cast<int64_t>(guest_ns), offset, &host))
            return std::chrono::steady_clock::time_point::max();
        return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(host));
    }

private:
    static int64_t host_ns() {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }
    std::atomic<int64_t> offset_{0};
};

} // namespace understudy::hv
