// A VM without KVM for the epoch engine's native tests (hv::Checkpointable): "vCPU"
// threads write guest memory through the VMM's own dirty tracking (GuestMemory::write)
// at a set rate and pattern, and keep their progress in their registers, so that a
// replica can be compared with the VM byte for byte, memory and state, at any pause.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "hv/checkpointable.hpp"

namespace understudy::test {

struct FakeVmConfig {
    uint64_t memory_bytes = 16 * hv::kMiB;
    unsigned vcpus = 2;
    uint64_t pages = 512;                 // each vCPU writes pages [0, pages) of its own slice
    unsigned writes_per_burst = 16;       // page writes between two looks at the pause flag
    std::chrono::microseconds pause_between_bursts{100};
    bool random_pages = true;             // else a cursor that sweeps the slice
};

class FakeVm final : public hv::Checkpointable {
public:
    static std::unique_ptr<FakeVm> create(FakeVmConfig cfg);
    ~FakeVm() override;

    hv::GuestMemory& memory() override { return memory_; }
    unsigned vcpu_count() const override { return cfg_.vcpus; }
    uint64_t config_digest() const override;
    void pause_all() override;
    void resume_all() override;
    bool tracks_dirty() const override { return true; }
    Result<void> harvest_dirty(Bitmap& out) override;
    Result<hv::VmState> save_state() override;
    std::optional<hv::VmStop> stop_reason() const override;

    // Starts the vCPU threads (paused until resume_all(), as hv::Vm::start leaves them running).
    void start();
    // The guest "stops" (as a guest fault would): the threads end, stop_reason() says why.
    void stop_with(hv::VmStop why);
    // Writes part of a page as a device would, outside any vCPU: false (nothing written)
    // while the VM is paused, as devices are suspended then (hv::Device::suspend).
    bool vmm_write(uint64_t page, uint8_t value);

private:
    FakeVm(FakeVmConfig cfg, hv::GuestMemory mem);
    void vcpu_main(unsigned index);

    FakeVmConfig cfg_;
    hv::GuestMemory memory_;
    std::vector<std::thread> threads_;
    // Each vCPU's progress: the number of writes it made, its "rip" in the saved state.
    std::vector<std::atomic<uint64_t>> progress_;
    std::atomic<uint64_t> writes_{0};

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool pause_ = true;
    unsigned parked_ = 0;
    std::optional<hv::VmStop> stop_;
};

} // namespace understudy::test
