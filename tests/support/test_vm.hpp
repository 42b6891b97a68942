// Helpers shared by the KVM test suites: guest image paths, booting an image, and
// reading churn's stamps back.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "guest/abi/understudy_abi.h"
#include "hv/pvh_loader.hpp"
#include "hv/vm.hpp"

namespace understudy::test {

std::string guest_image(const std::string& name); // build/guest/NAME.elf
std::string cli_path();                           // the understudy binary
std::string temp_path(const std::string& name);   // a fresh path in a per-run temp dir

// A VM with `image` loaded; console output is collected into `console` if given.
std::unique_ptr<hv::Vm> boot(const std::string& image, const std::string& cmdline, hv::VmConfig cfg = {},
                             std::shared_ptr<std::string> console = nullptr);

struct ChurnProgress {
    uint64_t pages_stamped = 0; // over all vCPUs: completed passes * ws + cursor
    unsigned vcpus = 0;         // slots whose first pass has begun
};

// Checks churn's stamps against its header: every page is consistent with one single
// moment of each vCPU's progress. Returns a description of the first inconsistency,
// or an empty string and the progress.
std::string check_churn(const hv::GuestMemory& mem, uint64_t header_gpa, ChurnProgress* progress);

// Finds churn's header in guest memory by its magic (it sits at the first free page
// after the image, below 4 MiB), for replicas that cannot ask the guest.
std::optional<uint64_t> churn_header_gpa(const hv::GuestMemory& mem);

// Waits for churn to report its header, from whichever vCPU reached it first.
std::optional<uint64_t> wait_churn_header(hv::Vm& vm, std::chrono::milliseconds limit);

// Waits until churn's progress satisfies `done` (`what` names it for the failure),
// pausing the VM for each look. Returns an empty string and the progress, or what went
// wrong: an inconsistency, the VM stopping, or the deadline (the limit is scaled for slow
// hosts). Tests wait on progress, never for a fixed time: a slow host's vCPUs may not
// have begun within any fixed sleep.
std::string wait_churn(hv::Vm& vm, uint64_t header_gpa, std::string_view what, std::chrono::milliseconds limit,
                       const std::function<bool(const ChurnProgress&)>& done, ChurnProgress* progress);

// Restores a snapshot of a churn guest, checks its stamps, runs it until it makes
// progress from there with its stamps still consistent.
void check_churn_snapshot_continues(const std::string& snapshot);

// For a failed wait: why the VM stopped (its stop reason, a fault's registers included)
// or that it still runs, and the replication failure if there is one.
std::string describe_run(const hv::Vm& vm, const std::optional<Error>& replication_failure = std::nullopt);

// Runs `cmd` in a shell, returns its exit status and stdout+stderr.
int run_shell(const std::string& cmd, std::string* output);

} // namespace understudy::test
