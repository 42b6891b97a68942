#include "replicator/control_link.hpp"

#include <fmt/format.h>

#include <cstring>
#include <mutex>

#include "common/codec.hpp"
#include "common/log.hpp"
#include "common/thread_priority.hpp"
#include "replicator/wire.hpp"

namespace understudy::replicator {

using namespace std::chrono;

namespace {
constexpr char kControlMagic[8] = {'U', 'S', 'C', 'T', 'R', 'L', '\r', '\n'};

// How long a last record (GOODBYE, HANDOVER_ACCEPT) may take to reach the peer.
constexpr milliseconds kLastRecordLimit{1000};

double ms(replicator::Clock::duration d) { return duration<double, std::milli>(d).count(); }

// Heartbeat threads run at a low real-time priority where allowed (as corosync's do): on a
// host whose cores are busy with the guest and the checkpoint stream, a normal thread
// waited up to 130 ms for a core, a real-time one about 40 ms, the host's own stalls
// (bench/bench_heartbeat). They do little and sleep between heartbeats. Without the
// privilege (CAP_SYS_NICE or RLIMIT_RTPRIO) they run at normal priority, said once.
void raise_to_realtime() {
    int rc = set_thread_realtime(kHeartbeatPriority);
    static std::once_flag told;
    if (rc != 0)
        std::call_once(told, [rc] {
            log::warn("heartbeats: normal thread priority ({}): real-time priority needs CAP_SYS_NICE or RLIMIT_RTPRIO; on a busy "
                      "host raise --failure-timeout-ms", std::strerror(rc));
        });
}
} // namespace

ControlHello make_control_hello(uint64_t session_id, const replicator::DetectorConfig& cfg) {
    ControlHello h{};
    std::memcpy(h.magic, kControlMagic, 8);
    h.version = kControlVersion;
    h.session_id = session_id;
    h.heartbeat_interval_ns = static_cast<uint64_t>(duration_cast<nanoseconds>(cfg.heartbeat_interval).count());
    h.timeout_ns = static_cast<uint64_t>(duration_cast<nanoseconds>(cfg.timeout).count());
    return h;
}

bool is_control_magic(std::span<const uint8_t, 8> magic) { return std::memcmp(magic.data(), kControlMagic, 8) == 0; }

Result<void> check_control_hello(const ControlHello& h, uint64_t session_id) {
    auto bad = [](const std::string& why) { return make_error(Errc::invalid_input, "control connection: " + why); };
    if (std::memcmp(h.magic, kControlMagic, 8) != 0) return bad("bad magic");
    if (h.version != kControlVersion) return bad("format version " + std::to_string(h.version) + " is not supported");
    if (h.flags != 0) return bad("unknown flags " + std::to_string(h.flags));
    for (uint64_t r : h.reserved)
        if (r != 0) return bad("a reserved field is not zero");
    if (h.session_id != session_id) return bad("it names another session than the checkpoint stream");
    return {};
}

Result<std::unique_ptr<HeartbeatLink>> HeartbeatLink::start(std::unique_ptr<Connection> conn,
                                                            replicator::DetectorConfig cfg, OnFailure on_failure,
                                                            OnHandover on_handover) {
    auto det = US_TRY(replicator::FailureDetector::create(cfg));
    std::unique_ptr<HeartbeatLink> l(
        new HeartbeatLink(std::move(conn), std::move(det), std::move(on_failure), std::move(on_handover)));
    l->sender_ = std::thread([raw = l.get()] {
        raise_to_realtime();
        raw->sender_main();
    });
    l->receiver_ = std::thread([raw = l.get()] {
        raise_to_realtime();
        raw->receiver_main();
    });
    l->watcher_ = std::thread([raw = l.get()] {
        raise_to_realtime();
        raw->watch_main();
    });
    return l;
}

HeartbeatLink::HeartbeatLink(std::unique_ptr<Connection> conn, replicator::FailureDetector det, OnFailure on_failure,
                             OnHandover on_handover)
    : conn_(std::move(conn)), on_failure_(std::move(on_failure)), on_handover_(std::move(on_handover)),
      detector_(std::move(det)),
      started_(replicator::Clock::now()) {
    // The start counts as a first heartbeat: a peer that never sends one is failed
    // after one timeout, like a peer that falls silent.
    detector_.heartbeat(started_);
    last_received_ = started_;
}

HeartbeatLink::~HeartbeatLink() { stop(); }

void HeartbeatLink::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    conn_->shutdown();
    // on_failure runs on one of these threads and must not destroy the link (documented);
    // joining from there would deadlock, so that case is refused loudly instead.
    for (auto* t : {&sender_, &receiver_, &watcher_})
        if (t->joinable() && t->get_id() != std::this_thread::get_id()) t->join();
}

void HeartbeatLink::goodbye() { (void)end_with(kGoodbye, {}); }

bool HeartbeatLink::accept_handover(uint64_t epoch) { return end_with(kHandoverAccept, encode_u64s({epoch})); }

bool HeartbeatLink::end_with(uint32_t type, std::vector<uint8_t> body) {
    {
        std::lock_guard lock(mu_);
        if (stopping_ || failed_) return false;
        last_record_.emplace(type, std::move(body));
    }
    cv_.notify_all();
    if (sender_.joinable() && sender_.get_id() != std::this_thread::get_id()) sender_.join();
    bool sent;
    {
        std::lock_guard lock(mu_);
        sent = last_record_sent_;
    }
    // Until the peer has the record: closing with its heartbeats unread would reset the
    // connection and could drop the record on its way (a lost GOODBYE makes a backup take
    // a stopped primary for a dead one).
    const bool delivered = sent && conn_->finish_sending(kLastRecordLimit);
    stop();
    return delivered;
}

HeartbeatLink::HandoverAnswer HeartbeatLink::request_handover(uint64_t epoch, std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    if (failed_ || stopping_) return HandoverAnswer::failed;
    handover_accepted_.reset();
    handover_requested_ = epoch;
    outgoing_ = encode_u64s({epoch});
    cv_.notify_all();
    lock.unlock();
    return await_handover(epoch, limit);
}

HeartbeatLink::HandoverAnswer HeartbeatLink::await_handover(uint64_t epoch, std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, limit, [&] { return handover_accepted_ || heard_goodbye_ || failed_ || stopping_; });
    if (handover_accepted_ && *handover_accepted_ == epoch) return HandoverAnswer::accepted;
    if (heard_goodbye_ && !handover_accepted_) return HandoverAnswer::refused;
    if (handover_accepted_) { // an answer for another checkpoint: the backup holds something else
        lock.unlock();
        declare_failed(make_error(Errc::invalid_input, fmt::format("the backup accepted a handover at checkpoint {}, "
                                                                   "not at {}", *handover_accepted_, epoch)));
        return HandoverAnswer::failed;
    }
    return failed_ || stopping_ ? HandoverAnswer::failed : HandoverAnswer::unanswered;
}

LinkEnd HeartbeatLink::wait_end(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, limit, [&] { return heard_goodbye_ || failed_ || stopping_; });
    if (heard_goodbye_) return LinkEnd::goodbye;
    if (failed_) return LinkEnd::failed;
    return stopping_ ? LinkEnd::stopped : LinkEnd::running;
}

HeartbeatStats HeartbeatLink::stats() const {
    std::lock_guard lock(mu_);
    return stats_;
}

replicator::PeerState HeartbeatLink::peer_state() const {
    std::lock_guard lock(mu_);
    return failed_ ? replicator::PeerState::failed : replicator::PeerState::alive;
}

void HeartbeatLink::declare_failed(Error e) {
    {
        std::lock_guard lock(mu_);
        if (failed_ || stopping_ || heard_goodbye_ || last_record_) return; // ending on purpose
        failed_ = true;
    }
    cv_.notify_all();
    conn_->shutdown();
    if (on_failure_) on_failure_(std::move(e));
}

void HeartbeatLink::watch_main() {
    const auto interval = detector_.config().heartbeat_interval;
    std::unique_lock lock(mu_);
    auto tick = replicator::Clock::now();
    while (!cv_.wait_for(lock, interval, [&] { return stopping_ || failed_ || last_record_ || heard_goodbye_; })) {
        auto now = replicator::Clock::now();
        // Woken more than an interval late: this host stalled (seen here: 100 ms with every
        // thread, real-time ones too, during a 4 GiB synchronization). The peer's
        // heartbeats of that time may be unread in the socket; the stall is not its silence.
        auto stall = now - tick - interval;
        tick = now;
        if (stall > interval) {
            detector_.discount_stall(stall, now);
            if (stall >= detector_.config().timeout / 2) {
                lock.unlock();
                log::warn("heartbeats: this host stalled for {:.0f} ms; that time is not counted as {}'s silence",
                          ms(stall), conn_->peer());
                lock.lock();
            }
        }
        if (detector_.state(now) != replicator::PeerState::failed) continue;
        auto silent = now - last_received_;
        lock.unlock();
        declare_failed(make_error(Errc::timeout, fmt::format("no heartbeat from {} for {:.0f} ms (timeout {} ms)",
                                                             conn_->peer(), ms(silent), detector_.config().timeout.count())));
        return;
    }
}

void HeartbeatLink::sender_main() {
    const auto interval = detector_.config().heartbeat_interval;
    auto next = replicator::Clock::now();
    for (uint64_t seq = 1;; ++seq) {
        auto now = replicator::Clock::now();
        auto body = encode_u64s({seq, static_cast<uint64_t>(duration_cast<nanoseconds>(now.time_since_epoch()).count())});
        if (auto r = conn_->send_record(kHeartbeat, body); !r) {
            declare_failed(std::move(r.error()).wrap("sending a heartbeat"));
            return;
        }
        std::unique_lock lock(mu_);
        ++stats_.sent;
        next += interval;
        if (next < now) next = now; // after a stall, keep the rhythm instead of bursting
        for (;;) {
            cv_.wait_until(lock, next, [&] { return stopping_ || failed_ || last_record_ || outgoing_; });
            if (last_record_) {
                auto [type, last] = std::move(*last_record_);
                lock.unlock();
                const bool sent = conn_->send_record(type, last).has_value();
                lock.lock();
                last_record_sent_ = sent;
                return;
            }
            if (stopping_ || failed_) return;
            if (!outgoing_) break; // time for the next heartbeat
            auto handover = std::move(*outgoing_);
            outgoing_.reset();
            lock.unlock();
            if (auto r = conn_->send_record(kHandover, handover); !r) {
                declare_failed(std::move(r.error()).wrap("sending HANDOVER"));
                return;
            }
            lock.lock();
        }
    }
}

void HeartbeatLink::receiver_main() {
    for (;;) {
        auto rec = conn_->recv_record();
        if (!rec) {
            declare_failed(std::move(rec.error()).wrap("the control connection"));
            return;
        }
        if (rec->type == kGoodbye) {
            {
                std::lock_guard lock(mu_);
                heard_goodbye_ = true;
            }
            cv_.notify_all();
            return;
        }
        if (rec->type == kHandover || rec->type == kHandoverAccept) {
            Decoder d(rec->body, record_type_name(rec->type));
            auto epoch = d.u64();
            if (!epoch || rec->body.size() != 8) {
                declare_failed(make_error(Errc::invalid_input, std::string("control connection: malformed ") +
                                                                   record_type_name(rec->type)));
                return;
            }
            if (rec->type == kHandover) {
                if (on_handover_) on_handover_(*epoch);
                continue;
            }
            {
                std::lock_guard lock(mu_);
                if (!handover_requested_) continue; // unasked for: skipped, as optional records are
                handover_accepted_ = *epoch;
                // The backup ends the session now: its close is no failure. An answer naming
                // another checkpoint is one (await_handover declares it).
                heard_goodbye_ = *epoch == *handover_requested_;
            }
            cv_.notify_all();
            return;
        }
        if (rec->type != kHeartbeat) {
            if (rec->type & kRecordOptional) continue;
            declare_failed(make_error(Errc::invalid_input, std::string("control connection: unexpected ") +
                                                               record_type_name(rec->type) + " record"));
            return;
        }
        Decoder d(rec->body, "HEARTBEAT");
        auto seq = d.u64();
        auto clock = seq ? d.u64() : seq;
        if (!clock || rec->body.size() != 16) {
            declare_failed(make_error(Errc::invalid_input, "control connection: malformed HEARTBEAT"));
            return;
        }
        auto now = replicator::Clock::now();
        std::lock_guard lock(mu_);
        if (stats_.received > 0)
            stats_.max_gap_ns = std::max<uint64_t>(stats_.max_gap_ns, duration_cast<nanoseconds>(now - last_received_).count());
        last_received_ = now;
        ++stats_.received;
        detector_.heartbeat(now);
    }
}

} // namespace understudy::replicator
