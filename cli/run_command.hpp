#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace understudy {

namespace hv {
class Vm;
}
namespace replicator {
struct LinkSecurity;
}

namespace cli {
class GuestNetwork;
class PrimaryRole;
struct FencingOptions;

// `understudy run IMAGE` and `understudy restore SNAPSHOT`: run a VM until it stops.
int run_command(const std::vector<std::string>& args);
int restore_command(const std::vector<std::string>& args);
// Runs a VM built elsewhere (a promoted backup) until it stops or a stop signal arrives,
// with the same figures and exit codes as `run`: protected by `backup` (HOST:PORT) when
// given and reachable, else unprotected; heartbeats and link security as given; output released only while
// `role` is held (taken through `fencing`, which a later `understudy failover` hands over).
int run_vm(hv::Vm& vm, GuestNetwork* net, const std::string& backup, std::chrono::milliseconds heartbeat,
           std::chrono::milliseconds failure_timeout, const replicator::LinkSecurity& security, std::unique_ptr<PrimaryRole> role,
           const FencingOptions& fencing);
}

} // namespace understudy
