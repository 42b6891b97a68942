// A Linux tap interface as the virtio-net backend. Frames the host sends to the tap are
// read by an I/O thread (io_uring, a few reads always posted) and delivered to the
// device; frames the guest transmits are written to the tap by TapSink. No vnet header
// (IFF_VNET_HDR off): the device strips and adds the virtio header itself.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "common/error.hpp"
#include "common/unique_fd.hpp"
#include "hv/virtio/net_backend.hpp"

namespace understudy::hv::virtio {

class VirtioNet;
class Tap;

// Writes transmitted frames to the tap with write(2) from the calling (vCPU) thread:
// a tap write only copies the frame into a kernel buffer, so it costs one system call
// either way, and the synchronous result is exactly the `full` signal the device needs;
// through io_uring the frame would have to be copied to a buffer that outlives the call
// and completions routed back, for nothing. `full` only when the write would block
// (the tap's send buffer is full): the I/O thread then waits for POLLOUT and calls
// tx_room_available(). Other write errors (interface down, ...) lose the frame, as the
// wire would, and are counted.
class TapSink final : public EgressSink {
public:
    Accept transmit(std::span<const uint8_t> frame) override;

private:
    friend class Tap;
    explicit TapSink(Tap& tap) : tap_(tap) {}
    Tap& tap_;
};

struct TapStats {
    uint64_t rx_frames = 0, rx_bytes = 0, rx_errors = 0;
    uint64_t tx_frames = 0, tx_bytes = 0, tx_errors = 0, tx_would_block = 0;
};

class Tap {
public:
    // Attaches to the tap interface `ifname`, creating it if it does not exist (needs
    // CAP_NET_ADMIN). The interface is not persistent: it goes when the Tap is closed,
    // unless it existed before.
    static Result<std::unique_ptr<Tap>> open(const std::string& ifname);
    ~Tap();
    Tap(const Tap&) = delete;
    Tap& operator=(const Tap&) = delete;

    const std::string& name() const { return name_; }
    int fd() const { return fd_.get(); }
    // Starts the I/O thread that feeds `dev`; dev must outlive stop().
    Result<void> start(VirtioNet& dev);
    // Stops and joins the I/O thread; reads still posted are cancelled first.
    void stop();
    // The egress sink for dev.set_egress().
    TapSink& sink() { return sink_; }
    TapStats stats() const;

private:
    friend class TapSink;
    Tap(std::string name, UniqueFd fd, UniqueFd wake);
    void run(VirtioNet& dev);
    void wake();

    std::string name_;
    UniqueFd fd_;
    UniqueFd wake_; // eventfd: stop requests and "arm POLLOUT" requests reach the thread
    TapSink sink_{*this};
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> want_room_{false};
    struct Counters {
        std::atomic<uint64_t> rx_frames{0}, rx_bytes{0}, rx_errors{0};
        std::atomic<uint64_t> tx_frames{0}, tx_bytes{0}, tx_errors{0}, tx_would_block{0};
    } counters_;
};

} // namespace understudy::hv::virtio
