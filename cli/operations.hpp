// The operator's view of a running instance (docs/status.md, docs/metrics.md): the
// process's Metrics, its control socket (`--control-socket PATH`) and its HTTP endpoint
// (`--metrics-listen ADDR:PORT`: /metrics, /healthz, /primary). One set per process: a
// backup that is promoted keeps serving the same socket and port, now as the primary.
#pragma once

#include <boost/program_options.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "cli/http_endpoint.hpp"
#include "cli/metrics.hpp"
#include "common/error.hpp"

namespace understudy::replicator {
class BitFlip;
}

namespace understudy::cli {

struct OpsOptions {
    std::string control_socket; // empty: no control socket
    std::string metrics_listen; // empty: no HTTP endpoint
    std::string name;           // shown by status and in the metrics
};
void add_ops_options(boost::program_options::options_description& d, OpsOptions& o);

// The process's metrics (role primary and state starting until an instance starts).
Metrics& instance_metrics();

// The checkpoint stream that `understudy drill corrupt-link` corrupts (the primary's
// current one; nullptr when there is none).
void set_drill_link(std::shared_ptr<replicator::BitFlip> flip);

// Sets the role (and the initial state for it: starting on a primary, waiting on a
// backup) and starts the servers the options name, unless this process already runs
// them (a promoted backup). Fails if the socket or the port cannot be had.
Result<void> start_operations(const OpsOptions& o, Role role);

// An operator's action on the running VM (docs/status.md, "Actions"). The control
// socket's thread checks the request and queues it; the thread that owns the VM runs it
// between two waits and answers one JSON response line through `answer`, for which the
// socket's thread waits at most kActionTimeout.
struct ControlAction {
    std::string cmd;    // "snapshot", "reprotect", "failover" or "verify"
    std::string target; // snapshot: the file to write, an absolute path; reprotect: the backup's HOST:PORT; failover: 
    std::promise<std::string> answer;
};
inline constexpr std::chrono::seconds kActionTimeout{60};
// The next queued action, or nullptr. Only the VM's owner (a PrimaryInstance's thread) calls it.
std::unique_ptr<ControlAction> take_control_action();

// The request handlers, exposed for the tests.
// One control-socket request line: {"cmd":"status"|"metrics"|"ping"|"snapshot"|"reprotect"|"failover"|"verify"|"drill"}.
std::string handle_control_request(const Metrics& m, std::string_view line);
// One HTTP GET: /metrics, /healthz, /primary.
HttpAnswer handle_http(const Metrics& m, std::string_view target);

// A primary's supervision, for run, restore and a promoted backup: starts the operations,
// records "unprotected: no backup configured" when there is none, and "stopped" when it
// goes out of scope.
class PrimaryInstance {
public:
    static Result<PrimaryInstance> start(const OpsOptions& o, bool protect);
    PrimaryInstance(PrimaryInstance&& o) noexcept : active_(std::exchange(o.active_, false)) {}
    PrimaryInstance& operator=(PrimaryInstance&&) = delete;
    ~PrimaryInstance();
    // A backup could not be reached: the VM runs unprotected.
    void backup_unreachable(const std::string& why);

private:
    PrimaryInstance() = default;
    bool active_ = true;
};

} // namespace understudy::cli
