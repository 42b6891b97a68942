// A virtual machine: KVM's VM fd, guest memory, vCPUs, the I/O buses, the hypercalls,
// devices and dirty tracking, and the controls the replicator needs (hv::Checkpointable):
// pause every vCPU, harvest the dirty set, capture or restore state, resume.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bitmap.hpp"
#include "common/error.hpp"
#include "hv/acpi.hpp"
#include "hv/checkpointable.hpp"
#include "hv/console_buffer.hpp"
#include "hv/device.hpp"
#include "hv/dirty_tracker.hpp"
#include "hv/guest_clock.hpp"
#include "hv/guest_memory.hpp"
#include "hv/hypercalls.hpp"
#include "hv/io_bus.hpp"
#include "hv/kvm.hpp"
#include "hv/legacy/uart.hpp"
#include "hv/vcpu.hpp"

namespace understudy::hv {

inline constexpr unsigned kMaxVcpus = 8;

struct VmConfig {
    uint64_t memory_bytes = 256 * kMiB;
    unsigned vcpus = 1;
    DirtyConfig dirty;
    // The PC platform a Linux guest needs: the in-kernel irqchip (PIC, IOAPIC, a LAPIC
    // per vCPU) and PIT, COM1 and the i8042, and CPUID that advertises KVM and the
    // TSC-deadline timer. The guest/ images use none of it and run without.
    bool pc_platform = false;
    // Receives the guest's console output a line at a time. Default: stdout.
    std::function<void(std::string_view)> console;
};

Result<void> validate_vm_config(const VmConfig& c);

class Vm final : public Checkpointable {
public:
    static Result<std::unique_ptr<Vm>> create(VmConfig cfg);
    // The same around guest memory that already holds the guest (a promoted backup's
    // replica): no allocation, no copy. cfg.memory_bytes must equal its size.
    static Result<std::unique_ptr<Vm>> create(VmConfig cfg, GuestMemory memory);
    ~Vm();
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;

    const VmConfig& config() const { return cfg_; }
    int fd() const { return fd_.get(); }
    const Kvm& kvm() const { return kvm_; }
    GuestMemory& memory() override { return memory_; }
    const GuestMemory& memory() const { return memory_; }
    IoBus& pio() { return pio_; }
    IoBus& mmio() { return mmio_; }
    Hypercalls& hypercalls() { return *hypercalls_; }
    DirtyTracker& dirty_tracker() { return *dirty_; }
    GuestClock& clock() { return clock_; }
    unsigned vcpu_count() const override { return static_cast<unsigned>(vcpus_.size()); }
    Vcpu& vcpu(unsigned i) { return *vcpus_.at(i); }

    Result<void> add_device(std::unique_ptr<Device> d);
    // The PC platform's COM1 (the Linux console), or null without the PC platform.
    Uart* uart() { return uart_; }
    // Drives an interrupt line of the in-kernel irqchip (PC platform only).
    Result<void> set_irq_line(uint32_t gsi, bool level);
    // An eventfd bound to `gsi` through KVM_IRQFD (PC platform only): each write of a
    // count to it is an edge on the line, injected by KVM without a VMM ioctl. Closing the
    // fd unbinds it.
    Result<UniqueFd> edge_irqfd(uint32_t gsi);
    // Devices a Linux guest finds through the ACPI DSDT (virtio-mmio), added when attached.
    void add_acpi_device(const AcpiMmioDevice& d) { acpi_devices_.push_back(d); }
    const std::vector<AcpiMmioDevice>& acpi_devices() const { return acpi_devices_; }
    // Digest of what a VM must share with this one to run its state: memory size and
    // layout, vCPU count, the CPUID its vCPUs see, and its devices' names.
    uint64_t config_digest() const override;

    // Launches the vCPU threads; they run until paused or stopped.
    Result<void> start();
    // Returns once every vCPU is out of KVM_RUN (paused or exited).
    void pause_all() override;
    void resume_all() override;
    bool paused() const { return paused_; }

    // Every page written since the previous harvest (by vCPUs or by the VMM), ORed into out.
    bool tracks_dirty() const override { return cfg_.dirty.mode != DirtyMode::none; }
    Result<void> harvest_dirty(Bitmap& out) override;

    // Whole-VM state except memory. Requires the VM paused (or not started).
    std::vector<ReplicatedDisk*> disks() override;
    Result<VmState> save_state() override;
    Result<void> restore_state(const VmState& s);

    // Asks every vCPU to stop; wait() then returns kind `stopped` unless the guest stopped first.
    void stop();
    // Blocks until every vCPU thread has exited and the console's last lines are written
    // (at most 1 s more for those); returns why the VM stopped.
    VmStop wait();
    // As wait(), with a limit; nullopt if the VM is still running.
    std::optional<VmStop> wait_for(std::chrono::milliseconds limit);
    std::optional<VmStop> stop_reason() const override;

    // Values the guest published with the REPORT hypercall, per (vCPU, key).
    std::optional<uint64_t> report(unsigned vcpu, uint64_t key) const;
    // Waits until (vcpu, key) has been reported at least once.
    std::optional<uint64_t> wait_report(unsigned vcpu, uint64_t key, std::chrono::milliseconds limit);
    // Console lines dropped because the console's reader fell behind (hv/console_buffer.hpp).
    uint64_t console_dropped_lines() const { return console_.dropped_lines(); }

    // --- used by vCPU threads and devices ---
    void stop_with(VmStop why);
    void console_write(std::string_view bytes);
    void publish_report(unsigned vcpu, uint64_t key, uint64_t value);
    // Wakes halted vCPUs because a device has work for the guest.
    void notify_guest_event();
    // What each vCPU is doing (hv/stall_watchdog.hpp): halted in the HALT hypercall and
    // since when, and how many halts have returned.
    struct VcpuActivity {
        bool halted = false;
        std::chrono::steady_clock::time_point halted_since{};
        uint64_t halts = 0;
    };
    std::vector<VcpuActivity> vcpu_activity() const;
    // The VM now runs on another host (promotion): each vCPU's next HALT returns
    // US_HALT_MOVED once.
    void notify_moved();
    // Waits for an event, a pause or stop request, or the guest-time deadline.
    uint64_t halt(Vcpu& v, uint64_t deadline_ns);
    void vcpu_parked();

private:
    Vm(VmConfig cfg, Kvm kvm, UniqueFd fd, GuestMemory mem);
    Result<void> setup();
    Result<void> create_pc_platform();
    Result<void> attach_pc_devices();
    Result<PlatformState> save_platform() const;
    Result<void> restore_platform(const PlatformState& p);

    VmConfig cfg_;
    Kvm kvm_;
    UniqueFd fd_;
    GuestMemory memory_;
    IoBus pio_{"port I/O"};
    IoBus mmio_{"MMIO"};
    std::unique_ptr<DirtyTracker> dirty_;
    std::unique_ptr<Hypercalls> hypercalls_;
    std::vector<std::unique_ptr<Vcpu>> vcpus_;
    std::vector<std::unique_ptr<Device>> devices_;
    Uart* uart_ = nullptr; // owned by devices_
    std::vector<AcpiMmioDevice> acpi_devices_;
    GuestClock clock_;
    bool started_ = false;
    std::atomic<bool> paused_{true}; // written under control_mu_, read by supervisors
    std::mutex control_mu_; // serialises start/pause/resume/save/restore

    mutable std::mutex mu_;
    std::condition_variable cv_;
    uint64_t event_seq_ = 0;
    std::vector<uint64_t> halt_seen_ = std::vector<uint64_t>(kMaxVcpus, 0); // event_seq_ when each vCPU's last halt returned
    std::vector<VcpuActivity> activity_ = std::vector<VcpuActivity>(kMaxVcpus);
    uint64_t moved_seq_ = 0;
    std::vector<uint64_t> moved_seen_ = std::vector<uint64_t>(kMaxVcpus, 0);
    std::optional<VmStop> stop_;
    std::map<std::pair<unsigned, uint64_t>, uint64_t> reports_;
    // Declared last, destroyed first: every vCPU thread has ended by then (~Vm).
    ConsoleBuffer console_;
};

} // namespace understudy::hv
