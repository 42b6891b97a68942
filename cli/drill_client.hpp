// The drill's verifying client: one writer thread per connection, each writing unique
// keys through the guest's RESP service one request at a time; a key counts only once
// "+OK" arrived. Then every acknowledged key is read back from whoever serves.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/resp_client.hpp"

namespace understudy::cli {

struct ConnStats {
    uint64_t sent = 0, acked = 0, in_doubt = 0, broken = 0, reconnects = 0, connect_failures = 0;
    std::vector<std::string> errors; // the first few
    bool replied = false;
};

class DrillClient {
public:
    using Clock = std::chrono::steady_clock;
    // `reply_timeout`: a connection silent this long is given up (and counted broken).
    DrillClient(replicator::Endpoint service, unsigned connections, std::string run_id, std::chrono::milliseconds interval,
                std::chrono::milliseconds reply_timeout)
        : service_(std::move(service)), run_id_(std::move(run_id)), interval_(interval), reply_timeout_(reply_timeout),
          stats_(connections) {}

    void start();
    void stop();
    // Every connection has had a successful reply (or `deadline` passed, or a stop signal
    // came, which sets `interrupted`: false).
    bool wait_ready(Clock::time_point deadline, bool& interrupted);
    // The first successful reply after `t`, if one came.
    std::optional<Clock::time_point> reply_after(Clock::time_point t) const;
    // The last successful reply, if any.
    std::optional<Clock::time_point> last_reply() const;
    std::vector<Clock::time_point> replies() const; // sorted
    std::map<std::string, std::string> acknowledged() const;
    std::vector<ConnStats> stats() const;

private:
    void note_error(unsigned ci, const std::string& what);
    void write_loop(unsigned ci);
    // One request's outcome; true when it was acknowledged.
    bool record(unsigned ci, std::string key, std::string value, const Result<RespReply>& r, Clock::time_point t);

    replicator::Endpoint service_;
    std::string run_id_;
    std::chrono::milliseconds interval_; // between a reply and the connection's next SET
    std::chrono::milliseconds reply_timeout_;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    std::vector<ConnStats> stats_;
    std::vector<Clock::time_point> replies_;   // successful replies, every connection
    std::map<std::string, std::string> acked_; // key -> value, once "+OK" arrived
    std::vector<std::thread> threads_;
};

struct Readback {
    uint64_t missing = 0, wrong = 0;
    std::vector<std::string> examples;
    std::optional<std::string> error; // the read-back could not finish: nothing verified
};

// GETs every acknowledged key (pipelined in batches) from whoever serves now; retries a
// broken attempt from the start until `deadline`.
Readback read_back(const replicator::Endpoint& service, const std::map<std::string, std::string>& acked,
                   std::chrono::steady_clock::time_point deadline);

// Asks the service for SELFCHECK (the kv image's check of its own data structures,
// guest/README.md): its reply line ("+OK ..." or "-ERR ..."), or why it could not be asked.
Result<std::string> ask_selfcheck(const replicator::Endpoint& service, std::chrono::steady_clock::time_point deadline);

// Wall-clock seconds since the Unix epoch.
double unix_now();

} // namespace understudy::cli
