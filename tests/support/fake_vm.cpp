#include "tests/support/fake_vm.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <ctime>

#include "common/file_io.hpp"

namespace understudy::test {

Result<std::unique_ptr<FakeDisk>> FakeDisk::open(const std::string& path, uint64_t bytes) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid()) return sys_error("opening " + path);
    if (::ftruncate(fd.get(), off_t(bytes)) < 0) return sys_error("sizing " + path);
    auto id = US_TRY(hv::begin_generation(path)); // as a VM that writes a disk does
    return std::unique_ptr<FakeDisk>(new FakeDisk(path, std::move(fd), bytes, id));
}

Result<void> FakeDisk::read_at(uint64_t offset, std::span<uint8_t> out) const { return pread_full(fd_.get(), offset, out); }

Result<std::vector<std::pair<uint64_t, uint64_t>>> FakeDisk::data_extents() const {
    return understudy::data_extents(fd_.get(), size_);
}

Result<void> FakeDisk::write(uint64_t offset, std::span<const uint8_t> data) {
    US_TRYV(pwrite_full(fd_.get(), offset, data));
    written_.set_range(offset / hv::kDiskBlockBytes, hv::disk_blocks(offset + data.size()) - offset / hv::kDiskBlockBytes);
    return {};
}

std::unique_ptr<FakeVm> FakeVm::create(FakeVmConfig cfg) {
    auto mem = hv::GuestMemory::create(cfg.memory_bytes);
    if (!mem || cfg.vcpus == 0 || cfg.pages == 0) return nullptr;
    std::vector<std::unique_ptr<FakeDisk>> disks;
    for (const auto& path : cfg.disk_paths) {
        auto d = FakeDisk::open(path, cfg.disk_bytes);
        if (!d) return nullptr;
        disks.push_back(std::move(*d));
    }
    return std::unique_ptr<FakeVm>(new FakeVm(cfg, std::move(*mem), std::move(disks)));
}

FakeVm::FakeVm(FakeVmConfig cfg, hv::GuestMemory mem, std::vector<std::unique_ptr<FakeDisk>> disks)
    : cfg_(cfg), memory_(std::move(mem)), disks_(std::move(disks)), progress_(cfg.vcpus), cpu_ns_(cfg.vcpus) {}

uint64_t FakeVm::vcpu_cpu_ns() const {
    uint64_t sum = 0;
    for (const auto& c : cpu_ns_) sum += c.load();
    return sum;
}

std::vector<hv::ReplicatedDisk*> FakeVm::disks() {
    std::vector<hv::ReplicatedDisk*> out;
    for (auto& d : disks_) out.push_back(d.get());
    return out;
}

FakeVm::~FakeVm() {
    stop_with({hv::VmStopKind::stopped, 0, "stopped by the host"});
    for (auto& t : threads_) t.join();
}

uint64_t FakeVm::config_digest() const { return memory_.size() * 31 + cfg_.vcpus; }

void FakeVm::start() {
    for (unsigned i = 0; i < cfg_.vcpus; ++i) threads_.emplace_back([this, i] { vcpu_main(i); });
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return parked_ == cfg_.vcpus; }); // started paused, as a restored VM is
}

void FakeVm::pause_all() {
    std::unique_lock lock(mu_);
    pause_ = true;
    cv_.notify_all(); // a paced vCPU waiting for its turn parks at once
    cv_.wait(lock, [&] { return parked_ == cfg_.vcpus; });
}

void FakeVm::resume_all() {
    {
        std::lock_guard lock(mu_);
        pause_ = false;
    }
    cv_.notify_all();
}

Result<void> FakeVm::harvest_dirty(Bitmap& out) {
    memory_.vmm_dirty().drain_into(out);
    return {};
}

Result<hv::VmState> FakeVm::save_state() {
    std::lock_guard lock(mu_);
    if (parked_ != cfg_.vcpus) return make_error(Errc::state, "saving the state of a fake VM that runs");
    hv::VmState s;
    s.guest_time_ns = writes_.load();
    for (unsigned i = 0; i < cfg_.vcpus; ++i) {
        hv::VcpuState v;
        v.regs.rip = progress_[i].load(); // where this vCPU "is": the writes it made
        v.regs.rax = i;
        v.xsave.assign(4096, 0);
        s.vcpus.push_back(std::move(v));
    }
    return s;
}

std::optional<hv::VmStop> FakeVm::stop_reason() const {
    std::lock_guard lock(mu_);
    return stop_;
}

void FakeVm::stop_with(hv::VmStop why) {
    {
        std::lock_guard lock(mu_);
        if (!stop_) stop_ = std::move(why);
    }
    cv_.notify_all();
}

bool FakeVm::vmm_write(uint64_t page, uint8_t value) {
    std::vector<uint8_t> bytes(64, value);
    std::lock_guard lock(mu_); // pause_all() takes it too: no write lands inside a pause
    return !pause_ && page < memory_.page_count() && memory_.write(memory_.page_gpa(page), bytes).has_value();
}

void FakeVm::vcpu_main(unsigned index) {
    std::mt19937_64 rng(index + 1);
    const uint64_t slice = memory_.page_count() / cfg_.vcpus;
    const uint64_t first = index * slice, pages = std::min(cfg_.pages, slice);
    uint64_t seq = 0;
    std::vector<uint8_t> scratch(hv::kPageSize);
    auto next = std::chrono::steady_clock::now();
    for (;;) {
        {
            std::unique_lock lock(mu_);
            if (pause_ || stop_) {
                // A stopped VM stays "parked" for good: pause_all() still returns.
                ++parked_;
                cv_.notify_all();
                cv_.wait(lock, [&] { return !pause_ || stop_; });
                if (stop_) return;
                --parked_;
            }
        }
        for (unsigned k = 0; k < cfg_.writes_per_burst; ++k) {
            uint64_t page = first + (cfg_.random_pages ? rng() % pages : seq % pages);
            ++seq;
            write_page(index, page, seq, rng, scratch);
            progress_[index].store(seq);
            writes_.fetch_add(1);
        }
        // Runs of 1 to 16 sectors at sector offsets in this vCPU's slice of each disk: they
        // straddle blocks and cover parts of them, as a guest's writes do.
        for (auto& disk : disks_) {
            const uint64_t sectors = disk->size_bytes() / 512 / cfg_.vcpus;
            for (unsigned k = 0; k < cfg_.disk_writes_per_burst && sectors > 16; ++k) {
                ++seq;
                const uint64_t at = (index * sectors + rng() % (sectors - 16)) * 512;
                std::vector<uint64_t> data((1 + rng() % 16) * 64);
                for (size_t w = 0; w < data.size(); ++w) data[w] = (uint64_t(index) << 56) ^ (seq << 16) ^ w;
                (void)disk->write(at, {reinterpret_cast<const uint8_t*>(data.data()), data.size() * 8});
                progress_[index].store(seq);
            }
        }
        timespec cpu{};
        ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
        cpu_ns_[index].store(uint64_t(cpu.tv_sec) * 1000000000u + uint64_t(cpu.tv_nsec));
        if (cfg_.pages_per_s > 0)
            wait_for_turn(next);
        else if (cfg_.pause_between_bursts.count() > 0)
            std::this_thread::sleep_for(cfg_.pause_between_bursts);
    }
}

void FakeVm::wait_for_turn(std::chrono::steady_clock::time_point& next) {
    using namespace std::chrono;
    const auto burst = nanoseconds(uint64_t(1e9 * cfg_.writes_per_burst * cfg_.vcpus / double(cfg_.pages_per_s)));
    const auto now = steady_clock::now();
    next = (now - next > burst) ? now : next + burst; // behind by more than a burst: the debt is dropped
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, next, [&] { return pause_ || stop_; });
}

void FakeVm::write_page(unsigned index, uint64_t page, uint64_t seq, std::mt19937_64& rng, std::vector<uint8_t>& scratch) {
    const hv::Gpa gpa = memory_.page_gpa(page);
    switch (cfg_.content) {
    case FakeContent::stamp: {
        // A stamp (vCPU, sequence) at a place that moves within the page, so that
        // consecutive versions of a page differ in a few bytes (XOR deltas) or many.
        uint64_t stamp[2] = {index, seq};
        (void)memory_.write(hv::Gpa{gpa.value + (seq % 64) * 64}, {reinterpret_cast<const uint8_t*>(stamp), sizeof stamp});
        return;
    }
    case FakeContent::text: {
        // A window of a fixed text (compresses as text does: LZ4 about 2 to 1) at a place
        // that moves, with the write's number in front: each version of a page differs.
        static const std::string corpus = [] {
            static constexpr const char* kWords[] = {"checkpoint ", "replica ", "the ", "epoch ", "of ", "backup ",
                                                     "guest ", "page ", "and ", "memory ", "failover ", "a ",
                                                     "request ", "to ", "log: ", "status=ok\n"};
            std::mt19937_64 words(7);
            std::string t;
            while (t.size() < 64 * 1024) t += kWords[words() % std::size(kWords)];
            return t;
        }();
        const size_t at = size_t(rng() % (corpus.size() - scratch.size()));
        std::memcpy(scratch.data(), corpus.data() + at, scratch.size());
        std::snprintf(reinterpret_cast<char*>(scratch.data()), 24, "%u:%llu", index, (unsigned long long)seq);
        break;
    }
    case FakeContent::random: {
        // xorshift64*, incompressible; four independent streams, so that the writer (which
        // shares the cores with the pipeline it feeds) spends a quarter of the time a single
        // dependent chain takes.
        uint64_t x[4];
        for (auto& v : x) v = rng() | 1;
        for (size_t i = 0; i < scratch.size(); i += 32)
            for (size_t k = 0; k < 4; ++k) {
                x[k] ^= x[k] >> 12, x[k] ^= x[k] << 25, x[k] ^= x[k] >> 27;
                const uint64_t r = x[k] * 0x2545F4914F6CDD1Dull;
                std::memcpy(scratch.data() + i + 8 * k, &r, 8);
            }
        break;
    }
    case FakeContent::zero:
        std::fill(scratch.begin(), scratch.end(), 0);
        break;
    }
    (void)memory_.write(gpa, scratch);
}

} // namespace understudy::test
