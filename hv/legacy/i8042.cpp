#include "hv/legacy/i8042.hpp"

#include <algorithm>

#include "hv/vm.hpp"

namespace understudy::hv {

namespace {
constexpr uint32_t kI8042StateVersion = 1; // no state: the version still lets a future one refuse
} // namespace

Result<void> I8042::attach(Vm& vm) {
    auto handler = [&vm](IoAccess& a) -> Result<void> {
        if (!a.is_write) {
            std::fill(a.data.begin(), a.data.end(), 0);
            return {};
        }
        if (a.addr == kCommandPort && a.data.size() == 1 && a.data[0] == kResetCommand)
            vm.stop_with({VmStopKind::exited, 0, "the guest reset the machine (i8042 reset command): a reboot"});
        return {};
    };
    US_TRYV(vm.pio().add(kDataPort, 1, name(), handler));
    return vm.pio().add(kCommandPort, 1, name(), handler);
}

DeviceState I8042::save() const { return {name(), kI8042StateVersion, {}}; }

Result<void> I8042::restore(const DeviceState& s) {
    if (s.version != kI8042StateVersion || !s.data.empty())
        return make_error(Errc::invalid_input, "i8042 state version " + std::to_string(s.version) + " is not supported");
    return {};
}

} // namespace understudy::hv
