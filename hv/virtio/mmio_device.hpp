// What every virtio-mmio device model shares: its window and interrupt (from its index),
// binding to guest memory with or without a VM, register accesses under the device's one
// lock, and telling the guest that a used ring has new entries. A device type derives
// from it and implements VirtioModel and its saved state.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "hv/device.hpp"
#include "hv/virtio/mmio_irq.hpp"
#include "hv/virtio/mmio_transport.hpp"

namespace understudy::hv::virtio {

class MmioDevice : public Device, protected VirtioModel {
public:
    std::string name() const override { return name_; }
    // Binds to the VM's memory, wires the interrupt (PC platform) and registers the window.
    Result<void> attach(Vm& vm) override;

    // attach() without a VM (tests): the device uses `mem` and calls `guest_event` when
    // it has put something in a used ring. With `interrupt`, it also sets InterruptStatus
    // and calls that.
    Result<void> bind(GuestMemory& mem, std::function<void()> guest_event, std::function<void()> interrupt = {});
    // The MMIO handler's body: one access at `offset` in the device window.
    void mmio_access(uint64_t offset, std::span<uint8_t> data, bool is_write);

    uint64_t mmio_base() const { return kMmioBase + kMmioSize * index_; }
    uint32_t irq() const { return kMmioIrq + index_; }
    // For a guest's command line: "virtio_mmio.device=0x1000@0xd0000000:5".
    std::string cmdline_token() const { return mmio_cmdline_token(mmio_base(), irq()); }

protected:
    // Checks that window `index` fits the MMIO window.
    static Result<void> check_index(unsigned index);
    MmioDevice(std::string name, unsigned index, std::vector<QueueSpec> queues);

    // The checks every device's restore() starts with (lock held): the device is bound,
    // and `s` is this device's state in `version`.
    Result<void> check_saved(const DeviceState& s, uint32_t version) const;

    // Something went into a used ring (lock held): InterruptStatus and the interrupt, when
    // the guest takes interrupts, and the wake-up of a guest halted in the HALT hypercall.
    void used_buffers();

    const std::string name_;
    mutable std::mutex mu_; // serialises vCPUs, I/O threads and the pausing thread
    GuestMemory* mem_ = nullptr;
    std::function<void()> interrupt_; // empty: the guest polls
    std::unique_ptr<MmioTransport> transport_; // null until bound

private:
    const unsigned index_;
    const std::vector<QueueSpec> queues_;
    std::function<void()> guest_event_;
    MmioIrq irq_; // set by attach() on the PC platform
};

} // namespace understudy::hv::virtio
