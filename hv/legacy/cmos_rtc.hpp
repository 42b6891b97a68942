// The PC's CMOS real-time clock (ports 0x70 index, 0x71 data), read-only and minimal: the
// time registers answer the host's wall clock (UTC, BCD, 24-hour) and status says no
// update is in progress. Linux reads it at boot (rtc_cmos) and, without this, polls the
// unclaimed ports for the update-in-progress bit to clear. Writes are ignored; the guest's
// clock is kvmclock, so this is the wall clock a guest reads directly from the RTC.
#pragma once

#include <atomic>
#include <cstdint>

#include "hv/device.hpp"

namespace understudy::hv {

class CmosRtc final : public Device {
public:
    static constexpr uint16_t kIndexPort = 0x70;

    std::string name() const override { return "rtc"; }
    Result<void> attach(Vm& vm) override;
    DeviceState save() const override;
    Result<void> restore(const DeviceState& s) override;

    // The value of CMOS register `reg` at the host's current time.
    static uint8_t read_register(uint8_t reg);

private:
    std::atomic<uint8_t> index_{0}; // bit 7 is the NMI mask, which KVM does not need
};

} // namespace understudy::hv
