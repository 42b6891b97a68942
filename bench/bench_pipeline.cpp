// The replication pipeline without KVM (issue 20): writer threads stand in for vCPUs
// (tests/support/fake_vm.hpp: they dirty guest memory through the VMM's own tracking at
// a set rate and content class), and every other stage is the real one: the harvest,
// the copy, encoding, sealing, loopback TCP, and a real `understudy backup` process that
// verifies, stages and applies. Per row (content, epoch, dirty rate): whether the rate
// was kept protected, raw and wire throughput, and where the CPU time of a page goes;
// next to the limits measured in the same run (memcpy, LZ4 on one core per content,
// AES-256-GCM on one core, loopback TCP). See bench/README.md.
#include <fcntl.h>
#include <lz4.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "bench/bench_common.hpp"
#include "bench/bench_link.hpp"
#include "common/log.hpp"
#include "replicator/primary.hpp"
#include "tests/support/fake_vm.hpp"

extern char** environ;

using namespace understudy;
using namespace understudy::bench;
using namespace understudy::replicator;
using understudy::test::FakeContent;
using namespace std::chrono;

namespace {

// Targets (issue 20, item 2), on a 2-core machine with both processes on it.
constexpr double kChurnRawMBpsMin = 1000;    // end to end, raw, churn-like content
constexpr double kRandomOverSlowestMin = 0.5; // random content, over the slowest single-stage limit
constexpr double kChurnWireOverRawMax = 0.15;
constexpr double kSealCostMax = 0.10; // encryption, of end-to-end throughput
constexpr double kPauseNoStopP99MaxUs = 300; // the pause less the vCPUs' stop, at kPauseTargetPages
constexpr double kPauseTargetPages = 10000;
// Rows at kPauseTargetPages and a little more with the cores not saturated: at 25 ms
// epochs 10,000 pages a checkpoint takes 400,000 pages/s, where the writers, both
// processes and the rounds fill these 2 cores; at 50 ms half that rate gives as many.
constexpr unsigned kPauseRowsEpochMs = 50;
constexpr uint64_t kPauseRowsRates[] = {220000, 240000};
constexpr double kPauseRowsSeconds = 10; // 200 checkpoints: a p99 that is not the maximum
// A rate is kept protected when the writers achieved this share of it while they ran,
// checkpoints came at this share of the epoch's rate, and replication did not fail.
constexpr double kKeptWriteShare = 0.9;
constexpr double kKeptCheckpointShare = 0.8;

const char* content_name(FakeContent c) {
    switch (c) {
    case FakeContent::stamp: return "churn";
    case FakeContent::text: return "text";
    case FakeContent::random: return "random";
    case FakeContent::zero: return "zero";
    }
    return "?";
}

FakeContent parse_content(const std::string& s) {
    for (auto c : {FakeContent::stamp, FakeContent::text, FakeContent::random, FakeContent::zero})
        if (s == content_name(c)) return c;
    die("unknown content '" + s + "' (churn, text, random, zero)");
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, ',');) out.push_back(item);
    return out;
}

struct Setup {
    uint64_t memory_bytes = 256 * hv::kMiB;
    unsigned vcpus = 2;
    uint64_t ws_pages = 8192; // per vCPU, swept in order: each epoch's writes are distinct pages
    double seconds = 3;       // measured window per row
    double warmup_s = 0.5;
    std::string understudy; // the CLI, for the backup process
};

// CPU seconds a process used so far (utime + stime of /proc/PID/stat).
double process_cpu_s(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(text.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

uint16_t free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) < 0)
        die("finding a free port: " + std::string(std::strerror(errno)));
    ::close(fd);
    return ntohs(a.sin_port);
}

// `understudy backup` as its own process, as on a backup host.
class BackupProcess {
public:
    BackupProcess(const Setup& s, bool secure) : endpoint_("127.0.0.1:" + std::to_string(free_port())) {
        std::vector<std::string> args = {s.understudy, "backup", "--listen", endpoint_};
        if (secure)
            args.insert(args.end(), {"--link-key", RunKey::get().path()});
        else
            args.insert(args.end(), {"--link-security", "disabled"});
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        if (int e = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ); e != 0)
            die("starting " + s.understudy + ": " + std::strerror(e));
        posix_spawn_file_actions_destroy(&fa);
    }
    ~BackupProcess() {
        ::kill(pid_, SIGTERM);
        int st = 0;
        ::waitpid(pid_, &st, 0);
    }
    pid_t pid() const { return pid_; }
    // Connects, retrying while the process starts.
    std::unique_ptr<Connection> connect() const {
        auto ep = Endpoint::parse(endpoint_);
        for (int attempt = 0; attempt < 100; ++attempt) {
            if (auto c = Connection::connect(*ep, seconds(2))) return std::move(*c);
            std::this_thread::sleep_for(milliseconds(50));
        }
        die("the backup at " + endpoint_ + " does not answer");
    }

private:
    std::string endpoint_;
    pid_t pid_ = -1;
};

struct Row {
    FakeContent content = FakeContent::stamp;
    unsigned epoch_ms = 25;
    uint64_t rate = 0; // page writes per second, all writers
    bool secure = true;
};

struct RowResult {
    Row row;
    std::string error;
    double window_s = 0;
    double writes_per_s = 0;      // achieved
    double ckpt_per_s = 0;
    double pages_per_s = 0;       // distinct pages checkpointed per second
    double raw_mbps = 0, wire_over_raw = 0;
    bool kept = false;
    Summary pause_us, pause_no_stop_us, ack_ms; // pause_no_stop_us: the pause less the vCPUs' stop
    double pages_per_ckpt = 0;
    // Per checkpointed page, ns: wall time of the primary's stages, and CPU time of the
    // processes (the primary's replicator threads: its CPU less the writers').
    double stop_ns = 0, harvest_ns = 0, copy_ns = 0, encode_ns = 0, transmit_ns = 0;
    double primary_cpu_ns = 0, backup_cpu_ns = 0, writer_cpu_ns = 0;
    double copied_at_pause_share = 0;
    // Shares of the wall time of the window: vCPUs paused, encoding, sealing and sending.
    double pause_share = 0, encode_share = 0, transmit_share = 0;
};

double self_cpu_s() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

RowResult run_row(const Setup& s, const Row& row) {
    RowResult r{row};
    test::FakeVmConfig fc;
    fc.memory_bytes = s.memory_bytes;
    fc.vcpus = s.vcpus;
    fc.pages = s.ws_pages;
    fc.random_pages = false;
    // About 2,000 bursts a second per writer: pacing costs little, and a pause waits at
    // most one burst.
    fc.writes_per_burst = unsigned(std::max<uint64_t>(16, row.rate / s.vcpus / 2000));
    fc.content = row.content;
    fc.pages_per_s = row.rate;
    auto vm = test::FakeVm::create(fc);
    if (!vm) die("creating the fake VM");
    vm->start();
    vm->resume_all();

    BackupProcess backup(s, row.secure);
    PrimaryConfig pc;
    pc.epoch = milliseconds(row.epoch_ms);
    pc.security = link_security(row.secure);
    pc.verify_interval = seconds(0); // no verification pass in the window: this measures replication
    std::mutex mu;
    std::vector<EpochFigures> acked;
    bool window_open = false;
    PrimaryHooks hooks;
    hooks.on_acked = [&](const EpochFigures& f) {
        std::lock_guard lock(mu);
        if (window_open) acked.push_back(f);
    };
    auto conn = backup.connect();
    auto control = backup.connect();
    auto primary = Primary::start(*vm, std::move(conn), pc, hooks, std::move(control));
    if (!primary) die("starting the primary: " + primary.error().describe());
    auto deadline = steady_clock::now() + seconds(60);
    while (!(*primary)->is_protected() && !(*primary)->failure() && steady_clock::now() < deadline)
        std::this_thread::sleep_for(milliseconds(5));
    if (!(*primary)->is_protected()) {
        auto f = (*primary)->failure();
        r.error = f ? f->describe() : "not protected within 60 s";
        return r;
    }
    std::this_thread::sleep_for(duration<double>(s.warmup_s));

    const uint64_t writes0 = vm->page_writes(), writer_cpu0 = vm->vcpu_cpu_ns();
    const double self0 = self_cpu_s(), backup0 = process_cpu_s(backup.pid());
    const uint64_t t0 = now_ns();
    {
        std::lock_guard lock(mu);
        window_open = true;
    }
    std::this_thread::sleep_for(duration<double>(s.seconds));
    {
        std::lock_guard lock(mu);
        window_open = false;
    }
    const double window = double(now_ns() - t0) / 1e9;
    const uint64_t writes = vm->page_writes() - writes0, writer_cpu = vm->vcpu_cpu_ns() - writer_cpu0;
    const double self_cpu = self_cpu_s() - self0, backup_cpu = process_cpu_s(backup.pid()) - backup0;
    if (auto f = (*primary)->failure()) r.error = f->describe();
    (*primary)->stop();

    r.window_s = window;
    r.writes_per_s = double(writes) / window;
    r.ckpt_per_s = double(acked.size()) / window;
    uint64_t pages = 0, raw = 0, wire = 0, at_pause = 0;
    std::vector<double> pause, pause_no_stop, ack;
    double stop = 0, harvest = 0, copy = 0, encode = 0, transmit = 0, paused = 0;
    for (const auto& f : acked) {
        pages += f.dirty_pages;
        raw += f.raw_bytes;
        wire += f.wire_bytes;
        at_pause += f.copied_at_pause;
        pause.push_back(double(f.pause_ns) / 1e3);
        pause_no_stop.push_back(double(f.pause_ns - std::min(f.stop_ns, f.pause_ns)) / 1e3);
        ack.push_back(double(f.ack_ns) / 1e6);
        stop += double(f.stop_ns);
        harvest += double(f.harvest_ns);
        copy += double(f.copy_ns);
        encode += double(f.encode_ns);
        transmit += double(f.transmit_ns);
        paused += double(f.pause_ns);
    }
    r.pages_per_s = double(pages) / window;
    r.raw_mbps = double(raw) / window / 1e6;
    r.wire_over_raw = raw ? double(wire) / double(raw) : 0;
    r.pause_us = summarize(pause);
    r.pause_no_stop_us = summarize(pause_no_stop);
    r.pages_per_ckpt = acked.empty() ? 0 : double(pages) / double(acked.size());
    r.ack_ms = summarize(ack);
    const double per = pages ? 1.0 / double(pages) : 0;
    r.stop_ns = stop * per;
    r.harvest_ns = harvest * per;
    r.copy_ns = copy * per;
    r.encode_ns = encode * per;
    r.transmit_ns = transmit * per;
    r.writer_cpu_ns = double(writer_cpu) * per;
    r.primary_cpu_ns = (self_cpu * 1e9 - double(writer_cpu)) * per;
    r.backup_cpu_ns = backup_cpu * 1e9 * per;
    r.copied_at_pause_share = pages ? double(at_pause) / double(pages) : 0;
    r.pause_share = paused / (window * 1e9);
    r.encode_share = encode / (window * 1e9);
    r.transmit_share = transmit / (window * 1e9);
    // The writers stop while the vCPUs are paused, as a guest does: the rate is judged on
    // the time they ran.
    r.kept = r.error.empty() && r.writes_per_s >= kKeptWriteShare * double(row.rate) * (1 - r.pause_share) &&
             r.ckpt_per_s >= kKeptCheckpointShare * 1000.0 / row.epoch_ms;
    return r;
}

// ---- limits measured in the same run ----

// memcpy of 4 KiB pages from a 256 MiB region, scattered, into a prefaulted buffer: MB/s.
double memcpy_mbps() {
    const size_t pages = 65536, copies = 32768;
    std::vector<uint8_t> src(pages * 4096, 1), dst(copies * 4096, 0);
    std::vector<uint64_t> pick(copies);
    uint64_t x = 88172645463325252ull;
    for (auto& p : pick) p = (x ^= x << 13, x ^= x >> 7, x ^= x << 17) % pages;
    double best = 0;
    for (int round = 0; round < 5; ++round) {
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < copies; ++i) std::memcpy(dst.data() + i * 4096, src.data() + pick[i] * 4096, 4096);
        best = std::max(best, double(copies * 4096) / (double(now_ns() - t0) / 1e9) / 1e6);
    }
    return best;
}

// LZ4 (the codec's fast mode, one core) over pages of a content class, as the writers
// leave them: MB/s of input.
double lz4_mbps(FakeContent content) {
    test::FakeVmConfig fc;
    fc.memory_bytes = 64 * hv::kMiB;
    fc.vcpus = 1;
    fc.pages = 4096;
    fc.random_pages = false;
    fc.content = content;
    auto vm = test::FakeVm::create(fc);
    if (!vm) die("creating the fake VM");
    vm->start();
    vm->resume_all();
    while (vm->page_writes() < 3 * fc.pages) std::this_thread::sleep_for(milliseconds(1));
    vm->pause_all();
    std::vector<char> out(LZ4_compressBound(4096));
    double best = 0;
    volatile int sink = 0;
    for (int round = 0; round < 3; ++round) {
        uint64_t t0 = now_ns();
        for (uint64_t p = 0; p < fc.pages; ++p)
            sink = sink + LZ4_compress_default(reinterpret_cast<const char*>(vm->memory().page_ptr(p)), out.data(), 4096,
                                               int(out.size()));
        best = std::max(best, double(fc.pages * 4096) / (double(now_ns() - t0) / 1e9) / 1e6);
    }
    return best;
}

struct Limits {
    double memcpy_mbps = 0, aes_gcm_mbps = 0, loopback_mbps = 0, loopback_sealed_mbps = 0;
    std::map<FakeContent, double> lz4_mbps;
    // The slowest stage a page of this content must pass on one core.
    double slowest(FakeContent c, bool secure) const {
        double m = std::min({memcpy_mbps, lz4_mbps.at(c), secure ? loopback_sealed_mbps : loopback_mbps});
        return secure ? std::min(m, aes_gcm_mbps) : m;
    }
};

} // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv, "the replication pipeline without KVM: a fake VM's writers, a real backup process");
    understudy::log::set_level(understudy::log::Level::warn);
    Setup s;
    std::vector<FakeContent> contents = {FakeContent::stamp, FakeContent::text, FakeContent::random, FakeContent::zero};
    std::vector<uint64_t> epochs = {25, 5};
    std::vector<uint64_t> rates = {25000, 50000, 100000, 150000, 200000, 300000, 400000, 450000, 500000, 600000, 800000};
    bool clear_rows = true; // the churn sweep again with link security disabled: what sealing costs
    if (opt.quick) {
        contents = {FakeContent::stamp};
        epochs = {25};
        rates = {50000, 200000};
        s.seconds = 1;
        s.memory_bytes = 128 * hv::kMiB;
    }
    s.understudy = std::string(US_BINARY_DIR) + "/cli/understudy";
    for (const auto& [k, v] : opt.extra) {
        if (k == "contents") {
            contents.clear();
            for (const auto& c : split(v)) contents.push_back(parse_content(c));
        } else if (k == "epochs-ms") {
            epochs = parse_list(v);
        } else if (k == "rates") {
            rates = parse_list(v);
        } else if (k == "seconds") {
            s.seconds = std::stod(v);
        } else if (k == "vcpus") {
            s.vcpus = unsigned(std::stoul(v));
        } else if (k == "clear") {
            clear_rows = v == "1";
        } else if (k == "understudy") {
            s.understudy = v;
        } else {
            die("unknown override --" + k);
        }
    }
    if (::access(s.understudy.c_str(), X_OK) != 0) die(s.understudy + " is missing: build the understudy target first");
    std::sort(rates.begin(), rates.end());

    Limits lim;
    lim.memcpy_mbps = memcpy_mbps();
    lim.aes_gcm_mbps = aes_gcm_mbps(opt.quick ? 256u << 20 : 1024u << 20);
    lim.loopback_mbps = loopback_mbps(opt.quick ? 256u << 20 : 1024u << 20, false);
    lim.loopback_sealed_mbps = loopback_mbps(opt.quick ? 256u << 20 : 1024u << 20, true);
    for (auto c : contents) lim.lz4_mbps[c] = lz4_mbps(c);
    std::printf("limits, MB/s on one core: memcpy 4 KiB pages %.0f, AES-256-GCM seal %.0f, loopback TCP %.0f (sealed %.0f)",
                lim.memcpy_mbps, lim.aes_gcm_mbps, lim.loopback_mbps, lim.loopback_sealed_mbps);
    for (auto c : contents) std::printf(", LZ4 %s %.0f", content_name(c), lim.lz4_mbps[c]);
    std::printf("\n\n");

    // Each sweep raises the rate until one is not kept, and runs one rate more.
    struct Sweep {
        FakeContent content;
        unsigned epoch_ms;
        bool secure;
    };
    std::vector<Sweep> sweeps;
    for (auto c : contents)
        for (auto e : epochs) sweeps.push_back({c, unsigned(e), true});
    // What sealing costs: the churn and random sweeps again, in clear.
    if (clear_rows)
        for (auto c : {FakeContent::stamp, FakeContent::random})
            if (std::find(contents.begin(), contents.end(), c) != contents.end())
                sweeps.push_back({c, unsigned(epochs.front()), false});

    std::printf("%-7s %5s %5s %8s %9s %7s %9s %8s %7s %5s %13s %8s %8s %8s %8s %8s %8s %8s\n", "content", "epoch", "link",
                "rate", "written/s", "ckpt/s", "pages/s", "raw MB/s", "wire/raw", "kept", "pause us", "ack ms", "copy",
                "encode", "send", "primary", "backup", "writers");
    std::printf("%-7s %5s %5s %8s %9s %7s %9s %8s %7s %5s %13s %8s %8s %8s %8s %8s %8s %8s\n", "", "ms", "", "pages/s", "",
                "", "", "", "", "", "-stop p50/99", "p50", "ns/page", "ns/page", "ns/page", "cpu ns", "cpu ns", "cpu ns");
    std::vector<RowResult> results;
    auto run_and_print = [&](const Row& row, const Setup& setup) -> const RowResult& {
        RowResult r = run_row(setup, row);
        std::printf("%-7s %5u %5s %8llu %9.0f %7.1f %9.0f %8.1f %7.4f %5s %6.0f/%-6.0f %8.1f %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f%s%s\n",
                    content_name(row.content), row.epoch_ms, row.secure ? "AES" : "clear", (unsigned long long)row.rate,
                    r.writes_per_s, r.ckpt_per_s, r.pages_per_s, r.raw_mbps, r.wire_over_raw, r.kept ? "yes" : "no",
                    r.pause_no_stop_us.p50, r.pause_no_stop_us.p99, r.ack_ms.p50, r.copy_ns, r.encode_ns, r.transmit_ns, r.primary_cpu_ns,
                    r.backup_cpu_ns, r.writer_cpu_ns, r.error.empty() ? "" : "  error: ", r.error.c_str());
        std::fflush(stdout);
        results.push_back(r);
        return results.back();
    };
    for (const auto& sw : sweeps) {
        unsigned misses = 0;
        for (auto rate : rates)
            if (!run_and_print({sw.content, sw.epoch_ms, rate, sw.secure}, s).kept && ++misses == 2) break;
    }
    // The pause at 10,000 pages a checkpoint, below the cores' saturation (kPauseRowsEpochMs).
    if (!opt.quick && std::find(contents.begin(), contents.end(), FakeContent::stamp) != contents.end()) {
        Setup longer = s;
        longer.seconds = std::max(s.seconds, kPauseRowsSeconds);
        for (auto rate : kPauseRowsRates) run_and_print({FakeContent::stamp, kPauseRowsEpochMs, rate, true}, longer);
    }

    // Per sweep: the highest rate kept, and the most raw data carried in any of its rows.
    struct SweepResult {
        Sweep sw;
        uint64_t kept_rate = 0;
        double kept_pages_per_s = 0, kept_raw_mbps = 0, max_raw_mbps = 0, wire_over_raw = 0;
    };
    std::vector<SweepResult> sums;
    for (const auto& sw : sweeps) {
        SweepResult sr{sw};
        for (const auto& r : results) {
            if (r.row.content != sw.content || r.row.epoch_ms != sw.epoch_ms || r.row.secure != sw.secure) continue;
            sr.max_raw_mbps = std::max(sr.max_raw_mbps, r.raw_mbps);
            if (r.kept && r.row.rate > sr.kept_rate) {
                sr.kept_rate = r.row.rate;
                sr.kept_pages_per_s = r.pages_per_s;
                sr.kept_raw_mbps = r.raw_mbps;
                sr.wire_over_raw = r.wire_over_raw;
            }
        }
        sums.push_back(sr);
    }
    auto find = [&](FakeContent c, unsigned e, bool secure) -> const SweepResult* {
        for (const auto& sr : sums)
            if (sr.sw.content == c && sr.sw.epoch_ms == e && sr.sw.secure == secure) return &sr;
        return nullptr;
    };
    std::printf("\n%-7s %5s %5s %14s %14s %14s %14s %10s\n", "content", "epoch", "link", "kept pages/s", "kept raw MB/s",
                "max raw MB/s", "slowest limit", "wire/raw");
    for (const auto& sr : sums)
        std::printf("%-7s %5u %5s %14.0f %14.1f %14.1f %14.0f %10.4f\n", content_name(sr.sw.content), sr.sw.epoch_ms,
                    sr.sw.secure ? "AES" : "clear", sr.kept_pages_per_s, sr.kept_raw_mbps, sr.max_raw_mbps,
                    lim.slowest(sr.sw.content, sr.sw.secure), sr.wire_over_raw);

    // Targets, judged on the first epoch setting (25 ms unless overridden).
    const unsigned e0 = unsigned(epochs.front());
    Json targets;
    if (auto* c = find(FakeContent::stamp, e0, true)) {
        targets.num("churn_raw_mbps", c->max_raw_mbps).num("churn_raw_mbps_min", kChurnRawMBpsMin)
            .boolean("churn_raw_met", c->max_raw_mbps >= kChurnRawMBpsMin);
        targets.num("churn_wire_over_raw", c->wire_over_raw).num("churn_wire_over_raw_max", kChurnWireOverRawMax)
            .boolean("churn_wire_met", c->wire_over_raw <= kChurnWireOverRawMax);
    }
    // Sealing's cost, per content: the share of the CPU per page (both processes) that the
    // clear rows saved at the same rates, median over those rates. On these CPU-bound
    // 2 cores that is the share of throughput sealing costs; the rows' own throughput is
    // too noisy to compare a few percent.
    auto seal_cost = [&](FakeContent c) -> std::optional<double> {
        std::vector<double> costs;
        for (const auto& a : results)
            for (const auto& b : results)
                if (a.row.content == c && b.row.content == c && a.row.epoch_ms == e0 && b.row.epoch_ms == e0 &&
                    a.row.secure && !b.row.secure && a.row.rate == b.row.rate && a.error.empty() && b.error.empty() &&
                    a.primary_cpu_ns + a.backup_cpu_ns > 0)
                    costs.push_back(1 - (b.primary_cpu_ns + b.backup_cpu_ns) / (a.primary_cpu_ns + a.backup_cpu_ns));
        if (costs.empty()) return std::nullopt;
        return summarize(costs).p50;
    };
    if (auto cost = seal_cost(FakeContent::stamp))
        targets.num("seal_cost_churn", *cost).num("seal_cost_max", kSealCostMax).boolean("seal_cost_met", *cost <= kSealCostMax);
    if (auto cost = seal_cost(FakeContent::random)) targets.num("seal_cost_random", *cost);
    // The pause target (issue 20, item 3): excluding the stop, p99 <= 300 us at 10,000
    // dirty pages. Judged on the kept sealed churn row, of any epoch, with the fewest
    // pages per checkpoint at or above 10,000 (faster rows judge the 2 cores' saturation,
    // which their own rows show); with no such row, on the one with the most.
    const RowResult* big = nullptr;
    auto judges_better = [](const RowResult& r, const RowResult* than) {
        if (!than) return true;
        const bool reaches = r.pages_per_ckpt >= kPauseTargetPages, it_reaches = than->pages_per_ckpt >= kPauseTargetPages;
        if (reaches != it_reaches) return reaches;
        return reaches ? r.pages_per_ckpt < than->pages_per_ckpt : r.pages_per_ckpt > than->pages_per_ckpt;
    };
    for (const auto& r : results)
        if (r.row.content == FakeContent::stamp && r.row.secure && r.kept && judges_better(r, big)) big = &r;
    if (big)
        targets.num("pause_pages_per_checkpoint", big->pages_per_ckpt).integer("pause_epoch_ms", big->row.epoch_ms)
            .num("pause_excluding_stop_p99_us", big->pause_no_stop_us.p99).num("pause_excluding_stop_p99_max_us", kPauseNoStopP99MaxUs)
            .integer("pause_target_pages", kPauseTargetPages)
            .boolean("pause_met", big->pages_per_ckpt >= kPauseTargetPages && big->pause_no_stop_us.p99 <= kPauseNoStopP99MaxUs);
    if (auto* r = find(FakeContent::random, e0, true)) {
        double ratio = r->max_raw_mbps / lim.slowest(FakeContent::random, true);
        targets.num("random_over_slowest", ratio).num("random_over_slowest_min", kRandomOverSlowestMin)
            .boolean("random_met", ratio >= kRandomOverSlowestMin);
    }
    std::printf("\ntargets (epoch %u ms): %s\n", e0, targets.text().c_str());

    Json j;
    j.str("benchmark", "bench_pipeline");
    add_provenance(j, argc, argv);
    j.boolean("quick", opt.quick).integer("memory_bytes", s.memory_bytes).integer("writers", s.vcpus)
        .integer("ws_pages_per_writer", s.ws_pages).num("row_seconds", s.seconds);
    Json lj;
    lj.num("memcpy_mbps", lim.memcpy_mbps).num("aes_gcm_mbps", lim.aes_gcm_mbps).num("loopback_mbps", lim.loopback_mbps)
        .num("loopback_sealed_mbps", lim.loopback_sealed_mbps);
    for (auto c : contents) lj.num(std::string("lz4_") + content_name(c) + "_mbps", lim.lz4_mbps[c]);
    j.obj("limits", lj);
    std::vector<Json> rj;
    for (const auto& r : results) {
        Json x;
        x.str("content", content_name(r.row.content)).integer("epoch_ms", r.row.epoch_ms).boolean("sealed", r.row.secure)
            .integer("rate", r.row.rate).num("writes_per_s", r.writes_per_s).num("ckpt_per_s", r.ckpt_per_s)
            .num("pages_per_s", r.pages_per_s).num("raw_mbps", r.raw_mbps).num("wire_over_raw", r.wire_over_raw)
            .boolean("kept", r.kept).obj("pause_us", summary_json(r.pause_us))
            .obj("pause_excluding_stop_us", summary_json(r.pause_no_stop_us)).num("pages_per_checkpoint", r.pages_per_ckpt)
            .obj("ack_ms", summary_json(r.ack_ms))
            .num("stop_ns_per_page", r.stop_ns).num("harvest_ns_per_page", r.harvest_ns).num("copy_ns_per_page", r.copy_ns)
            .num("encode_ns_per_page", r.encode_ns).num("transmit_ns_per_page", r.transmit_ns)
            .num("primary_cpu_ns_per_page", r.primary_cpu_ns).num("backup_cpu_ns_per_page", r.backup_cpu_ns)
            .num("writer_cpu_ns_per_page", r.writer_cpu_ns).num("copied_at_pause_share", r.copied_at_pause_share)
            .num("pause_share", r.pause_share).num("encode_share", r.encode_share).num("transmit_share", r.transmit_share);
        if (!r.error.empty()) x.str("error", r.error);
        rj.push_back(x);
    }
    j.arr("rows", rj);
    std::vector<Json> sj;
    for (const auto& sr : sums)
        sj.push_back(Json()
                         .str("content", content_name(sr.sw.content))
                         .integer("epoch_ms", sr.sw.epoch_ms)
                         .boolean("sealed", sr.sw.secure)
                         .integer("kept_rate", sr.kept_rate)
                         .num("kept_pages_per_s", sr.kept_pages_per_s)
                         .num("kept_raw_mbps", sr.kept_raw_mbps)
                         .num("max_raw_mbps", sr.max_raw_mbps)
                         .num("slowest_limit_mbps", lim.slowest(sr.sw.content, sr.sw.secure))
                         .num("wire_over_raw", sr.wire_over_raw));
    j.arr("sweeps", sj);
    j.obj("targets", targets);
    return emit_json(opt, j) ? 0 : 1;
}
