#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "common/error.hpp"

namespace understudy::cli {

// `understudy snapshot --control-socket PATH FILE` (docs/status.md, "Actions"): the
// running instance saves its VM to FILE without stopping it.
int snapshot_command(const std::vector<std::string>& args);

// `understudy reprotect --control-socket PATH --backup HOST:PORT`: a VM that runs
// unprotected starts streaming checkpoints to a new backup, the guest running on.
int reprotect_command(const std::vector<std::string>& args);

// `understudy failover --control-socket PATH`: planned switchover to the VM's backup.
int failover_command(const std::vector<std::string>& args);
// `understudy verify`: an online verification pass of the protected VM's replica.
int verify_command(const std::vector<std::string>& args);
// Starts a verification pass on the primary at `socket` and waits up to `limit` for its
// verdict (`understudy verify`, and drills before their fault).
Result<VerifyPassFigures> run_verification(const std::string& socket, std::chrono::seconds limit);

} // namespace understudy::cli
