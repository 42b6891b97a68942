// The control connection as the backup receives it (docs/wire-format.md, "Control
// connection"): the 64-byte hello, checked by check_control_hello, then HEARTBEAT /
// GOODBYE / HANDOVER records read by a real HeartbeatLink through a real loopback TCP Connection,
// so Connection::recv_record's framing (length bound, padding, checksum, records split
// across reads) and the link's heartbeat decoding both see the fuzz bytes.
//
// Input: byte 0 = fix-up flags (bit 0: recompute record checksums), then the bytes the
// "primary" sends: hello (64 bytes) and records. The session id the backup expects is
// kSession (the seeds carry it).

#include "fuzz/fuzz_support.hpp"
#include "replicator/control_link.hpp"
#include "replicator/wire.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kSession = 0x5EED5EED5EED5EEDull;

Listener* listener() {
    static std::unique_ptr<Listener> l = [] {
        auto r = Listener::listen(Endpoint{"127.0.0.1", 0});
        if (!r) fuzz::fail("control_link: cannot listen on loopback: " + r.error().describe());
        return std::make_unique<Listener>(std::move(*r));
    }();
    return l.get();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    fuzz::Input in(data, size);
    uint8_t flags = in.u8();
    auto rest = in.rest();
    std::vector<uint8_t> bytes(rest.begin(), rest.end());

    // The hello alone, without the network: is_control_magic and check_control_hello.
    ControlHello hello{};
    if (!bytes.empty()) std::memcpy(&hello, bytes.data(), std::min(bytes.size(), sizeof hello));
    bool ctrl = is_control_magic(std::span<const uint8_t, 8>(reinterpret_cast<const uint8_t*>(hello.magic), 8));
    auto ok = check_control_hello(hello, kSession);
    if (ok && !ctrl) fuzz::fail("control_link: a hello without the control magic passed");
    if (!ok || bytes.size() < sizeof hello) return 0;
    if (flags & 1) fuzz::fix_record_checksums(bytes, sizeof hello);

    // The real thing: a primary connects and sends the bytes; the backup side reads the
    // hello and runs a HeartbeatLink over the rest, as BackupServer::open_control does.
    Listener* l = listener();
    auto client = Connection::connect(l->local(), 2s);
    if (!client) return 0; // a loaded machine; nothing learnt
    auto server = l->accept(2s);
    if (!server) return 0;
    std::span<const uint8_t> all(bytes);
    std::span<const uint8_t> parts[1] = {all};
    if (!(*client)->send(parts)) return 0;
    (*client)->shutdown(); // end of input: the link sees the peer close after the bytes

    ControlHello got;
    if (!(*server)->recv_exact({reinterpret_cast<uint8_t*>(&got), sizeof got}) || std::memcmp(&got, &hello, sizeof got) != 0)
        fuzz::fail("control_link: the hello did not arrive as sent");

    replicator::DetectorConfig cfg{.heartbeat_interval = 1000ms, .timeout = 5000ms};
    // A backup that would take over: HANDOVER requests reach the callback (not answered).
    auto link = HeartbeatLink::start(std::move(*server), cfg, [](Error) {}, [](uint64_t) {});
    if (!link) return 0;
    // Every input ends: a malformed record or the close fails the link, GOODBYE ends it.
    LinkEnd end = (*link)->wait_end(4000ms);
    if (end == LinkEnd::running) {
        fuzz::fail("control_link: the link neither failed nor ended after the peer closed");
    }
    auto st = (*link)->stats();
    if (st.received > bytes.size() / 32) fuzz::fail("control_link: more heartbeats counted than sent");
    (*link)->stop();
    return 0;
}
