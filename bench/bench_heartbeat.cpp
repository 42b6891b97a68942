// Heartbeats while a backup receives a large initial synchronization (issue 5: a 4 GiB
// sync lost its backup to a heartbeat timeout as it began). A stand-in primary streams
// the initial checkpoint of N GiB of memory to a real BackupServer over loopback, with
// the real control connection (10 ms heartbeats, 100 ms timeout) on both sides, while
// `hogs` busy threads stand in for the guest's vCPUs. Reported per row: the longest
// silence each side saw between heartbeats, whether either side declared the other
// failed, and the sync's throughput. Needs no KVM: the primary's memory is a plain
// mapping with one written word per page (as a guest's touched memory).
#include <atomic>
#include <thread>

#include "bench/bench_common.hpp"
#include "common/log.hpp"
#include "common/thread_priority.hpp"
#include "hv/guest_memory.hpp"
#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"
#include "replicator/checkpoint_writer.hpp"
#include "replicator/control_link.hpp"
#include "replicator/link_security.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace understudy::bench;
using namespace std::chrono;

namespace {

struct Row {
    uint64_t memory_bytes = 0;
    unsigned hogs = 0;
    double sync_s = 0;
    double primary_max_gap_ms = 0; // backup's heartbeats, as the primary heard them
    double backup_max_gap_ms = 0;  // primary's heartbeats, as the backup heard them
    double probe_max_late_ms = 0; // the longest a 1 ms sleep overslept: what any thread could see
    bool primary_declared_failure = false;
    bool backup_session_failed = false;
    std::string failure;
};

Row run(uint64_t memory_bytes, unsigned hogs, const LinkSecurity& security, const replicator::DetectorConfig& hb) {
    Row row{memory_bytes, hogs};
    auto created = hv::GuestMemory::create(memory_bytes);
    if (!created) die(created.error().describe());
    hv::GuestMemory& mem = *created;
    for (uint64_t p = 0; p < mem.page_count(); ++p) *reinterpret_cast<uint64_t*>(mem.page_ptr(p)) = p + 1;

    BackupConfig bc;
    bc.heartbeat = hb;
    bc.security = security;
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, bc);
    if (!server) die(server.error().describe());
    Result<SessionEnd> session = make_error(Errc::state, "no session");
    std::thread serving([&] { session = (*server)->serve_one(seconds(30)); });

    std::atomic<bool> busy{true};
    // The limit of this machine at this moment: a thread that sleeps 1 ms at a time, at
    // real-time priority where allowed, notes how late it woke.
    std::atomic<uint64_t> probe_late_ns{0};
    std::thread probe([&] {
        (void)set_thread_realtime(kHeartbeatPriority);
        while (busy.load(std::memory_order_relaxed)) {
            uint64_t t = now_ns();
            std::this_thread::sleep_for(milliseconds(1));
            uint64_t late = now_ns() - t - 1000000;
            if (late > probe_late_ns.load()) probe_late_ns = late;
        }
    });
    std::vector<std::thread> hog_threads;
    for (unsigned i = 0; i < hogs; ++i)
        hog_threads.emplace_back([&] {
            volatile uint64_t x = 0;
            while (busy.load(std::memory_order_relaxed)) x = x + 1;
        });

    const uint64_t session_id = 0x5eed;
    auto data = Connection::connect((*server)->local(), seconds(5));
    if (!data) die(data.error().describe());
    if (auto r = secure_client(**data, *security.key, LinkChannel::stream); !r) die(r.error().describe());
    auto h = make_stream_header(memory_bytes, 1, hv::memory_layout_digest(mem), 1, session_id, kStreamFlagControl);
    std::span<const uint8_t> hs(reinterpret_cast<const uint8_t*>(&h), sizeof h);
    if (auto r = (*data)->send({&hs, 1}); !r) die(r.error().describe());
    auto accept = (*data)->recv_record();
    if (!accept || accept->type != kAccept) die("the backup did not accept the stream");
    auto control = Connection::connect((*server)->local(), seconds(5));
    if (!control) die(control.error().describe());
    if (auto r = secure_client(**control, *security.key, LinkChannel::control); !r) die(r.error().describe());
    auto hello = make_control_hello(session_id, hb);
    std::span<const uint8_t> he(reinterpret_cast<const uint8_t*>(&hello), sizeof hello);
    if (auto r = (*control)->send({&he, 1}); !r) die(r.error().describe());
    std::atomic<bool> failed{false};
    std::string why;
    const auto linked = steady_clock::now();
    auto link = HeartbeatLink::start(std::move(*control), hb, [&](Error e) {
        why = e.describe() + " (" + std::to_string(duration_cast<milliseconds>(steady_clock::now() - linked).count()) +
              " ms after the link started)";
        failed = true;
        (*data)->shutdown();
    });
    if (!link) die(link.error().describe());

    // The initial checkpoint, written as Primary::initial_sync writes its first round.
    auto enc = PageEncoder::create({mem.page_count(), 64, session_id});
    if (!enc) die(enc.error().describe());
    CheckpointWriter w(**data, *enc, 1024, 1);
    auto t0 = steady_clock::now();
    Result<void> sent = w.begin(1, kCheckpointInitial);
    std::vector<uint64_t> idx;
    std::vector<uint8_t> buf;
    for (uint64_t p = 0; sent && p < mem.page_count(); p += 4096) {
        idx.clear();
        buf.clear();
        for (uint64_t q = p; q < std::min(p + 4096, mem.page_count()); ++q) {
            idx.push_back(q);
            buf.insert(buf.end(), mem.page_ptr(q), mem.page_ptr(q) + hv::kPageSize);
        }
        sent = w.pages(idx, buf);
    }
    if (sent) {
        hv::VmState state;
        hv::VcpuState vs;
        vs.xsave.assign(4096, 0);
        state.vcpus.push_back(vs);
        sent = w.state(state);
    }
    if (sent)
        if (auto ended = w.end(); !ended) sent = ended.error();
    if (sent) {
        auto ack = (*data)->recv_record();
        if (!ack || ack->type != kAck) sent = make_error(Errc::state, "no ACK for the initial checkpoint");
    }
    row.sync_s = duration<double>(steady_clock::now() - t0).count();
    row.primary_max_gap_ms = double((*link)->stats().max_gap_ns) / 1e6;
    row.backup_max_gap_ms = double((*server)->heartbeats().max_gap_ns) / 1e6;
    row.primary_declared_failure = failed;
    (*link)->goodbye();
    (*data)->shutdown();
    serving.join();
    busy = false;
    for (auto& t : hog_threads) t.join();
    probe.join();
    row.probe_max_late_ms = double(probe_late_ns.load()) / 1e6;
    row.backup_session_failed = !session;
    row.failure = failed ? why : !session ? session.error().describe() : !sent ? sent.error().describe() : "";
    return row;
}

} // namespace

int main(int argc, char** argv) {
    auto opts = parse_options(argc, argv, "heartbeats while a backup receives a large initial synchronization");
    std::vector<uint64_t> gib = opts.quick ? std::vector<uint64_t>{1} : std::vector<uint64_t>{1, 4};
    std::vector<uint64_t> hogs = {0, 2};
    for (const auto& [k, v] : opts.extra) {
        if (k == "gib") gib = parse_list(v);
        else if (k == "hogs") hogs = parse_list(v);
        else die("unknown option --" + k);
    }
    log::set_level(log::Level::warn); // the backup's "primary connected" lines would interleave the table
    auto key = LinkKey::random();
    if (!key) die(key.error().describe());
    LinkSecurity security{LinkSecurityMode::required, std::make_shared<const LinkKey>(std::move(*key))};
    const replicator::DetectorConfig hb{milliseconds(10), milliseconds(100)}; // the defaults

    std::printf("%-8s %-5s %9s %10s %16s %16s %14s  %s\n", "memory", "hogs", "sync s", "MB/s", "gap at primary",
                "gap at backup", "probe late", "failure");
    std::vector<Json> rows;
    bool any_failure = false;
    for (uint64_t g : gib)
        for (uint64_t n : hogs) {
            auto r = run(g << 30, unsigned(n), security, hb);
            any_failure |= !r.failure.empty();
            std::printf("%-5llu GiB %-5u %9.2f %10.0f %13.1f ms %13.1f ms %11.1f ms  %s\n", (unsigned long long)g, r.hogs,
                        r.sync_s, double(r.memory_bytes) / 1e6 / r.sync_s, r.primary_max_gap_ms, r.backup_max_gap_ms,
                        r.probe_max_late_ms, r.failure.empty() ? "-" : r.failure.c_str());
            std::fflush(stdout);
            rows.push_back(Json()
                               .integer("memory_bytes", r.memory_bytes)
                               .integer("hogs", r.hogs)
                               .num("sync_s", r.sync_s)
                               .num("primary_max_gap_ms", r.primary_max_gap_ms)
                               .num("backup_max_gap_ms", r.backup_max_gap_ms)
                               .num("probe_max_late_ms", r.probe_max_late_ms)
                               .boolean("failed", !r.failure.empty())
                               .str("failure", r.failure));
        }
    Json j;
    j.str("benchmark", "bench_heartbeat");
    add_provenance(j, argc, argv);
    j.num("timeout_ms", 100).arr("rows", rows).boolean("any_failure", any_failure);
    return emit_json(opts, j) ? 0 : 3;
}
