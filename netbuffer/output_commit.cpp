#include "netbuffer/output_commit.hpp"

#include "common/log.hpp"

namespace understudy::netbuffer {

Result<std::unique_ptr<OutputCommit>> OutputCommit::create(BufferLimits limits, OutputCommitHooks hooks) {
    if (!hooks.wire) return make_error(Errc::invalid_input, "output commit needs a wire to release frames to");
    auto buf = US_TRY(OutputBuffer::create(limits, hooks.wire));
    buf.set_protected(false); // until the first checkpoint is captured
    return std::unique_ptr<OutputCommit>(new OutputCommit(std::move(buf), std::move(hooks)));
}

OutputCommit::Accept OutputCommit::transmit(std::span<const uint8_t> frame) {
    std::lock_guard lock(mu_);
    auto now = Clock::now();
    auto r = buffer_.hold(epoch_, frame, now);
    if (!r) {
        // Only a frame larger than the whole buffer gets here (limits are checked at
        // creation; the device bounds frames far below them). Refusing it would stall
        // the queue forever, so it is sent as if unprotected and the breach is logged.
        log::error("netbuffer: {}; sent without holding", r.error().describe());
        hooks_.wire(frame);
        return Accept::sent_or_held;
    }
    if (*r == HoldResult::full) {
        stalled_ = true;
        return Accept::full;
    }
    if (*r == HoldResult::held && !asked_) {
        asked_ = true;
        if (hooks_.on_output) hooks_.on_output(now);
    }
    return Accept::sent_or_held;
}

void OutputCommit::captured(uint64_t epoch) {
    std::lock_guard lock(mu_);
    if (!started_) {
        started_ = true;
        buffer_.set_protected(true);
    }
    epoch_ = base_ + epoch + 1;
    asked_ = false;
}

// Runs a release step under the lock; a device stalled on a full buffer retries after it.
template <class Step>
void OutputCommit::releasing(Step step) {
    bool stalled;
    {
        std::lock_guard lock(mu_);
        step();
        stalled = std::exchange(stalled_, false);
    }
    if (stalled && hooks_.on_room) hooks_.on_room();
}

void OutputCommit::acknowledged(uint64_t epoch) {
    releasing([&] { buffer_.release_through(base_ + epoch); });
}

void OutputCommit::unprotect() {
    releasing([&] {
        started_ = true; // a later capture must not turn holding back on
        buffer_.set_protected(false);
    });
}

void OutputCommit::new_session() {
    std::lock_guard lock(mu_);
    base_ = epoch_; // every frame so far was tagged with an epoch <= this
    started_ = false;
    asked_ = false;
}

void OutputCommit::set_release_permit(OutputBuffer::Permit permit) {
    std::lock_guard lock(mu_);
    buffer_.set_release_permit(std::move(permit));
}

void OutputCommit::retry_release() {
    releasing([&] { buffer_.flush(); });
}

BufferStats OutputCommit::stats() const {
    std::lock_guard lock(mu_);
    return buffer_.stats();
}

} // namespace understudy::netbuffer
