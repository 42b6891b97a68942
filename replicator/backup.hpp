// The backup's network side: accepts a primary, checks its stream header, feeds the
// records to the BackupReplica, ACKs each committed checkpoint. A session that breaks
// (primary gone, bad stream) ends with the reason; the committed replica stays, ready
// for the next session or for promotion.
#pragma once

#include <functional>
#include <memory>

#include "replicator/backup_replica.hpp"
#include "replicator/transport.hpp"

namespace understudy::replicator {

struct BackupHooks {
    // After each commit, before the ACK (tests compare the replica with the primary).
    std::function<void(uint64_t epoch, const BackupReplica&)> on_commit;
    // Every byte received from the primary, as received (`backup --capture`): the 64-byte
    // stream header (session_start, before it is checked), then each record that passed
    // its framing checks, before the replica sees it.
    std::function<void(std::span<const uint8_t> bytes, bool session_start)> on_receive;
};

class BackupServer {
public:
    static Result<std::unique_ptr<BackupServer>> listen(const Endpoint& at, BackupHooks hooks = {});
    Endpoint local() const { return listener_.local(); }

    // Serves one primary, from accept until its stream ends. Ok when the primary closed
    // the connection between checkpoints; an Error says what broke the session.
    Result<void> serve_one(std::chrono::milliseconds accept_timeout);
    // Ends a session in progress and refuses new ones.
    void stop();

    // The replica, once a first session has told its shape.
    const BackupReplica* replica() const { return replica_.get(); }

private:
    BackupServer(Listener l, BackupHooks h) : listener_(std::move(l)), hooks_(std::move(h)) {}
    Result<void> run_session(Connection& conn);

    Listener listener_;
    BackupHooks hooks_;
    std::unique_ptr<BackupReplica> replica_;
    std::mutex mu_;
    Connection* current_ = nullptr;
    bool stopped_ = false;
};

} // namespace understudy::replicator
