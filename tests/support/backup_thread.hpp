// A backup server on loopback that serves sessions on a thread of its own, and
// connections to it: the far end of a primary in the replication suites, native
// (test_epoch_engine) and KVM (test_replication).
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "replicator/backup.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/time_scale.hpp"

namespace understudy::test {

struct BackupThread {
    std::unique_ptr<replicator::BackupServer> server;
    std::thread thread;
    std::atomic<int> sessions{0};
    std::vector<std::string> session_errors;
    std::mutex mu;

    explicit BackupThread(replicator::BackupHooks hooks = {}, bool accept_handover = false,
                          replicator::DiskReplicaConfig disks = {}) {
        replicator::BackupConfig cfg;
        cfg.accept_handover = accept_handover;
        cfg.disks = std::move(disks);
        cfg.heartbeat = {std::chrono::milliseconds(10), scaled(std::chrono::milliseconds(2000))}; // as the suites' primaries: a starved thread on a loaded host must not end the session
        cfg.security = link_security();
        auto s = replicator::BackupServer::listen(*replicator::Endpoint::parse("127.0.0.1:0"), std::move(hooks), cfg);
        REQUIRE(s);
        server = std::move(*s);
        thread = std::thread([this] {
            for (;;) {
                auto r = server->serve_one(std::chrono::seconds(30));
                if (!r && r.error().code == Errc::timeout) return;
                if (!r && r.error().code == Errc::state) return;
                std::lock_guard lock(mu);
                if (!r) session_errors.push_back(r.error().message);
                ++sessions;
            }
        });
    }
    ~BackupThread() {
        server->stop();
        if (thread.joinable()) thread.join();
    }
    void wait_sessions(int n) {
        auto deadline = deadline_in(std::chrono::seconds(30));
        while (sessions.load() < n && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
};

inline std::unique_ptr<replicator::Connection> connect_to(const replicator::BackupServer& s) {
    auto c = replicator::Connection::connect(s.local(), std::chrono::seconds(5));
    REQUIRE(c);
    return std::move(*c);
}

} // namespace understudy::test
