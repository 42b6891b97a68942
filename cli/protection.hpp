// `run --backup`: connects to the backup, starts the primary's epoch engine, and prints
// the initial synchronization's progress and one line of checkpoint figures a second.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <vector>

#include "cli/figure_summary.hpp"
#include "cli/fencing.hpp"
#include "cli/metrics.hpp"
#include "cli/network.hpp"
#include "cli/progress.hpp"
#include "hv/vm.hpp"
#include "replicator/primary.hpp"

namespace understudy::cli {

class Protection {
public:
    // With `net`, the guest's output waits for the ACK of the checkpoint that produced it,
    // and output may end an epoch early (NetOptions::output_gather_ms).
    // With `role`, output the backup lacks is released only after the role retired the
    // backup's session (so a stale backup never promotes).
    static Result<std::unique_ptr<Protection>> start(hv::Vm& vm, const std::string& backup, replicator::PrimaryConfig cfg,
                                                     GuestNetwork* net, PrimaryRole* role);
    // The figures of the checkpoints acknowledged since the last call, as one line.
    void print_window();
    // Ends replication and prints the totals; returns why it ended if it failed. Once:
    // later calls return the same.
    Result<void> finish();
    // Planned switchover (`understudy failover`): the backup takes over from a last
    // checkpoint, taken now, once no output is held here (replicator::Primary::hand_over).
    // Returns that checkpoint; the VM then stays paused and must be stopped. Otherwise the
    // VM runs on and the error says why (protected still, or unprotected).
    Result<uint64_t> hand_over(std::chrono::milliseconds answer_limit);
    // The checkpoint a backup took over from after hand_over() stopped waiting for its
    // answer (replicator::Primary::late_handover()): the VM must stop as after a handover.
    std::optional<uint64_t> late_handover() const { return primary_->late_handover(); }
    // The checkpoint of a handover whose answer never arrived, though the backup had the
    // request (replicator::Primary::handover_uncertain()): the VM must stop, exit 6.
    std::optional<uint64_t> handover_uncertain() const { return primary_->handover_uncertain(); }
    // After a handover the backup did not complete (it never took the primary role): the
    // VM is to run on here, unprotected. Records that the backup's session must never
    // promote (through `role`, the role held again) and stops holding output.
    Result<void> take_back(PrimaryRole* role);
    // The role is about to be given up (and destroyed): stop using it.
    void forget_role();
    // Runs `fn` on the paused VM at a checkpoint taken now (replicator::Primary::while_paused);
    // returns that checkpoint.
    Result<uint64_t> while_paused(std::function<void(hv::Checkpointable&)> fn) { return primary_->while_paused(std::move(fn)); }
    // Starts an online verification pass (replicator::Primary::verify); returns its number.
    Result<uint64_t> verify() { return primary_->verify(); }
    // Why replication failed, once it has. A call that sees the failure releases the
    // output held for the backup (once the role retired its session): the VM keeps
    // running, unprotected.
    std::optional<Error> failure();

private:
    void run_unprotected();

    Progress sync_progress_{"initial sync"};
    std::unique_ptr<replicator::Primary> primary_;
    SourceGuard heartbeat_source_; // reads primary_: declared after it, so it goes first
    GuestNetwork* net_ = nullptr;
    PrimaryRole* role_ = nullptr;
    std::mutex unprotect_mu_;
    bool retired_ = false;        // guarded by unprotect_mu_
    bool retire_reported_ = false;
    std::atomic<uint64_t> session_id_{0}; // set once the primary has started
    std::optional<Result<void>> finished_;
    mutable std::mutex mu_;
    FigureSummary window_, all_; // the last second's checkpoints, and the run's: constant memory
    std::chrono::steady_clock::time_point first_ack_, last_ack_;
};

} // namespace understudy::cli
