#include "hv/virtio/mmio_irq.hpp"

#include <unistd.h>

#include "hv/virtio/mmio_transport.hpp"
#include "hv/vm.hpp"

namespace understudy::hv::virtio {

Result<MmioIrq> MmioIrq::attach(Vm& vm, const std::string& name, uint64_t base, unsigned irq) {
    MmioIrq line;
    if (!vm.config().pc_platform) return line;
    constexpr unsigned kIoapicPins = 24;
    if (irq >= kIoapicPins)
        return make_error(Errc::invalid_input, name + ": IRQ " + std::to_string(irq) + " has no IOAPIC pin (at most " +
                                                   std::to_string(kIoapicPins - kMmioIrq) + " virtio-mmio devices)");
    line.fd_ = US_TRY(vm.edge_irqfd(irq));
    vm.add_acpi_device({base, kMmioSize, irq});
    return line;
}

void MmioIrq::raise() const {
    const uint64_t one = 1;
    (void)!::write(fd_.get(), &one, sizeof one);
}

} // namespace understudy::hv::virtio
