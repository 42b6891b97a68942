// A 16550A-compatible UART (the PC's COM1: ports 0x3f8-0x3ff, IRQ 4), the console of a
// Linux guest (`console=ttyS0`). What the guest sends goes to the VM's console; what
// receive() is given, the guest reads. Transmission is instant, so the transmitter is
// always empty; interrupts follow the 16550's priorities and are raised as a level on
// the in-kernel irqchip. Enough of the modem-control loopback is modelled for Linux's
// port probe to recognise a 16550A.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string_view>

#include "hv/device.hpp"

namespace understudy::hv {

class Uart final : public Device {
public:
    static constexpr uint16_t kCom1Port = 0x3f8;
    static constexpr uint32_t kCom1Irq = 4;
    // At most this many bytes wait unread; receive() takes no more.
    static constexpr size_t kInputLimit = 4096;

    std::string name() const override { return "uart0"; }
    Result<void> attach(Vm& vm) override;
    DeviceState save() const override;
    Result<void> restore(const DeviceState& s) override;
    // While the VM is paused no input is taken: a checkpoint must not hold a byte (and a
    // raised line) that the irqchip state captured before it does not know of.
    void suspend() override;
    void resume() override;

    // Bytes for the guest to read (the console's input); returns how many were taken
    // (fewer while the guest leaves kInputLimit bytes unread, none while its driver has
    // the receive interrupt off: the caller offers the rest later).
    size_t receive(std::string_view bytes);

private:
    Result<void> access(uint64_t offset, uint8_t& value, bool is_write);
    uint8_t interrupt_id() const; // IIR's low bits: what the guest is interrupted for
    Result<void> update_irq();

    Vm* vm_ = nullptr;
    mutable std::mutex mu_;
    uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
    bool thr_empty_pending_ = false; // the "transmitter empty" interrupt waits to be read
    std::deque<uint8_t> rx_;
    bool irq_level_ = false;
    bool suspended_ = false;
};

} // namespace understudy::hv
