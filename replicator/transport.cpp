#include "replicator/transport.hpp"

#include <arpa/inet.h>
#include <liburing.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>

#include "replicator/link_cipher.hpp"

namespace understudy::replicator {

namespace {

constexpr size_t kIovPerSqe = 1024;        // UIO_MAXIOV: the kernel's limit per sendmsg
constexpr unsigned kMaxSendSqes = 8;       // linked SENDMSGs per submission round
constexpr size_t kMaxRecvBytes = 1u << 30; // the SQE length field is 32 bits
// A record (or recv_exact) still missing this many bytes is received straight into its
// destination rather than through the buffer: the extra copy would cost more than the
// system calls that buffering saves.
constexpr size_t kDirectRecvBytes = 64u << 10;
constexpr std::array<uint8_t, 8> kZeros{};
// Sealed sends: frames of up to kMaxFramePlain bytes, gathered into one buffer of up to
// kSealBatch bytes per send. Received frames are read ahead into a buffer of kOpenBuffer.
constexpr size_t kSealBatch = 1u << 20;
constexpr size_t kOpenBuffer = 2 * (kMaxFramePlain + kFrameOverhead);

size_t padding_of(size_t len) { return (8 - len % 8) % 8; }

constexpr uint8_t kFlipMask = 0x10; // BitFlip

// The one place where a -errno from io_uring (submission or completion) becomes an
// Error. -ETIME is what a linked timeout reports when it fired.
Error from_cqe(int res, const std::string& what) {
    if (res == -ETIME) return Error{Errc::timeout, what + ": timed out", 0};
    return sys_error(what, -res);
}

std::string sockaddr_str(const sockaddr_storage& ss) {
    char buf[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET) {
        auto& a = reinterpret_cast<const sockaddr_in&>(ss);
        ::inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
        return std::string(buf) + ":" + std::to_string(ntohs(a.sin_port));
    }
    if (ss.ss_family == AF_INET6) {
        auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
        ::inet_ntop(AF_INET6, &a.sin6_addr, buf, sizeof buf);
        return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a.sin6_port));
    }
    return "?";
}

struct AddrInfoDeleter {
    void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoPtr> resolve(const Endpoint& ep, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    addrinfo* out = nullptr;
    std::string port = std::to_string(ep.port);
    int rc = ::getaddrinfo(ep.host.empty() ? nullptr : ep.host.c_str(), port.c_str(), &hints, &out);
    if (rc != 0) return make_error(Errc::not_found, "resolving " + ep.str() + ": " + ::gai_strerror(rc));
    return AddrInfoPtr(out);
}

Result<void> configure_socket(int fd, const TransportOptions& o, const std::string& who) {
    int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) return sys_error("TCP_NODELAY on " + who);
    // Dead peers (TransportOptions::dead_peer_timeout): probes start after a third of it
    // idle, then three probes a sixth of it apart; TCP_USER_TIMEOUT bounds both the probes
    // and bytes sent but never acknowledged.
    const int dead_s = static_cast<int>(o.dead_peer_timeout.count());
    const int idle_s = std::max(1, dead_s / 3), interval_s = std::max(1, dead_s / 6), probes = 3;
    const unsigned user_timeout_ms = static_cast<unsigned>(dead_s) * 1000u;
    if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s) < 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s) < 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) < 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms) < 0)
        return sys_error("keepalive and TCP_USER_TIMEOUT on " + who);
    if (o.socket_buffer_bytes > 0) {
        int b = o.socket_buffer_bytes;
        if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &b, sizeof b) < 0) return sys_error("SO_SNDBUF on " + who);
        if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &b, sizeof b) < 0) return sys_error("SO_RCVBUF on " + who);
    }
    return {};
}

__kernel_timespec to_timespec(std::chrono::nanoseconds d) {
    if (d.count() < 0) d = {};
    return {static_cast<long long>(d.count() / 1'000'000'000), static_cast<long long>(d.count() % 1'000'000'000)};
}

} // namespace

// One io_uring, used by one thread at a time. run() submits what was queued, whose
// user_data is an index into `results`, and returns once every request has completed,
// so nothing queued ever outlives the caller's stack.
class Ring {
public:
    static Result<std::unique_ptr<Ring>> create(unsigned entries) {
        auto r = std::unique_ptr<Ring>(new Ring);
        int rc = io_uring_queue_init(entries, &r->ring_, IORING_SETUP_COOP_TASKRUN);
        if (rc == -EINVAL) rc = io_uring_queue_init(entries, &r->ring_, 0); // kernels before 5.19
        if (rc < 0) return from_cqe(rc, "creating an io_uring");
        r->live_ = true;
        return r;
    }
    ~Ring() {
        if (live_) io_uring_queue_exit(&ring_);
    }

    // The caller never queues more than the ring holds, so this does not fail.
    io_uring_sqe* sqe(uint64_t index) {
        io_uring_sqe* s = io_uring_get_sqe(&ring_);
        io_uring_sqe_set_data64(s, index);
        return s;
    }

    Result<void> run(std::span<int> results) {
        if (broken_) return make_error(Errc::state, "io_uring unusable after a failed submission");
        for (;;) {
            int rc = io_uring_submit_and_wait(&ring_, 1);
            if (rc >= 0) break;
            if (rc == -EINTR && io_uring_sq_ready(&ring_) == 0) break; // submitted, wait interrupted
            if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) continue;
            broken_ = true; // queued SQEs point into the caller's frame; never submit them later
            return from_cqe(rc, "submitting to io_uring");
        }
        size_t pending = results.size();
        while (pending > 0) {
            io_uring_cqe* cqe = nullptr;
            int rc = io_uring_wait_cqe(&ring_, &cqe);
            if (rc == -EINTR) continue;
            if (rc < 0) {
                broken_ = true;
                return from_cqe(rc, "waiting for io_uring");
            }
            uint64_t i = io_uring_cqe_get_data64(cqe);
            if (i < results.size()) {
                results[i] = cqe->res;
                --pending;
            }
            io_uring_cqe_seen(&ring_, cqe);
        }
        return {};
    }

private:
    Ring() = default;
    io_uring ring_{};
    bool live_ = false;
    bool broken_ = false;
};

// ---- Endpoint ----

Result<Endpoint> Endpoint::parse(const std::string& text) {
    auto bad = [&](const char* why) { return make_error(Errc::invalid_input, "endpoint \"" + text + "\": " + why); };
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) return bad("expected HOST:PORT");
    std::string host = text.substr(0, colon), port = text.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    else if (host.find(':') != std::string::npos) return bad("an IPv6 address needs brackets, [ADDR]:PORT");
    if (host.empty()) return bad("empty host");
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad("the port must be a number 0..65535");
    unsigned long p = std::stoul(port);
    if (p > 65535) return bad("the port must be a number 0..65535");
    return Endpoint{host, static_cast<uint16_t>(p)};
}

std::string Endpoint::str() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

RecordHeader record_header(uint32_t type, std::span<const uint8_t> body) {
    return RecordHeader{type, static_cast<uint32_t>(body.size()), checksum64(body)};
}

std::span<const uint8_t> record_padding(size_t body_length) { return {kZeros.data(), padding_of(body_length)}; }

// ---- Connection ----

struct Connection::Parts {
    UniqueFd fd;
    std::string peer;
    TransportOptions options;
    std::unique_ptr<Ring> send_ring, recv_ring;
};

Connection::Connection(Parts&& parts)
    : fd_(std::move(parts.fd)), peer_(std::move(parts.peer)), send_ring_(std::move(parts.send_ring)),
      recv_ring_(std::move(parts.recv_ring)) {
    rcap_ = std::max<size_t>(parts.options.recv_buffer_bytes, 4096);
    rbuf_ = std::make_unique_for_overwrite<uint8_t[]>(rcap_);
}

Connection::~Connection() = default;

Error Connection::closed_error(const char* doing) const {
    return make_error(Errc::state, std::string(doing) + " " + peer_ + ": the connection was shut down");
}

Error Connection::peer_closed(size_t have, size_t want) const {
    if (have == 0) return make_error(Errc::system, "peer " + peer_ + " closed the connection");
    return make_error(Errc::system, "peer " + peer_ + " closed the connection in the middle of a record (" +
                                        std::to_string(have) + " of " + std::to_string(want) + " bytes received)");
}

Result<void> Connection::send(std::span<const std::span<const uint8_t>> buffers) {
    std::lock_guard lock(send_mutex_);
    if (shut_.load(std::memory_order_relaxed)) return closed_error("sending to");
    size_t total = 0;
    for (auto b : buffers) total += b.size();
    const bool flip = flip_ && total > 0 && flip_->take();
    if (tx_) return send_sealed(buffers, flip);
    iov_.clear();
    for (auto b : buffers)
        if (!b.empty()) iov_.push_back({const_cast<uint8_t*>(b.data()), b.size()});
    if (flip) flip_in_iov();
    return send_iov();
}

void Connection::flip_in_iov() {
    size_t total = 0;
    for (const auto& v : iov_) total += v.iov_len;
    size_t at = total / 2;
    for (size_t i = 0; i < iov_.size(); ++i) {
        if (at >= iov_[i].iov_len) {
            at -= iov_[i].iov_len;
            continue;
        }
        auto* base = static_cast<uint8_t*>(iov_[i].iov_base);
        const size_t len = iov_[i].iov_len;
        flip_byte_ = base[at] ^ kFlipMask;
        // [base, at) flipped-byte [at + 1, len): the caller's buffer is not written.
        iov_[i].iov_len = at;
        iov_.insert(iov_.begin() + long(i) + 1, {iovec{&flip_byte_, 1}, iovec{base + at + 1, len - at - 1}});
        std::erase_if(iov_, [](const iovec& v) { return v.iov_len == 0; });
        return;
    }
}

// Seals the buffers into frames, a batch at a time, each read once by the cipher.
Result<void> Connection::send_sealed(std::span<const std::span<const uint8_t>> buffers, bool flip) {
    size_t remaining = 0;
    for (auto b : buffers) remaining += b.size();
    size_t bi = 0, off = 0; // next plaintext byte: buffers[bi][off]
    while (remaining > 0) {
        size_t used = 0;
        while (remaining > 0) {
            size_t len = std::min(remaining, kMaxFramePlain);
            if (used + len + kFrameOverhead > kSealBatch) break;
            pieces_.clear();
            for (size_t want = len; want > 0;) {
                auto b = buffers[bi];
                size_t take = std::min(want, b.size() - off);
                if (take > 0) pieces_.push_back(b.subspan(off, take));
                want -= take;
                off += take;
                if (off == b.size()) ++bi, off = 0;
            }
            if (auto r = tx_->seal(pieces_, len, sbuf_.get() + used); !r) {
                shutdown(); // the frame counter is out of step: nothing more may go out
                return std::move(r.error()).wrap("sending to " + peer_);
            }
            used += len + kFrameOverhead;
            remaining -= len;
        }
        if (flip) sbuf_[used / 2] ^= kFlipMask; // in a sealed frame: its tag no longer matches
        flip = false;
        iov_.assign(1, {sbuf_.get(), used});
        US_TRYV(send_iov());
    }
    return {};
}

// Sends iov_ (advanced in place) until every byte is taken.
Result<void> Connection::send_iov() {
    std::array<msghdr, kMaxSendSqes> msgs;
    std::array<size_t, kMaxSendSqes> want;
    std::array<int, kMaxSendSqes> res;
    size_t first = 0; // iov_[first] is the first entry with bytes left (advanced in place)
    while (first < iov_.size()) {
        unsigned n = 0;
        for (size_t pos = first; pos < iov_.size() && n < kMaxSendSqes; ++n) {
            size_t count = std::min(kIovPerSqe, iov_.size() - pos);
            msgs[n] = msghdr{};
            msgs[n].msg_iov = &iov_[pos];
            msgs[n].msg_iovlen = count;
            want[n] = 0;
            for (size_t i = pos; i < pos + count; ++i) want[n] += iov_[i].iov_len;
            pos += count;
            io_uring_sqe* sqe = send_ring_->sqe(n);
            // MSG_WAITALL: the kernel keeps sending until all is taken (or fails).
            io_uring_prep_sendmsg(sqe, fd_.get(), &msgs[n], MSG_NOSIGNAL | MSG_WAITALL);
            // Linked so they go in order; a short one cancels the rest, resubmitted below.
            if (pos < iov_.size() && n + 1 < kMaxSendSqes) sqe->flags |= IOSQE_IO_LINK;
        }
        US_TRYV(send_ring_->run({res.data(), n}));
        for (unsigned i = 0; i < n; ++i) {
            if (res[i] < 0 || (res[i] == 0 && want[i] > 0)) {
                if (shut_.load(std::memory_order_relaxed)) return closed_error("sending to");
                return from_cqe(res[i] < 0 ? res[i] : -EPIPE, "sending to " + peer_);
            }
            size_t done = static_cast<size_t>(res[i]);
            bytes_sent_.fetch_add(done, std::memory_order_relaxed);
            for (size_t left = done; left > 0;) {
                iovec& v = iov_[first];
                if (left >= v.iov_len) {
                    left -= v.iov_len;
                    ++first;
                } else {
                    v.iov_base = static_cast<uint8_t*>(v.iov_base) + left;
                    v.iov_len -= left;
                    left = 0;
                }
            }
            if (done < want[i]) break; // short: the rest of the chain was cancelled
        }
    }
    return {};
}

Result<void> Connection::send_record(uint32_t type, std::span<const uint8_t> body) {
    if (body.size() > kMaxRecordLength)
        return make_error(Errc::invalid_input, "record of " + std::to_string(body.size()) + " bytes exceeds the limit of " +
                                                   std::to_string(kMaxRecordLength));
    RecordHeader h = record_header(type, body);
    std::array<std::span<const uint8_t>, 3> parts{
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&h), sizeof h), body, record_padding(body.size())};
    return send(parts);
}

Result<size_t> Connection::recv_some(uint8_t* to, size_t len, bool wait_all) {
    return rx_ ? recv_frames(to, len, wait_all) : recv_raw(to, len, wait_all);
}

// Plaintext from sealed frames: what is left of the last frame opened, then whole
// frames, each opened straight into `to` when the caller takes all of it (no copy) and
// otherwise into pbuf_. Nothing reaches the caller before its frame's tag is verified.
// Returns 0 when the peer closed between frames, like recv_raw.
Result<size_t> Connection::recv_frames(uint8_t* to, size_t len, bool wait_all) {
    size_t done = 0;
    while (done < len) {
        if (ppos_ < pend_) {
            size_t n = std::min(len - done, pend_ - ppos_);
            std::memcpy(to + done, pbuf_.get() + ppos_, n);
            ppos_ += n;
            done += n;
            if (!wait_all) break;
            continue;
        }
        if (done > 0 && !wait_all) break;
        // The next frame, complete, at cbuf_[cpos_].
        auto need = [&](size_t bytes) -> Result<bool> {
            if (cend_ - cpos_ >= bytes) return true;
            if (kOpenBuffer - cpos_ < bytes) {
                std::memmove(cbuf_.get(), cbuf_.get() + cpos_, cend_ - cpos_);
                cend_ -= cpos_;
                cpos_ = 0;
            }
            while (cend_ - cpos_ < bytes) {
                size_t n = US_TRY(recv_raw(cbuf_.get() + cend_, kOpenBuffer - cend_, false));
                if (n == 0) return false;
                cend_ += n;
            }
            return true;
        };
        bool have = US_TRY(need(kFrameHeaderBytes));
        if (!have) {
            if (cend_ == cpos_) return done; // closed between frames
            return make_error(Errc::system, "peer " + peer_ + " closed the connection in the middle of a frame");
        }
        uint32_t plain;
        std::memcpy(&plain, cbuf_.get() + cpos_, 4);
        if (plain == 0 || plain > kMaxFramePlain) {
            recv_broken_ = true;
            return make_error(Errc::invalid_input, "link authentication failed: peer " + peer_ + " sent a frame of " +
                                                       std::to_string(plain) + " bytes, outside 1 .. " +
                                                       std::to_string(kMaxFramePlain) + " (not a sealed stream)");
        }
        size_t frame = plain + kFrameOverhead;
        if (!US_TRY(need(frame)))
            return make_error(Errc::system, "peer " + peer_ + " closed the connection in the middle of a frame (" +
                                                std::to_string(cend_ - cpos_) + " of " + std::to_string(frame) + " bytes)");
        bool direct = len - done >= plain;
        auto opened = rx_->open({cbuf_.get() + cpos_, frame}, direct ? to + done : pbuf_.get());
        if (!opened) {
            recv_broken_ = true;
            return std::move(opened.error()).wrap("link authentication failed: from peer " + peer_);
        }
        cpos_ += frame;
        if (cpos_ == cend_) cpos_ = cend_ = 0;
        if (direct) {
            done += plain;
            if (!wait_all) break;
        } else {
            ppos_ = 0;
            pend_ = plain;
        }
    }
    return done;
}

Result<size_t> Connection::recv_raw(uint8_t* to, size_t len, bool wait_all) {
    auto deadline_passed = [&] {
        recv_timed_out_ = true;
        return make_error(Errc::timeout, "receiving from " + peer_ + ": its deadline passed");
    };
    auto left = recv_deadline_ ? *recv_deadline_ - std::chrono::steady_clock::now() : std::chrono::nanoseconds::zero();
    if (recv_deadline_ && left <= std::chrono::nanoseconds::zero()) return deadline_passed();
    std::array<int, 2> res{};
    unsigned requests = 1;
    __kernel_timespec ts{};
    io_uring_sqe* recv = recv_ring_->sqe(0);
    io_uring_prep_recv(recv, fd_.get(), to, std::min(len, kMaxRecvBytes), wait_all ? MSG_WAITALL : 0);
    if (recv_deadline_) {
        ts = to_timespec(left);
        recv->flags |= IOSQE_IO_LINK;
        io_uring_prep_link_timeout(recv_ring_->sqe(1), &ts, 0);
        requests = 2;
    }
    US_TRYV(recv_ring_->run({res.data(), requests}));
    if (shut_.load(std::memory_order_relaxed)) return closed_error("receiving from");
    if (res[0] > 0) return static_cast<size_t>(res[0]); // bytes that came before a deadline count
    if (requests == 2 && res[1] == -ETIME) return deadline_passed();
    if (res[0] < 0) return from_cqe(res[0], "receiving from " + peer_);
    return size_t{0};
}

void Connection::set_receive_deadline(std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::lock_guard lock(recv_mutex_);
    recv_deadline_ = deadline;
}

Result<void> Connection::recv_usable() const {
    if (shut_.load(std::memory_order_relaxed)) return closed_error("receiving from");
    if (recv_timed_out_)
        return make_error(Errc::state, "receiving from " + peer_ + ": an earlier receive ended at its deadline");
    if (recv_broken_)
        return make_error(Errc::state, "receiving from " + peer_ + ": the stream lost its framing at an invalid record or frame");
    return {};
}

// Makes `bytes` bytes available at rbuf_[rpos_]; record_size only words the error.
Result<void> Connection::fill(size_t bytes, size_t record_size) {
    if (rend_ - rpos_ >= bytes) return {};
    if (rcap_ - rpos_ < bytes) {
        std::memmove(rbuf_.get(), rbuf_.get() + rpos_, rend_ - rpos_);
        rend_ -= rpos_;
        rpos_ = 0;
    }
    while (rend_ - rpos_ < bytes) {
        size_t n = US_TRY(recv_some(rbuf_.get() + rend_, rcap_ - rend_, false));
        if (n == 0) return peer_closed(rend_ - rpos_, record_size);
        rend_ += n;
    }
    return {};
}

// Receives straight into out, after what the buffer held was consumed by the caller.
Result<void> Connection::recv_direct(std::span<uint8_t> out, size_t record_size) {
    size_t done = 0;
    while (done < out.size()) {
        size_t n = US_TRY(recv_some(out.data() + done, out.size() - done, true));
        if (n == 0) return peer_closed(record_size - (out.size() - done), record_size);
        done += n;
    }
    return {};
}

Result<Record> Connection::recv_record() {
    std::lock_guard lock(recv_mutex_);
    US_TRYV(recv_usable());
    US_TRYV(fill(sizeof(RecordHeader), sizeof(RecordHeader)));
    RecordHeader h;
    std::memcpy(&h, rbuf_.get() + rpos_, sizeof h);
    auto invalid = [&](const std::string& why) {
        recv_broken_ = true;
        return make_error(Errc::invalid_input, "peer " + peer_ + " sent a record (type " + std::to_string(h.type) + ", " +
                                                   std::to_string(h.length) + " bytes) " + why);
    };
    if (h.length > kMaxRecordLength) return invalid("over the limit of " + std::to_string(kMaxRecordLength) + " bytes");
    size_t padded = h.length + padding_of(h.length), total = sizeof h + padded;

    Record r{h.type, {}};
    size_t missing = total - std::min(total, rend_ - rpos_);
    if (missing < kDirectRecvBytes && total <= rcap_ / 2) {
        US_TRYV(fill(total, total));
        const uint8_t* body = rbuf_.get() + rpos_ + sizeof h;
        r.body.assign(body, body + h.length);
        bool zero_pad = std::all_of(body + h.length, body + padded, [](uint8_t b) { return b == 0; });
        rpos_ += total;
        if (!zero_pad) return invalid("with non-zero padding");
    } else {
        rpos_ += sizeof h;
        r.body.resize(padded);
        size_t from_buf = std::min(padded, rend_ - rpos_);
        std::memcpy(r.body.data(), rbuf_.get() + rpos_, from_buf);
        rpos_ += from_buf;
        US_TRYV(recv_direct(std::span(r.body).subspan(from_buf), total));
        if (!std::all_of(r.body.begin() + h.length, r.body.end(), [](uint8_t b) { return b == 0; }))
            return invalid("with non-zero padding");
        r.body.resize(h.length);
    }
    if (rpos_ == rend_) rpos_ = rend_ = 0;
    if (checksum64(r.body) != h.checksum) return invalid("that fails its checksum");
    return r;
}

Result<void> Connection::recv_exact(std::span<uint8_t> out) {
    std::lock_guard lock(recv_mutex_);
    US_TRYV(recv_usable());
    size_t have = rend_ - rpos_;
    if (out.size() <= have || (out.size() - have < kDirectRecvBytes && out.size() <= rcap_ / 2)) {
        US_TRYV(fill(out.size(), out.size()));
        std::memcpy(out.data(), rbuf_.get() + rpos_, out.size());
        rpos_ += out.size();
    } else {
        std::memcpy(out.data(), rbuf_.get() + rpos_, have);
        rpos_ += have;
        US_TRYV(recv_direct(out.subspan(have), out.size()));
    }
    if (rpos_ == rend_) rpos_ = rend_ = 0;
    return {};
}

Result<void> Connection::start_encryption(std::unique_ptr<FrameCipher> tx, std::unique_ptr<FrameCipher> rx) {
    std::scoped_lock lock(send_mutex_, recv_mutex_);
    if (tx_ || rx_) return make_error(Errc::state, "the connection to " + peer_ + " is already encrypted");
    if (rpos_ != rend_)
        return make_error(Errc::invalid_input, "peer " + peer_ + " sent " + std::to_string(rend_ - rpos_) +
                                                   " bytes in clear after the link handshake");
    rpos_ = rend_ = 0;
    sbuf_ = std::make_unique_for_overwrite<uint8_t[]>(kSealBatch);
    cbuf_ = std::make_unique_for_overwrite<uint8_t[]>(kOpenBuffer);
    pbuf_ = std::make_unique_for_overwrite<uint8_t[]>(kMaxFramePlain);
    tx_ = std::move(tx);
    rx_ = std::move(rx);
    return {};
}

bool Connection::finish_sending(std::chrono::milliseconds limit) {
    if (shut_.load(std::memory_order_relaxed)) return false;
    ::shutdown(fd_.get(), SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    // SIOCOUTQ: bytes not yet acknowledged by the peer, the FIN included.
    for (int unacked = 1;;) {
        if (shut_.load(std::memory_order_relaxed) || ::ioctl(fd_.get(), SIOCOUTQ, &unacked) < 0) return false;
        if (unacked == 0) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void Connection::shutdown() {
    if (!shut_.exchange(true)) ::shutdown(fd_.get(), SHUT_RDWR); // wakes blocked ring requests
}

// ---- connect / listen / accept ----

namespace {
// A connected socket and its two rings (the sender's may come from connect()).
Result<std::unique_ptr<Connection>> finish_connection(UniqueFd fd, std::string peer, const TransportOptions& o,
                                                      std::unique_ptr<Ring> send_ring) {
    US_TRYV(configure_socket(fd.get(), o, peer));
    if (!send_ring) send_ring = US_TRY(Ring::create(std::max(o.ring_entries, kMaxSendSqes)));
    auto recv_ring = US_TRY(Ring::create(4));
    return std::make_unique<Connection>(
        Connection::Parts{std::move(fd), std::move(peer), o, std::move(send_ring), std::move(recv_ring)});
}
} // namespace

Result<std::unique_ptr<Connection>> Connection::connect(const Endpoint& to, std::chrono::milliseconds timeout,
                                                        const TransportOptions& options) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto addrs = US_TRY(resolve(to, false));
    Error last = make_error(Errc::not_found, "connecting to " + to.str() + ": no address");
    for (addrinfo* ai = addrs.get(); ai; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
        if (!fd.valid()) {
            last = sys_error("creating a socket for " + to.str());
            continue;
        }
        auto ring = US_TRY(Ring::create(std::max(options.ring_entries, kMaxSendSqes)));
        __kernel_timespec ts = to_timespec(deadline - std::chrono::steady_clock::now());
        io_uring_sqe* c = ring->sqe(0);
        io_uring_prep_connect(c, fd.get(), ai->ai_addr, ai->ai_addrlen);
        c->flags |= IOSQE_IO_LINK;
        io_uring_prep_link_timeout(ring->sqe(1), &ts, 0);
        std::array<int, 2> res{};
        US_TRYV(ring->run(res));
        if (res[0] == 0) {
            sockaddr_storage ss{};
            std::memcpy(&ss, ai->ai_addr, std::min<size_t>(ai->ai_addrlen, sizeof ss));
            return finish_connection(std::move(fd), sockaddr_str(ss), options, std::move(ring));
        }
        if (res[1] == -ETIME)
            return make_error(Errc::timeout, "connecting to " + to.str() + ": no answer within " +
                                                 std::to_string(timeout.count()) + " ms");
        last = from_cqe(res[0], "connecting to " + to.str());
    }
    return last;
}

Listener::Listener(UniqueFd fd, std::unique_ptr<Ring> ring, Endpoint local, TransportOptions options)
    : fd_(std::move(fd)), ring_(std::move(ring)), local_(std::move(local)), options_(options) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Result<Listener> Listener::listen(const Endpoint& at, const TransportOptions& options) {
    auto addrs = US_TRY(resolve(at, true));
    Error last = make_error(Errc::not_found, "listening on " + at.str() + ": no address");
    for (addrinfo* ai = addrs.get(); ai; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
        if (!fd.valid()) {
            last = sys_error("creating a socket for " + at.str());
            continue;
        }
        int one = 1;
        if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
            return sys_error("SO_REUSEADDR on " + at.str());
        if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0) {
            last = sys_error("binding " + at.str());
            continue;
        }
        if (::listen(fd.get(), SOMAXCONN) < 0) return sys_error("listening on " + at.str());
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0) return sys_error("getsockname " + at.str());
        Endpoint local = at;
        local.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                                                    : reinterpret_cast<sockaddr_in&>(ss).sin_port);
        auto ring = US_TRY(Ring::create(4));
        return Listener(std::move(fd), std::move(ring), std::move(local), options);
    }
    return last;
}

Result<std::unique_ptr<Connection>> Listener::accept(std::chrono::milliseconds timeout) {
    if (!fd_.valid()) return make_error(Errc::state, "accepting on " + local_.str() + ": the listener is closed");
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    __kernel_timespec ts = to_timespec(timeout);
    io_uring_sqe* a = ring_->sqe(0);
    io_uring_prep_accept(a, fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    a->flags |= IOSQE_IO_LINK;
    io_uring_prep_link_timeout(ring_->sqe(1), &ts, 0);
    std::array<int, 2> res{};
    US_TRYV(ring_->run(res));
    if (res[0] >= 0) return finish_connection(UniqueFd(res[0]), sockaddr_str(ss), options_, nullptr);
    // interrupt() shut the socket down: a listening socket then accepts nothing (EINVAL).
    if (res[0] == -EINVAL) return make_error(Errc::state, "accepting on " + local_.str() + ": the listener was stopped");
    if (res[1] == -ETIME)
        return make_error(Errc::timeout, "accepting on " + local_.str() + ": nobody connected within " +
                                             std::to_string(timeout.count()) + " ms");
    return from_cqe(res[0], "accepting on " + local_.str());
}

void Listener::interrupt() {
    // On Linux, shutting a listening socket down wakes its pending accepts with EINVAL.
    if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

void Listener::close() {
    fd_.reset();
    ring_.reset();
}

} // namespace understudy::replicator
