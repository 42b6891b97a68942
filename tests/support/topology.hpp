// The network test topology for tests: namespaces for a client, a primary host and a
// backup host on one bridged segment with the guest's tap on the primary, built by
// scripts/topology.sh and removed when the Topology object goes (docs/testing.md).
// Also running commands in those namespaces and capturing packets there.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace understudy::test {

enum class Host { client, primary, backup, sw };
const char* host_name(Host h); // "client", "primary", "backup", "sw"

struct ProcessOutput {
    int exit_status = -1; // the exit code, or -1 if a signal ended it
    int signal = 0;       // the signal that ended it, 0 if it exited
    bool timed_out = false;
    std::string abandoned; // why it was ended early: what it waited on was gone (see run_command)
    std::string out, err;
    bool ok() const { return exit_status == 0; }
    std::string describe() const; // status and stderr, for failure messages
};

// Runs argv (searched in PATH) in the current namespace with stdin from /dev/null,
// collecting stdout and stderr. After `timeout` its process group is killed and the
// result says timed_out. `gone`, if given, is asked at least every 200 ms whether what the command
// waits on has gone (a VMM that exited): a non-empty answer kills it at once and becomes
// `abandoned`, so a dead peer costs a test seconds, not its whole limit.
using GoneCheck = std::function<std::string()>;
Result<ProcessOutput> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30), const GoneCheck& gone = {});

// A long-running child in its own process group; the destructor ends it (SIGTERM, then
// SIGKILL) and reaps it.
class Process {
public:
    Process(Process&& o) noexcept;
    Process& operator=(Process&& o) noexcept;
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;
    ~Process();

    pid_t pid() const { return pid_; }
    bool running(); // false once it has exited (it is then reaped)
    // Ends it (SIGTERM; SIGKILL after `grace`) and reports how it ended.
    Result<ProcessOutput> stop(std::chrono::milliseconds grace = std::chrono::seconds(2));

    // Starts argv with stdin from /dev/null and stdout+stderr appended to `log_path`
    // (discarded if empty).
    static Result<Process> spawn(const std::vector<std::string>& argv, const std::string& log_path = {});

private:
    explicit Process(pid_t pid) : pid_(pid) {}
    pid_t pid_ = -1;
    int status_ = 0;
    bool reaped_ = false;
};

class Topology {
public:
    // Builds the topology NAME (a lowercase letter then up to 10 lowercase letters or
    // digits), replacing any leftover of the same name.
    static Result<Topology> create(std::string name);
    // Removes the topology NAME and everything running in it; safe on partial state.
    static Result<void> remove(const std::string& name);

    Topology(Topology&& o) noexcept;
    Topology& operator=(Topology&&) = delete;
    Topology(const Topology&) = delete;
    ~Topology(); // removes it

    const std::string& name() const { return name_; }
    std::string ns(Host h) const; // the namespace, e.g. "NAME-primary"
    std::string ip(Host h) const; // the host's address (no address for Host::sw)
    const std::string& guest_ip() const { return guest_ip_; }
    const std::string& tap() const { return tap_; }             // the guest's tap, in the primary and the backup
    const std::string& subnet() const { return subnet_; }       // CIDR
    const std::string& client_if() const { return client_if_; } // the client's uplink, where captures go

    // Runs argv in host h's namespace (ip netns exec).
    Result<ProcessOutput> run_in(Host h, const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30),
                                 const GoneCheck& gone = {}) const;
    Result<Process> spawn_in(Host h, const std::vector<std::string>& argv, const std::string& log_path = {}) const;

    // A socket(domain, type) that lives in host h's namespace, for tests that talk to
    // the guest or a host from their own code. The caller closes it.
    Result<int> socket_in(Host h, int domain, int type) const;

    // argv prefixed with `ip netns exec NS`, for callers that start processes themselves.
    std::vector<std::string> in_ns(Host h, const std::vector<std::string>& argv) const;

private:
    Topology() = default;
    std::string name_, subnet_, guest_ip_, client_ip_, primary_ip_, backup_ip_, tap_, client_if_;
    bool owned_ = false;
};

// A topology name for this process: PREFIX (up to 4 lowercase letters) and the pid, so
// suites running at once do not collide. Topologies PREFIX<pid> whose process is gone (a
// test killed by a timeout) are removed first.
std::string topology_name(const std::string& prefix);

// Why network tests cannot run here (not root, no ip, no /dev/net/tun, no network
// namespaces), or an empty string if they can. Suites exit 77 with this message.
std::string topology_skip_reason();

// Runs `session` (a suite's Catch2 session) with a fresh scratch directory
// /tmp/PREFIX-XXXXXX in `dir`, removed afterwards unless a test failed (then it is
// kept, to look at). Returns the session's result.
int run_with_scratch_dir(const std::string& prefix, std::string& dir, const std::function<int()>& session);

// A packet capture (tcpdump) on one interface in one namespace, read back with tshark.
// Timestamps are the kernel's, taken as the packet passed the interface.
class Capture {
public:
    // Returns once the capture is running. `filter` is a capture (BPF) filter.
    static Result<Capture> start(const Topology& topo, Host h, const std::string& iface, std::string file,
                                 const std::string& filter = {});
    Result<void> stop(); // flushes the file; the destructor stops it too

    // One row per packet, one column per tshark field (e.g. "frame.time_epoch",
    // "tcp.payload"), for packets matching the display filter `where`; an absent field
    // is an empty string. Stops the capture first if it is running.
    Result<std::vector<std::vector<std::string>>> read(const std::vector<std::string>& fields,
                                                       const std::string& where = {});

    const std::string& file() const { return file_; }

private:
    Capture(Process p, std::string file) : proc_(std::move(p)), file_(std::move(file)) {}
    Process proc_;
    std::string file_;
    bool stopped_ = false;
};

} // namespace understudy::test
