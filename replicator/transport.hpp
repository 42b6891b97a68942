// The replication transport: TCP through io_uring, carrying common/records.hpp records.
//
// Blocking and small on purpose. A connection is used by at most one sender thread and
// one receiver thread at a time, concurrently; each direction has its own io_uring, so
// the two never share a ring or a lock. Nothing is global: a heartbeat (control)
// connection never waits behind a checkpoint on a data connection.
//
// send() gathers all buffers into as few IORING_OP_SENDMSG submissions as possible
// (1024 iovecs each, linked) and resubmits the rest after a short send. recv_record()
// receives into an internal buffer with IORING_OP_RECV and parses records out of it,
// so a run of small records costs one system call, while a large record body is
// received straight into its own storage (also a recv_exact or a record still missing
// 64 KiB or more: the copy out of the buffer would cost more than the calls it saves).
//
// Zero-copy send (IORING_OP_SENDMSG_ZC, waiting for its notification before send()
// returns) was measured and left out. Loopback, 2 GiB per run, median of 7 runs, two
// sessions, MiB/s for SENDMSG vs SENDMSG_ZC (vs a blocking send() loop):
//   64 KiB batches   4090 / 3696  vs 3372 / 2954   (send() 4316 / 3571)
//   256 KiB          4067 / 4258  vs 4714 / 4607   (send() 3655 / 4316)
//   1 MiB            2875 / 2563  vs 1320 / 2430   (send() 2736 / 2827)
//   4 MiB            2453 / 2376  vs 1059 / 1131   (send() 2223 / 2227)
// Zero-copy won only at 256 KiB (+8..16 %) and lost up to 55 % at the 1-4 MiB batches
// that checkpoints are made of, with more CPU per GiB (0.65 vs 0.39 s at 4 MiB): the
// kernel still copies on local delivery and pays for pinning and notifications. A
// real NIC may change this; measure there before bringing it back.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/records.hpp"
#include "common/unique_fd.hpp"

struct iovec;

namespace understudy::replicator {

struct Endpoint {
    std::string host; // IPv4/IPv6 literal or a name; "[v6]" brackets are stripped by parse()
    uint16_t port = 0;

    // "HOST:PORT" or "[V6ADDR]:PORT".
    static Result<Endpoint> parse(const std::string& text);
    std::string str() const;
};

struct TransportOptions {
    size_t recv_buffer_bytes = 1u << 20; // records whose framed size fits in half of it are parsed from it
    unsigned ring_entries = 32;          // per ring; a send uses up to 8 SQEs per round
    int socket_buffer_bytes = 0;         // SO_SNDBUF/SO_RCVBUF; 0 keeps the kernel's autotuning
    // A peer whose host vanished without a reset (power loss, a cut link) fails this
    // connection within about this long even where no heartbeat runs: TCP keepalive probes
    // an idle connection, and TCP_USER_TIMEOUT ends one whose sent bytes go unacknowledged.
    // A slow peer that answers zero-window probes is not failed (Linux 5.11 and later).
    std::chrono::seconds dead_peer_timeout{30}; // 3 s .. 1 h
};

// The header that send_record() puts before body, for callers that gather several
// records into one send(): {header, body, record_padding(body.size())} per record.
RecordHeader record_header(uint32_t type, std::span<const uint8_t> body);
// 0..7 zero bytes that pad a body of `body_length` bytes to a multiple of 8.
std::span<const uint8_t> record_padding(size_t body_length);

// Fault injection for drills (`understudy drill corrupt-link`, docs/status.md): a
// connection given a BitFlip (Connection::set_bit_flip) flips, once per arm, one bit in
// the middle of the bytes its next send puts on the wire (after sealing when the link is
// encrypted), so that the peer's own checks (the frame's GCM tag, the record checksum)
// must catch it. Its owner (the primary's protection) arms it; connections without one
// never flip.
class BitFlip {
public:
    void arm() { armed_.store(true); }
    // Takes back an arm that no send used yet; true if there was one.
    bool disarm() { return armed_.exchange(false); }
    // Flips done so far.
    uint64_t done() const { return done_.load(); }
    // The connection's side: true, once per arm, when this send is to be corrupted.
    bool take() {
        if (!armed_.exchange(false)) return false;
        done_.fetch_add(1);
        return true;
    }

private:
    std::atomic<bool> armed_{false};
    std::atomic<uint64_t> done_{0};
};

class Ring;        // io_uring owner, transport.cpp
class FrameCipher; // replicator/link_cipher.hpp

class Connection {
public:
    static Result<std::unique_ptr<Connection>> connect(const Endpoint& to, std::chrono::milliseconds timeout,
                                                       const TransportOptions& options = {});
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Sends all buffers in order as one gather; returns when the kernel has taken every
    // byte (the buffers may then be reused).
    Result<void> send(std::span<const std::span<const uint8_t>> buffers);
    // Frames body as one record (header, body, zero padding) and sends it.
    Result<void> send_record(uint32_t type, std::span<const uint8_t> body);

    // Blocks for one record; verifies the length bound, the zero padding and the
    // checksum. A malformed record is Errc::invalid_input and leaves the receive side
    // unusable (Errc::state afterwards): the stream has lost its framing. A peer that
    // closes is Errc::system, "peer ... closed the connection".
    Result<Record> recv_record();
    // Blocks for exactly out.size() bytes (fixed headers before the records).
    Result<void> recv_exact(std::span<uint8_t> out);
    // Receives wait at most until `deadline` (handshakes: a peer that connects and says
    // nothing must not hold a session slot); std::nullopt, the default, waits without one
    // (an established session is watched by its heartbeats instead). A receive that the
    // deadline ends is Errc::timeout and leaves the receive side unusable (Errc::state
    // afterwards), since it may have stopped inside a record. Not during a receive.
    void set_receive_deadline(std::optional<std::chrono::steady_clock::time_point> deadline);

    // Wakes a send or receive blocked in another thread with an error and fails every
    // later one (Errc::state). Idempotent; the socket stays open until destruction.
    void shutdown();
    // After a last record (REJECT, GOODBYE, HANDOVER_ACCEPT): stops sending, so that the
    // peer reads an end after it, and waits up to `limit` until the peer's TCP has
    // acknowledged every byte. Closing a socket with unread input resets the connection,
    // which drops whatever is still queued here; what the peer received stays readable
    // there. Other threads may go on receiving meanwhile. True when the peer's TCP
    // acknowledged everything within `limit`.
    bool finish_sending(std::chrono::milliseconds limit);
    std::string peer() const { return peer_; }
    // Bytes the kernel has taken from send() so far (the peer's progress, seen from here).
    uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
    // The socket, for inspecting its options (tests); never read from or written to.
    int native_handle() const { return fd_.get(); }

    // Link security (replicator/link_security.hpp runs the handshake, then calls this):
    // from here on every byte sent is sealed into AES-256-GCM frames by `tx`, and every
    // byte received must arrive in frames that `rx` opens. Fails if bytes that arrived
    // in clear are still unread. Before any sender or receiver thread uses the connection.
    Result<void> start_encryption(std::unique_ptr<FrameCipher> tx, std::unique_ptr<FrameCipher> rx);
    bool encrypted() const { return tx_ != nullptr; }
    // Lets `flip` corrupt this connection's sends (a primary's checkpoint stream).
    // Before any sender thread uses the connection.
    void set_bit_flip(std::shared_ptr<BitFlip> flip) { flip_ = std::move(flip); }

    // Opaque construction from an accepted or connected socket.
    struct Parts;
    explicit Connection(Parts&& parts);

private:
    Error closed_error(const char* doing) const;
    Error peer_closed(size_t have, size_t want) const;
    Result<void> send_iov();
    Result<void> send_sealed(std::span<const std::span<const uint8_t>> buffers, bool flip);
    void flip_in_iov(); // BitFlip: one bit in the middle of iov_, through flip_byte_
    // Plaintext: from the socket, or opened from frames when encrypted.
    Result<size_t> recv_some(uint8_t* to, size_t len, bool wait_all);
    Result<size_t> recv_raw(uint8_t* to, size_t len, bool wait_all);
    Result<size_t> recv_frames(uint8_t* to, size_t len, bool wait_all);
    Result<void> fill(size_t bytes, size_t record_size);
    Result<void> recv_direct(std::span<uint8_t> out, size_t record_size);
    Result<void> recv_usable() const; // the checks every receive starts with

    UniqueFd fd_;
    std::string peer_;
    std::atomic<bool> shut_{false};
    std::atomic<uint64_t> bytes_sent_{0};

    std::mutex send_mutex_; // only guards against misuse; one sender thread is the contract
    std::unique_ptr<Ring> send_ring_;
    std::vector<struct iovec> iov_;
    std::unique_ptr<FrameCipher> tx_;  // sealed sends when set
    std::unique_ptr<uint8_t[]> sbuf_;  // sealed frames on their way out
    std::vector<std::span<const uint8_t>> pieces_; // one frame's plaintext pieces
    std::shared_ptr<BitFlip> flip_; // set_bit_flip(); null for every connection a drill does not corrupt
    uint8_t flip_byte_ = 0;    // the flipped copy of one plaintext byte (the caller's buffers stay intact)

    std::mutex recv_mutex_;
    std::unique_ptr<Ring> recv_ring_;
    std::unique_ptr<uint8_t[]> rbuf_;
    size_t rcap_ = 0, rpos_ = 0, rend_ = 0;
    bool recv_broken_ = false;    // an invalid record or frame: the framing is lost
    bool recv_timed_out_ = false; // set_receive_deadline() ended a receive, maybe inside a record
    std::optional<std::chrono::steady_clock::time_point> recv_deadline_;
    std::unique_ptr<FrameCipher> rx_;  // frames opened on receipt when set
    std::unique_ptr<uint8_t[]> cbuf_;  // received frames, not yet opened
    size_t cpos_ = 0, cend_ = 0;
    std::unique_ptr<uint8_t[]> pbuf_;  // an opened frame's plaintext the caller has not taken
    size_t ppos_ = 0, pend_ = 0;
};

class Listener {
public:
    // Port 0 lets the kernel choose; local() tells which.
    static Result<Listener> listen(const Endpoint& at, const TransportOptions& options = {});
    Listener(Listener&&) noexcept;
    Listener& operator=(Listener&&) noexcept;
    ~Listener();

    Endpoint local() const { return local_; }
    // Errc::timeout when nobody connects within `timeout`.
    Result<std::unique_ptr<Connection>> accept(std::chrono::milliseconds timeout);
    // From any thread: a pending accept() returns at once (Errc::state), and so does
    // every later one.
    void interrupt();
    void close();

private:
    Listener(UniqueFd fd, std::unique_ptr<Ring> ring, Endpoint local, TransportOptions options);
    UniqueFd fd_;
    std::unique_ptr<Ring> ring_;
    Endpoint local_;
    TransportOptions options_;
};

} // namespace understudy::replicator
