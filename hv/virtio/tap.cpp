// Tap backend: TUNSETIFF, the io_uring read loop, and the write-side sink.
#include "hv/virtio/tap.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <vector>

#include "common/log.hpp"
#include "hv/virtio/mmio_transport.hpp"
#include "hv/virtio/net_device.hpp"

namespace understudy::hv::virtio {

namespace {

constexpr unsigned kReads = 4;              // reads kept posted
constexpr size_t kReadBytes = 65536;        // a whole frame at any MTU a tap allows
constexpr auto kPendingRetry = std::chrono::milliseconds(1);

// One completion object per submission: user_data = (kind << 32) | slot.
enum class Op : uint32_t { read = 1, poll_in = 2, wake = 3, poll_out = 4, cancel = 5 };
uint64_t tag(Op op, uint32_t slot = 0) { return (uint64_t(op) << 32) | slot; }
Op op_of(uint64_t data) { return static_cast<Op>(data >> 32); }
uint32_t slot_of(uint64_t data) { return static_cast<uint32_t>(data); }

} // namespace

Result<std::unique_ptr<Tap>> Tap::open(const std::string& ifname) {
    if (ifname.empty() || ifname.size() >= IFNAMSIZ)
        return make_error(Errc::invalid_input, "tap name '" + ifname + "' must have 1 to " + std::to_string(IFNAMSIZ - 1) + " characters");
    UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening /dev/net/tun");
    ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0)
        return sys_error("attaching to tap " + ifname + " (TUNSETIFF; needs CAP_NET_ADMIN, and an existing " + ifname +
                         " must be a tap without a packet-information header)");
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake.valid()) return sys_error("creating an eventfd for tap " + ifname);
    return std::unique_ptr<Tap>(new Tap(ifr.ifr_name, std::move(fd), std::move(wake)));
}

Tap::Tap(std::string name, UniqueFd fd, UniqueFd wake) : name_(std::move(name)), fd_(std::move(fd)), wake_(std::move(wake)) {}

Tap::~Tap() { stop(); }

TapStats Tap::stats() const {
    const auto& c = counters_;
    return {c.rx_frames.load(), c.rx_bytes.load(), c.rx_errors.load(), c.tx_frames.load(),
            c.tx_bytes.load(),  c.tx_errors.load(), c.tx_would_block.load()};
}

void Tap::wake() {
    uint64_t one = 1;
    // A full eventfd counter (EAGAIN) already means "look": nothing to do.
    [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
}

EgressSink::Accept TapSink::transmit(std::span<const uint8_t> frame) {
    auto& c = tap_.counters_;
    ssize_t n = ::write(tap_.fd_.get(), frame.data(), frame.size());
    if (n == static_cast<ssize_t>(frame.size())) {
        c.tx_frames.fetch_add(1, std::memory_order_relaxed);
        c.tx_bytes.fetch_add(frame.size(), std::memory_order_relaxed);
        return Accept::sent_or_held;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c.tx_would_block.fetch_add(1, std::memory_order_relaxed);
        tap_.want_room_.store(true, std::memory_order_release);
        tap_.wake();
        return Accept::full;
    }
    int err = n < 0 ? errno : EIO;
    uint64_t k = c.tx_errors.fetch_add(1, std::memory_order_relaxed);
    if (log_worthy(k))
        log::warn("tap {}: a {}-byte frame was not sent: {} (#{})", tap_.name_, frame.size(), std::strerror(err), k + 1);
    return Accept::sent_or_held;
}

Result<void> Tap::start(VirtioNet& dev) {
    if (thread_.joinable()) return make_error(Errc::state, "tap " + name_ + " is already started");
    stop_.store(false);
    thread_ = std::thread([this, &dev] { run(dev); });
    return {};
}

void Tap::stop() {
    if (!thread_.joinable()) return;
    stop_.store(true, std::memory_order_release);
    wake();
    thread_.join();
}

void Tap::run(VirtioNet& dev) {
    io_uring ring{};
    if (int rc = io_uring_queue_init(2 * kReads + 8, &ring, 0); rc < 0) {
        log::error("tap {}: creating an io_uring: {}; the tap is not read", name_, std::strerror(-rc));
        return;
    }
    std::vector<std::array<uint8_t, kReadBytes>> bufs(kReads);
    uint64_t wake_count = 0;
    bool poll_out_armed = false;
    unsigned inflight = 0; // reads, polls and the wake read; cancels are not counted
    auto sqe = [&](uint64_t data) {
        io_uring_sqe* s = io_uring_get_sqe(&ring); // the ring holds every op we keep in flight
        io_uring_sqe_set_data64(s, data);
        return s;
    };
    auto post_read = [&](uint32_t i) {
        io_uring_prep_read(sqe(tag(Op::read, i)), fd_.get(), bufs[i].data(), kReadBytes, 0);
        ++inflight;
    };
    auto post_wake = [&] {
        io_uring_prep_read(sqe(tag(Op::wake)), wake_.get(), &wake_count, sizeof wake_count, 0);
        ++inflight;
    };
    for (uint32_t i = 0; i < kReads; ++i) post_read(i);
    post_wake();

    uint64_t read_errors_logged = 0;
    while (!stop_.load(std::memory_order_acquire)) {
        io_uring_submit(&ring);
        io_uring_cqe* cqe = nullptr;
        int rc;
        if (dev.rx_pending()) {
            // Frames wait for guest buffers, and the RX queue sends no notifications: look again soon.
            __kernel_timespec ts{0, std::chrono::nanoseconds(kPendingRetry).count()};
            rc = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
        } else {
            rc = io_uring_wait_cqe(&ring, &cqe);
        }
        if (rc < 0 && rc != -ETIME && rc != -EINTR) {
            log::error("tap {}: waiting for io_uring: {}; the tap is no longer read", name_, std::strerror(-rc));
            break;
        }
        unsigned head;
        unsigned seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            ++seen;
            uint64_t data = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            if (op_of(data) == Op::cancel) continue;
            --inflight;
            switch (op_of(data)) {
            case Op::read: {
                uint32_t i = slot_of(data);
                if (res > 0) {
                    counters_.rx_frames.fetch_add(1, std::memory_order_relaxed);
                    counters_.rx_bytes.fetch_add(res, std::memory_order_relaxed);
                    // Errors here are empty or oversized frames, counted by the device.
                    (void)dev.deliver(std::span<const uint8_t>(bufs[i].data(), static_cast<size_t>(res)));
                } else if (res == -EAGAIN) {
                    // Kernels that do not arm a poll for reads on a non-blocking fd (it is
                    // non-blocking for the writer) say EAGAIN: wait for data, then read again.
                    io_uring_prep_poll_add(sqe(tag(Op::poll_in, i)), fd_.get(), POLLIN);
                    ++inflight;
                    break;
                } else if (res < 0 && res != -ECANCELED) {
                    counters_.rx_errors.fetch_add(1, std::memory_order_relaxed);
                    if (log_worthy(read_errors_logged++))
                        log::warn("tap {}: read failed: {}", name_, std::strerror(-res));
                }
                if (!stop_.load(std::memory_order_relaxed)) post_read(i);
                break;
            }
            case Op::poll_in:
                if (!stop_.load(std::memory_order_relaxed)) post_read(slot_of(data));
                break;
            case Op::wake:
                if (!stop_.load(std::memory_order_relaxed)) post_wake();
                break;
            case Op::poll_out:
                poll_out_armed = false;
                dev.tx_room_available();
                break;
            case Op::cancel: break;
            }
        }
        io_uring_cq_advance(&ring, seen);
        if (want_room_.exchange(false, std::memory_order_acq_rel) && !poll_out_armed) {
            io_uring_prep_poll_add(sqe(tag(Op::poll_out)), fd_.get(), POLLOUT);
            ++inflight;
            poll_out_armed = true;
        }
        dev.poll_rx();
    }

    // Cancel whatever is still posted and wait for it: the buffers die with this frame.
    io_uring_prep_cancel_fd(sqe(tag(Op::cancel)), fd_.get(), IORING_ASYNC_CANCEL_ALL);
    io_uring_prep_cancel_fd(sqe(tag(Op::cancel)), wake_.get(), IORING_ASYNC_CANCEL_ALL);
    io_uring_submit(&ring);
    while (inflight > 0) {
        io_uring_cqe* cqe = nullptr;
        int rc = io_uring_wait_cqe(&ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) break;
        if (op_of(io_uring_cqe_get_data64(cqe)) != Op::cancel) --inflight;
        io_uring_cqe_seen(&ring, cqe);
    }
    io_uring_queue_exit(&ring);
}

} // namespace understudy::hv::virtio
