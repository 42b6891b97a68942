// bench_checkpoint: the replicator end to end over loopback, in one process.
//
// A BackupServer on 127.0.0.1:0 in a thread, a 1 GiB churn guest with 1 vCPU (dirty
// ring) and a Primary protecting it. Per row: time to protection (epoch 1, the initial
// synchronization, reported apart), then ~5 s of acknowledged checkpoints (figures from
// the on_acked hook, bytes from recent_epochs()): pause p50/p99/max and its parts, the
// physical limit measured in the same run on the same VM (paused: harvest + memcpy of the
// pages the same churn dirtied in one epoch), checkpoint bytes raw and on the wire, time
// to ACK. Then the idle guest's checkpoint rate at the smallest epoch (1 ms) and the
// end-to-end raw dirty-data throughput next to the transport's loopback bandwidth.
// Link security (docs/security.md) is on, as by default; each throughput row also runs
// with --link-security disabled right after it, and the cost of encryption is reported
// as the ratio of the two (--link-cost=1: only those rows).

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "bench/bench_common.hpp"
#include "bench/bench_link.hpp"
#include "common/log.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/kvm.hpp"
#include "replicator/backup.hpp"
#include "replicator/link_security.hpp"
#include "replicator/primary.hpp"
#include "replicator/transport.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::bench;
using namespace understudy::replicator;
using namespace std::chrono;

namespace {

// Targets from the replicator issue.
constexpr double kPauseLimitFactor = 1.5;
constexpr double kPauseLimitSlackUs = 100;
constexpr uint64_t kPauseTargetPages = 1000; // the row the pause target is judged on
constexpr double kWireOverRawMax = 0.30;
constexpr double kIdleCkptPerSMin = 200;
constexpr double kRawMBpsMin = 500;
constexpr double kLinkCostMax = 0.15; // link security issue: encryption costs at most 15 % of throughput

bool g_verbose = false; // --verbose=1: every measured epoch on stderr
// --churn="KEYS": one custom row with these churn keys (bench/vs_qemu uses it), with
// --vcpus=N guest vCPUs (default 1) and --image=PATH (default: the build's churn.elf).
unsigned g_vcpus = 1;
std::string g_image;
bool g_custom = false;

// boot() for an image given by path (the custom row's --image).
std::unique_ptr<Vm> boot_path(const std::string& path, const std::string& cmdline, VmConfig cfg,
                              std::shared_ptr<std::string> console) {
    cfg.console = [console](std::string_view line) { *console += std::string(line) + "\n"; };
    auto vm = Vm::create(cfg);
    if (!vm) die("creating the VM: " + vm.error().describe());
    auto file = read_file(path, 64 << 20);
    if (!file) die(file.error().describe());
    auto img = load_pvh_image(**vm, *file, cmdline);
    if (!img) die(img.error().describe());
    return std::move(*vm);
}

enum class Kind { churn, idle, throughput };
const char* kind_name(Kind k) { return k == Kind::churn ? "churn" : k == Kind::idle ? "idle" : "throughput"; }

struct Row {
    std::string name;
    Kind kind = Kind::churn;
    uint64_t target_pages = 0; // distinct pages per epoch the churn keys aim at (0: n/a)
    std::string churn;
    milliseconds epoch{25};
    unsigned max_in_flight = 3;
    double seconds = 5;
    size_t limit_samples = 0; // 0: no limit measurement
    bool secure = true;       // link security required (false: disabled)
    std::string content;      // throughput rows: churn content, to pair sealed and clear rows
};

struct LimitSample {
    double total_us = 0, harvest_us = 0, copy_us = 0, scattered_us = 0;
    uint64_t pages = 0;
};

struct Timed {
    EpochFigures f;
    uint64_t acked_at_ns = 0;
};

struct RowResult {
    Row row;
    std::string error;
    // Epoch 1.
    double sync_ms = 0;
    unsigned sync_rounds = 0;
    EpochFigures sync;
    // Measured window.
    double window_s = 0;
    std::vector<EpochFigures> epochs;
    std::vector<double> acked_s; // when each of `epochs` was ACKed, s from the window's start (--samples)
    size_t hook_without_bytes = 0; // on_acked copies that arrived before the sender filled the bytes
    std::vector<LimitSample> limit;
    uint64_t guest_pages_per_s = 0;
};

struct BackupThread {
    std::unique_ptr<BackupServer> server;
    std::thread thread;
    std::mutex mu;
    std::string error;

    explicit BackupThread(bool secure) {
        auto ep = Endpoint::parse("127.0.0.1:0");
        if (!ep) die(ep.error().describe());
        BackupConfig cfg;
        cfg.security = link_security(secure);
        auto s = BackupServer::listen(*ep, {}, cfg);
        if (!s) die("backup listen: " + s.error().describe());
        server = std::move(*s);
        thread = std::thread([this] {
            auto r = server->serve_one(seconds(30));
            if (!r) {
                std::lock_guard lock(mu);
                error = r.error().describe();
            }
        });
    }
    ~BackupThread() {
        server->stop();
        if (thread.joinable()) thread.join();
    }
};

uint64_t pages_stamped(Vm& vm, uint64_t header_gpa) {
    auto h = vm.memory().read_obj<abi::us_churn_header>(Gpa{header_gpa});
    if (!h || h->magic != US_CHURN_MAGIC) return 0;
    uint64_t n = 0;
    for (unsigned v = 0; v < h->nr_vcpus && v < US_CHURN_MAX_VCPUS; ++v)
        if (h->vcpu[v].iteration) n += (h->vcpu[v].iteration - 1) * h->vcpu[v].ws_pages + h->vcpu[v].cursor;
    return n;
}

// The physical limit on the same VM, with the Primary gone: let churn run for one epoch
// after a harvest, pause, then time harvest_dirty() + memcpy of every dirty page into a
// prefaulted buffer (what a pause must do at least). Also, for reference, memcpy of the
// same number of pages picked at random over all of guest memory.
std::vector<LimitSample> measure_limit(Vm& vm, milliseconds epoch, size_t samples) {
    auto& mem = vm.memory();
    const uint64_t n = mem.page_count();
    Bitmap dirty(n);
    std::vector<uint8_t> buf;
    std::vector<uint64_t> random_pages;
    std::mt19937_64 rng(42);
    std::vector<LimitSample> out;
    for (size_t i = 0; i < samples + 2; ++i) { // 2 warm-up samples
        dirty.clear_all();
        if (auto r = vm.harvest_dirty(dirty); !r) die("harvest: " + r.error().describe());
        std::this_thread::sleep_for(epoch);
        vm.pause_all();
        uint64_t t0 = now_ns();
        dirty.clear_all();
        auto r = vm.harvest_dirty(dirty);
        uint64_t t1 = now_ns();
        uint64_t count = dirty.count();
        if (buf.size() < count * hv::kPageSize) {
            buf.assign(count * hv::kPageSize + hv::kPageSize, 1); // prefaulted before any timing that counts
            vm.resume_all();
            continue;
        }
        uint8_t* dst = buf.data();
        dirty.for_each_set([&](size_t idx) {
            std::memcpy(dst, mem.page_ptr(idx), hv::kPageSize);
            dst += hv::kPageSize;
        });
        uint64_t t2 = now_ns();
        random_pages.resize(count);
        for (auto& p : random_pages) p = rng() % n;
        std::sort(random_pages.begin(), random_pages.end());
        uint64_t t3 = now_ns();
        dst = buf.data();
        for (uint64_t p : random_pages) {
            std::memcpy(dst, mem.page_ptr(p), hv::kPageSize);
            dst += hv::kPageSize;
        }
        uint64_t t4 = now_ns();
        vm.resume_all();
        if (!r) die("harvest: " + r.error().describe());
        if (i < 2) continue;
        out.push_back({double(t2 - t0) / 1e3, double(t1 - t0) / 1e3, double(t2 - t1) / 1e3, double(t4 - t3) / 1e3, count});
    }
    return out;
}

RowResult run_row(const Row& row, uint64_t memory_bytes, bool quick) {
    RowResult res;
    res.row = row;
    VmConfig cfg;
    cfg.memory_bytes = memory_bytes;
    cfg.vcpus = g_vcpus;
    cfg.dirty.mode = DirtyMode::ring;
    auto console = std::make_shared<std::string>();
    auto vm = g_image.empty() ? boot("churn", row.churn, cfg, console) : boot_path(g_image, row.churn, cfg, console);
    if (auto r = vm->start(); !r) die(r.error().describe());
    auto header = vm->wait_report(0, abi::US_REPORT_LAYOUT, seconds(20));
    if (!header || !vm->wait_report(0, abi::US_REPORT_READY, seconds(20))) {
        auto s = vm->stop_reason();
        die("churn did not start (" + row.churn + ")" + (s ? std::string(": ") + s->message : "") + "\nconsole:\n" + *console);
    }
    std::this_thread::sleep_for(milliseconds(200));

    BackupThread backup(row.secure);
    auto conn = Connection::connect(backup.server->local(), seconds(5));
    if (!conn) die("connect: " + conn.error().describe());

    std::mutex mu;
    std::vector<Timed> acked;
    unsigned rounds = 0;
    PrimaryHooks hooks;
    hooks.on_sync_progress = [&](const SyncProgress& p) {
        std::lock_guard lock(mu);
        rounds = p.round;
    };
    hooks.on_acked = [&](const EpochFigures& f) {
        uint64_t t = now_ns();
        std::lock_guard lock(mu);
        acked.push_back({f, t});
    };
    PrimaryConfig pc;
    pc.epoch = row.epoch;
    pc.max_in_flight = row.max_in_flight;
    pc.security = link_security(row.secure);
    uint64_t t_start = now_ns();
    auto primary = Primary::start(*vm, std::move(*conn), pc, hooks);
    if (!primary) die("Primary::start: " + primary.error().describe());
    auto& p = **primary;
    uint64_t deadline = t_start + 120'000'000'000ull;
    while (!p.is_protected() && !p.failure() && now_ns() < deadline) std::this_thread::sleep_for(microseconds(500));
    if (!p.is_protected()) {
        res.error = p.failure() ? p.failure()->describe() : "not protected within 120 s";
        p.stop();
        (void)p.wait();
        vm->stop();
        (void)vm->wait_for(seconds(10));
        return res;
    }
    double warmup_s = quick ? 0.2 : 0.5;
    std::this_thread::sleep_for(duration<double>(warmup_s));
    vm->pause_all();
    uint64_t stamped0 = pages_stamped(*vm, *header);
    vm->resume_all();
    uint64_t w0 = now_ns();
    std::this_thread::sleep_for(duration<double>(row.seconds));
    uint64_t w1 = now_ns();
    vm->pause_all();
    uint64_t stamped1 = pages_stamped(*vm, *header);
    vm->resume_all();
    p.stop();
    auto waited = p.wait();
    if (!waited) res.error = "primary: " + waited.error().describe();
    // The backup's session usually ends "torn inside a checkpoint": the Primary stops
    // wherever its stream is. That is expected here and not reported.
    res.window_s = double(w1 - w0) / 1e9;
    res.guest_pages_per_s = uint64_t(double(stamped1 - stamped0) / (double(w1 - w0) / 1e9));

    // on_acked may see an epoch before the sender filled in its bytes; recent_epochs()
    // has the complete figures.
    std::map<uint64_t, EpochFigures> complete;
    for (const auto& f : p.recent_epochs()) complete[f.epoch] = f;
    std::lock_guard lock(mu);
    res.sync_rounds = rounds;
    for (const auto& t : acked) {
        EpochFigures f = t.f;
        if (auto it = complete.find(f.epoch); it != complete.end()) {
            if (f.raw_bytes == 0 && it->second.raw_bytes != 0) ++res.hook_without_bytes;
            f = it->second;
        }
        if (f.epoch == 1) {
            res.sync = f;
            res.sync_ms = double(t.acked_at_ns - t_start) / 1e6;
            continue;
        }
        if (t.acked_at_ns >= w0 && t.acked_at_ns < w1) {
            res.epochs.push_back(f);
            res.acked_s.push_back(double(t.acked_at_ns - w0) / 1e9);
        }
    }
    if (g_verbose)
        for (const auto& f : res.epochs)
            std::fprintf(stderr,
                         "  %s epoch %llu: pause %.0f us (stop %.0f harvest %.0f state %.0f copy %.0f), dirty %llu, at pause "
                         "%llu, ack %.1f ms, encode %.1f ms, transmit %.1f ms\n",
                         row.name.c_str(), (unsigned long long)f.epoch, f.pause_ns / 1e3, f.stop_ns / 1e3, f.harvest_ns / 1e3,
                         f.state_ns / 1e3, f.copy_ns / 1e3, (unsigned long long)f.dirty_pages,
                         (unsigned long long)f.copied_at_pause, f.ack_ns / 1e6, f.encode_ns / 1e6, f.transmit_ns / 1e6);
    if (row.limit_samples && !vm->stop_reason()) res.limit = measure_limit(*vm, row.epoch, row.limit_samples);
    if (auto s = vm->stop_reason(); s && res.error.empty()) res.error = std::string("the guest stopped: ") + s->message;
    vm->stop();
    if (!vm->wait_for(seconds(10))) die("the VM did not stop");
    return res;
}

Summary us_of(const std::vector<EpochFigures>& v, uint64_t EpochFigures::*m) {
    std::vector<double> x;
    for (const auto& f : v) x.push_back(double(f.*m) / 1e3);
    return summarize(x);
}

} // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv, "checkpoint pause, bytes, ACK time, idle rate and throughput, end to end over loopback");
    std::string why;
    if (!kvm_available(&why)) die("KVM is not available: " + why);
    understudy::log::set_level(understudy::log::Level::warn); // the backup's "primary connected" lines would interleave the table

    uint64_t mib = opt.quick ? 256 : 1024;
    double seconds_per_row = opt.quick ? 1.5 : 5;
    double idle_seconds = opt.quick ? 1.5 : 3;
    std::vector<uint64_t> page_counts = {100, 1000, 10000};
    int64_t epoch_override = -1;
    std::string custom_churn;
    bool run_churn = true, run_idle = true, run_tp = true;
    std::string samples_file; // --samples=FILE: every measured checkpoint, TSV (for bench/report.py)
    for (const auto& [k, v] : opt.extra) {
        if (k == "pages") page_counts = parse_list(v);
        else if (k == "mib") mib = parse_list(v).at(0);
        else if (k == "seconds") seconds_per_row = std::strtod(v.c_str(), nullptr);
        else if (k == "verbose") g_verbose = parse_list(v).at(0) != 0;
        else if (k == "epoch-ms") epoch_override = int64_t(parse_list(v).at(0));
        else if (k == "cases") {
            run_churn = v.find("churn") != std::string::npos;
            run_idle = v.find("idle") != std::string::npos;
            run_tp = v.find("throughput") != std::string::npos;
        } else if (k == "churn") {
            g_custom = true;
            custom_churn = v;
        } else if (k == "vcpus") {
            g_vcpus = unsigned(parse_list(v).at(0));
            if (g_vcpus < 1 || g_vcpus > 2) die("--vcpus=: 1 or 2");
        } else if (k == "image") g_image = v;
        else if (k == "samples") samples_file = v;
        else if (k == "link-cost") {
            if (parse_list(v).at(0) != 0) run_churn = run_idle = false, run_tp = true;
        } else die("unknown option --" + k + "= (want pages, mib, seconds, epoch-ms, cases, verbose, churn, vcpus, image, samples, link-cost)");
    }
    const uint64_t memory_bytes = mib * kMiB;

    std::vector<Row> rows;
    if (g_custom) { // only the custom row
        Row r;
        r.name = "custom";
        r.kind = Kind::churn;
        r.churn = custom_churn;
        r.epoch = milliseconds(epoch_override > 0 ? epoch_override : 25);
        r.seconds = seconds_per_row;
        rows.push_back(r);
        run_churn = run_idle = run_tp = false;
    }
    if (run_churn)
        for (uint64_t n : page_counts) {
            // Epoch 25 ms, the working set rewritten about once an epoch. Each first write
            // after a harvest costs the guest a write-protection fault (~4-10 us here), so
            // 10,000 pages in 25 ms (400,000 pages/s) is out of a vCPU's reach: above
            // 1,250 pages per epoch the epoch grows to keep the rate at 50,000 pages/s, which
            // churn sustains while replicated (at 100,000 pages/s asked it reached ~67,000).
            int64_t ms = epoch_override > 0 ? epoch_override : std::max<int64_t>(25, int64_t(n / 50));
            Row r;
            r.name = std::to_string(n) + " pages";
            r.kind = Kind::churn;
            r.target_pages = n;
            r.churn = "pages=" + std::to_string(n) + " rate=" + std::to_string(n * 1000 / uint64_t(ms)) + " content=stamp";
            r.epoch = milliseconds(ms);
            r.seconds = seconds_per_row;
            r.limit_samples = opt.quick ? 10 : 30;
            rows.push_back(r);
        }
    if (run_idle) {
        Row r;
        r.name = "idle";
        r.kind = Kind::idle;
        r.churn = "pages=16 rate=50 content=stamp";
        r.epoch = milliseconds(1);
        r.max_in_flight = 4;
        r.seconds = idle_seconds;
        rows.push_back(r);
    }
    if (run_tp) {
        uint64_t ws = opt.quick ? 16384 : 65536;
        for (const char* content : {"pattern", "random"})
            for (bool secure : {true, false}) { // the same content sealed, then in clear
                Row r;
                r.name = std::string("throughput ") + content + (secure ? "" : " clear");
                r.kind = Kind::throughput;
                r.churn = "pages=" + std::to_string(ws) + " rate=0 content=" + content;
                r.epoch = milliseconds(100);
                r.seconds = seconds_per_row;
                r.limit_samples = secure ? (opt.quick ? 4 : 10) : 0;
                r.secure = secure;
                r.content = content;
                rows.push_back(r);
            }
    }

    std::string date = utc_timestamp();
    std::printf("bench_checkpoint  %s%s\n", date.c_str(), opt.quick ? "  (--quick)" : "");
    std::printf("In one process: BackupServer on 127.0.0.1 (thread), churn guest with %u vCPU(s), %llu MiB, dirty ring, Primary\n"
                "(in-epoch copy on). Per row: protection established, %.1f s warm-up, then %.1f s of ACKed checkpoints\n"
                "(idle: %.1f s); epoch 1 (initial synchronization) reported separately. Limit = same VM after the\n"
                "Primary stops: paused, harvest_dirty() + memcpy of the pages churn dirtied in one epoch.\n\n",
                g_vcpus, (unsigned long long)mib, opt.quick ? 0.2 : 0.5, seconds_per_row, idle_seconds);
    std::fflush(stdout);

    const size_t loop_bytes = opt.quick ? (64u << 20) : (256u << 20);
    double loop_mbps = loopback_mbps(loop_bytes, false), loop_sealed_mbps = loopback_mbps(loop_bytes, true);
    std::vector<RowResult> results;
    for (const auto& r : rows) {
        std::fprintf(stderr, "bench_checkpoint: %s (%s, epoch %lld ms)...\n", r.name.c_str(), r.churn.c_str(),
                     (long long)r.epoch.count());
        results.push_back(run_row(r, memory_bytes, opt.quick));
    }
    double loop_mbps2 = loopback_mbps(loop_bytes, false), loop_sealed_mbps2 = loopback_mbps(loop_bytes, true);

    bool all_ok = true;
    bool any_error = false;
    std::vector<Json> jrows;

    // ---- epoch 1 ----
    std::printf("Initial synchronization (epoch 1)\n");
    std::printf("%-20s | %10s %6s | %12s %10s | %9s %9s %9s\n", "row", "to prot ms", "rounds", "s&c pause ms",
                "pages", "raw MiB", "wire MiB", "sync MB/s");
    for (const auto& r : results) {
        if (!r.error.empty() && r.sync.epoch == 0) continue;
        std::printf("%-20s | %10.0f %6u | %12.2f %10llu | %9.1f %9.1f %9.0f\n", r.row.name.c_str(), r.sync_ms, r.sync_rounds,
                    double(r.sync.pause_ns) / 1e6, (unsigned long long)r.sync.copied_at_pause, double(r.sync.raw_bytes) / kMiB,
                    double(r.sync.wire_bytes) / kMiB, r.sync_ms > 0 ? double(r.sync.raw_bytes) / (r.sync_ms / 1e3) / 1e6 : 0.0);
    }
    std::printf("(to prot = Primary::start() to the ACK of epoch 1; s&c pause = its final stop-and-copy pause; pages =\n"
                " pages copied in that pause; sync MB/s = raw bytes of epoch 1 over time to protection)\n\n");

    // ---- pause ----
    std::printf("Pause per checkpoint (us), epochs 2.. in the window\n");
    std::printf("%-20s %5s | %5s %7s %7s | %8s %8s %8s | %7s %7s %7s %7s | %8s %8s | %7s | %-22s\n", "row", "epoch", "ckpts",
                "dirty", "@pause", "p50", "p99", "max", "stop", "harvest", "state", "copy", "limit", "scatter", "p99/lim",
                "target p99<=1.5L+100");
    std::printf("%-20s %5s | %5s %7s %7s | %8s %8s %8s | %31s | %8s %8s | %7s |\n", "", "ms", "", "p50", "p50", "", "", "",
                "p50 of each part", "p50", "p50", "");
    for (auto& r : results) {
        if (r.row.kind == Kind::idle) continue;
        if (!r.error.empty()) {
            std::printf("%-20s  FAILED: %s\n", r.row.name.c_str(), r.error.c_str());
            any_error = true;
            if (r.epochs.empty()) continue;
        }
        auto pause = us_of(r.epochs, &EpochFigures::pause_ns);
        std::vector<double> nostop, dirty, atpause;
        for (const auto& f : r.epochs) {
            nostop.push_back(double(f.pause_ns - std::min(f.pause_ns, f.stop_ns)) / 1e3);
            dirty.push_back(double(f.dirty_pages));
            atpause.push_back(double(f.copied_at_pause));
        }
        auto ns = summarize(nostop);
        std::vector<double> lt, ls;
        for (const auto& s : r.limit) {
            lt.push_back(s.total_us);
            ls.push_back(s.scattered_us);
        }
        auto lim = summarize(lt);
        double bound = kPauseLimitFactor * lim.p50 + kPauseLimitSlackUs;
        bool judged = r.row.kind == Kind::churn && r.row.target_pages == kPauseTargetPages;
        bool met = pause.p99 <= bound, met_ns = ns.p99 <= bound;
        if (judged) all_ok = all_ok && met;
        char verdict[48];
        std::snprintf(verdict, sizeof verdict, "%s%s (<= %.0f)", met ? "met" : "MISSED", judged ? "" : ", info", bound);
        std::printf("%-20s %5lld | %5zu %7.0f %7.0f | %8.1f %8.1f %8.1f | %7.1f %7.1f %7.1f %7.1f | %8.1f %8.1f | %7.2f | %s\n",
                    r.row.name.c_str(), (long long)r.row.epoch.count(), r.epochs.size(), summarize(dirty).p50,
                    summarize(atpause).p50, pause.p50, pause.p99, pause.max, us_of(r.epochs, &EpochFigures::stop_ns).p50,
                    us_of(r.epochs, &EpochFigures::harvest_ns).p50, us_of(r.epochs, &EpochFigures::state_ns).p50,
                    us_of(r.epochs, &EpochFigures::copy_ns).p50, lim.p50, summarize(ls).p50,
                    lim.p50 > 0 ? pause.p99 / lim.p50 : 0.0, verdict);
        std::snprintf(verdict, sizeof verdict, "%s (<= %.0f)", met_ns ? "met" : "MISSED", bound);
        std::printf("%-20s %5s | %5s %7s %7s | %8.1f %8.1f %8.1f | %31s | %8s %8s | %7.2f | %s\n", "  excluding stop", "", "",
                    "", "", ns.p50, ns.p99, ns.max, "(pause - stop: harvest+state+copy)", "", "",
                    lim.p50 > 0 ? ns.p99 / lim.p50 : 0.0, verdict);
    }
    std::printf("(dirty = pages in the checkpoint; @pause = of those, copied while paused, the rest was copied at\n"
                " mid-epoch while the guest ran; stop = pause_all() until the vCPU is out of KVM_RUN; limit = harvest +\n"
                " memcpy of one epoch's dirty pages on the paused VM, p50 of the samples; scatter = memcpy alone of as many\n"
                " pages picked at random over guest memory; the pause target is judged on the 1000-page row only)\n\n");

    // Limit details.
    std::printf("Limit samples (same run, same VM, Primary stopped; us)\n");
    std::printf("%-20s | %7s | %7s %8s %8s | %8s %8s | %8s\n", "row", "samples", "pages", "harvest", "memcpy", "limit", "p99",
                "us/page");
    for (const auto& r : results) {
        if (r.limit.empty()) continue;
        std::vector<double> t, h, c, pg;
        for (const auto& s : r.limit) {
            t.push_back(s.total_us);
            h.push_back(s.harvest_us);
            c.push_back(s.copy_us);
            pg.push_back(double(s.pages));
        }
        auto ts = summarize(t);
        auto ps = summarize(pg);
        std::printf("%-20s | %7zu | %7.0f %8.1f %8.1f | %8.1f %8.1f | %8.3f\n", r.row.name.c_str(), r.limit.size(), ps.p50,
                    summarize(h).p50, summarize(c).p50, ts.p50, ts.p99, ps.p50 > 0 ? ts.p50 / ps.p50 : 0.0);
    }
    std::printf("\n");

    // ---- bytes and ACK ----
    std::printf("Checkpoint bytes and time to ACK\n");
    std::printf("%-20s | %9s %9s %7s | %-18s | %8s %8s %8s %8s | %6s %6s %6s %6s %6s | %s\n", "row", "raw KiB", "wire KiB",
                "wire%", "target wire<=30%", "ACK p50", "ACK p99", "encode", "transmit", "zero", "same", "xor", "lz4", "raw",
                "guest pages/s");
    std::printf("%-20s | %9s %9s %7s | %-18s | %8s %8s %8s %8s | %34s |\n", "", "/ckpt", "/ckpt", "", "", "ms", "ms",
                "p50 ms", "p50 ms", "pages by encoding, % of all");
    for (const auto& r : results) {
        if (r.epochs.empty()) continue;
        uint64_t raw = 0, wire = 0;
        std::array<uint64_t, kEncodingCount> enc{};
        uint64_t enc_total = 0;
        for (const auto& f : r.epochs) {
            raw += f.raw_bytes;
            wire += f.wire_bytes;
            for (size_t e = 0; e < kEncodingCount; ++e) enc[e] += f.codec.pages[e];
            enc_total += f.codec.page_total();
        }
        double ratio = raw ? double(wire) / double(raw) : 0;
        bool judged = r.row.kind == Kind::churn;
        bool met = ratio <= kWireOverRawMax;
        if (judged) all_ok = all_ok && met;
        char verdict[32];
        std::snprintf(verdict, sizeof verdict, "%s", judged ? (met ? "met" : "MISSED") : "-");
        auto ack = us_of(r.epochs, &EpochFigures::ack_ns);
        auto pct = [&](PageEncoding e) { return enc_total ? 100.0 * double(enc[size_t(e)]) / double(enc_total) : 0.0; };
        double n = double(r.epochs.size());
        std::printf("%-20s | %9.1f %9.1f %6.1f%% | %-18s | %8.2f %8.2f %8.2f %8.2f | %6.1f %6.1f %6.1f %6.1f %6.1f | %llu\n",
                    r.row.name.c_str(), double(raw) / n / 1024, double(wire) / n / 1024, 100 * ratio, verdict,
                    ack.p50 / 1e3, ack.p99 / 1e3, us_of(r.epochs, &EpochFigures::encode_ns).p50 / 1e3,
                    us_of(r.epochs, &EpochFigures::transmit_ns).p50 / 1e3, pct(PageEncoding::zero), pct(PageEncoding::same),
                    pct(PageEncoding::xor_lz4), pct(PageEncoding::lz4), pct(PageEncoding::raw),
                    (unsigned long long)r.guest_pages_per_s);
    }
    std::printf("(raw = dirty pages x 4 KiB; wire = bytes of the checkpoint's records on the socket; ACK = from resume to\n"
                " the backup's ACK; encode / transmit = the sender's time in the codec / in the socket for the checkpoint;\n"
                " churn content=stamp rewrites the 32-byte stamp of each page; wire%% judged on churn rows)\n\n");

    // ---- rate and throughput ----
    std::printf("Checkpoint rate and end-to-end throughput\n");
    std::printf("loopback TCP through the transport (4 MiB sends), before / after the rows: %.0f / %.0f MB/s\n",
                loop_mbps, loop_mbps2);
    std::printf("%-20s | %5s | %8s | %9s %9s | %9s | %9s %9s | %-22s\n", "row", "epoch", "ckpt/s", "raw MB/s", "wire MB/s",
                "alone MB/s", "pause p50", "pause p99", "target");
    double best_raw = 0;
    std::string best_row;
    for (const auto& r : results) {
        if (r.epochs.empty() || r.window_s <= 0) continue;
        uint64_t raw = 0, wire = 0;
        for (const auto& f : r.epochs) {
            raw += f.raw_bytes;
            wire += f.wire_bytes;
        }
        double rate = double(r.epochs.size()) / r.window_s;
        double raw_mbps = double(raw) / r.window_s / 1e6, wire_mbps = double(wire) / r.window_s / 1e6;
        auto pause = us_of(r.epochs, &EpochFigures::pause_ns);
        std::string verdict = "-";
        char b[48];
        if (r.row.kind == Kind::idle) {
            bool met = rate >= kIdleCkptPerSMin;
            all_ok = all_ok && met;
            std::snprintf(b, sizeof b, "%s (>= %.0f ckpt/s)", met ? "met" : "MISSED", kIdleCkptPerSMin);
            verdict = b;
        }
        if (r.row.kind == Kind::throughput && r.row.secure && raw_mbps > best_raw) {
            best_raw = raw_mbps;
            best_row = r.row.name;
        }
        // What churn dirties with tracking on but nobody replicating (the limit phase):
        // the ceiling for any replicator with this guest on this host.
        std::vector<double> alone_pages;
        for (const auto& s : r.limit) alone_pages.push_back(double(s.pages));
        double alone_mbps = alone_pages.empty() ? 0.0
                                                : summarize(alone_pages).p50 * double(hv::kPageSize) /
                                                      (double(r.row.epoch.count()) / 1e3) / 1e6;
        std::printf("%-20s | %5lld | %8.1f | %9.1f %9.1f | %10.1f | %9.1f %9.1f | %s\n", r.row.name.c_str(),
                    (long long)r.row.epoch.count(), rate, raw_mbps, wire_mbps, alone_mbps, pause.p50, pause.p99,
                    verdict.c_str());
        Json j;
        std::vector<double> nostop;
        for (const auto& f : r.epochs) nostop.push_back(double(f.pause_ns - std::min(f.pause_ns, f.stop_ns)) / 1e3);
        std::vector<double> lt;
        for (const auto& s : r.limit) lt.push_back(s.total_us);
        auto lim = summarize(lt);
        std::vector<double> dirty, atpause, lpages;
        for (const auto& f : r.epochs) {
            dirty.push_back(double(f.dirty_pages));
            atpause.push_back(double(f.copied_at_pause));
        }
        for (const auto& s : r.limit) lpages.push_back(double(s.pages));
        j.str("name", r.row.name)
            .str("kind", kind_name(r.row.kind))
            .str("churn", r.row.churn)
            .integer("epoch_ms", uint64_t(r.row.epoch.count()))
            .integer("max_in_flight", r.row.max_in_flight)
            .integer("target_pages_per_epoch", r.row.target_pages)
            .str("error", r.error)
            .num("sync_to_protected_ms", r.sync_ms)
            .integer("sync_rounds", r.sync_rounds)
            .num("sync_pause_ms", double(r.sync.pause_ns) / 1e6)
            .integer("sync_pages_at_pause", r.sync.copied_at_pause)
            .integer("sync_raw_bytes", r.sync.raw_bytes)
            .integer("sync_wire_bytes", r.sync.wire_bytes)
            .num("window_s", r.window_s)
            .integer("checkpoints", r.epochs.size())
            .num("checkpoints_per_s", rate)
            .num("dirty_pages_p50", summarize(dirty).p50)
            .num("copied_at_pause_p50", summarize(atpause).p50)
            .obj("pause_us", summary_json(pause))
            .obj("pause_excluding_stop_us", summary_json(summarize(nostop)))
            .obj("stop_us", summary_json(us_of(r.epochs, &EpochFigures::stop_ns)))
            .obj("harvest_us", summary_json(us_of(r.epochs, &EpochFigures::harvest_ns)))
            .obj("state_us", summary_json(us_of(r.epochs, &EpochFigures::state_ns)))
            .obj("copy_us", summary_json(us_of(r.epochs, &EpochFigures::copy_ns)))
            .obj("ack_us", summary_json(us_of(r.epochs, &EpochFigures::ack_ns)))
            .num("limit_us_p50", lim.p50)
            .num("limit_us_p99", lim.p99)
            .num("limit_pages_p50", summarize(lpages).p50)
            .num("pause_p99_over_limit", lim.p50 > 0 ? pause.p99 / lim.p50 : 0.0)
            .num("pause_excl_stop_p99_over_limit", lim.p50 > 0 ? summarize(nostop).p99 / lim.p50 : 0.0)
            .integer("raw_bytes", raw)
            .integer("wire_bytes", wire)
            .num("wire_over_raw", raw ? double(wire) / double(raw) : 0.0)
            .num("raw_mb_per_s", raw_mbps)
            .num("wire_mb_per_s", wire_mbps)
            .integer("guest_pages_per_s", r.guest_pages_per_s)
            .num("guest_alone_raw_mb_per_s", alone_mbps)
            .obj("encode_us", summary_json(us_of(r.epochs, &EpochFigures::encode_ns)))
            .obj("transmit_us", summary_json(us_of(r.epochs, &EpochFigures::transmit_ns)))
            .integer("hook_figures_without_bytes", r.hook_without_bytes);
        if (g_custom) { // every checkpoint, for distributions
            std::vector<double> all, pages;
            for (const auto& f : r.epochs) {
                all.push_back(double(f.pause_ns) / 1e3);
                pages.push_back(double(f.dirty_pages));
            }
            j.integer("vcpus", g_vcpus).nums("pauses_us", all).nums("dirty_pages_all", pages);
        }
        if (r.row.kind == Kind::churn && r.row.target_pages == kPauseTargetPages)
            j.boolean("pause_target_met", pause.p99 <= kPauseLimitFactor * lim.p50 + kPauseLimitSlackUs);
        if (r.row.kind == Kind::churn) j.boolean("wire_target_met", raw && double(wire) / double(raw) <= kWireOverRawMax);
        if (r.row.kind == Kind::idle) j.boolean("rate_target_met", rate >= kIdleCkptPerSMin);
        jrows.push_back(j);
    }
    // ---- link security ----
    bool link_met = true;
    std::vector<Json> jlink;
    if (run_tp) {
        std::printf("\nLink security cost (same run): end-to-end raw MB/s with the link sealed vs in clear\n");
        std::printf("loopback TCP through the transport (4 MiB sends), clear / sealed: before %.0f / %.0f, after %.0f / %.0f MB/s\n",
                    loop_mbps, loop_sealed_mbps, loop_mbps2, loop_sealed_mbps2);
        std::printf("%-10s | %12s %12s | %12s %12s | %7s | %s\n", "content", "sealed raw", "clear raw", "sealed wire",
                    "clear wire", "ratio", "target (cost <= 15%)");
        auto rate_of = [](const RowResult& r, uint64_t EpochFigures::*m) {
            uint64_t b = 0;
            for (const auto& f : r.epochs) b += f.*m;
            return r.window_s > 0 ? double(b) / r.window_s / 1e6 : 0.0;
        };
        for (const auto& sealed : results) {
            if (sealed.row.kind != Kind::throughput || !sealed.row.secure) continue;
            for (const auto& clear : results) {
                if (clear.row.kind != Kind::throughput || clear.row.secure || clear.row.content != sealed.row.content) continue;
                double s = rate_of(sealed, &EpochFigures::raw_bytes), c = rate_of(clear, &EpochFigures::raw_bytes);
                double ratio = c > 0 ? s / c : 0.0;
                bool met = ratio >= 1.0 - kLinkCostMax;
                link_met = link_met && met;
                std::printf("%-10s | %12.1f %12.1f | %12.1f %12.1f | %7.3f | %s (cost %.1f%%)\n", sealed.row.content.c_str(), s, c,
                            rate_of(sealed, &EpochFigures::wire_bytes), rate_of(clear, &EpochFigures::wire_bytes), ratio,
                            met ? "met" : "MISSED", 100.0 * (1.0 - ratio));
                jlink.push_back(Json()
                                    .str("content", sealed.row.content)
                                    .num("sealed_raw_mb_per_s", s)
                                    .num("clear_raw_mb_per_s", c)
                                    .num("sealed_wire_mb_per_s", rate_of(sealed, &EpochFigures::wire_bytes))
                                    .num("clear_wire_mb_per_s", rate_of(clear, &EpochFigures::wire_bytes))
                                    .num("sealed_over_clear", ratio)
                                    .boolean("target_met", met));
            }
        }
        std::printf("(ratio = sealed / clear raw dirty-data throughput of the same churn, rows run one after the other)\n");
        all_ok = all_ok && link_met;
    }
    bool tp_met = best_raw >= kRawMBpsMin;
    if (run_tp) all_ok = all_ok && tp_met;
    std::printf("(alone = dirty pages per epoch x 4 KiB / epoch of the same churn with the Primary stopped, tracking on:\n"
                " the most any replicator could carry from this guest here)\n");
    if (run_tp)
        std::printf("end-to-end raw dirty data, best throughput row (%s): %.0f MB/s: %s (>= %.0f MB/s)\n", best_row.c_str(),
                    best_raw, tp_met ? "met" : "MISSED", kRawMBpsMin);
    size_t hook_missing = 0;
    for (const auto& r : results) hook_missing += r.hook_without_bytes;
    std::printf("(on_acked figures that arrived before the sender filled in raw/wire bytes, taken from recent_epochs(): "
                "%zu)\n",
                hook_missing);
    std::printf("\ntargets: %s%s\n", all_ok ? "all met" : "some MISSED", any_error ? " (a row FAILED)" : "");

    Json out;
    out.str("benchmark", "bench_checkpoint");
    add_provenance(out, argc, argv);
    out        .boolean("quick", opt.quick)
        .integer("memory_mib", mib)
        .integer("vcpus", g_vcpus)
        .num("window_s", seconds_per_row)
        .num("loopback_mb_per_s", loop_mbps)
        .num("loopback_mb_per_s_after", loop_mbps2)
        .num("loopback_sealed_mb_per_s", loop_sealed_mbps)
        .num("loopback_sealed_mb_per_s_after", loop_sealed_mbps2)
        .num("target_link_cost_max", kLinkCostMax)
        .boolean("link_cost_target_met", link_met)
        .arr("link_cost", jlink)
        .num("target_pause_factor", kPauseLimitFactor)
        .num("target_pause_slack_us", kPauseLimitSlackUs)
        .integer("target_pause_row_pages", kPauseTargetPages)
        .num("target_wire_over_raw", kWireOverRawMax)
        .num("target_idle_ckpt_per_s", kIdleCkptPerSMin)
        .num("target_raw_mb_per_s", kRawMBpsMin)
        .num("best_raw_mb_per_s", best_raw)
        .boolean("throughput_target_met", tp_met)
        .boolean("targets_met", all_ok)
        .boolean("error", any_error)
        .arr("rows", jrows);
    bool wrote = emit_json(opt, out);
    if (!samples_file.empty()) {
        FILE* f = std::fopen(samples_file.c_str(), "w");
        if (f) {
            std::fprintf(f, "row\tepoch\tacked_s\tpause_us\tdirty_pages\traw_bytes\twire_bytes\n");
            for (const auto& r : results)
                for (size_t i = 0; i < r.epochs.size(); ++i)
                    std::fprintf(f, "%s\t%llu\t%.6f\t%.1f\t%llu\t%llu\t%llu\n", r.row.name.c_str(),
                                 (unsigned long long)r.epochs[i].epoch, r.acked_s[i], double(r.epochs[i].pause_ns) / 1e3,
                                 (unsigned long long)r.epochs[i].dirty_pages, (unsigned long long)r.epochs[i].raw_bytes,
                                 (unsigned long long)r.epochs[i].wire_bytes);
        }
        if (!f || std::fclose(f) != 0) {
            std::fprintf(stderr, "cannot write %s: %s\n", samples_file.c_str(), std::strerror(errno));
            wrote = false;
        }
    }
    return (wrote && !any_error) ? 0 : 1;
}
