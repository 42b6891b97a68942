// bench_pause: pause-to-resume round trip of a 2-vCPU guest, idle and busy.
//
// Each cycle times vm->pause_all() alone and pause_all() + resume_all() with nothing in
// between, then sleeps ~200 us so the guest runs. idle = churn pages=16 rate=50 (the
// vCPUs halt through the HALT hypercall between pages); busy = churn pages=4096 with no
// rate limit (both vCPUs writing). Dirty tracking is the ring, as in production.
// As a same-run reference it measures bare thread round trips: an std::atomic
// wait/notify ping-pong (futex) and a signal + futex round trip (the kick's mechanism).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include "bench/bench_common.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/kvm.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::bench;
using namespace std::chrono;

namespace {

constexpr double kTargetP99Us = 200;
constexpr auto kGap = microseconds(200);

struct CaseResult {
    std::string name, cmdline;
    size_t cycles = 0;
    Summary pause, round_trip;
    double guest_pages_per_s = 0;
};

uint64_t pages_stamped(Vm& vm, uint64_t header_gpa) {
    auto h = vm.memory().read_obj<abi::us_churn_header>(Gpa{header_gpa});
    if (!h || h->magic != US_CHURN_MAGIC) die("churn header unreadable");
    uint64_t n = 0;
    for (unsigned v = 0; v < h->nr_vcpus && v < US_CHURN_MAX_VCPUS; ++v)
        if (h->vcpu[v].iteration) n += (h->vcpu[v].iteration - 1) * h->vcpu[v].ws_pages + h->vcpu[v].cursor;
    return n;
}

CaseResult run_case(const std::string& name, const std::string& cmdline, size_t cycles, size_t warmup) {
    VmConfig cfg;
    cfg.memory_bytes = 128 * kMiB;
    cfg.vcpus = 2;
    cfg.dirty.mode = DirtyMode::ring;
    auto console = std::make_shared<std::string>();
    auto vm = boot("churn", cmdline, cfg, console);
    if (auto r = vm->start(); !r) die(r.error().describe());
    // The layout comes from the vCPU that arrived first in the guest (its boot index 0),
    // which is either host vCPU.
    std::optional<uint64_t> header;
    for (auto deadline = steady_clock::now() + seconds(20); !header && steady_clock::now() < deadline;)
        for (unsigned v = 0; v < 2 && !header; ++v) header = vm->wait_report(v, abi::US_REPORT_LAYOUT, milliseconds(20));
    if (!header) {
        auto s = vm->stop_reason();
        die("churn did not report its layout" + (s ? std::string(": ") + vm_stop_kind_name(s->kind) + ": " + s->message : "") +
            "\nconsole:\n" + *console);
    }
    for (unsigned v = 0; v < 2; ++v)
        if (!vm->wait_report(v, abi::US_REPORT_READY, seconds(20))) die("churn vCPU did not start");
    std::this_thread::sleep_for(milliseconds(300)); // busy: the first pass (first touches) is over

    std::vector<double> pause_us, rt_us;
    pause_us.reserve(cycles);
    rt_us.reserve(cycles);
    uint64_t stamped0 = 0, t_start = 0;
    for (size_t i = 0; i < warmup + cycles; ++i) {
        if (i == warmup) {
            vm->pause_all();
            stamped0 = pages_stamped(*vm, *header);
            t_start = now_ns();
            vm->resume_all();
            std::this_thread::sleep_for(kGap);
        }
        uint64_t t0 = now_ns();
        vm->pause_all();
        uint64_t t1 = now_ns();
        vm->resume_all();
        uint64_t t2 = now_ns();
        if (i >= warmup) {
            pause_us.push_back(double(t1 - t0) / 1000.0);
            rt_us.push_back(double(t2 - t0) / 1000.0);
        }
        std::this_thread::sleep_for(kGap);
    }
    vm->pause_all();
    uint64_t stamped1 = pages_stamped(*vm, *header);
    double secs = double(now_ns() - t_start) / 1e9;
    vm->resume_all();
    if (auto s = vm->stop_reason()) die("the guest stopped during the run: " + s->message);
    vm->stop();
    if (!vm->wait_for(seconds(10))) die("the VM did not stop");

    CaseResult r;
    r.name = name;
    r.cmdline = cmdline;
    r.cycles = cycles;
    r.pause = summarize(pause_us);
    r.round_trip = summarize(rt_us);
    r.guest_pages_per_s = double(stamped1 - stamped0) / secs;
    return r;
}

struct RefResult {
    std::string name;
    Summary s;
};

// Ping-pong through one atomic: main bumps it to odd and notifies, the worker answers
// with the next even value. Optionally with `spinners` CPU-bound threads running.
RefResult ref_futex(size_t cycles, bool gap, unsigned spinners) {
    std::atomic<uint32_t> seq{0};
    std::atomic<bool> stop{false};
    std::thread w([&] {
        uint32_t s = 0;
        for (;;) {
            seq.wait(s, std::memory_order_acquire);
            s = seq.load(std::memory_order_acquire);
            if (stop.load()) return;
            if (s & 1) {
                seq.store(++s, std::memory_order_release);
                seq.notify_one();
            }
        }
    });
    std::vector<std::thread> spin;
    for (unsigned i = 0; i < spinners; ++i)
        spin.emplace_back([&] {
            volatile uint64_t x = 0;
            while (!stop.load(std::memory_order_relaxed)) x = x + 1;
        });
    std::this_thread::sleep_for(milliseconds(20));
    std::vector<double> us;
    for (size_t i = 0; i < cycles + cycles / 10; ++i) {
        uint32_t v = seq.load();
        uint64_t t0 = now_ns();
        seq.store(v + 1, std::memory_order_release);
        seq.notify_one();
        while (seq.load(std::memory_order_acquire) == v + 1) seq.wait(v + 1, std::memory_order_acquire);
        uint64_t t1 = now_ns();
        if (i >= cycles / 10) us.push_back(double(t1 - t0) / 1000.0);
        if (gap) std::this_thread::sleep_for(kGap);
    }
    stop.store(true);
    seq.fetch_add(2);
    seq.notify_all();
    w.join();
    for (auto& t : spin) t.join();
    std::string name = std::string("atomic wait/notify ping-pong") + (gap ? ", 200 us gap" : ", back to back") +
                       (spinners ? ", " + std::to_string(spinners) + " CPU-bound threads" : "");
    return {name, summarize(us)};
}

// pthread_kill to a thread waiting in sigwaitinfo, which answers through the atomic.
RefResult ref_signal(size_t cycles) {
    const int sig = SIGRTMIN + 6;
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_BLOCK, &set, &old); // inherited by the worker
    std::atomic<uint32_t> seq{0};
    std::atomic<bool> stop{false};
    std::thread w([&] {
        for (;;) {
            siginfo_t si;
            if (sigwaitinfo(&set, &si) < 0) continue;
            if (stop.load()) return;
            seq.fetch_add(1, std::memory_order_release);
            seq.notify_one();
        }
    });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    std::this_thread::sleep_for(milliseconds(20));
    std::vector<double> us;
    for (size_t i = 0; i < cycles + cycles / 10; ++i) {
        uint32_t v = seq.load();
        uint64_t t0 = now_ns();
        pthread_kill(w.native_handle(), sig);
        while (seq.load(std::memory_order_acquire) == v) seq.wait(v, std::memory_order_acquire);
        uint64_t t1 = now_ns();
        if (i >= cycles / 10) us.push_back(double(t1 - t0) / 1000.0);
        std::this_thread::sleep_for(kGap);
    }
    stop.store(true);
    pthread_kill(w.native_handle(), sig);
    w.join();
    return {"signal (pthread_kill -> sigwaitinfo) + futex reply, 200 us gap", summarize(us)};
}

// Time of n PAUSE instructions: the spin window of a waiter before it sleeps.
double pause_spin_us(unsigned n) {
    std::vector<double> v;
    for (int rep = 0; rep < 50; ++rep) {
        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < n; ++i) __builtin_ia32_pause();
        v.push_back(double(now_ns() - t0) / 1000.0);
    }
    return summarize(v).p50;
}

} // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv, "pause/resume round trip of a 2-vCPU guest, idle and busy");
    std::string why;
    if (!kvm_available(&why)) die("KVM is not available: " + why);
    size_t cycles = opt.quick ? 500 : 5000;
    size_t warmup = opt.quick ? 20 : 100;
    bool run_idle = true, run_busy = true, run_refs = true;
    for (const auto& [k, v] : opt.extra) {
        if (k == "cycles") cycles = parse_list(v).at(0);
        else if (k == "cases") {
            run_idle = v.find("idle") != std::string::npos;
            run_busy = v.find("busy") != std::string::npos;
            run_refs = v.find("ref") != std::string::npos;
        } else die("unknown option --" + k + "= (want cycles, cases)");
    }
    if (cycles == 0) die("nothing to measure");

    std::string date = utc_timestamp();
    std::printf("bench_pause  %s%s\n", date.c_str(), opt.quick ? "  (--quick)" : "");
    std::printf("churn guest, 2 vCPUs, 128 MiB, dirty ring; %zu cycles per case (+%zu warm-up), ~200 us sleep between "
                "cycles.\npause = pause_all(); round trip = pause_all() + resume_all(), nothing in between.\n"
                "Target: round trip p99 <= %.0f us.\n\n",
                cycles, warmup, kTargetP99Us);
    std::fflush(stdout);

    std::vector<CaseResult> cases;
    if (run_idle) cases.push_back(run_case("idle", "pages=16 rate=50", cycles, warmup));
    if (run_busy) cases.push_back(run_case("busy", "pages=4096 rate=0", cycles, warmup));
    std::vector<RefResult> refs;
    double spin_us = 0;
    if (run_refs) {
        refs.push_back(ref_futex(cycles, true, 0));
        refs.push_back(ref_futex(cycles, false, 0));
        refs.push_back(ref_signal(cycles));
        spin_us = pause_spin_us(2000);
    }

    std::printf("%-5s %-18s %6s | %8s %8s %8s | %8s %8s %8s | %-22s | %s\n", "case", "churn", "cycles", "pause", "", "",
                "pause+resume", "", "", "target (rt p99)", "guest pages/s");
    std::printf("%-5s %-18s %6s | %8s %8s %8s | %8s %8s %8s | %-22s |\n", "", "", "", "p50 us", "p99 us", "max us",
                "p50 us", "p99 us", "max us", "");
    bool ok = true;
    std::vector<Json> jcases;
    for (const auto& c : cases) {
        bool met = c.round_trip.p99 <= kTargetP99Us;
        ok = ok && met;
        char verdict[40];
        std::snprintf(verdict, sizeof verdict, "%s (<= %.0f)", met ? "met" : "MISSED", kTargetP99Us);
        std::printf("%-5s %-18s %6zu | %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f | %-22s | %.0f\n", c.name.c_str(),
                    c.cmdline.c_str(), c.cycles, c.pause.p50, c.pause.p99, c.pause.max, c.round_trip.p50,
                    c.round_trip.p99, c.round_trip.max, verdict, c.guest_pages_per_s);
        Json j;
        j.str("name", c.name)
            .str("churn", c.cmdline)
            .integer("vcpus", 2)
            .str("dirty_mode", "ring")
            .integer("cycles", c.cycles)
            .obj("pause_us", summary_json(c.pause))
            .obj("round_trip_us", summary_json(c.round_trip))
            .boolean("meets_target", met)
            .num("guest_pages_per_s", c.guest_pages_per_s);
        jcases.push_back(j);
    }
    std::printf("\nreference (same run): thread round trips\n");
    std::printf("%-75s %8s %8s %8s\n", "", "p50 us", "p99 us", "max us");
    std::vector<Json> jrefs;
    for (const auto& r : refs) {
        std::printf("%-75s %8.1f %8.1f %8.1f\n", r.name.c_str(), r.s.p50, r.s.p99, r.s.max);
        Json j;
        j.str("name", r.name).num("p50_us", r.s.p50).num("p99_us", r.s.p99).num("max_us", r.s.max).integer("n", r.s.n);
        jrefs.push_back(j);
    }
    if (run_refs)
        std::printf("2,000 x PAUSE instruction (the spin before Vcpu::wait_parked() sleeps)            %8.1f us\n", spin_us);
    std::printf("\ntarget (pause+resume p99 <= %.0f us): %s\n", kTargetP99Us, ok ? "met" : "MISSED");

    Json out;
    out.str("benchmark", "bench_pause");
    add_provenance(out, argc, argv);
    out        .boolean("quick", opt.quick)
        .integer("cycles", cycles)
        .integer("gap_us", 200)
        .num("target_round_trip_p99_us", kTargetP99Us)
        .boolean("target_met", ok)
        .arr("cases", jcases)
        .arr("reference", jrefs)
        .num("pause_x2000_us", spin_us);
    return emit_json(opt, out) ? 0 : 1;
}
