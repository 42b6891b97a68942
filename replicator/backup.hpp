// The backup's network side: accepts a primary, checks its stream header, feeds the
// records to the BackupReplica, ACKs each committed checkpoint. A session that breaks
// (primary gone, bad stream) ends with the reason; the committed replica stays, ready
// for the next session or for promotion.
#pragma once

#include <functional>
#include <memory>

#include "replicator/failure_detector.hpp"
#include "replicator/backup_replica.hpp"
#include "replicator/control_link.hpp"
#include "replicator/link_security.hpp"
#include "replicator/transport.hpp"

namespace understudy::replicator {

struct BackupHooks {
    // After each commit, before the ACK (tests compare the replica with the primary).
    std::function<void(uint64_t epoch, const BackupReplica&)> on_commit;
    // Every byte received from the primary, as received (`backup --capture`): the 64-byte
    // stream header (session_start, before it is checked), then each record that passed
    // its framing checks, before the replica sees it.
    std::function<void(std::span<const uint8_t> bytes, bool session_start)> on_receive;
    // A primary asks to hand over at `epoch` (BackupConfig::accept_handover), on the control
    // connection's thread, before the stream stops for the answer: time spent here delays
    // the answer (tests make it late this way).
    std::function<void(uint64_t epoch)> on_handover;
    // A verification pass completed here (the primary gets the same verdict).
    std::function<void(const VerifyReport&)> on_verified;
};

struct BackupConfig {
    replicator::DetectorConfig heartbeat; // for primaries that open a control connection
    // Planned switchover: answer a primary's HANDOVER (only a backup that will promote
    // may; otherwise the request goes unanswered and the primary runs on).
    bool accept_handover = false;
    // From accepting a connection until its session is established (link handshake,
    // stream header, the control connection and its hello): a peer that connects and
    // stalls is dropped after this, without counting as a session.
    std::chrono::milliseconds handshake_timeout{5000};
    // Every connection runs the link handshake first (required by default: give a key).
    LinkSecurity security;
    // The backup's copies of the primary's disks (no paths: the primary may have none).
    DiskReplicaConfig disks;
};

// How a session that went well ended.
enum class SessionEnd {
    goodbye,  // the primary stopped replicating on purpose
    handover, // planned switchover: this backup accepted to take over from its committed checkpoint
};

class BackupServer {
public:
    static Result<std::unique_ptr<BackupServer>> listen(const Endpoint& at, BackupHooks hooks = {},
                                                        BackupConfig cfg = {});
    Endpoint local() const { return listener_.local(); }

    // Serves one primary, from accept until its stream ends. Ok when the primary ended
    // the session on purpose: it closed the stream between checkpoints and, with a
    // control connection, said GOODBYE on it first; or it handed over (the caller
    // promotes at once). An Error says what broke the session (a primary silent on the
    // control connection for longer than the timeout is Errc::timeout); that is when a
    // backup takes over, but only if the session was established (sessions_started()
    // grew) and its own checkpoint is committed (replica_current()). A connection that
    // ends before that is logged and returns its reason too.
    Result<SessionEnd> serve_one(std::chrono::milliseconds accept_timeout);
    // Ends a session in progress and refuses new ones.
    void stop();

    // The replica, once a first session has told its shape.
    const BackupReplica* replica() const { return replica_.get(); }
    // Promotion: the replica leaves the server (a later session starts a new one).
    std::unique_ptr<BackupReplica> take_replica() { return std::move(replica_); }

    // Sessions established so far (a primary that authenticated and whose stream header
    // was accepted): serve_one() returned without one when this is unchanged. Connections
    // that end before (a port probe, a peer without the key, one that says nothing within
    // the handshake timeout) are logged and never count: no promotion follows them.
    uint64_t sessions_started() const;
    // The committed replica is the last established session's own checkpoint: only then
    // may the loss of that session lead to a promotion (a session that failed before its
    // first commit leaves an earlier session's checkpoint, which its primary has run past).
    bool replica_current() const;
    // Heartbeats of the current or last session's control connection.
    HeartbeatStats heartbeats() const;

private:
    BackupServer(Listener l, BackupHooks h, BackupConfig c)
        : listener_(std::move(l)), hooks_(std::move(h)), cfg_(c) {}
    using Deadline = std::chrono::steady_clock::time_point;
    Result<void> run_session(Connection& conn, const StreamHeader& h, Deadline established_by);
    Result<void> open_control(Connection& data, uint64_t session_id, Deadline established_by);
    // A VERIFY record: compares, answers, reports a completed pass.
    Result<void> answer_verify(Connection& conn, const Record& r);

    Listener listener_;
    BackupHooks hooks_;
    BackupConfig cfg_;
    std::unique_ptr<HeartbeatLink> heartbeat_;
    std::optional<Error> peer_failure_; // guarded by mu_
    std::optional<uint64_t> handover_;  // the epoch a HANDOVER named; guarded by mu_
    std::unique_ptr<BackupReplica> replica_;
    mutable std::mutex mu_;
    Connection* current_ = nullptr;
    uint64_t sessions_started_ = 0;
    uint64_t session_id_ = 0; // the last established session's
    std::optional<VerifyReport> verify_pass_; // the pass being checked, this session
    bool stopped_ = false;
};

} // namespace understudy::replicator
