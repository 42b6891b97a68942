// The replication transport over loopback (127.0.0.1, kernel-chosen ports): record
// round trips and framing on the wire, gathers larger than one submission, both
// directions at once, peer close, corrupt streams, shutdown() waking blocked threads,
// heartbeat latency beside a large transfer, connect and accept failures.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <random>
#include <thread>

#include "replicator/link_security.hpp"
#include "replicator/transport.hpp"
#include "support/link_key.hpp"
#include "support/loopback.hpp"
#include "support/time_scale.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace std::chrono_literals;

namespace {

using test::connected_pair;

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937_64 rng(seed);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = rng();
        std::memcpy(&v[i], &x, 8);
    }
    for (; i < n; ++i) v[i] = static_cast<uint8_t>(rng());
    return v;
}

std::span<const uint8_t> bytes_of(const RecordHeader& h) { return {reinterpret_cast<const uint8_t*>(&h), sizeof h}; }

// Sends raw bytes (possibly a malformed record) from `from`.
void send_raw(Connection& from, std::span<const uint8_t> bytes) {
    std::array<std::span<const uint8_t>, 1> b{bytes};
    REQUIRE(from.send(b));
}

std::vector<uint8_t> raw_record(uint32_t type, std::span<const uint8_t> body) {
    std::vector<uint8_t> out;
    append_record(out, type, body);
    return out;
}

} // namespace

TEST_CASE("Endpoint parses HOST:PORT and rejects malformed text") {
    auto e = Endpoint::parse("127.0.0.1:4000");
    REQUIRE(e);
    CHECK(e->host == "127.0.0.1");
    CHECK(e->port == 4000);
    CHECK(e->str() == "127.0.0.1:4000");
    auto v6 = Endpoint::parse("[::1]:0");
    REQUIRE(v6);
    CHECK(v6->host == "::1");
    CHECK(v6->str() == "[::1]:0");
    for (const char* bad : {"127.0.0.1", "127.0.0.1:", ":80", "host:65536", "host:12x", "::1:80", "h:-1"}) {
        INFO(bad);
        auto r = Endpoint::parse(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::invalid_input);
    }
}

TEST_CASE("records of 0 bytes to 8 MiB round trip, framed and padded as common/records specifies") {
    auto [client, server] = connected_pair();
    std::vector<size_t> sizes;
    for (size_t n = 0; n <= 17; ++n) sizes.push_back(n);
    for (size_t n : {4095, 4096, 4097, 65535, 65536, 65537})
        sizes.push_back(n);
    // Around the receive buffer's direct-receive threshold (half of 1 MiB, framing included).
    for (size_t n = (512u << 10) - 24; n <= (512u << 10) + 8; ++n) sizes.push_back(n);
    for (size_t n : {(1u << 20) - 1, 1u << 20, (3u << 20) + 5, (8u << 20) - 3, 8u << 20})
        sizes.push_back(n);

    auto sender = std::async(std::launch::async, [&, c = client.get()] {
        for (size_t i = 0; i < sizes.size(); ++i) {
            auto body = pattern(sizes[i], i);
            if (!c->send_record(static_cast<uint32_t>(i) | (i % 2 ? kRecordOptional : 0), body)) return false;
        }
        return true;
    });
    for (size_t i = 0; i < sizes.size(); ++i) {
        INFO("record " << i << " of " << sizes[i] << " bytes");
        auto r = server->recv_record();
        REQUIRE(r);
        CHECK(r->type == (static_cast<uint32_t>(i) | (i % 2 ? kRecordOptional : 0)));
        REQUIRE(r->body.size() == sizes[i]);
        CHECK(r->body == pattern(sizes[i], i));
    }
    REQUIRE(sender.get());

    // On the wire: 16-byte header {type, length, xxh3}, body, zeros to a multiple of 8.
    for (size_t n : {0, 1, 7, 8, 9, 4099}) {
        INFO("body of " << n << " bytes");
        auto body = pattern(n, 100 + n);
        REQUIRE(client->send_record(42, body));
        size_t padded = (n + 7) / 8 * 8;
        std::vector<uint8_t> wire(16 + padded, 0xff);
        REQUIRE(server->recv_exact(wire));
        RecordHeader h;
        std::memcpy(&h, wire.data(), sizeof h);
        CHECK(h.type == 42);
        CHECK(h.length == n);
        CHECK(h.checksum == checksum64(body));
        CHECK(std::equal(body.begin(), body.end(), wire.begin() + 16));
        CHECK(std::all_of(wire.begin() + 16 + n, wire.end(), [](uint8_t b) { return b == 0; }));
    }
    // The records a caller frames itself with record_header/record_padding are the same.
    auto body = pattern(13, 7);
    RecordHeader h = record_header(9, body);
    std::array<std::span<const uint8_t>, 3> parts{bytes_of(h), body, record_padding(body.size())};
    CHECK(record_padding(13).size() == 3);
    REQUIRE(client->send(parts));
    auto expected = raw_record(9, body);
    std::vector<uint8_t> wire(expected.size());
    REQUIRE(server->recv_exact(wire));
    CHECK(wire == expected);
}

TEST_CASE("a gather of thousands of records (beyond one submission) arrives whole and in order") {
    auto [client, server] = connected_pair();
    // 4000 records × 3 buffers = 12,000 iovecs: more than 8 linked SENDMSGs of 1024.
    constexpr size_t kRecords = 4000;
    std::vector<std::vector<uint8_t>> bodies;
    std::vector<RecordHeader> headers;
    std::mt19937 rng(1);
    size_t total = 0;
    for (size_t i = 0; i < kRecords; ++i) {
        size_t n = i % 500 == 0 ? (1u << 20) + i : rng() % 9000;
        bodies.push_back(pattern(n, i));
        total += n;
    }
    headers.reserve(kRecords);
    std::vector<std::span<const uint8_t>> gather;
    for (size_t i = 0; i < kRecords; ++i) {
        headers.push_back(record_header(static_cast<uint32_t>(i), bodies[i]));
        gather.push_back(bytes_of(headers.back()));
        gather.push_back(bodies[i]);
        gather.push_back(record_padding(bodies[i].size()));
    }
    auto sender = std::async(std::launch::async, [&, c = client.get()] { return bool(c->send(gather)); });
    for (size_t i = 0; i < kRecords; ++i) {
        auto r = server->recv_record();
        REQUIRE(r);
        REQUIRE(r->type == i);
        REQUIRE(r->body == bodies[i]);
    }
    REQUIRE(sender.get());
    INFO("total body bytes " << total);
    CHECK(total > (8u << 20));
}

TEST_CASE("both directions at once: a sender and a receiver thread per side") {
    auto [a, b] = connected_pair();
    constexpr int kRecords = 600;
    // Each side sends ~75 MiB before reading anything it could not buffer: if sending
    // and receiving on one connection serialized, this would deadlock.
    auto sizes = [](int i) { return static_cast<size_t>((i * 7919) % (256 << 10)) + (i % 3 == 0 ? (256 << 10) : 0); };
    auto run_sender = [&](Connection* c, uint64_t salt) {
        return std::async(std::launch::async, [=] {
            for (int i = 0; i < kRecords; ++i)
                if (!c->send_record(static_cast<uint32_t>(i), pattern(sizes(i), salt + i))) return false;
            return true;
        });
    };
    auto run_receiver = [&](Connection* c, uint64_t salt) {
        return std::async(std::launch::async, [=] {
            for (int i = 0; i < kRecords; ++i) {
                auto r = c->recv_record();
                if (!r || r->type != static_cast<uint32_t>(i) || r->body != pattern(sizes(i), salt + i)) return i;
            }
            return kRecords;
        });
    };
    auto sa = run_sender(a.get(), 1000), sb = run_sender(b.get(), 5000);
    auto ra = run_receiver(a.get(), 5000), rb = run_receiver(b.get(), 1000);
    CHECK(sa.get());
    CHECK(sb.get());
    CHECK(ra.get() == kRecords);
    CHECK(rb.get() == kRecords);
}

TEST_CASE("a peer that closes is a clear error, mid-record or between records") {
    SECTION("between records") {
        auto [client, server] = connected_pair();
        REQUIRE(client->send_record(1, pattern(100, 1)));
        client.reset();
        REQUIRE(server->recv_record());
        auto r = server->recv_record();
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::system);
        CHECK_THAT(r.error().describe(), Catch::Contains("closed the connection"));
    }
    for (size_t body : {size_t{1000}, size_t{4} << 20}) {
        DYNAMIC_SECTION("in the middle of a " << body << "-byte record") {
            auto [client, server] = connected_pair();
            auto full = raw_record(1, pattern(body, 2));
            send_raw(*client, std::span(full).first(full.size() / 2));
            client.reset();
            auto r = server->recv_record();
            REQUIRE_FALSE(r);
            CHECK(r.error().code == Errc::system);
            CHECK_THAT(r.error().describe(), Catch::Contains("closed the connection in the middle of a record"));
            CHECK_THAT(r.error().describe(), Catch::Contains(std::to_string(full.size() / 2) + " of " + std::to_string(full.size())));
        }
    }
    SECTION("inside a recv_exact") {
        auto [client, server] = connected_pair();
        std::array<uint8_t, 3> three{1, 2, 3};
        send_raw(*client, three);
        client.reset();
        std::array<uint8_t, 8> eight{};
        auto r = server->recv_exact(eight);
        REQUIRE_FALSE(r);
        CHECK_THAT(r.error().describe(), Catch::Contains("closed the connection"));
        CHECK_THAT(r.error().describe(), Catch::Contains("3 of 8 bytes"));
    }
}

TEST_CASE("a corrupt stream is invalid_input, and the receive side stays failed") {
    for (size_t n : {size_t{40}, size_t{3} << 20}) {
        auto good = raw_record(7, pattern(n + 3, n)); // n + 3: the body has padding
        size_t body_at = sizeof(RecordHeader), pad_at = body_at + n + 3;
        std::vector<std::pair<const char*, std::vector<uint8_t>>> cases;
        auto bad_sum = good;
        bad_sum[body_at + n / 2] ^= 0x10;
        cases.push_back({"checksum", bad_sum});
        auto bad_pad = good;
        bad_pad[pad_at + 2] = 1;
        cases.push_back({"padding", bad_pad});
        auto too_long = good;
        uint32_t len = kMaxRecordLength + 1;
        std::memcpy(&too_long[4], &len, 4);
        cases.push_back({"limit", too_long});
        for (auto& [what, bytes] : cases) {
            DYNAMIC_SECTION(what << " in a record of " << n + 3 << " bytes") {
                auto [client, server] = connected_pair();
                auto ok = raw_record(1, pattern(10, 1));
                send_raw(*client, ok);
                send_raw(*client, bytes);
                send_raw(*client, ok);
                REQUIRE(server->recv_record());
                auto r = server->recv_record();
                REQUIRE_FALSE(r);
                CHECK(r.error().code == Errc::invalid_input);
                CHECK_THAT(r.error().describe(), Catch::Contains(what));
                auto after = server->recv_record();
                REQUIRE_FALSE(after);
                CHECK(after.error().code == Errc::state);
            }
        }
    }
    SECTION("send_record refuses a body over the limit") {
        auto [client, server] = connected_pair();
        std::vector<uint8_t> huge(kMaxRecordLength + 1);
        auto r = client->send_record(1, huge);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::invalid_input);
    }
}

TEST_CASE("shutdown() wakes a thread blocked in recv_record or send") {
    auto [client, server] = connected_pair();
    // (The thread returns the error alone: GCC 12 warns wrongly about a Result<Record> in a future.)
    auto blocked = std::async(std::launch::async, [s = server.get()] {
        auto r = s->recv_record();
        return r ? std::optional<Error>() : std::optional<Error>(r.error());
    });
    CHECK(blocked.wait_for(100ms) == std::future_status::timeout);
    auto t0 = std::chrono::steady_clock::now();
    server->shutdown();
    REQUIRE(blocked.wait_for(5s) == std::future_status::ready);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    auto err = blocked.get();
    REQUIRE(err);
    CHECK(err->code == Errc::state);
    CHECK_THAT(err->describe(), Catch::Contains("shut down"));
    server->shutdown(); // idempotent
    CHECK(server->send_record(1, {}).error().code == Errc::state);
    CHECK(server->recv_record().error().code == Errc::state);

    // A send blocked on a peer that does not read.
    auto [c2, s2] = connected_pair();
    std::vector<uint8_t> big(32u << 20);
    auto sending = std::async(std::launch::async, [&, c = c2.get()] {
        Result<void> r;
        for (int i = 0; i < 16 && r; ++i) r = c->send_record(1, big);
        return r;
    });
    CHECK(sending.wait_for(300ms) == std::future_status::timeout);
    c2->shutdown();
    REQUIRE(sending.wait_for(5s) == std::future_status::ready);
    auto sr = sending.get();
    REQUIRE_FALSE(sr);
    CHECK(sr.error().code == Errc::state);
}

// Separation, not speed (speed is bench_heartbeat's): while the data connection is stuck
// behind a receiver that does not read (its buffers full, the sender blocked), heartbeats
// on the control connection still make round trips; then 256 MiB moves.
TEST_CASE("heartbeats on a second connection go on while the first is blocked and while 256 MiB moves on it") {
    auto [data_tx, data_rx] = connected_pair();
    auto [ctl_a, ctl_b] = connected_pair();
    constexpr size_t kChunk = 4u << 20, kTotal = 256u << 20;
    std::vector<uint8_t> chunk = pattern(kChunk, 3);
    std::atomic<bool> done{false}, reading{false};

    auto t0 = std::chrono::steady_clock::now();
    auto sender = std::async(std::launch::async, [&] {
        for (size_t sent = 0; sent < kTotal; sent += kChunk)
            if (!data_tx->send_record(2, chunk)) return false;
        return true;
    });
    auto receiver = std::async(std::launch::async, [&] {
        std::this_thread::sleep_for(test::scaled(300ms)); // the sender fills every buffer and blocks
        reading = true;
        size_t got = 0;
        while (got < kTotal) {
            auto r = data_rx->recv_record();
            if (!r || r->body.size() != kChunk) return false;
            got += kChunk;
        }
        done = true;
        return true;
    });
    auto echo = std::async(std::launch::async, [&] {
        for (;;) {
            auto r = ctl_b->recv_record();
            if (!r) return;
            if (!ctl_b->send_record(r->type, r->body)) return;
        }
    });
    std::vector<double> rtt_ms;
    size_t while_blocked = 0; // round trips done before the data receiver read anything
    while (!done) {
        auto s = std::chrono::steady_clock::now();
        uint64_t stamp = s.time_since_epoch().count();
        REQUIRE(ctl_a->send_record(3, {reinterpret_cast<const uint8_t*>(&stamp), sizeof stamp}));
        auto r = ctl_a->recv_record();
        REQUIRE(r);
        REQUIRE(r->body.size() == sizeof stamp);
        rtt_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count());
        if (!reading) ++while_blocked;
        std::this_thread::sleep_for(2ms);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(sender.get());
    REQUIRE(receiver.get());
    ctl_a->shutdown();
    ctl_b->shutdown();
    echo.get();
    std::sort(rtt_ms.begin(), rtt_ms.end());
    REQUIRE(rtt_ms.size() >= 10);
    double p50 = rtt_ms[rtt_ms.size() / 2], p99 = rtt_ms[rtt_ms.size() * 99 / 100];
    WARN("256 MiB in " << secs << " s (" << kTotal / secs / (1 << 20) << " MiB/s); " << rtt_ms.size() << " heartbeats ("
                       << while_blocked << " while the data connection was blocked), RTT p50 " << p50 << " ms, p99 " << p99
                       << " ms, max " << rtt_ms.back() << " ms");
    CHECK(while_blocked >= 3); // a blocked data connection held no heartbeat back
}

TEST_CASE("connecting to a closed port fails clearly") {
    uint16_t port;
    {
        auto l = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
        REQUIRE(l);
        port = l->local().port;
        l->close();
    }
    Endpoint to{"127.0.0.1", port};
    auto c = Connection::connect(to, 2s);
    REQUIRE_FALSE(c);
    CHECK(c.error().code == Errc::system);
    CHECK(c.error().sys_errno == ECONNREFUSED);
    CHECK_THAT(c.error().describe(), Catch::Contains("connecting to 127.0.0.1:" + std::to_string(port)));
    CHECK_THAT(c.error().describe(), Catch::Contains("refused"));
}

TEST_CASE("accept honours its timeout, and a closed listener refuses to accept") {
    auto l = Listener::listen(*Endpoint::parse("127.0.0.1:0"));
    REQUIRE(l);
    auto t0 = std::chrono::steady_clock::now();
    auto r = l->accept(150ms);
    auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::timeout);
    CHECK(took >= 140ms);
    CHECK(took < 2s);
    // A later connection is still accepted.
    auto accepted = std::async(std::launch::async, [&] { return l->accept(5s); });
    auto c = Connection::connect(l->local(), 5s);
    REQUIRE(c);
    auto s = accepted.get();
    REQUIRE(s);
    CHECK_THAT((*s)->peer(), Catch::StartsWith("127.0.0.1:"));
    CHECK((*c)->peer() == l->local().str());
    l->close();
    auto closed = l->accept(10ms);
    REQUIRE_FALSE(closed);
    CHECK(closed.error().code == Errc::state);
}

// `understudy drill corrupt-link`: an armed BitFlip corrupts the next send of the
// connection it was given, on the wire only, once; the peer's checks catch it.
TEST_CASE("a BitFlip flips one bit of its connection's next send, once", "[drill]") {
    const auto body = pattern(4096, 7);
    const auto copy = body;
    auto flip = std::make_shared<BitFlip>();
    SECTION("a connection without it never flips") {
        auto [client, server] = connected_pair();
        flip->arm();
        REQUIRE(client->send_record(3, body));
        auto r = server->recv_record();
        REQUIRE(r);
        CHECK(r->body == body);
        CHECK(flip->done() == 0);
        CHECK(flip->disarm()); // still armed: nobody took it
    }
    SECTION("clear: the record checksum catches it; the sender's buffer stays intact") {
        auto [client, server] = connected_pair();
        client->set_bit_flip(flip);
        REQUIRE(client->send_record(1, pattern(10, 1))); // not armed yet: intact
        flip->arm();
        REQUIRE(client->send_record(3, body));
        CHECK(flip->done() == 1);
        CHECK_FALSE(flip->disarm()); // used up
        CHECK(body == copy);
        REQUIRE(server->recv_record());
        auto r = server->recv_record();
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::invalid_input);
    }
    SECTION("sealed: the frame's tag catches it") {
        auto [client, server] = connected_pair();
        auto key = test::shared_link_key();
        auto srv = std::async(std::launch::async, [&, s = server.get()] { return secure_server(*s, *key); });
        REQUIRE(secure_client(*client, *key, LinkChannel::stream));
        REQUIRE(srv.get());
        client->set_bit_flip(flip);
        flip->arm();
        REQUIRE(client->send_record(3, body));
        CHECK(flip->done() == 1);
        CHECK(body == copy);
        auto r = server->recv_record();
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::invalid_input);
    }
}
