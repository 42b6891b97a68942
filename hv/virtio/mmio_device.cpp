#include "hv/virtio/mmio_device.hpp"

#include <cstring>

#include <fmt/format.h>

#include "hv/vm.hpp"

namespace understudy::hv::virtio {

Result<void> MmioDevice::check_index(unsigned index) {
    if (kMmioBase + kMmioSize * (uint64_t(index) + 1) > kMmioWindowEnd)
        return make_error(Errc::invalid_input, fmt::format("virtio device index {} is past the MMIO window", index));
    return {};
}

MmioDevice::MmioDevice(std::string name, unsigned index, std::vector<QueueSpec> queues)
    : name_(std::move(name)), index_(index), queues_(std::move(queues)) {}

Result<void> MmioDevice::bind(GuestMemory& mem, std::function<void()> guest_event, std::function<void()> interrupt) {
    std::lock_guard lock(mu_);
    if (transport_) return make_error(Errc::state, name_ + " is already attached");
    mem_ = &mem;
    guest_event_ = std::move(guest_event);
    interrupt_ = std::move(interrupt);
    transport_ = std::make_unique<MmioTransport>(name_, mem, static_cast<VirtioModel&>(*this), queues_);
    return {};
}

Result<void> MmioDevice::attach(Vm& vm) {
    {
        std::lock_guard lock(mu_);
        if (transport_) return make_error(Errc::state, name_ + " is already attached");
    }
    irq_ = US_TRY(MmioIrq::attach(vm, name_, mmio_base(), irq()));
    std::function<void()> interrupt;
    if (irq_.wired()) interrupt = [this] { irq_.raise(); };
    US_TRYV(bind(vm.memory(), [&vm] { vm.notify_guest_event(); }, std::move(interrupt)));
    return vm.mmio().add(mmio_base(), kMmioSize, name_, [this](IoAccess& a) -> Result<void> {
        mmio_access(a.offset, a.data, a.is_write);
        return {};
    });
}

void MmioDevice::mmio_access(uint64_t offset, std::span<uint8_t> data, bool is_write) {
    std::lock_guard lock(mu_);
    if (!transport_) {
        if (!is_write) std::memset(data.data(), 0xff, data.size());
        return;
    }
    transport_->access(offset, data, is_write);
}

Result<void> MmioDevice::check_saved(const DeviceState& s, uint32_t version) const {
    if (!transport_) return make_error(Errc::state, name_ + " must be attached before its state is restored");
    if (s.name != name_)
        return make_error(Errc::invalid_input, name_ + " state: it belongs to device '" + s.name + "'");
    if (s.version != version)
        return make_error(Errc::invalid_input,
                          name_ + " state: version " + std::to_string(s.version) + " is not supported");
    return {};
}

void MmioDevice::used_buffers() {
    if (interrupt_) {
        transport_->raise_interrupt(kInterruptUsedBuffer);
        interrupt_();
    }
    if (guest_event_) guest_event_();
}

} // namespace understudy::hv::virtio
