// The guest NIC's egress path on a primary (DESIGN.md invariants 1 and 4): frames the
// virtio-net device transmits are tagged with the epoch they belong to and held in an
// OutputBuffer; the checkpoint engine tells when an epoch is captured and when it is
// acknowledged, and acknowledged frames go to the wire in order. When the buffer is
// full the device is told `full` and keeps the frame in the guest's TX queue; after a
// release frees room, `on_room` lets the device try again.
//
// Epochs: frames transmitted before checkpoint N is captured belong to N, so after the
// capture of N (the vCPUs and the device are paused then) new frames are tagged N + 1.
// Until the first capture the VM is not yet protected and frames pass straight through:
// if the primary fails before its first checkpoint is acknowledged there is nothing to
// fail over to, and the state a later checkpoint carries already includes those frames.
#pragma once

#include <functional>
#include <memory>
#include <mutex>

#include "hv/virtio/net_backend.hpp"
#include "netbuffer/output_buffer.hpp"

namespace understudy::netbuffer {

struct OutputCommitHooks {
    // Puts one released frame on the wire (the tap). Called in release order, under the
    // gate's lock; it must not call back into the gate.
    OutputBuffer::Sink wire;
    // Room was freed after a `full`: the device should retry its TX queue. Called
    // without the gate's lock held.
    std::function<void()> on_room;
    // The first frame of an epoch is being held (output-triggered checkpoints): the
    // checkpoint engine may end the epoch early. Called under the device's and the
    // gate's locks; must only signal.
    std::function<void(Clock::time_point first_held)> on_output;
};

class OutputCommit final : public hv::virtio::EgressSink {
public:
    static Result<std::unique_ptr<OutputCommit>> create(BufferLimits limits, OutputCommitHooks hooks);

    Accept transmit(std::span<const uint8_t> frame) override;

    // Checkpoint `epoch` was captured (called while the VM is paused).
    void captured(uint64_t epoch);
    // The backup acknowledged checkpoint `epoch`: release through it.
    void acknowledged(uint64_t epoch);
    // Replication ended (backup lost, or no backup): release everything held, in order,
    // and pass later frames straight through.
    void unprotect();
    // A new replication session begins (re-protection after unprotect()): frames pass
    // until its first capture, then wait for their checkpoint's ACK again. The session
    // counts epochs from 1; they are taken past every epoch used so far, so that frames
    // still held (fenced) keep their order.
    void new_session();
    // Fencing: frames go to the wire only while `permit` grants (the arbiter's lease is
    // valid); refused frames stay held, in order. retry_release() releases what the
    // permit now allows (call it after each lease renewal).
    void set_release_permit(OutputBuffer::Permit permit);
    void retry_release();

    BufferStats stats() const;

private:
    OutputCommit(OutputBuffer buf, OutputCommitHooks hooks) : buffer_(std::move(buf)), hooks_(std::move(hooks)) {}
    template <class Step>
    void releasing(Step step);

    mutable std::mutex mu_;
    OutputBuffer buffer_;
    OutputCommitHooks hooks_;
    uint64_t epoch_ = 1;          // the checkpoint that frames transmitted now belong to
    uint64_t base_ = 0;           // the session's epoch e is epoch base_ + e here
    bool started_ = false;        // a first checkpoint was captured
    bool asked_ = false;          // on_output already called for this epoch
    bool stalled_ = false;        // a transmit was refused since the last release
};

} // namespace understudy::netbuffer
