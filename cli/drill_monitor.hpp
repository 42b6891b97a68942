// The drill's watch over both instances from the fault on: their status polled every
// 5 ms through the control sockets, and the first time each telling state was seen.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cli/metrics.hpp" // StatusSnapshot

namespace understudy::cli {

struct Observed {
    // First poll (steady time) at which each was seen.
    std::optional<std::chrono::steady_clock::time_point> backup_promoting, backup_active, backup_waiting,
        primary_unprotected, primary_unreachable, backup_unreachable;
    std::optional<StatusSnapshot> backup_last, primary_last;
};

class PairMonitor {
public:
    PairMonitor(std::string primary_socket, std::string backup_socket, bool poll_primary, bool poll_backup)
        : primary_(std::move(primary_socket)), backup_(std::move(backup_socket)), poll_primary_(poll_primary),
          poll_backup_(poll_backup) {}
    ~PairMonitor() { stop(); }
    void start();
    void stop();
    Observed observed() const;

private:
    void run();

    std::string primary_, backup_;
    bool poll_primary_, poll_backup_;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    Observed seen_;
    std::thread thread_;
};

} // namespace understudy::cli
