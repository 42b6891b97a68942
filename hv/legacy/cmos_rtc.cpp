#include "hv/legacy/cmos_rtc.hpp"

#include <ctime>

#include "hv/vm.hpp"

namespace understudy::hv {

namespace {
constexpr uint32_t kRtcStateVersion = 1;
uint8_t bcd(int v) { return static_cast<uint8_t>(((v / 10) << 4) | (v % 10)); }
} // namespace

uint8_t CmosRtc::read_register(uint8_t reg) {
    std::time_t now = std::time(nullptr);
    std::tm t{};
    gmtime_r(&now, &t);
    switch (reg) {
    case 0x00: return bcd(t.tm_sec);
    case 0x02: return bcd(t.tm_min);
    case 0x04: return bcd(t.tm_hour);
    case 0x06: return bcd(t.tm_wday + 1);
    case 0x07: return bcd(t.tm_mday);
    case 0x08: return bcd(t.tm_mon + 1);
    case 0x09: return bcd(t.tm_year % 100);
    case 0x32: return bcd((t.tm_year + 1900) / 100); // century
    case 0x0a: return 0x26; // 32.768 kHz time base, 1024 Hz rate, no update in progress
    case 0x0b: return 0x02; // 24-hour, BCD, no interrupts
    case 0x0d: return 0x80; // the battery is good
    default: return 0;      // alarms, register C (no interrupt pending) and the rest of the RAM
    }
}

Result<void> CmosRtc::attach(Vm& vm) {
    return vm.pio().add(kIndexPort, 2, name(), [this](IoAccess& a) -> Result<void> {
        if (a.data.size() != 1) return {};
        if (a.offset == 0) {
            if (a.is_write) index_ = a.data[0];
            else a.data[0] = index_;
        } else if (!a.is_write) {
            a.data[0] = read_register(index_ & 0x7f);
        }
        return {};
    });
}

DeviceState CmosRtc::save() const { return {name(), kRtcStateVersion, {index_.load()}}; }

Result<void> CmosRtc::restore(const DeviceState& s) {
    if (s.version != kRtcStateVersion || s.data.size() != 1)
        return make_error(Errc::invalid_input, "RTC state version " + std::to_string(s.version) + " is not supported");
    index_ = s.data[0];
    return {};
}

} // namespace understudy::hv
