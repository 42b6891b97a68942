// The primary's epoch engine (Remus): synchronize the backup while the guest runs, then
// every epoch pause the vCPUs, harvest the dirty set, capture state, copy the changed
// pages, resume; encode and send while the next epoch runs; count a checkpoint safe
// when the backup ACKs it. At most `max_in_flight` checkpoints are unacknowledged;
// beyond that the next pause waits (the epoch lengthens) instead of buffering more.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "common/prefault.hpp"
#include "hv/checkpointable.hpp"
#include "replicator/control_link.hpp"
#include "replicator/disk_records.hpp"
#include "replicator/failure_detector.hpp"
#include "replicator/handover_state.hpp"
#include "replicator/link_security.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/transport.hpp"
#include "replicator/verification.hpp"

namespace understudy::replicator {

struct WriterStats;
class CheckpointWriter;

struct PrimaryConfig {
    std::chrono::microseconds epoch{25000}; // 1 ms .. 10 s
    unsigned max_in_flight = 3;
    uint64_t cache_pages = 16384; // last-sent page copies kept for XOR deltas (64 MiB)
    size_t batch_pages = 1024;    // pages per PAGES record
    bool in_epoch_copy = true;    // harvest and copy at mid-epoch too, to shorten the pause
    bool realtime_epoch = true;   // the epoch thread at SCHED_FIFO kCheckpointPriority where allowed
    unsigned max_sync_rounds = 8; // pre-copy rounds of the initial synchronization
    replicator::DetectorConfig heartbeat; // on the control connection, when there is one
    // Both connections run the link handshake first (required by default: give a key).
    LinkSecurity security;
    // From start() until the session is established (link handshakes, the backup's
    // ACCEPT, the control hello): a backup that accepts but never answers, for example
    // one busy with another primary's session, fails replication after this.
    std::chrono::milliseconds handshake_timeout{5000};
    // While a checkpoint waits for its ACK, a backup that neither acknowledges one nor
    // takes a byte of the stream for this long has failed, even if it heartbeats (a stuck
    // disk under --capture, a bug): the primary says GOODBYE on the control connection,
    // so that the backup keeps its checkpoint and does not promote, and replication fails.
    std::chrono::milliseconds ack_timeout{10000};
    // Online verification (replicator/verification.hpp). While a pass runs, each
    // checkpoint's pause takes the digests of this many pages (and of the state): the
    // bound on what verification adds to a pause (bench/bench_pause measures it).
    uint32_t verify_pages_per_checkpoint = 1024;
    // A pass starts by itself this long after the previous one started (0: only on
    // request, verify()).
    std::chrono::seconds verify_interval{600};
    // A pass that finds pages different has the next checkpoint carry every page (a full
    // resync, copied while the guest runs, none encoded against the backup's copy), which
    // puts the replica right.
    bool resync_on_mismatch = true;
};
Result<void> validate(const PrimaryConfig& c);

// One epoch's figures, complete once the backup acknowledged it.
struct EpochFigures {
    uint64_t epoch = 0;
    uint64_t pause_ns = 0;        // vCPUs stopped: the sum of the five parts below, about
    uint64_t stop_ns = 0;         //   until every vCPU is out of KVM_RUN
    uint64_t harvest_ns = 0;      //   dirty-set harvest
    uint64_t state_ns = 0;        //   vCPU, VM and device state capture
    uint64_t copy_ns = 0;         //   copying the pages dirtied since the last harvest
    uint64_t verify_ns = 0;       //   verification digests, while a pass runs
    uint64_t dirty_pages = 0;     // distinct pages in the checkpoint
    uint64_t disk_blocks = 0;     // distinct disk blocks in the checkpoint
    uint64_t copied_at_pause = 0; // of those, copied while paused
    uint64_t raw_bytes = 0;
    uint64_t wire_bytes = 0;
    uint64_t encode_ns = 0;
    uint64_t transmit_ns = 0;
    uint64_t ack_ns = 0; // from resume to ACK
    CodecStats codec;
};

// What the initial synchronization sent of one disk (Primary::disk_sync()).
struct DiskSyncFigures {
    uint64_t chunks = 0;           // of 256 KiB, compared with the backup's copy
    uint64_t chunks_differing = 0; // sent (as blocks, or as a zero range for a hole)
    uint64_t bytes_sent = 0;       // block bytes sent for them
};

struct SyncProgress {
    unsigned round = 0;
    uint64_t bytes_sent = 0;  // raw page bytes sent so far, and disk bytes compared with the backup's copies
    uint64_t bytes_total = 0; // guest memory plus the disks' sizes
    uint64_t pages_this_round = 0;
    double rate_bytes_per_s = 0;
};

struct PrimaryHooks {
    // While paused, right after capture (tests record the state to compare with the backup).
    std::function<void(uint64_t epoch, hv::Checkpointable&)> on_capture;
    std::function<void(const SyncProgress&)> on_sync_progress;
    std::function<void(const EpochFigures&)> on_acked;
    // Once, from the thread that found it, when replication fails (not on stop()): the
    // caller can release what it held for the backup at once.
    std::function<void(const Error&)> on_failure;
    // A verification pass completed (or went unanswered), from the receiving thread.
    std::function<void(const VerifyReport&)> on_verified;
    // Tests only: alters a checkpoint after its verification digests were taken and
    // before it is sent (a page left out, a wrong register), to prove that a pass finds it.
    std::function<void(uint64_t epoch, std::vector<uint64_t>& indices, PrefaultedBuffer& pages, hv::VmState& state)> tamper;
};

// Online verification so far (Primary::verification()).
struct VerifyTotals {
    uint64_t passes = 0;     // completed, whatever their verdict
    uint64_t mismatches = 0; // of those, found a difference
    uint64_t resyncs = 0;    // full resyncs sent after a mismatch
    std::optional<VerifyReport> last;
    bool backup_verifies = true; // false once a pass went unanswered
};

class Primary {
public:
    // The VM must be started. Returns once the threads run; the initial synchronization
    // proceeds in the background (protected() turns true when its checkpoint is ACKed).
    // `control`, a second connection to the same backup, carries heartbeats: without
    // one, a backup that hangs without closing its socket is only noticed through
    // backpressure.
    static Result<std::unique_ptr<Primary>> start(hv::Checkpointable& vm, std::unique_ptr<Connection> conn, PrimaryConfig cfg,
                                                  PrimaryHooks hooks = {}, std::unique_ptr<Connection> control = nullptr);
    ~Primary();

    // Ends replication; the VM keeps running.
    void stop();
    // Output-triggered checkpoints: end the current epoch by `deadline` rather than at
    // its full length (the guest's output waits for the next ACK). Earlier requests win;
    // the request is consumed by the next checkpoint. Safe from any thread.
    void request_checkpoint(std::chrono::steady_clock::time_point deadline);
    // Blocks until replication ends; an error says why it failed (backup lost, ...).
    Result<void> wait();

    // Planned switchover (docs/failover.md): at once the guest pauses, a last checkpoint
    // goes out and is acknowledged (its output released through on_acked), `check` may
    // still refuse (output that could not be released), and the backup is asked to take
    // over from that checkpoint, waiting up to `answer_limit` for its answer. Accepted:
    // returns the checkpoint; replication ends without a GOODBYE and the VM stays paused
    // for the caller to end. Otherwise the guest resumes and an error says why: still
    // protected if the backup did not answer, unprotected (failure()) if it failed.
    // A backup may still accept a request it did not answer in time: see late_handover().
    Result<uint64_t> hand_over(std::function<Result<void>()> check, std::chrono::milliseconds answer_limit);
    bool handed_over() const;
    // Set when the backup accepted a HANDOVER after hand_over() stopped waiting for it: the
    // checkpoint it took over from. The guest ran on here since, its output held (nothing
    // after that checkpoint was acknowledged); replication has ended, and the VM must now
    // stop as after a handover, its held output dropped.
    std::optional<uint64_t> late_handover() const;
    // The backup had the request (it shut the stream) but neither accepted nor refused
    // within the grace: this host cannot tell whether the backup runs the VM. The VM is
    // left paused, replication has ended; the caller stops the VM (exit 6).
    std::optional<uint64_t> handover_uncertain() const;
    // Runs `fn` at a checkpoint taken now, while the vCPUs are paused and right after that
    // checkpoint's state was captured (`understudy snapshot` of a protected VM: the file
    // then holds exactly checkpoint N). Its time counts in that checkpoint's pause.
    // Returns N once `fn` ran; an error if replication ends first.
    Result<uint64_t> while_paused(std::function<void(hv::Checkpointable&)> fn);
    // Online verification: starts a pass at the next checkpoint, or joins the one under
    // way; returns its number. Its report comes through on_verified and verification().
    // Fails once replication has ended, or when the backup does not verify.
    Result<uint64_t> verify();
    VerifyTotals verification() const;

    bool is_protected() const { return acked_.load() > 0; }
    // Why replication failed, once it has.
    std::optional<Error> failure() const;
    uint64_t acked_epoch() const { return acked_.load(); }
    // This session's id (the stream header's), which the backup's replica records.
    uint64_t session_id() const { return session_id_; }
    std::vector<EpochFigures> recent_epochs() const;
    // Per disk, once the initial synchronization compared it.
    std::vector<DiskSyncFigures> disk_sync() const;
    // Heartbeats on the control connection (all zero without one).
    HeartbeatStats heartbeats() const;

private:
    struct Checkpoint;
    Primary(hv::Checkpointable& vm, std::unique_ptr<Connection> conn, PrimaryConfig cfg, PrimaryHooks hooks, PageEncoder enc);
    void control_main();
    void sender_main();
    void receiver_main();
    Result<void> handshake();       // handshake_steps() within cfg_.handshake_timeout
    Result<void> handshake_steps();
    Result<void> initial_sync();
    Result<void> epoch_loop();
    // With `everything`, every page (a full resync), not only those harvested as dirty.
    // Returns the number of pages copied.
    Result<uint64_t> copy_while_running(bool everything = false);
    // Pauses the VM and captures; `paused` (a while_paused() request) runs while paused,
    // after the capture, and so do the digests of `verify` (a slice planned for it). With
    // `resume` false (a handover's last checkpoint) the VM stays paused unless the
    // capture failed.
    Result<std::unique_ptr<Checkpoint>> capture(uint64_t epoch, bool resume = true,
                                                const std::function<void(hv::Checkpointable&)>& paused = nullptr,
                                                std::optional<VerifySlice> verify = std::nullopt);
    // The verification slice checkpoint `epoch` carries, if a pass runs or is due.
    std::optional<VerifySlice> plan_verify_slice_locked(uint64_t epoch);
    // A VERIFY_RESULT from the backup; an error fails replication.
    Result<void> take_verify_result(const Record& r);
    // An ACK of `epoch`: a slice of an earlier checkpoint still unanswered never will be
    // (the backup answers a slice before it acknowledges the next checkpoint).
    void verify_acked_locked(uint64_t epoch, std::vector<VerifyReport>& to_report);
    void report_verified(const std::vector<VerifyReport>& reports);
    // A completed pass: counted, logged, reported through on_verified (outside the lock).
    void finish_pass_locked(VerifyReport report, std::vector<VerifyReport>& to_report);
    // The epoch loop's half of hand_over() once checkpoint `epoch` is queued; true when
    // the backup took over.
    bool finish_handover(uint64_t epoch);
    // A handover transition this code makes only where the phase allows it: a refusal is
    // a bug, logged.
    void handover_step_locked(HandoverEvent e, uint64_t epoch = 0, std::chrono::milliseconds grace = {});
    // Checkpoint buffers are reused: growing fresh ones costs page faults in the pause.
    std::unique_ptr<Checkpoint> take_buffer();
    void return_buffer(std::unique_ptr<Checkpoint> cp);
    void copy_dirty(Checkpoint& cp, const Bitmap& dirty);
    // While the guest runs: room in cp for `pages` more pages (at least a minimum),
    // allocated and faulted in, so that the pause's copy neither reallocates nor faults.
    void make_room(Checkpoint& cp, uint64_t pages);
    // The largest checkpoint buffer kept for reuse.
    size_t kept_buffer_bytes() const;
    // Harvests each disk's written blocks and reads them into cp (or, without cp, only
    // restarts the tracking).
    Result<void> copy_disk_blocks(Checkpoint* cp);
    // The initial synchronization's comparison of the disks with the backup's copies.
    Result<void> sync_disks(CheckpointWriter& w, const std::function<void(uint64_t bytes)>& progress);
    void fail(Error e);
    // After an unanswered HANDOVER, a failure may be the backup taking over late (it shuts
    // the stream first, then answers): waits for the control connection's verdict. True
    // when the backup accepted; the failure is then none.
    bool late_answer_decides();

    hv::Checkpointable& vm_;
    std::unique_ptr<Connection> conn_;
    std::unique_ptr<Connection> control_conn_; // until handshake() hands it to heartbeat_
    std::unique_ptr<HeartbeatLink> heartbeat_;
    PrimaryConfig cfg_;
    PrimaryHooks hooks_;
    PageEncoder encoder_;
    uint64_t session_id_;

    std::atomic<bool> stopping_{false};
    std::atomic<uint64_t> acked_{0};
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Checkpoint>> to_send_;
    // Checkpoints captured but not yet both sent and acknowledged, in epoch order. The
    // figures are complete (and reported) only once both have happened.
    struct InFlight {
        EpochFigures f;
        bool sent = false;
        bool acked = false;
    };
    std::deque<InFlight> in_flight_;
    size_t unacked_locked() const;
    // cfg_.ack_timeout: the error when the backup made no progress for that long.
    std::optional<Error> backup_stalled_locked();
    std::pair<uint64_t, uint64_t> progress_seen_{0, 0}; // acked epoch, stream bytes sent
    std::chrono::steady_clock::time_point progress_at_{};
    // Moves finished checkpoints' figures to done_ and returns them for on_acked.
    std::vector<EpochFigures> retire_locked();
    void record_sent(uint64_t epoch, const WriterStats& ws);
    // Runs on_acked for checkpoints retire_locked() returned (counted in reporting_).
    void report_acked(const std::vector<EpochFigures>& figures);
    std::deque<EpochFigures> done_;      // recent ACKed epochs
    std::optional<Error> error_;
    bool finished_ = false;
    std::optional<std::chrono::steady_clock::time_point> early_end_; // request_checkpoint()
    // on_acked hooks running outside the lock: a handover waits for them (output released).
    unsigned reporting_ = 0;
    HandoverState handover_; // guarded by mu_
    struct HandoverRequest {
        std::function<Result<void>()> check;
        std::chrono::milliseconds answer_limit;
        std::optional<Result<uint64_t>> outcome;
    };
    std::optional<HandoverRequest> handover_request_; // hand_over() waiting for its outcome
    struct PausedRequest {
        std::function<void(hv::Checkpointable&)> fn;
        std::optional<uint64_t> done_at; // the checkpoint it ran at
    };
    std::optional<PausedRequest> paused_request_; // while_paused() waiting
    struct Verification {
        uint64_t next_pass = 1;
        std::optional<uint64_t> running; // slices still to be planned
        uint64_t next_page = 0;
        bool requested = false;
        std::chrono::steady_clock::time_point next_scheduled{};
        struct Sent {
            uint64_t epoch, pass, first_page;
            uint32_t page_count, flags;
        };
        std::deque<Sent> awaiting; // slices not answered yet, in order
        std::map<uint64_t, VerifyReport> assembling;        // by pass
        bool resync = false; // the next epoch sends every page
        VerifyTotals totals;
    } verify_; // guarded by mu_
    bool stream_ended_ = false;            // the receiver saw the checkpoint stream end
    bool control_done_ = false;            // control_main() returned

    Bitmap dirty_;
    std::vector<hv::ReplicatedDisk*> disks_; // the VM's, fixed for the session
    std::vector<Bitmap> disk_written_;       // per disk: scratch for a harvest
    std::vector<uint8_t> disk_read_;         // scratch for a run of blocks
    std::deque<DiskWant> disk_wants_;        // from the receiver; guarded by mu_
    std::vector<DiskSyncFigures> disk_sync_; // guarded by mu_
    std::vector<int32_t> slot_of_page_; // page index -> slot in the checkpoint being built
    uint64_t last_round_pages_ = 0;      // copied by the last in-epoch round or pause
    std::atomic<uint64_t> last_checkpoint_pages_{0}; // in the last checkpoint (not a resync)
    std::atomic<uint64_t> peak_checkpoint_pages_{0}; // the recent largest, decaying (kPeakDecay)
    std::unique_ptr<Checkpoint> building_;
    std::vector<std::unique_ptr<Checkpoint>> spare_; // guarded by mu_

    std::thread control_, sender_, receiver_;
};

} // namespace understudy::replicator
