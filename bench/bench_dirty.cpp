// bench_dirty: the cost of harvesting the dirty set and re-arming tracking, per dirty
// page, for the dirty ring and the dirty bitmap, next to the memcpy of the same pages.
//
// The dirty_rounds guest writes one word into each page of a host-chosen list, then asks
// for the next list through a test hypercall. The handler (on the vCPU thread, guest
// stopped in the exit) first harvests what the previous round wrote, timing the call and
// reading the tracker's cost counters (collect + re-protect, which include the ring-full
// drains vCPU threads did while the guest wrote), then copies the same pages out of guest
// memory as the reference, then hands out the next list.
#include <random>
#include <thread>

#include "bench/bench_common.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/kvm.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::bench;

namespace {

constexpr uint64_t kListGpa = 8 * kMiB;  // the page list (at most 100,000 * 8 bytes, below 16 MiB)
constexpr uint64_t kDataGpa = 16 * kMiB; // pages are picked from here up
constexpr uint32_t kRingEntries = 65536;
constexpr double kTargetRingUsPerPage = 0.15;

struct Sample {
    uint64_t pages_reported = 0; // tracker's count (guest's data pages + its stack/args)
    uint64_t collect_ns = 0;
    uint64_t reprotect_ns = 0;
    uint64_t ring_full_exits = 0;
    uint64_t wall_ns = 0;       // the harvest_dirty() call
    uint64_t memcpy_ns = 0;     // copying the round's pages out of guest memory
    uint64_t guest_ns = 0;      // from handing out the list to the next hypercall
    bool exact = true;          // every listed page was reported
};

struct Phase {
    uint64_t count = 0;
    std::vector<uint64_t> pages; // page indices, ascending
    std::vector<uint64_t> gpas;  // the same pages as GPAs (the guest's list)
    std::vector<Sample> samples;
};

struct Driver {
    Vm* vm = nullptr;
    std::vector<Phase> phases;
    std::vector<std::pair<size_t, bool>> schedule; // per round: phase, measured?
    size_t call = 0;                               // hypercalls answered so far
    Bitmap harvested;
    DirtyStats prev{};
    uint64_t handed_out_ns = 0;
    std::unique_ptr<uint8_t[]> copy_buf;
    uint64_t sink = 0;
    std::string error;

    Result<void> on_hypercall(Gpa args_gpa) {
        uint64_t arrived = now_ns();
        auto& mem = vm->memory();
        auto args = US_TRY(mem.read_obj<abi::us_hc_test>(args_gpa));

        // 1. Harvest what the previous round wrote.
        harvested.clear_all();
        uint64_t t0 = now_ns();
        US_TRYV(vm->harvest_dirty(harvested));
        uint64_t wall = now_ns() - t0;
        DirtyStats st = vm->dirty_tracker().stats();
        if (call > 0) {
            auto [pi, measured] = schedule[call - 1];
            Phase& ph = phases[pi];
            if (measured) {
                Sample s;
                s.pages_reported = st.pages_reported - prev.pages_reported;
                s.collect_ns = st.collect_ns - prev.collect_ns;
                s.reprotect_ns = st.reprotect_ns - prev.reprotect_ns;
                s.ring_full_exits = st.ring_full_exits - prev.ring_full_exits;
                s.wall_ns = wall;
                s.guest_ns = arrived - handed_out_ns;
                for (uint64_t p : ph.pages)
                    if (!harvested.test(p)) s.exact = false;
                // 2. The reference: copy the same pages out of guest memory, in bitmap order.
                uint8_t* dst = copy_buf.get();
                uint64_t c0 = now_ns();
                for (size_t i = 0; i < ph.pages.size(); ++i)
                    std::memcpy(dst + i * kPageSize, mem.page_ptr(ph.pages[i]), kPageSize);
                s.memcpy_ns = now_ns() - c0;
                for (size_t i = 0; i < ph.pages.size(); i += 97) sink += dst[i * kPageSize + (call * 8) % kPageSize];
                ph.samples.push_back(s);
            }
        }
        prev = st;

        // 3. The next round.
        if (call >= schedule.size()) {
            args.arg[1] = ~0ull;
            ++call;
            return mem.write_obj(args_gpa, args);
        }
        size_t pi = schedule[call].first;
        if (call == 0 || schedule[call - 1].first != pi) {
            const auto& g = phases[pi].gpas;
            US_TRYV(mem.write(Gpa{kListGpa}, {reinterpret_cast<const uint8_t*>(g.data()), g.size() * 8}));
        }
        args.arg[0] = kListGpa;
        args.arg[1] = phases[pi].count;
        args.arg[2] = call + 1; // the guest writes at offset round*8 % 4096
        ++call;
        US_TRYV(mem.write_obj(args_gpa, args));
        handed_out_ns = now_ns();
        return {};
    }
};

struct Row {
    std::string mode;
    uint64_t memory_gib = 0;
    uint64_t pages = 0;
    size_t rounds = 0;
    double pages_reported = 0;       // mean per round
    double collect_us_pp = 0;        // per dirty page, over all measured rounds
    double reprotect_us_pp = 0;
    double harvest_us_pp = 0;        // collect + re-protect
    double harvest_us_pp_min = 0, harvest_us_pp_max = 0;
    double wall_us = 0;              // mean per harvest_dirty() call
    double wall_us_pp = 0;
    double ring_full_exits = 0;      // mean per round
    double memcpy_us_pp = 0;
    double ratio = 0;                // harvest / memcpy
    double guest_write_us_pp = 0;    // guest side: writing one tracked page
    bool exact = true;
    std::vector<double> per_round;   // harvest us/page of each measured round
};

Row summarize_phase(const std::string& mode, uint64_t mem_bytes, const Phase& ph) {
    Row r;
    r.mode = mode;
    r.memory_gib = mem_bytes / kGiB;
    r.pages = ph.count;
    r.rounds = ph.samples.size();
    double pages = 0, collect = 0, reprot = 0, wall = 0, rfe = 0, copy = 0, guest = 0;
    r.harvest_us_pp_min = 1e30;
    for (const auto& s : ph.samples) {
        pages += double(s.pages_reported);
        collect += double(s.collect_ns);
        reprot += double(s.reprotect_ns);
        wall += double(s.wall_ns);
        rfe += double(s.ring_full_exits);
        copy += double(s.memcpy_ns);
        guest += double(s.guest_ns);
        double pp = double(s.collect_ns + s.reprotect_ns) / 1000.0 / double(std::max<uint64_t>(s.pages_reported, 1));
        r.per_round.push_back(pp);
        r.harvest_us_pp_min = std::min(r.harvest_us_pp_min, pp);
        r.harvest_us_pp_max = std::max(r.harvest_us_pp_max, pp);
        r.exact = r.exact && s.exact;
    }
    double n = double(std::max<size_t>(r.rounds, 1));
    r.pages_reported = pages / n;
    r.collect_us_pp = collect / 1000.0 / pages;
    r.reprotect_us_pp = reprot / 1000.0 / pages;
    r.harvest_us_pp = (collect + reprot) / 1000.0 / pages;
    r.wall_us = wall / 1000.0 / n;
    r.wall_us_pp = wall / 1000.0 / pages;
    r.ring_full_exits = rfe / n;
    r.memcpy_us_pp = copy / 1000.0 / (double(ph.count) * n);
    r.ratio = r.harvest_us_pp / r.memcpy_us_pp;
    r.guest_write_us_pp = guest / 1000.0 / (double(ph.count) * n);
    return r;
}

uint64_t g_span_pages = 0; // --span-mib: pick pages only from [16 MiB, 16 MiB + span); 0 = all RAM above

std::vector<Row> run_config(uint64_t mem_bytes, DirtyMode mode, const std::vector<uint64_t>& counts, size_t warmup,
                            size_t measured) {
    VmConfig cfg;
    cfg.memory_bytes = mem_bytes;
    cfg.vcpus = 1;
    cfg.dirty.mode = mode;
    cfg.dirty.ring_entries = kRingEntries;
    uint64_t t0 = now_ns();
    auto vm = boot("dirty_rounds", "", cfg);
    uint64_t created_ms = (now_ns() - t0) / 1000000;
    if (std::string(vm->dirty_tracker().name()) != dirty_mode_name(mode))
        die(std::string("asked for dirty tracking ") + dirty_mode_name(mode) + ", got " + vm->dirty_tracker().name());

    Driver d;
    d.vm = vm.get();
    d.harvested = Bitmap(vm->memory().page_count());
    uint64_t first = *vm->memory().page_index(Gpa{kDataGpa});
    uint64_t total = vm->memory().page_count();
    if (g_span_pages) total = std::min(total, first + g_span_pages);
    uint64_t max_count = *std::max_element(counts.begin(), counts.end());
    if (max_count > total - first) die("guest memory too small for the page counts");
    // Same seed for every configuration: ring and bitmap write the same pages.
    std::mt19937_64 rng(0x5eed0000 + mem_bytes / kGiB);
    std::vector<uint64_t> pool(total - first);
    for (uint64_t i = 0; i < pool.size(); ++i) pool[i] = first + i;
    for (uint64_t c : counts) {
        Phase ph;
        ph.count = c;
        for (uint64_t i = 0; i < c; ++i) {
            uint64_t j = i + rng() % (pool.size() - i);
            std::swap(pool[i], pool[j]);
        }
        ph.pages.assign(pool.begin(), pool.begin() + static_cast<long>(c));
        std::sort(ph.pages.begin(), ph.pages.end());
        for (uint64_t p : ph.pages) {
            Gpa g = vm->memory().page_gpa(p);
            if (!vm->memory().contains(g, kPageSize)) die("page index maps outside RAM");
            ph.gpas.push_back(g.value);
        }
        d.phases.push_back(std::move(ph));
    }
    for (size_t pi = 0; pi < counts.size(); ++pi) {
        for (size_t i = 0; i < warmup; ++i) d.schedule.push_back({pi, false});
        for (size_t i = 0; i < measured; ++i) d.schedule.push_back({pi, true});
    }
    d.copy_buf.reset(new uint8_t[max_count * kPageSize]);
    std::memset(d.copy_buf.get(), 1, max_count * kPageSize); // prefault

    std::mutex mu;
    auto added = vm->hypercalls().add(abi::US_HC_TEST_FIRST, [&](Vcpu&, Gpa args) {
        std::lock_guard lock(mu);
        auto r = d.on_hypercall(args);
        if (!r) d.error = r.error().describe();
        return r;
    });
    if (!added) die(added.error().describe());
    if (auto r = vm->start(); !r) die(r.error().describe());
    auto stop = vm->wait_for(std::chrono::seconds(900));
    if (!stop) die("the dirty_rounds guest did not finish in 15 minutes");
    if (stop->kind != VmStopKind::exited || stop->status != 0)
        die(std::string("the guest stopped: ") + vm_stop_kind_name(stop->kind) + ": " + stop->message + " " + d.error);
    std::fprintf(stderr, "  %s %llu GiB: VM created in %llu ms, %zu rounds\n", dirty_mode_name(mode),
                 (unsigned long long)(mem_bytes / kGiB), (unsigned long long)created_ms, d.schedule.size());

    std::vector<Row> rows;
    for (const auto& ph : d.phases) rows.push_back(summarize_phase(dirty_mode_name(mode), mem_bytes, ph));
    return rows;
}

} // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv, "harvest + re-protect cost per dirty page, dirty ring vs bitmap");
    std::string why;
    if (!kvm_available(&why)) die("KVM is not available: " + why);

    std::vector<uint64_t> sizes = {1 * kGiB, 4 * kGiB};
    std::vector<uint64_t> counts = {1000, 10000, 100000};
    std::vector<DirtyMode> modes = {DirtyMode::ring, DirtyMode::bitmap};
    size_t warmup = 1, measured = 5;
    if (opt.quick) {
        sizes = {1 * kGiB};
        counts = {1000, 10000};
        measured = 2;
    }
    bool verbose = false;
    for (const auto& [k, v] : opt.extra) {
        if (k == "pages") counts = parse_list(v);
        else if (k == "gib") {
            sizes.clear();
            for (uint64_t g : parse_list(v)) sizes.push_back(g * kGiB);
        } else if (k == "rounds") measured = parse_list(v).at(0);
        else if (k == "warmup") warmup = parse_list(v).at(0);
        else if (k == "modes") {
            modes.clear();
            if (v.find("ring") != std::string::npos) modes.push_back(DirtyMode::ring);
            if (v.find("bitmap") != std::string::npos) modes.push_back(DirtyMode::bitmap);
        } else if (k == "verbose") verbose = v != "0";
        else if (k == "span-mib") g_span_pages = parse_list(v).at(0) * kMiB / kPageSize;
        else die("unknown option --" + k + "= (want pages, gib, rounds, warmup, modes, verbose, span-mib)");
    }
    if (counts.empty() || sizes.empty() || modes.empty() || measured == 0) die("nothing to measure");
    std::string date = utc_timestamp();
    std::printf("bench_dirty  %s%s\n", date.c_str(), opt.quick ? "  (--quick)" : "");
    std::printf("dirty_rounds guest, 1 vCPU; ring = %u entries/vCPU; bitmap = KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG;\n"
                "%zu warm-up + %zu measured rounds per row; same random pages above 16 MiB for ring and bitmap.\n"
                "harvest = collect + re-protect per dirty page (tracker counters, incl. ring-full drains);\n"
                "wall = harvest_dirty() call; memcpy = same pages copied out of guest memory (4 KiB each).\n"
                "Target: ring harvest + reset <= %.2f us per dirty page.\n\n",
                kRingEntries, warmup, measured, kTargetRingUsPerPage);
    std::fflush(stdout);

    std::vector<Row> rows;
    for (uint64_t mem : sizes)
        for (DirtyMode mode : modes) {
            auto r = run_config(mem, mode, counts, warmup, measured);
            if (verbose)
                for (const auto& row : r) {
                    std::fprintf(stderr, "  %s %llu GiB %llu pages, harvest us/page per round:", row.mode.c_str(),
                                 (unsigned long long)row.memory_gib, (unsigned long long)row.pages);
                    for (double x : row.per_round) std::fprintf(stderr, " %.4f", x);
                    std::fprintf(stderr, "\n");
                }
            rows.insert(rows.end(), r.begin(), r.end());
        }

    std::printf("%-6s %4s %7s %7s %9s %9s %9s %15s %9s %9s %8s %8s %7s %8s %s\n", "mode", "mem", "pages", "reported",
                "collect", "reprot", "harvest", "harvest min-max", "wall", "wall", "ringfull", "memcpy", "harv/", "guest wr",
                "target");
    std::printf("%-6s %4s %7s %7s %9s %9s %9s %15s %9s %9s %8s %8s %7s %8s %s\n", "", "GiB", "", "/round", "us/pg",
                "us/pg", "us/pg", "us/pg", "us/call", "us/pg", "/round", "us/pg", "memcpy", "us/pg", "");
    bool ring_ok = true, exact = true;
    std::vector<Json> jrows;
    for (const auto& r : rows) {
        std::string verdict = "-";
        if (r.mode == "ring") {
            bool ok = r.harvest_us_pp <= kTargetRingUsPerPage;
            ring_ok = ring_ok && ok;
            char b[48];
            std::snprintf(b, sizeof b, "%s (<= %.2f)", ok ? "met" : "MISSED", kTargetRingUsPerPage);
            verdict = b;
        }
        exact = exact && r.exact;
        char range[32];
        std::snprintf(range, sizeof range, "%.3f-%.3f", r.harvest_us_pp_min, r.harvest_us_pp_max);
        std::printf("%-6s %4llu %7llu %7.0f %9.4f %9.4f %9.4f %15s %9.0f %9.4f %8.1f %8.3f %7.3f %8.2f %s%s\n",
                    r.mode.c_str(), (unsigned long long)r.memory_gib, (unsigned long long)r.pages, r.pages_reported,
                    r.collect_us_pp, r.reprotect_us_pp, r.harvest_us_pp, range, r.wall_us, r.wall_us_pp,
                    r.ring_full_exits, r.memcpy_us_pp, r.ratio, r.guest_write_us_pp, verdict.c_str(),
                    r.exact ? "" : "  NOT EXACT");
        Json j;
        j.str("mode", r.mode)
            .integer("memory_gib", r.memory_gib)
            .integer("pages", r.pages)
            .integer("rounds", r.rounds)
            .num("pages_reported_per_round", r.pages_reported)
            .num("collect_us_per_page", r.collect_us_pp)
            .num("reprotect_us_per_page", r.reprotect_us_pp)
            .num("harvest_us_per_page", r.harvest_us_pp)
            .num("harvest_us_per_page_min", r.harvest_us_pp_min)
            .num("harvest_us_per_page_max", r.harvest_us_pp_max)
            .num("wall_us_per_harvest", r.wall_us)
            .num("wall_us_per_page", r.wall_us_pp)
            .num("ring_full_exits_per_round", r.ring_full_exits)
            .num("memcpy_us_per_page", r.memcpy_us_pp)
            .num("harvest_over_memcpy", r.ratio)
            .num("guest_write_us_per_page", r.guest_write_us_pp)
            .nums("harvest_us_per_page_rounds", r.per_round)
            .boolean("exact", r.exact);
        if (r.mode == "ring") j.boolean("meets_target", r.harvest_us_pp <= kTargetRingUsPerPage);
        jrows.push_back(j);
    }
    std::printf("\nring target (harvest + reset <= %.2f us/page): %s%s\n", kTargetRingUsPerPage, ring_ok ? "met" : "MISSED",
                exact ? "" : "   WARNING: some harvest missed a written page");

    Json out;
    out.str("benchmark", "bench_dirty");
    add_provenance(out, argc, argv);
    out        .boolean("quick", opt.quick)
        .integer("ring_entries", kRingEntries)
        .integer("warmup_rounds", warmup)
        .integer("measured_rounds", measured)
        .num("target_ring_harvest_us_per_page", kTargetRingUsPerPage)
        .boolean("ring_target_met", ring_ok)
        .boolean("exact", exact)
        .arr("results", jrows);
    return emit_json(opt, out) && exact ? 0 : 1;
}
