#include "tests/support/fake_vm.hpp"

#include <random>

namespace understudy::test {

std::unique_ptr<FakeVm> FakeVm::create(FakeVmConfig cfg) {
    auto mem = hv::GuestMemory::create(cfg.memory_bytes);
    if (!mem || cfg.vcpus == 0 || cfg.pages == 0) return nullptr;
    return std::unique_ptr<FakeVm>(new FakeVm(cfg, std::move(*mem)));
}

FakeVm::FakeVm(FakeVmConfig cfg, hv::GuestMemory mem)
    : cfg_(cfg), memory_(std::move(mem)), progress_(cfg.vcpus) {}

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
            // A stamp (vCPU, sequence) at a place that moves within the page, so that
            // consecutive versions of a page differ in a few bytes (XOR deltas) or many.
            uint64_t stamp[2] = {index, seq};
            uint64_t offset = (seq % 64) * 64;
            (void)memory_.write(hv::Gpa{memory_.page_gpa(page).value + offset},
                                {reinterpret_cast<const uint8_t*>(stamp), sizeof stamp});
            progress_[index].store(seq);
            writes_.fetch_add(1);
        }
        if (cfg_.pause_between_bursts.count() > 0) std::this_thread::sleep_for(cfg_.pause_between_bursts);
    }
}

} // namespace understudy::test
