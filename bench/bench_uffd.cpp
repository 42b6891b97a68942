// What userfaultfd write-protection costs on this kernel, before designing a pause
// around it (issue 20, item 3): a checkpoint would write-protect its dirty pages in the
// pause, resume, and copy each page afterwards, or at once when the guest is about to
// write it. Measured on a guest-RAM-like mapping (memfd, MAP_SHARED, populated), no KVM:
//   - UFFDIO_WRITEPROTECT of N scattered pages (one call per page, as a dirty set needs),
//     of N contiguous pages in one call, and of the whole mapping in one call, with the
//     memcpy of the same N pages in the same run (what the pause does today);
//   - the round trip of one write fault to a protected page: the writer blocks, a
//     handler thread reads the fault, copies the page and lifts the protection; with a
//     handler that sleeps in poll() and one that spins on the descriptor.
// Target it is judged against: pause (excluding the vCPU stop) at 10,000 dirty pages
// <= 300 us p99. See bench/README.md.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "bench/bench_common.hpp"

using namespace understudy;
using namespace understudy::bench;

namespace {

constexpr double kPauseTargetUs = 300;
constexpr uint64_t kTargetPages = 10000;

struct Uffd {
    int fd = -1;
    uint8_t* base = nullptr;
    size_t bytes = 0;

    void protect(uint64_t addr, uint64_t len, bool on) const {
        uffdio_writeprotect w{};
        w.range.start = addr;
        w.range.len = len;
        w.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
        if (::ioctl(fd, UFFDIO_WRITEPROTECT, &w) < 0) die("UFFDIO_WRITEPROTECT: " + std::string(std::strerror(errno)));
    }
};

// The mapping and its userfaultfd, registered for write protection; dies with the reason
// where the kernel does not offer it.
Uffd open_uffd(size_t bytes) {
    Uffd u;
    u.bytes = bytes;
    int mfd = ::memfd_create("bench-uffd", MFD_CLOEXEC);
    if (mfd < 0 || ::ftruncate(mfd, off_t(bytes)) < 0) die("memfd: " + std::string(std::strerror(errno)));
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, mfd, 0);
    ::close(mfd);
    if (p == MAP_FAILED) die("mmap: " + std::string(std::strerror(errno)));
    u.base = static_cast<uint8_t*>(p);
    for (size_t off = 0; off < bytes; off += 4096) u.base[off] = 1;
    u.fd = int(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (u.fd < 0) die("userfaultfd: " + std::string(std::strerror(errno)) + " (vm.unprivileged_userfaultfd, or not root)");
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    if (::ioctl(u.fd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API with write protection of shared memory: " + std::string(std::strerror(errno)));
    uffdio_register reg{};
    reg.range.start = uint64_t(u.base);
    reg.range.len = bytes;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (::ioctl(u.fd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER (WP): " + std::string(std::strerror(errno)));
    return u;
}

struct SetRow {
    uint64_t pages = 0;
    Summary protect_us, unprotect_us, contiguous_us, memcpy_us;
};

SetRow measure_set(const Uffd& u, uint64_t n, unsigned rounds, std::mt19937_64& rng) {
    const uint64_t total = u.bytes / 4096;
    std::vector<double> prot, unprot, contig, copy;
    std::vector<uint8_t> dst(n * 4096);
    std::memset(dst.data(), 0, dst.size());
    SetRow row;
    for (unsigned r = 0; r < rounds; ++r) {
        std::vector<uint64_t> pick(n);
        for (auto& p : pick) p = rng() % total;
        std::sort(pick.begin(), pick.end());
        pick.erase(std::unique(pick.begin(), pick.end()), pick.end());
        row.pages = pick.size();
        uint64_t t0 = now_ns();
        for (uint64_t p : pick) u.protect(uint64_t(u.base) + p * 4096, 4096, true);
        uint64_t t1 = now_ns();
        for (uint64_t p : pick) u.protect(uint64_t(u.base) + p * 4096, 4096, false);
        uint64_t t2 = now_ns();
        for (size_t i = 0; i < pick.size(); ++i) std::memcpy(dst.data() + i * 4096, u.base + pick[i] * 4096, 4096);
        uint64_t t3 = now_ns();
        u.protect(uint64_t(u.base), pick.size() * 4096, true);
        uint64_t t4 = now_ns();
        u.protect(uint64_t(u.base), pick.size() * 4096, false);
        prot.push_back(double(t1 - t0) / 1e3);
        unprot.push_back(double(t2 - t1) / 1e3);
        copy.push_back(double(t3 - t2) / 1e3);
        contig.push_back(double(t4 - t3) / 1e3);
    }
    row.protect_us = summarize(prot);
    row.unprotect_us = summarize(unprot);
    row.contiguous_us = summarize(contig);
    row.memcpy_us = summarize(copy);
    return row;
}

// One write to a protected page, from protection lifted by a handler thread to the write
// done: the guest's stall per first write after a pause.
Summary fault_round_trip(const Uffd& u, bool spinning, unsigned faults, std::mt19937_64& rng) {
    std::atomic<bool> stop{false};
    std::vector<uint8_t> copy(4096);
    std::thread handler([&] {
        pollfd pf{u.fd, POLLIN, 0};
        while (!stop.load(std::memory_order_relaxed)) {
            if (!spinning && ::poll(&pf, 1, 20) <= 0) continue;
            uffd_msg msg;
            if (::read(u.fd, &msg, sizeof msg) != ssize_t(sizeof msg) || msg.event != UFFD_EVENT_PAGEFAULT) continue;
            const uint64_t page = msg.arg.pagefault.address & ~uint64_t(4095);
            std::memcpy(copy.data(), reinterpret_cast<const void*>(page), 4096); // the copy the checkpoint keeps
            u.protect(page, 4096, false);                                         // and the writer goes on
        }
    });
    std::vector<double> us;
    const uint64_t total = u.bytes / 4096;
    for (unsigned i = 0; i < faults; ++i) {
        const uint64_t p = rng() % total;
        u.protect(uint64_t(u.base) + p * 4096, 4096, true);
        const uint64_t t0 = now_ns();
        reinterpret_cast<volatile uint8_t*>(u.base)[p * 4096 + 8] = uint8_t(i);
        us.push_back(double(now_ns() - t0) / 1e3);
    }
    stop = true;
    handler.join();
    return summarize(us);
}

} // namespace

int main(int argc, char** argv) {
    Options opt = parse_options(argc, argv, "userfaultfd write-protection: cost per page and per fault, next to memcpy");
    const size_t bytes = (opt.quick ? 256u : 1024u) << 20;
    const unsigned rounds = opt.quick ? 3 : 10, faults = opt.quick ? 500 : 3000;
    std::mt19937_64 rng(42);
    Uffd u = open_uffd(bytes);

    std::vector<SetRow> rows;
    for (uint64_t n : {uint64_t(1000), kTargetPages}) rows.push_back(measure_set(u, n, rounds, rng));
    std::vector<double> whole;
    for (unsigned r = 0; r < rounds; ++r) {
        uint64_t t0 = now_ns();
        u.protect(uint64_t(u.base), bytes, true);
        whole.push_back(double(now_ns() - t0) / 1e3);
        u.protect(uint64_t(u.base), bytes, false);
    }
    const Summary whole_us = summarize(whole);
    const Summary sleeping = fault_round_trip(u, false, faults, rng), spinning = fault_round_trip(u, true, faults, rng);

    std::printf("userfaultfd write protection, %zu MiB memfd mapping, %u rounds (p50 / p99, us)\n\n", bytes >> 20, rounds);
    std::printf("%8s | %19s | %19s | %19s | %19s\n", "pages", "protect, per page", "unprotect, per page", "one contiguous range",
                "memcpy (the pause)");
    for (const auto& r : rows)
        std::printf("%8llu | %8.0f / %8.0f | %8.0f / %8.0f | %8.0f / %8.0f | %8.0f / %8.0f\n", (unsigned long long)r.pages,
                    r.protect_us.p50, r.protect_us.p99, r.unprotect_us.p50, r.unprotect_us.p99, r.contiguous_us.p50,
                    r.contiguous_us.p99, r.memcpy_us.p50, r.memcpy_us.p99);
    std::printf("\nthe whole mapping in one call: %.0f / %.0f us\n", whole_us.p50, whole_us.p99);
    std::printf("one write fault, handler copies and unprotects: sleeping handler %.1f / %.1f us, spinning handler %.1f / %.1f us\n",
                sleeping.p50, sleeping.p99, spinning.p50, spinning.p99);
    const SetRow& at_target = rows.back();
    const bool fits = at_target.protect_us.p99 <= kPauseTargetUs;
    std::printf("\nprotecting %llu scattered pages alone: p99 %.0f us against a whole-pause target of %.0f us: %s\n",
                (unsigned long long)at_target.pages, at_target.protect_us.p99, kPauseTargetUs, fits ? "fits" : "DOES NOT FIT");

    Json j;
    j.str("benchmark", "bench_uffd");
    add_provenance(j, argc, argv);
    j.boolean("quick", opt.quick).integer("mapping_bytes", bytes).integer("rounds", rounds);
    std::vector<Json> rj;
    for (const auto& r : rows)
        rj.push_back(Json()
                         .integer("pages", r.pages)
                         .obj("protect_us", summary_json(r.protect_us))
                         .obj("unprotect_us", summary_json(r.unprotect_us))
                         .obj("contiguous_protect_us", summary_json(r.contiguous_us))
                         .obj("memcpy_us", summary_json(r.memcpy_us)));
    j.arr("rows", rj);
    j.obj("whole_mapping_protect_us", summary_json(whole_us));
    j.obj("fault_sleeping_handler_us", summary_json(sleeping)).obj("fault_spinning_handler_us", summary_json(spinning));
    j.num("target_pause_us", kPauseTargetUs).integer("target_pages", kTargetPages).boolean("protect_fits_target", fits);
    return emit_json(opt, j) ? 0 : 1;
}
