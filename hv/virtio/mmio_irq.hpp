// A virtio-mmio device's interrupt on the PC platform (a Linux guest): an edge on its
// IOAPIC pin through an irqfd, so that whichever thread fills a used ring (a vCPU's, the
// tap's) raises it with one eventfd write and no VMM ioctl, and the device's entry in the
// ACPI DSDT, through which Linux finds it. Without the PC platform there is no line: the
// guest/ images poll.
#pragma once

#include <cstdint>
#include <string>

#include "common/error.hpp"
#include "common/unique_fd.hpp"

namespace understudy::hv {
class Vm;
}

namespace understudy::hv::virtio {

class MmioIrq {
public:
    // Wires pin `irq` for the device window at `base` (PC platform), or nothing without it.
    static Result<MmioIrq> attach(Vm& vm, const std::string& name, uint64_t base, unsigned irq);
    bool wired() const { return fd_.valid(); }
    // One edge. A failed write (the counter cannot overflow while KVM drains it) leaves
    // the device's InterruptStatus bit for the next edge to report.
    void raise() const;

private:
    UniqueFd fd_;
};

} // namespace understudy::hv::virtio
