#include "hv/stall_watchdog.hpp"

#include <fmt/format.h>

namespace understudy::hv {

using namespace std::chrono;

GuestActivity sample_activity(const Vm& vm, const virtio::VirtioNet& net) {
    GuestActivity a;
    a.paused = vm.paused();
    a.vcpus = vm.vcpu_activity();
    a.net = net.queue_state();
    return a;
}

std::optional<std::string> StallWatchdog::observe(const GuestActivity& a, steady_clock::time_point now) {
    const auto& q = a.net;
    const bool progress = !known_ || q.rx_avail != rx_avail_ || q.tx_avail != tx_avail_;
    if (!known_ || q.rx_avail != rx_avail_) rx_next_at_return_ = q.rx_next;
    known_ = true;
    rx_avail_ = q.rx_avail;
    tx_avail_ = q.tx_avail;
    const uint16_t unread = q.polled ? uint16_t(q.rx_next - rx_next_at_return_) : 0;
    const bool work =
        q.live && !q.suspended && (q.rx_pending > 0 || unread > 0 || (q.tx_avail != q.tx_next && !q.tx_stalled));
    if (progress || !work || a.paused) {
        waiting_since_.reset();
        reported_ = false;
        return std::nullopt;
    }
    if (!waiting_since_) waiting_since_ = now;
    if (reported_ || now - *waiting_since_ < limit_) return std::nullopt;
    reported_ = true;
    ++stalls_;
    std::string vcpus;
    for (size_t i = 0; i < a.vcpus.size(); ++i) {
        const auto& v = a.vcpus[i];
        vcpus += fmt::format("{}vCPU {} {} ({} halts)", i ? ", " : "", i,
                             v.halted ? fmt::format("halted for {:.1f} s", duration<double>(now - v.halted_since).count())
                                      : std::string("running"),
                             v.halts);
    }
    // Unused RX buffers with frames waiting, or TX chains not taken: the device owes the
    // next step, not the guest.
    const bool device_owes = (q.rx_pending > 0 && q.rx_avail != q.rx_next) || (q.tx_avail != q.tx_next && !q.tx_stalled);
    return fmt::format("the guest made no buffer available for {:.1f} s while its network device had work: {} received "
                       "frames wait for a buffer, {} delivered frames not taken{}; RX: the guest made {} available, the "
                       "device took {}; TX: {} / {}{}{}; {}",
                       duration<double>(now - *waiting_since_).count(), q.rx_pending, unread,
                       q.polled ? "" : " (not known: the driver refills in batches)", q.rx_avail, q.rx_next, q.tx_avail,
                       q.tx_next, q.tx_stalled ? " (the output waits for room)" : "",
                       device_owes ? "; the device has buffers or frames of the guest it has not taken (a device fault)" : "",
                       vcpus);
}

} // namespace understudy::hv
