// bench_verify: what online verification costs (issue 21): the time it adds to a
// checkpoint's pause and the CPU of a whole pass, against the copy that the pause already
// does for 1,000 and 10,000 dirty pages, measured in the same run.
//
// Needs no KVM: it runs the code the primary runs in the pause (replicator::page_digest
// over a slice, replicator::state_digests of a 2-vCPU state) and the code the backup
// runs after a commit (replicator::compare_slice), over a 128 MiB guest memory whose
// every page holds data. The reference is memcpy of the dirty pages into a checkpoint
// buffer, which is what Primary::copy_dirty does in the pause (the pages dirtied since
// the mid-epoch copy; at most all of them).
#include <random>

#include "bench/bench_common.hpp"
#include "hv/guest_memory.hpp"
#include "replicator/verification.hpp"

using namespace understudy;
using namespace understudy::bench;
using namespace std::chrono;

namespace {

constexpr uint64_t kMemory = 128 * hv::kMiB;

template <class F>
double time_us(F&& f) {
    auto t0 = steady_clock::now();
    f();
    return duration<double, std::micro>(steady_clock::now() - t0).count();
}

hv::VmState two_vcpu_state() {
    hv::VmState s;
    s.vcpus.resize(2);
    for (auto& v : s.vcpus) {
        v.cpuid.resize(40);
        v.xsave.assign(4096, 0x11);
        v.msrs.resize(40, {0x10, 1});
    }
    s.devices.push_back({"virtio-net", 1, std::vector<uint8_t>(2048, 0x22)});
    s.devices.push_back({"uart", 1, std::vector<uint8_t>(64, 0x33)});
    return s;
}

struct Row {
    uint64_t dirty = 0, slice = 0;
    Summary copy_us, verify_us, compare_us;
};

} // namespace

int main(int argc, char** argv) {
    auto opts = parse_options(argc, argv, "online verification: pause and CPU cost vs the pause's page copy");
    std::vector<uint64_t> dirty_counts{1000, 10000}, slices{1024, 4096};
    size_t rounds = opts.quick ? 20 : 200;
    for (auto& [k, v] : opts.extra) {
        if (k == "dirty") dirty_counts = parse_list(v);
        else if (k == "slices") slices = parse_list(v);
        else if (k == "rounds") rounds = parse_list(v).at(0);
        else die("unknown option --" + k);
    }
    auto mem = hv::GuestMemory::create(kMemory);
    if (!mem) die(mem.error().describe());
    const uint64_t pages = mem->page_count();
    std::mt19937_64 rng(42);
    for (uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<uint64_t*>(mem->page_ptr(p));
        for (size_t i = 0; i < hv::kPageSize / 8; i += 8) w[i] = rng();
    }
    const auto state = two_vcpu_state();
    std::vector<uint8_t> buffer(*std::max_element(dirty_counts.begin(), dirty_counts.end()) * hv::kPageSize);

    std::vector<Row> rows;
    for (uint64_t dirty : dirty_counts)
        for (uint64_t slice : slices) {
            Row row{dirty, slice, {}, {}, {}};
            std::vector<double> copy, verify, compare;
            std::vector<uint64_t> picked(dirty);
            uint64_t next = 0;
            for (size_t r = 0; r < rounds + 2; ++r) {
                for (auto& p : picked) p = rng() % pages;
                const double c = time_us([&] {
                    for (size_t i = 0; i < picked.size(); ++i)
                        std::memcpy(buffer.data() + i * hv::kPageSize, mem->page_ptr(picked[i]), hv::kPageSize);
                });
                replicator::VerifySlice s;
                s.epoch = 1;
                s.pass = 1;
                s.first_page = next;
                s.pages.resize(std::min(slice, pages - next));
                const double v = time_us([&] { // what Primary::capture adds to the pause
                    s.state = replicator::state_digests(state);
                    for (size_t i = 0; i < s.pages.size(); ++i) s.pages[i] = replicator::page_digest(mem->page_ptr(s.first_page + i));
                });
                const double b = time_us([&] { // the backup, after its commit
                    auto o = replicator::compare_slice(s, *mem, state, 1);
                    if (!o.matches()) die("a slice over unchanged memory did not match");
                });
                next = (next + s.pages.size()) % pages;
                if (r < 2) continue; // warm-up
                copy.push_back(c);
                verify.push_back(v);
                compare.push_back(b);
            }
            row.copy_us = summarize(copy);
            row.verify_us = summarize(verify);
            row.compare_us = summarize(compare);
            rows.push_back(row);
        }

    std::printf("online verification, %llu MiB guest, %zu rounds per row (times in us, p50 / p99)\n",
                static_cast<unsigned long long>(kMemory >> 20), rounds);
    std::printf("%8s %7s | %17s | %17s | %9s | %17s | %12s\n", "dirty", "slice", "pause copy", "verify in pause",
                "verify/copy", "backup compare", "pass CPU ms");
    Json out;
    out.str("benchmark", "bench_verify");
    add_provenance(out, argc, argv);
    out.integer("memory_bytes", kMemory).integer("rounds", rounds);
    std::vector<Json> jrows;
    for (const auto& r : rows) {
        const double slices_per_pass = std::ceil(double(pages) / double(r.slice));
        const double pass_cpu_ms = slices_per_pass * (r.verify_us.p50 + r.compare_us.p50) / 1000;
        std::printf("%8llu %7llu | %7.1f / %7.1f | %7.1f / %7.1f | %9.2f | %7.1f / %7.1f | %12.1f\n",
                    static_cast<unsigned long long>(r.dirty), static_cast<unsigned long long>(r.slice), r.copy_us.p50,
                    r.copy_us.p99, r.verify_us.p50, r.verify_us.p99, r.verify_us.p50 / r.copy_us.p50, r.compare_us.p50,
                    r.compare_us.p99, pass_cpu_ms);
        jrows.push_back(Json()
                            .integer("dirty_pages", r.dirty)
                            .integer("slice_pages", r.slice)
                            .num("copy_p50_us", r.copy_us.p50)
                            .num("copy_p99_us", r.copy_us.p99)
                            .num("verify_p50_us", r.verify_us.p50)
                            .num("verify_p99_us", r.verify_us.p99)
                            .num("verify_over_copy_p50", r.verify_us.p50 / r.copy_us.p50)
                            .num("compare_p50_us", r.compare_us.p50)
                            .num("compare_p99_us", r.compare_us.p99)
                            .num("pass_cpu_ms", pass_cpu_ms));
    }
    std::printf("verify in pause: what a checkpoint's pause grows by while a pass runs (slice digests + state digests);\n"
                "pause copy: memcpy of the dirty pages, the page copy the pause already does (the same-run reference);\n"
                "pass CPU: both sides, a whole pass of guest memory at that slice size.\n");
    out.arr("rows", jrows);
    return emit_json(opts, out) ? 0 : 1;
}
