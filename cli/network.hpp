// `--net-tap NAME`: the guest's virtio-net device, its tap, and the output-commit gate
// between them. Without a backup the gate passes frames straight through; with one,
// Protection feeds it the checkpoint events so each frame waits for its checkpoint's ACK.
#pragma once

#include <boost/program_options.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "cli/metrics.hpp"
#include "hv/virtio/net_device.hpp"
#include "hv/snapshot.hpp"
#include "hv/virtio/tap.hpp"
#include "hv/vm.hpp"
#include "netbuffer/output_commit.hpp"

namespace understudy::cli {

class HoldTimer; // cli/instrument.hpp

struct NetOptions {
    std::string tap;                       // empty: no network device
    std::string mac = "52:54:00:12:34:56";
    std::string buffer = "64M";            // output held while waiting for ACKs
    double output_gather_ms = 0;           // output-triggered checkpoints: gather window; < 0 turns them off
};

void add_net_options(boost::program_options::options_description& d, NetOptions& o);
Result<hv::virtio::MacAddress> parse_mac(const std::string& text);

class GuestNetwork {
public:
    // Adds the device to `vm` (before the image is loaded: its command line needs
    // cmdline_token()) and opens the tap. Frames flow once start() is called.
    static Result<std::unique_ptr<GuestNetwork>> attach(hv::Vm& vm, const NetOptions& o);
    // For a VM built from saved state (restore, promotion): attaches into `out` when
    // the options name a tap, does nothing otherwise.
    static hv::AttachDevicesFn attach_fn(const NetOptions& o, std::unique_ptr<GuestNetwork>& out);
    ~GuestNetwork();
    // Starts and stops delivering the tap's frames to the device. stop() must come
    // before the VM (which owns the device) is destroyed.
    Result<void> start();
    void stop();

    std::string cmdline_token() const { return dev_->cmdline_token(); }
    netbuffer::OutputCommit& commit() { return *commit_; }
    // Output-triggered checkpoints: called when an epoch's first frame is held, with the
    // time by which the epoch should end (the gather window after it). Null clears it.
    void set_checkpoint_request(std::function<void(std::chrono::steady_clock::time_point)> fn);
    // One line of figures: frames each way, held now, hold time, stalls, drops.
    std::string summary() const;
    // Sends frames on the guest's behalf straight to the tap (not through the gate):
    // the announcement of a promoted guest.
    void send_from_host(std::span<const uint8_t> frame) { wire(frame); }
    hv::virtio::MacAddress mac() const { return dev_->mac(); }
    const hv::virtio::VirtioNet& device() const { return *dev_; }

private:
    GuestNetwork() = default;
    void wire(std::span<const uint8_t> frame);
    void on_output(std::chrono::steady_clock::time_point first_held);

    hv::virtio::VirtioNet* dev_ = nullptr; // owned by the VM
    std::unique_ptr<hv::virtio::Tap> tap_;
    std::unique_ptr<netbuffer::OutputCommit> commit_;
    std::unique_ptr<HoldTimer> hold_timer_; // the device's egress: times frames into commit_
    SourceGuard output_source_;             // the held-output figures for status and metrics
    std::chrono::steady_clock::duration gather_{};
    bool trigger_ = true;
    std::mutex request_mu_;
    std::function<void(std::chrono::steady_clock::time_point)> request_;
};

} // namespace understudy::cli
