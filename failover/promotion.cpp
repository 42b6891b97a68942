#include "failover/promotion.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace understudy::failover {

Result<std::unique_ptr<hv::Vm>> promote(std::unique_ptr<replicator::BackupReplica> replica, hv::VmConfig base,
                                        const hv::AttachDevicesFn& attach) {
    if (!replica || !replica->has_committed())
        return make_error(Errc::state, "no checkpoint was committed: there is nothing to promote");
    // DESIGN.md invariant 7: never run a replica known to differ from its primary.
    if (auto differs = replica->known_difference()) return make_error(Errc::state, "not promoting: " + *differs);
    replica->release_disks(); // `attach` opens them for the VM
    auto vm = US_TRY(hv::restore_vm(replica->take_memory(), replica->state(), std::move(base), attach));
    if (vm->config_digest() != replica->committed_config_digest())
        return make_error(Errc::invalid_input,
                          fmt::format("the VM built here (configuration {:016x}) differs from the primary's ({:016x}): "
                                      "give it the same devices (--net-tap) and dirty tracking settings",
                                      vm->config_digest(), replica->committed_config_digest()));
    vm->notify_moved(); // the guest may prod its peers at once (US_HALT_MOVED)
    return vm;
}

std::vector<uint8_t> announce_frame(const std::array<uint8_t, 6>& mac) {
    std::vector<uint8_t> f(60, 0);
    std::fill(f.begin(), f.begin() + 6, 0xff); // destination: broadcast
    std::copy(mac.begin(), mac.end(), f.begin() + 6);
    f[12] = 0x80, f[13] = 0x35;                // EtherType: RARP
    f[14] = 0x00, f[15] = 0x01;                // hardware type: Ethernet
    f[16] = 0x08, f[17] = 0x00;                // protocol type: IPv4
    f[18] = 6, f[19] = 4;                      // address lengths
    f[20] = 0x00, f[21] = 0x03;                // operation: reverse request
    std::copy(mac.begin(), mac.end(), f.begin() + 22); // sender hardware address
    std::copy(mac.begin(), mac.end(), f.begin() + 32); // target hardware address
    return f;                                  // protocol addresses stay 0.0.0.0
}

} // namespace understudy::failover
