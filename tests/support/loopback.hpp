// A connected pair of replication transport connections over 127.0.0.1 (kernel-chosen
// port), for unit suites that need two ends without a primary or a backup.
#pragma once

#include <catch2/catch.hpp>

#include <future>
#include <memory>

#include "replicator/transport.hpp"

namespace understudy::test {

struct LoopbackPair {
    std::unique_ptr<replicator::Connection> client, server;
};

inline LoopbackPair connected_pair(const replicator::TransportOptions& o = {}) {
    using namespace std::chrono_literals;
    auto l = replicator::Listener::listen(*replicator::Endpoint::parse("127.0.0.1:0"), o);
    REQUIRE(l);
    REQUIRE(l->local().port != 0);
    auto accepted = std::async(std::launch::async, [&] { return l->accept(5s); });
    auto c = replicator::Connection::connect(l->local(), 5s, o);
    REQUIRE(c);
    auto s = accepted.get();
    REQUIRE(s);
    return {std::move(*c), std::move(*s)};
}

} // namespace understudy::test
