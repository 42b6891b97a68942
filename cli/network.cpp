#include "cli/network.hpp"

#include <fmt/format.h>
#include <poll.h>

#include "cli/instrument.hpp"
#include "cli/operations.hpp"
#include "cli/vm_options.hpp"

namespace understudy::cli {

namespace po = boost::program_options;
using namespace std::chrono;

void add_net_options(po::options_description& d, NetOptions& o) {
    d.add_options()
        ("net-tap", po::value(&o.tap), "give the guest a virtio-net device backed by this tap interface (created if missing)")
        ("mac", po::value(&o.mac)->default_value(o.mac), "the guest NIC's MAC address")
        ("net-buffer", po::value(&o.buffer)->default_value(o.buffer),
         "output held until its checkpoint is acknowledged, at most (the guest's TX queue waits beyond it)")
        ("output-gather-ms", po::value(&o.output_gather_ms)->default_value(o.output_gather_ms),
         "with --backup: end an epoch this long after the guest's first held output (output-triggered "
         "checkpoints); negative: epochs always run their full length");
}

Result<hv::virtio::MacAddress> parse_mac(const std::string& text) {
    hv::virtio::MacAddress mac{};
    unsigned v[6];
    char tail;
    if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
        return make_error(Errc::invalid_input, "MAC address '" + text + "' is not six hex bytes like 52:54:00:12:34:56");
    for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(v[i]);
    if (mac[0] & 1) return make_error(Errc::invalid_input, "MAC address '" + text + "' is a multicast address");
    return mac;
}

Result<std::unique_ptr<GuestNetwork>> GuestNetwork::attach(hv::Vm& vm, const NetOptions& o) {
    hv::virtio::NetConfig nc;
    nc.mac = US_TRY(parse_mac(o.mac));
    uint64_t buffer = US_TRY(parse_size(o.buffer));
    std::unique_ptr<GuestNetwork> n(new GuestNetwork());
    n->gather_ = duration_cast<steady_clock::duration>(duration<double, std::milli>(std::max(0.0, o.output_gather_ms)));
    n->trigger_ = o.output_gather_ms >= 0;
    auto dev = US_TRY(hv::virtio::VirtioNet::create(nc));
    n->dev_ = dev.get();
    US_TRYV(vm.add_device(std::move(dev)));
    n->tap_ = US_TRY(hv::virtio::Tap::open(o.tap));
    GuestNetwork* self = n.get();
    netbuffer::OutputCommitHooks hooks;
    hooks.wire = [self](std::span<const uint8_t> f) {
        self->hold_timer_->released();
        self->wire(f);
    };
    hooks.on_room = [self] { self->dev_->tx_room_available(); };
    hooks.on_output = [self](steady_clock::time_point t) { self->on_output(t); };
    n->commit_ = US_TRY(netbuffer::OutputCommit::create({buffer, std::max<uint64_t>(64, buffer / 64)}, std::move(hooks)));
    n->hold_timer_ = std::make_unique<HoldTimer>(*n->commit_, instance_metrics());
    n->output_source_ = watch_output(instance_metrics(), *n->commit_);
    n->dev_->set_egress(n->hold_timer_.get());
    return n;
}

hv::AttachDevicesFn GuestNetwork::attach_fn(const NetOptions& o, std::unique_ptr<GuestNetwork>& out) {
    if (o.tap.empty()) return {};
    return [&o, &out](hv::Vm& v) -> Result<void> {
        out = US_TRY(attach(v, o));
        return {};
    };
}

GuestNetwork::~GuestNetwork() { stop(); }

Result<void> GuestNetwork::start() { return tap_->start(*dev_); }

void GuestNetwork::stop() {
    if (tap_) tap_->stop();
}

// A released frame must reach the tap: when the tap's queue is full, wait for room
// rather than lose a frame the guest believes sent (DESIGN.md, invariant 4).
void GuestNetwork::wire(std::span<const uint8_t> frame) {
    while (tap_->sink().transmit(frame) == hv::virtio::EgressSink::Accept::full) {
        pollfd p{tap_->fd(), POLLOUT, 0};
        (void)::poll(&p, 1, 10);
    }
}

void GuestNetwork::set_checkpoint_request(std::function<void(steady_clock::time_point)> fn) {
    std::lock_guard lock(request_mu_);
    request_ = std::move(fn);
}

void GuestNetwork::on_output(steady_clock::time_point first_held) {
    if (!trigger_) return;
    std::lock_guard lock(request_mu_);
    if (request_) request_(first_held + gather_);
}

std::string GuestNetwork::summary() const {
    auto d = dev_->stats();
    auto b = commit_->stats();
    return fmt::format("network: tx {} frames, rx {} ({} dropped); held now {} frames, {} released, hold p50 {:.1f} ms "
                       "p99 {:.1f} ms, {} stalls{}",
                       d.tx_frames, d.rx_frames, d.rx_dropped_pending_full + d.rx_dropped_too_big + d.rx_dropped_invalid,
                       b.packets_held, b.packets_released, b.hold_p50_us / 1000, b.hold_p99_us / 1000, b.stalls,
                       d.broken ? "; DEVICE BROKEN (the guest must reset it)" : "");
}

} // namespace understudy::cli
