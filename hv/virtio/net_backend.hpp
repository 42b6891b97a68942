// Where the guest's transmitted frames go. The sink may hold a frame (netbuffer, until
// the checkpoint that produced it is acknowledged) or send it (tap). It never drops a
// frame it accepted; when it cannot take one it says `full`, the device leaves that
// frame in the guest's TX queue, and the sink later calls VirtioNet::tx_room_available()
// (DESIGN.md, invariant 4: backpressure, not loss).
#pragma once

#include <cstdint>
#include <span>

namespace understudy::hv::virtio {

class EgressSink {
public:
    enum class Accept { sent_or_held, full };
    virtual ~EgressSink() = default;
    // Called with the device's lock held, from a vCPU thread or from whichever thread
    // called tx_room_available() or resumed the VM. The frame is only valid during the
    // call. Must not call back into the device (tx_room_available() would deadlock) and
    // must not wait for a VM pause (a vCPU may be the caller).
    virtual Accept transmit(std::span<const uint8_t> frame) = 0;
};

} // namespace understudy::hv::virtio
