// A guest that stops making progress while its network device has work for it (issue
// 21: services that stalled under load, the VM still running, nothing said). Sampled
// by the VM's supervisor; reports once per stall, with the queue indices and what each
// vCPU is doing, so that a lost wake-up (vCPUs halted while frames wait) can be told
// from a guest that spins or hangs (vCPUs running, nothing consumed).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hv/virtio/net_device.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

struct GuestActivity {
    bool paused = false; // a checkpoint's pause, a handover: no progress is expected
    std::vector<Vm::VcpuActivity> vcpus;
    virtio::NetQueueState net;
};

GuestActivity sample_activity(const Vm& vm, const virtio::VirtioNet& net);

class StallWatchdog {
public:
    explicit StallWatchdog(std::chrono::milliseconds limit = std::chrono::seconds(5)) : limit_(limit) {}
    // One sample. The first time the guest has gone `limit` without making a buffer
    // available on either queue while the device had work for it (received frames
    // waiting for a buffer; frames to send that nothing holds up; or, from a polling
    // driver, frames delivered since it last returned a buffer), returns the report (one
    // line). Progress re-arms it.
    std::optional<std::string> observe(const GuestActivity& a, std::chrono::steady_clock::time_point now);
    uint64_t stalls() const { return stalls_; }

private:
    std::chrono::milliseconds limit_;
    bool known_ = false;
    uint16_t rx_avail_ = 0, tx_avail_ = 0;
    uint16_t rx_next_at_return_ = 0; // the device's RX position when the guest last returned a buffer
    std::optional<std::chrono::steady_clock::time_point> waiting_since_; // the device has had work since
    bool reported_ = false;
    uint64_t stalls_ = 0;
};

} // namespace understudy::hv
