// One vCPU: its fd, its kvm_run mapping, and its thread. The thread is a small state
// machine (running -> paused -> running ... -> exited) driven by the VM's pause and
// resume requests. An exit is always handled to completion, and KVM is re-entered with
// immediate_exit before parking until the instruction is done (a split or string access
// needs several exits), so that a paused vCPU never holds a half-done port or MMIO
// instruction: saved state is always at an instruction boundary.
#pragma once

#include <linux/kvm.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <thread>

#include "common/error.hpp"
#include "common/unique_fd.hpp"
#include "hv/vcpu_state.hpp"

namespace understudy::hv {

class Vm;

enum class VcpuRunState : uint32_t { created, running, paused, exited };

class Vcpu {
public:
    static Result<std::unique_ptr<Vcpu>> create(Vm& vm, unsigned index);
    ~Vcpu();
    Vcpu(const Vcpu&) = delete;
    Vcpu& operator=(const Vcpu&) = delete;

    unsigned index() const { return index_; }
    int fd() const { return fd_.get(); }
    VcpuRunState run_state() const { return state_.load(std::memory_order_acquire); }

    // PVH entry state: 32-bit flat protected mode, paging off, EBX = start_info.
    Result<void> set_pvh_boot_state(uint32_t entry, uint32_t start_info);
    // Linux's 64-bit boot state: long mode with paging on (CR3 = page tables), CS and DS
    // the flat selectors 0x10 and 0x18 of the GDT at gdt_base, RSI = the zero page.
    Result<void> set_linux_boot_state(uint64_t entry, uint64_t zero_page, uint64_t cr3, uint64_t gdt_base, uint16_t gdt_bytes);

    // Only while paused (or before start).
    Result<void> set_msr(uint32_t index, uint64_t value);
    Result<VcpuState> save_state() const;
    Result<void> restore_state(const VcpuState& s);

    // Thread control, used by Vm. start() launches the thread in the paused state.
    Result<void> start();
    void request_pause();
    void request_resume();
    void request_stop();
    // Blocks until the thread is paused or exited.
    void wait_parked() const;
    void join();
    // True while a pause is requested; halting hypercalls return early when it is.
    bool pause_requested() const { return (control_.load(std::memory_order_acquire) & kPauseBit) != 0; }

private:
    Vcpu(Vm& vm, unsigned index) : vm_(vm), index_(index) {}
    void thread_main();
    // Completes the instruction the last exit belongs to, without running guest code.
    Result<void> finish_instruction();
    void park();
    Result<void> handle_exit();
    Result<void> setup_cpuid();
    // Runs the guest's TSC at the saved rate where this host's differs (after a failover or
    // a restore on another machine). Where KVM cannot scale it, the guest runs on at this
    // host's rate with a warning: its kvmclock stays right, a TSC clocksource or deadline
    // timer does not, and refusing would turn the loss of a host into an outage.
    void restore_tsc_rate(uint32_t saved_khz);
    void kick();
    void change_control(uint32_t set, uint32_t clear);

    // control_ holds the requests to the thread: bit 0 pause, bit 1 stop, the rest a
    // counter bumped by every change. Because each request changes the whole word, a
    // thread sleeping on it (a futex compares the word) cannot miss one, and a pause
    // requested again right after a resume is a new value the thread must acknowledge.
    static constexpr uint32_t kPauseBit = 1, kStopBit = 2, kChangeStep = 4;
    // parked_at_ is the control_ value the thread is parked under; wait_parked() waits
    // for it to equal the current request, so a stale "paused" from the previous pause
    // never counts.
    static constexpr uint32_t kNotParked = 0xffffffff;

    Vm& vm_;
    unsigned index_;
    UniqueFd fd_;
    kvm_run* run_ = nullptr;
    size_t run_size_ = 0;
    std::vector<kvm_cpuid_entry2> cpuid_;
    std::thread thread_;
    pthread_t thread_handle_{};
    std::atomic<VcpuRunState> state_{VcpuRunState::created};
    std::atomic<uint32_t> control_{kPauseBit}; // a new thread starts parked
    std::atomic<uint32_t> parked_at_{kNotParked};
};

} // namespace understudy::hv
