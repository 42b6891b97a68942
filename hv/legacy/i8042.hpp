// The PC keyboard controller (ports 0x60 and 0x64), reduced to what a Linux guest uses it
// for: its reset line. Command 0xfe on port 0x64 (how Linux reboots with `reboot=k`)
// stops the VM with kind `exited`, status 0, as a reboot. There is no keyboard: the
// status register reads 0 (nothing to read, ready for input) and data reads 0.
#pragma once

#include "hv/device.hpp"

namespace understudy::hv {

class I8042 final : public Device {
public:
    static constexpr uint16_t kDataPort = 0x60;
    static constexpr uint16_t kCommandPort = 0x64;
    static constexpr uint8_t kResetCommand = 0xfe;

    std::string name() const override { return "i8042"; }
    Result<void> attach(Vm& vm) override;
    DeviceState save() const override;
    Result<void> restore(const DeviceState& s) override;
};

} // namespace understudy::hv
