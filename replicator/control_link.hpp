// The control connection: a second TCP connection beside the checkpoint stream that
// carries HEARTBEAT records both ways, so liveness never waits behind a checkpoint
// that is being sent (docs/wire-format.md, "Control connection"). Each side feeds what
// it hears into a replicator::FailureDetector and reports the peer failed once, when the
// peer stays silent longer than the timeout or closes the connection.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "replicator/failure_detector.hpp"
#include "replicator/transport.hpp"

namespace understudy::replicator {

// How a link ended, as seen from its side.
enum class LinkEnd { running, goodbye, failed, stopped };

// The control hello's own version (docs/wire-format.md, "Control connection"): the
// checkpoint stream's version changes without it.
inline constexpr uint32_t kControlVersion = 1;

// Sent by the primary as the first 64 bytes of the control connection.
struct ControlHello {
    char magic[8];                  // 0: "USCTRL\r\n"
    uint32_t version;               // 8: kControlVersion
    uint32_t flags;                 // 12: 0
    uint64_t session_id;            // 16: the stream header's session_id
    uint64_t heartbeat_interval_ns; // 24: the primary's interval (informative)
    uint64_t timeout_ns;            // 32: the primary's failure timeout (informative)
    uint64_t reserved[3];           // 40: 0
};
static_assert(std::is_standard_layout_v<ControlHello> && sizeof(ControlHello) == 64);

ControlHello make_control_hello(uint64_t session_id, const replicator::DetectorConfig& cfg);
// Checks magic, version, flags, reserved fields, and that it names `session_id`.
Result<void> check_control_hello(const ControlHello& h, uint64_t session_id);
// The first 8 bytes tell a control connection from a checkpoint stream.
bool is_control_magic(std::span<const uint8_t, 8> magic);

struct HeartbeatStats {
    uint64_t sent = 0;
    uint64_t received = 0;
    uint64_t max_gap_ns = 0; // longest silence between two heartbeats received
};

class HeartbeatLink {
public:
    // Called once, from the link's own thread, when the peer is declared failed.
    using OnFailure = std::function<void(Error)>;
    // Backup: called from the link's thread when the primary asks to hand over at `epoch`.
    // Without one, a HANDOVER is skipped like any optional record (no answer).
    using OnHandover = std::function<void(uint64_t epoch)>;

    // Starts sending at once; the detector arms with the first heartbeat received, so a
    // peer that never sends one is failed after `timeout` from start as well.
    static Result<std::unique_ptr<HeartbeatLink>> start(std::unique_ptr<Connection> conn,
                                                        replicator::DetectorConfig cfg, OnFailure on_failure,
                                                        OnHandover on_handover = nullptr);
    ~HeartbeatLink();
    HeartbeatLink(const HeartbeatLink&) = delete;
    HeartbeatLink& operator=(const HeartbeatLink&) = delete;

    // Stops both threads without reporting a failure. Idempotent.
    void stop();
    // Tells the peer that the session ends on purpose (a GOODBYE record), then stops.
    // A peer that hears it does not report a failure when the connections close.
    void goodbye();
    // Waits up to `limit` for the link to end (goodbye heard, failure, or stop).
    LinkEnd wait_end(std::chrono::milliseconds limit);

    // Planned switchover (docs/wire-format.md, "Handover"). Primary: sends HANDOVER(epoch)
    // and waits up to `limit` for the backup's HANDOVER_ACCEPT; heartbeats go on meanwhile.
    // Once accepted, the connection closing is no failure. A backup that will not take
    // over says GOODBYE instead (refused).
    enum class HandoverAnswer { accepted, refused, unanswered, failed };
    HandoverAnswer request_handover(uint64_t epoch, std::chrono::milliseconds limit);
    // Waits up to `limit` more for the answer to the request above.
    HandoverAnswer await_handover(uint64_t epoch, std::chrono::milliseconds limit);
    // Backup: answers HANDOVER_ACCEPT(epoch) as the link's last record, then stops. True
    // once the primary's TCP has acknowledged it; false when it may not have arrived, and
    // then the backup must not take over (the primary cannot tell, and stops its VM).
    [[nodiscard]] bool accept_handover(uint64_t epoch);
    HeartbeatStats stats() const;
    replicator::PeerState peer_state() const;

private:
    HeartbeatLink(std::unique_ptr<Connection> conn, replicator::FailureDetector det, OnFailure on_failure,
                  OnHandover on_handover);
    // Has the sender send `type` as its last record, waits (up to 1 s) until the peer's
    // TCP has it, then stops. True when it was sent and acknowledged.
    bool end_with(uint32_t type, std::vector<uint8_t> body);
    void sender_main();
    void receiver_main();
    // Judges the peer every heartbeat interval. Not the sender's job: a send to a peer
    // that stopped acknowledging blocks once the socket's buffer is full.
    void watch_main();
    void declare_failed(Error e);

    std::unique_ptr<Connection> conn_;
    OnFailure on_failure_;
    OnHandover on_handover_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    replicator::FailureDetector detector_;
    HeartbeatStats stats_;
    replicator::Clock::time_point started_, last_received_{};
    bool stopping_ = false;
    bool failed_ = false;
    // end_with(): the sender's last record; from then on a broken connection is no failure
    std::optional<std::pair<uint32_t, std::vector<uint8_t>>> last_record_;
    bool last_record_sent_ = false; // the sender handed it to the kernel
    std::optional<std::vector<uint8_t>> outgoing_; // a HANDOVER for the sender to send next
    std::optional<uint64_t> handover_requested_;   // the checkpoint a HANDOVER we sent named
    std::optional<uint64_t> handover_accepted_;    // the epoch the backup's HANDOVER_ACCEPT named
    bool heard_goodbye_ = false; // the peer ended the session on purpose (GOODBYE or HANDOVER_ACCEPT)
    std::thread sender_, receiver_, watcher_;
};

} // namespace understudy::replicator
