#include "replicator/backup.hpp"

#include <cstring>

#include "common/log.hpp"

namespace understudy::replicator {

Result<std::unique_ptr<BackupServer>> BackupServer::listen(const Endpoint& at, BackupHooks hooks, BackupConfig cfg) {
    US_TRYV(replicator::validate(cfg.heartbeat));
    US_TRYV(validate(cfg.security));
    auto l = US_TRY(Listener::listen(at));
    return std::unique_ptr<BackupServer>(new BackupServer(std::move(l), std::move(hooks), cfg));
}

uint64_t BackupServer::sessions_started() const {
    std::lock_guard lock(mu_);
    return sessions_started_;
}

bool BackupServer::replica_current() const {
    std::lock_guard lock(mu_);
    return sessions_started_ > 0 && replica_ && replica_->has_committed() && replica_->committed_session_id() == session_id_;
}

HeartbeatStats BackupServer::heartbeats() const {
    std::lock_guard lock(mu_);
    return heartbeat_ ? heartbeat_->stats() : HeartbeatStats{};
}

void BackupServer::stop() {
    std::lock_guard lock(mu_);
    stopped_ = true;
    listener_.interrupt();
    if (current_) current_->shutdown();
}

Result<SessionEnd> BackupServer::serve_one(std::chrono::milliseconds accept_timeout) {
    auto accepted = US_TRY(listener_.accept(accept_timeout));
    Connection& conn = *accepted;
    const Deadline established_by = std::chrono::steady_clock::now() + cfg_.handshake_timeout;
    conn.set_receive_deadline(established_by);
    uint64_t sessions_before;
    {
        std::lock_guard lock(mu_);
        if (stopped_) return make_error(Errc::state, "the backup is stopping");
        current_ = &conn;
        sessions_before = sessions_started_;
        peer_failure_.reset();
        handover_.reset();
    }
    StreamHeader h;
    Result<void> r;
    // Mutual authentication first: nothing from this peer reaches the replica before it
    // proved that it holds the key.
    if (cfg_.security.enabled()) {
        auto channel = secure_server(conn, *cfg_.security.key);
        if (!channel) r = std::move(channel.error());
        else if (*channel != LinkChannel::stream)
            r = make_error(Errc::invalid_input, "a control connection from " + conn.peer() + " arrived without a session");
    }
    if (r) r = conn.recv_exact({reinterpret_cast<uint8_t*>(&h), sizeof h});
    auto magic = std::span<const uint8_t, 8>(reinterpret_cast<const uint8_t*>(h.magic), 8);
    if (r && is_control_magic(magic))
        r = make_error(Errc::invalid_input, "a control connection from " + conn.peer() + " arrived without a session");
    if (r && !cfg_.security.enabled() && is_link_hello_magic(magic)) {
        (void)conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(kMismatchBackupDisabled),
                                          std::strlen(kMismatchBackupDisabled)});
        r = make_error(Errc::invalid_input, "link security mismatch: the primary at " + conn.peer() +
                                                " requires link security and this backup has it disabled");
    }
    if (r) r = run_session(conn, h, established_by);
    std::unique_ptr<HeartbeatLink> link;
    std::optional<uint64_t> handover;
    bool established;
    {
        std::lock_guard lock(mu_);
        current_ = nullptr;
        link = std::move(heartbeat_);
        handover = handover_;
        established = sessions_started_ != sessions_before;
    }
    if (!established) {
        if (link) link->stop();
        Error why = r ? make_error(Errc::state, "the connection ended") : std::move(r.error());
        if (why.code == Errc::timeout) why = std::move(why).wrap("no session within the handshake timeout of " +
                                                                 std::to_string(cfg_.handshake_timeout.count()) + " ms");
        log::warn("backup: a connection from {} ended before a session began: {}", conn.peer(), why.describe());
        return why;
    }
    if (handover && link) {
        // The stream was shut down here when the HANDOVER arrived, which ended run_session.
        // Take over only from exactly the checkpoint the primary names, with nothing half
        // received; otherwise say why, as invalid input, which no backup promotes on.
        const auto differs = replica_ ? replica_->known_difference() : std::nullopt;
        if (replica_ && replica_->has_committed() && !replica_->receiving() && replica_->committed_epoch() == *handover &&
            !differs) {
            if (link->accept_handover(*handover)) return SessionEnd::handover;
            // The primary may not have the answer: it cannot tell whether this backup runs
            // the VM, and stops its own. Taking over now could make two; a state error is
            // no failed primary, so no promotion follows.
            return make_error(Errc::state, "the answer to the primary's handover at checkpoint " + std::to_string(*handover) +
                                               " could not be delivered; not taking over");
        }
        std::string here = !replica_ || !replica_->has_committed() ? "no checkpoint is committed here"
                           : replica_->receiving() ? "a checkpoint was still arriving"
                           : differs               ? *differs
                                                   : "checkpoint " + std::to_string(replica_->committed_epoch()) + " is committed here";
        r = make_error(Errc::invalid_input,
                       "the primary asked to hand over at checkpoint " + std::to_string(*handover) + ", but " + here);
        link->goodbye(); // an explicit no: the primary runs on instead of wondering whether this backup took over
    }
    // A primary that stops on purpose may cut short the checkpoint it was sending; its
    // GOODBYE still makes the end orderly (that checkpoint is discarded, as at any end).
    if (!r && r.error().code == Errc::system && link && !handover &&
        link->wait_end(cfg_.heartbeat.timeout) == LinkEnd::goodbye) {
        log::info("backup: the primary stopped replicating while a checkpoint arrived ({}); that checkpoint is discarded",
                  r.error().describe());
        r = {};
    }
    // With a control connection, only a GOODBYE makes a closed stream an orderly end: a
    // primary that dies also closes its sockets. The GOODBYE travels on the other
    // connection, so it may still be on its way.
    if (r && link && link->wait_end(cfg_.heartbeat.timeout) != LinkEnd::goodbye)
        r = make_error(Errc::system, "the primary closed the stream without a goodbye");
    {
        std::lock_guard lock(mu_);
        // A silent primary, not the shut-down socket that followed, is why the session broke;
        // but a stream found corrupt or forged (invalid input) is the reason, whatever the
        // control connection did afterwards.
        if (!r && peer_failure_ && r.error().code != Errc::invalid_input) r = *peer_failure_;
    }
    if (link) link->stop();
    if (replica_) replica_->abort_open_checkpoint();
    if (!r) return r.error();
    return SessionEnd::goodbye;
}

// The control connection comes second, after the primary saw the ACCEPT. A heartbeat
// failure shuts the checkpoint stream down: a checkpoint in the middle of arriving is
// then discarded, and the committed one stays.
Result<void> BackupServer::open_control(Connection& data, uint64_t session_id, Deadline established_by) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(established_by - std::chrono::steady_clock::now());
    auto accepted = listener_.accept(std::max(left, std::chrono::milliseconds(1)));
    if (!accepted) return std::move(accepted.error()).wrap("waiting for the control connection");
    auto conn = std::move(*accepted);
    conn->set_receive_deadline(established_by);
    if (cfg_.security.enabled()) {
        auto channel = secure_server(*conn, *cfg_.security.key);
        if (!channel) return std::move(channel.error()).wrap("control connection");
        if (*channel != LinkChannel::control)
            return make_error(Errc::invalid_input, "control connection: " + conn->peer() + " opened a second checkpoint stream");
    }
    ControlHello hello;
    US_TRYV(conn->recv_exact({reinterpret_cast<uint8_t*>(&hello), sizeof hello}));
    US_TRYV(check_control_hello(hello, session_id));
    conn->set_receive_deadline(std::nullopt); // from here the heartbeats tell a silent primary
    HeartbeatLink::OnHandover on_handover;
    if (cfg_.accept_handover)
        // The stream's reader is woken by the shutdown and finds the request (serve_one).
        on_handover = [this, &data](uint64_t epoch) {
            if (hooks_.on_handover) hooks_.on_handover(epoch);
            std::lock_guard lock(mu_);
            handover_ = epoch;
            data.shutdown();
        };
    auto link = US_TRY(HeartbeatLink::start(
        std::move(conn), cfg_.heartbeat,
        [this, &data](Error e) {
            std::lock_guard lock(mu_);
            peer_failure_ = std::move(e).wrap("primary");
            data.shutdown();
        },
        std::move(on_handover)));
    std::lock_guard lock(mu_);
    heartbeat_ = std::move(link);
    return {};
}

Result<void> BackupServer::run_session(Connection& conn, const StreamHeader& h, Deadline established_by) {
    if (hooks_.on_receive) hooks_.on_receive({reinterpret_cast<const uint8_t*>(&h), sizeof h}, true);
    std::vector<uint8_t> framed; // for on_receive
    auto accepted = [&]() -> Result<void> {
        US_TRYV(check_stream_header(h));
        std::vector<DiskInfo> disks;
        if (h.disks > 0) { // the DISKS record follows the header
            auto rec = US_TRY(conn.recv_record());
            if (hooks_.on_receive) {
                append_record(framed, rec.type, rec.body);
                hooks_.on_receive(framed, false);
            }
            if (rec.type != kDisks)
                return make_error(Errc::invalid_input, std::string("replication stream: a ") + record_type_name(rec.type) +
                                                           " record where the DISKS record belongs");
            disks = US_TRY(decode_disks(rec.body, h.disks));
        }
        // Nothing committed yet: a primary of another shape gets a replica of its own.
        if (replica_ && !replica_->has_committed() && !replica_->fits(h)) replica_.reset();
        if (!replica_) {
            std::unique_ptr<DiskReplica> files;
            if (!cfg_.disks.paths.empty()) files = US_TRY(DiskReplica::open(cfg_.disks));
            replica_ = US_TRY(BackupReplica::create(h.memory_bytes, h.vcpus, std::move(files)));
        }
        return replica_->begin_session(h, disks);
    }();
    if (!accepted) {
        std::string why = accepted.error().message;
        (void)conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(why.data()), why.size()});
        return accepted;
    }
    US_TRYV(conn.send_record(kAccept, encode_u64s({replica_->committed_epoch()})));
    {
        std::lock_guard lock(mu_);
        ++sessions_started_;
        session_id_ = h.session_id;
    }
    verify_pass_.reset();
    if (h.flags & kStreamFlagControl) US_TRYV(open_control(conn, h.session_id, established_by));
    // Established: a primary silent from here is found by its heartbeats (or, without a
    // control connection, by TCP keepalive), not by a deadline on the stream.
    conn.set_receive_deadline(std::nullopt);
    log::info("backup: primary {} connected ({} MiB, {} vCPUs, {} disks, {}, {})", conn.peer(), h.memory_bytes >> 20, h.vcpus, h.disks,
              heartbeat_ ? "heartbeats on a control connection" : "no control connection",
              conn.encrypted() ? "link authenticated and encrypted" : "link security disabled");
    for (;;) {
        auto rec = conn.recv_record();
        if (!rec) {
            // Between checkpoints a close is an orderly end; inside one it tore the stream.
            if (rec.error().code == Errc::system && !replica_->receiving()) return {};
            // A corrupt or forged record: tell the primary why (its direction still works).
            if (rec.error().code == Errc::invalid_input) {
                std::string why = rec.error().message;
                if (conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(why.data()), why.size()}))
                    conn.finish_sending(std::chrono::milliseconds(1000));
            }
            return std::move(rec.error()).wrap(replica_->receiving() ? "stream torn inside a checkpoint" : "session");
        }
        if (hooks_.on_receive) {
            // recv_record checked the length bound, zero padding and checksum, so framing
            // the record again yields exactly the bytes that arrived.
            framed.clear();
            append_record(framed, rec->type, rec->body);
            hooks_.on_receive(framed, false);
        }
        if (rec->type == kVerify) {
            if (auto answered = answer_verify(conn, *rec); !answered) {
                if (answered.error().code != Errc::invalid_input) return {}; // the connection ended: as for an ACK
                std::string why = answered.error().message;
                if (conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(why.data()), why.size()}))
                    conn.finish_sending(std::chrono::milliseconds(1000));
                return answered;
            }
            continue;
        }
        auto committed = replica_->feed(*rec);
        if (auto reply = replica_->take_reply(); reply && committed)
            if (auto sent = conn.send_record(reply->type, reply->body); !sent)
                return std::move(sent.error()).wrap("answering the primary's disk digests");
        if (!committed) {
            std::string why = committed.error().message;
            if (conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(why.data()), why.size()}))
                conn.finish_sending(std::chrono::milliseconds(1000));
            return committed.error();
        }
        if (*committed) {
            if (hooks_.on_commit) hooks_.on_commit(**committed, *replica_);
            // A primary that stopped (or died) right after sending its last checkpoint has
            // closed the connection: like a close between checkpoints, the checkpoint
            // stays committed and the GOODBYE, or its absence, tells which it was.
            if (auto sent = conn.send_record(kAck, encode_u64s({**committed})); !sent) {
                if (sent.error().code == Errc::system) return {};
                return sent;
            }
        }
    }
}

Result<void> BackupServer::answer_verify(Connection& conn, const Record& r) {
    if (replica_->receiving())
        return make_error(Errc::invalid_input, "replication stream: VERIFY inside checkpoint (it follows a CHECKPOINT_END)");
    auto slice = US_TRY(decode_verify(r.body, replica_->memory().page_count(), replica_->vcpus()));
    auto outcome = replica_->verify(slice);
    US_TRYV(conn.send_record(kVerifyResult, encode_verify_result(outcome)));
    if (!verify_pass_ || verify_pass_->pass != slice.pass) verify_pass_ = VerifyReport{.pass = slice.pass};
    verify_pass_->add(outcome);
    if (!verify_pass_->complete) return {};
    auto report = std::move(*verify_pass_);
    verify_pass_.reset();
    if (report.matches()) log::info("backup: {}", report.describe());
    else log::error("backup: {}", report.describe());
    if (hooks_.on_verified) hooks_.on_verified(report);
    return {};
}

} // namespace understudy::replicator
