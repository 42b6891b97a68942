// `understudy drill KIND`: a failover drill against a protected pair that already runs
// (docs/cli.md, docs/failover.md "Drills"). bench/drill.py is the benchmark that builds
// its own pairs; this is the operator's tool for the pair in production.
#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// Exit codes: 0 the drill passed, 2 bad usage or a pair not in the state a drill needs,
// 3 a socket or the service could not be reached or the fault could not be injected,
// 5 the drill ran and failed (writes lost, nobody serving, connections broken).
int drill_command(const std::vector<std::string>& args);

} // namespace understudy::cli
