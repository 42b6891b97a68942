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
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"
#include "hv/checkpointable.hpp"

namespace understudy::test {

// What a vCPU writes into a page (bench/bench_pipeline's content classes).
enum class FakeContent {
    stamp,  // a 16-byte stamp at a place that moves within the page (a churning guest)
    text,   // the whole page: words, as a page cache of text or logs
    random, // the whole page: incompressible bytes
    zero,   // the whole page: zeros
};

struct FakeVmConfig {
    uint64_t memory_bytes = 16 * hv::kMiB;
    unsigned vcpus = 2;
    uint64_t pages = 512;                 // each vCPU writes pages [0, pages) of its own slice
    unsigned writes_per_burst = 16;       // page writes between two looks at the pause flag
    std::chrono::microseconds pause_between_bursts{100};
    bool random_pages = true;             // else a cursor that sweeps the slice
    FakeContent content = FakeContent::stamp;
    // Page writes per second, all vCPUs together (0: bursts as fast as writes_per_burst and
    // pause_between_bursts allow). Paced on running time: a vCPU that falls more than a
    // burst's worth behind (a pause, a busy host) drops the debt instead of catching up,
    // as a guest loses the time it was stopped.
    uint64_t pages_per_s = 0;
    // Disk files (made, or grown to disk_bytes, sparse): each burst of each vCPU also
    // writes this many runs of 512-byte sectors, stamped, into its slice of every disk.
    std::vector<std::string> disk_paths;
    uint64_t disk_bytes = 4 * hv::kMiB;
    unsigned disk_writes_per_burst = 2;
};

// A disk file that tracks the blocks written to it as hv::virtio::VirtioBlk does.
class FakeDisk final : public hv::ReplicatedDisk {
public:
    static Result<std::unique_ptr<FakeDisk>> open(const std::string& path, uint64_t bytes);
    const std::string& path() const override { return path_; }
    uint64_t size_bytes() const override { return size_; }
    bool readonly() const override { return false; }
    const hv::DiskIdentity& identity() const override { return identity_; }
    void harvest_written(Bitmap& out) override { written_.drain_into(out); }
    Result<void> read_at(uint64_t offset, std::span<uint8_t> out) const override;
    Result<std::vector<std::pair<uint64_t, uint64_t>>> data_extents() const override;
    // Writes, then records the blocks (as a completed request would be).
    Result<void> write(uint64_t offset, std::span<const uint8_t> data);

private:
    FakeDisk(std::string path, UniqueFd fd, uint64_t size, hv::DiskIdentity id)
        : path_(std::move(path)), fd_(std::move(fd)), size_(size), identity_(id), written_(hv::disk_blocks(size)) {}
    std::string path_;
    UniqueFd fd_;
    uint64_t size_;
    hv::DiskIdentity identity_;
    AtomicBitmap written_;
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
    std::vector<hv::ReplicatedDisk*> disks() override;
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
    // Page writes so far, all vCPUs, and the CPU time their threads used.
    uint64_t page_writes() const { return writes_.load(); }
    uint64_t vcpu_cpu_ns() const;

private:
    FakeVm(FakeVmConfig cfg, hv::GuestMemory mem, std::vector<std::unique_ptr<FakeDisk>> disks);
    void vcpu_main(unsigned index);
    // Writes page `page` of the vCPU's `seq`-th write, as cfg_.content says.
    void write_page(unsigned index, uint64_t page, uint64_t seq, std::mt19937_64& rng, std::vector<uint8_t>& scratch);
    // Paced mode: waits (woken by a pause) until the vCPU may write its next burst.
    void wait_for_turn(std::chrono::steady_clock::time_point& next);

    FakeVmConfig cfg_;
    hv::GuestMemory memory_;
    std::vector<std::unique_ptr<FakeDisk>> disks_;
    std::vector<std::thread> threads_;
    // Each vCPU's progress: the number of writes it made, its "rip" in the saved state.
    std::vector<std::atomic<uint64_t>> progress_;
    std::vector<std::atomic<uint64_t>> cpu_ns_; // each vCPU thread's CPU time, after its last burst
    std::atomic<uint64_t> writes_{0};

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool pause_ = true;
    unsigned parked_ = 0;
    std::optional<hv::VmStop> stop_;
};

} // namespace understudy::test
