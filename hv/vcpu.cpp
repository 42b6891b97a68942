#include "hv/vcpu.hpp"

#include <signal.h>
#include <sys/mman.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "common/log.hpp"
#include "hv/fault_report.hpp"
#include "hv/host_kvm.hpp"
#include "hv/kvm_flex.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

namespace {

// The signal that kicks a vCPU thread out of KVM_RUN. It is blocked in the thread
// except inside KVM_RUN (KVM_SET_SIGNAL_MASK), so it can only interrupt the guest.
int kick_signal() { return SIGRTMIN + 3; }

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_handler = [](int) {};
        sigemptyset(&sa.sa_mask);
        sigaction(kick_signal(), &sa, nullptr);
    });
}

// Discards a kick that arrived outside KVM_RUN, so the next KVM_RUN does not return at once.
void consume_kick() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, kick_signal());
    timespec zero{0, 0};
    while (sigtimedwait(&set, nullptr, &zero) > 0) {
    }
}

void store_immediate_exit(kvm_run* r, uint8_t v) { std::atomic_ref<uint8_t>(r->immediate_exit).store(v); }

} // namespace

Result<std::unique_ptr<Vcpu>> Vcpu::create(Vm& vm, unsigned index) {
    std::unique_ptr<Vcpu> v(new Vcpu(vm, index));
    v->fd_ = UniqueFd(US_TRY(kvm_ioctl(vm.fd(), KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")));
    v->run_size_ = static_cast<size_t>(vm.kvm().vcpu_mmap_size());
    void* p = ::mmap(nullptr, v->run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd(), 0);
    if (p == MAP_FAILED) return sys_error("mapping kvm_run of vCPU " + std::to_string(index));
    v->run_ = static_cast<kvm_run*>(p);
    US_TRYV(v->setup_cpuid());
    return v;
}

Vcpu::~Vcpu() {
    request_stop();
    join();
    if (run_) ::munmap(run_, run_size_);
}

Result<void> Vcpu::setup_cpuid() {
    cpuid_ = vm_.kvm().cpuid_for_vcpu(index_, vm_.config().vcpus, vm_.config().pc_platform);
    CpuidBuffer c(cpuid_);
    US_TRYV(kvm_ioctl(fd(), kKvmSetCpuid2, c.ptr(), "KVM_SET_CPUID2"));
    return {};
}

namespace {

// A flat 4 GiB segment: code (execute/read) or data (read/write), 32-bit or 64-bit code.
kvm_segment flat_segment(uint16_t selector, bool code, bool long_mode) {
    kvm_segment s{};
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = code ? 0xb : 0x3; // accessed
    s.present = 1;
    s.s = 1;
    s.l = long_mode ? 1 : 0;
    s.db = long_mode ? 0 : 1;
    s.g = 1;
    return s;
}

// Boot state common to both protocols: the segments, control registers and entry.
Result<void> set_boot_state(int fd, const kvm_sregs& base, const kvm_regs& regs) {
    US_TRYV(kvm_ioctl(fd, KVM_SET_SREGS, &base, "KVM_SET_SREGS"));
    US_TRYV(kvm_ioctl(fd, KVM_SET_REGS, &regs, "KVM_SET_REGS"));
    return {};
}

} // namespace

Result<void> Vcpu::set_pvh_boot_state(uint32_t entry, uint32_t start_info) {
    kvm_sregs s{};
    US_TRYV(kvm_ioctl(fd(), KVM_GET_SREGS, &s, "KVM_GET_SREGS"));
    s.cs = flat_segment(0x8, true, false);
    s.ds = s.es = s.fs = s.gs = s.ss = flat_segment(0x10, false, false);
    s.cr0 = 0x11; // PE | ET
    s.cr4 = 0;
    s.efer = 0;
    kvm_regs r{};
    r.rip = entry;
    r.rbx = start_info;
    r.rflags = 0x2;
    return set_boot_state(fd(), s, r);
}

Result<void> Vcpu::set_linux_boot_state(uint64_t entry, uint64_t zero_page, uint64_t cr3, uint64_t gdt_base, uint16_t gdt_bytes) {
    kvm_sregs s{};
    US_TRYV(kvm_ioctl(fd(), KVM_GET_SREGS, &s, "KVM_GET_SREGS"));
    s.cs = flat_segment(0x10, true, true);
    s.ds = s.es = s.fs = s.gs = s.ss = flat_segment(0x18, false, false);
    s.gdt.base = gdt_base;
    s.gdt.limit = static_cast<uint16_t>(gdt_bytes - 1);
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = 0x80000011; // PG | ET | PE
    s.cr3 = cr3;
    s.cr4 = 0x20;       // PAE
    s.efer = 0x500;     // LME | LMA
    kvm_regs r{};
    r.rip = entry;
    r.rsi = zero_page;
    r.rflags = 0x2;
    return set_boot_state(fd(), s, r);
}

Result<void> Vcpu::set_msr(uint32_t index, uint64_t value) {
    MsrBuffer one(1);
    one.data()[0] = kvm_msr_entry{index, 0, value};
    if (US_TRY(kvm_ioctl(fd(), kKvmSetMsrs, one.ptr(), "KVM_SET_MSRS")) != 1)
        return make_error(Errc::unsupported, fmt::format("KVM refused MSR {:#x}", index));
    return {};
}

// Save order: MP state first (KVM settles pending events into it), vCPU events last
// (they reflect everything before them). Restore order mirrors Firecracker's: CPUID,
// MP state, registers, special registers (the APIC base among them), XSAVE, XCRs, debug
// registers, LAPIC, MSRs (the TSC before the TSC deadline, which is kept relative to it),
// events; then KVM_KVMCLOCK_CTRL, so that a Linux guest does not take the time it spent
// stopped for a soft lockup.
Result<VcpuState> Vcpu::save_state() const {
    VcpuState s;
    s.cpuid = cpuid_;
    US_TRYV(kvm_ioctl(fd(), KVM_GET_MP_STATE, &s.mp_state, "KVM_GET_MP_STATE"));
    US_TRYV(kvm_ioctl(fd(), KVM_GET_REGS, &s.regs, "KVM_GET_REGS"));
    US_TRYV(kvm_ioctl(fd(), KVM_GET_SREGS, &s.sregs, "KVM_GET_SREGS"));
    int xsave_size = vm_.kvm().check(KVM_CAP_XSAVE2);
    if (xsave_size > static_cast<int>(sizeof(KvmXsaveRegion))) {
        s.xsave.assign(static_cast<size_t>(xsave_size), 0);
        US_TRYV(kvm_ioctl(fd(), kKvmGetXsave2, s.xsave.data(), "KVM_GET_XSAVE2"));
    } else {
        s.xsave.assign(sizeof(KvmXsaveRegion), 0);
        US_TRYV(kvm_ioctl(fd(), kKvmGetXsave, s.xsave.data(), "KVM_GET_XSAVE"));
    }
    US_TRYV(kvm_ioctl(fd(), KVM_GET_XCRS, &s.xcrs, "KVM_GET_XCRS"));
    US_TRYV(kvm_ioctl(fd(), KVM_GET_DEBUGREGS, &s.debugregs, "KVM_GET_DEBUGREGS"));
    // 0 (not recorded) where KVM does not know it: a checkpoint must not fail over this.
    const int khz = ::ioctl(fd(), KVM_GET_TSC_KHZ, 0);
    s.tsc_khz = khz > 0 ? static_cast<uint32_t>(khz) : 0;
    if (vm_.config().pc_platform) {
        s.lapic.emplace();
        US_TRYV(kvm_ioctl(fd(), KVM_GET_LAPIC, &*s.lapic, "KVM_GET_LAPIC"));
    }

    const auto& indices = vm_.kvm().msr_indices();
    MsrBuffer msrs(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) msrs.data()[i] = kvm_msr_entry{indices[i], 0, 0};
    int n = US_TRY(kvm_ioctl(fd(), kKvmGetMsrs, msrs.ptr(), "KVM_GET_MSRS"));
    if (n != static_cast<int>(indices.size()))
        return make_error(Errc::system, "KVM_GET_MSRS read " + std::to_string(n) + " of " + std::to_string(indices.size()) +
                                            fmt::format(" MSRs; stopped at {:#x}", indices[static_cast<size_t>(n)]));
    for (size_t i = 0; i < indices.size(); ++i) s.msrs.push_back({msrs.data()[i].index, msrs.data()[i].data});

    US_TRYV(kvm_ioctl(fd(), KVM_GET_VCPU_EVENTS, &s.events, "KVM_GET_VCPU_EVENTS"));
    return s;
}

void Vcpu::restore_tsc_rate(uint32_t saved_khz) {
    const int here = ::ioctl(fd(), KVM_GET_TSC_KHZ, 0);
    if (saved_khz == 0 || here == static_cast<int>(saved_khz)) return;
    // KVM treats rates within 250 ppm of the host's as the host's, without scaling.
    // Without TSC scaling (KVM_CAP_TSC_CONTROL) KVM takes a higher rate too, but only
    // catches the TSC up at each entry: say which.
    if (::ioctl(fd(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(saved_khz)) == 0) {
        if (index_ == 0)
            log::info("restore: the guest's TSC runs at its saved {} kHz (this host's: {} kHz){}", saved_khz, here,
                      vm_.kvm().check(KVM_CAP_TSC_CONTROL) > 0 ? "" : ", caught up at each entry: this host cannot scale it");
        return;
    }
    if (index_ == 0)
        log::warn("restore: the guest's TSC ran at {} kHz, this host's runs at {} kHz, and KVM cannot run it at the saved "
                  "rate ({}): the guest's kvmclock stays right, a TSC clocksource or TSC-deadline timer runs at this "
                  "host's rate",
                  saved_khz, here, strerror(errno));
}

Result<void> Vcpu::restore_state(const VcpuState& s) {
    if (!s.cpuid.empty()) {
        CpuidBuffer c(s.cpuid);
        US_TRYV(kvm_ioctl(fd(), kKvmSetCpuid2, c.ptr(), "KVM_SET_CPUID2 (restore)"));
        cpuid_ = s.cpuid;
    }
    US_TRYV(kvm_ioctl(fd(), KVM_SET_MP_STATE, &s.mp_state, "KVM_SET_MP_STATE"));
    US_TRYV(kvm_ioctl(fd(), KVM_SET_REGS, &s.regs, "KVM_SET_REGS"));
    US_TRYV(kvm_ioctl(fd(), KVM_SET_SREGS, &s.sregs, "KVM_SET_SREGS"));
    int xsave_size = std::max<int>(vm_.kvm().check(KVM_CAP_XSAVE2), sizeof(KvmXsaveRegion));
    if (s.xsave.size() > static_cast<size_t>(xsave_size))
        return make_error(Errc::unsupported, "saved XSAVE area (" + std::to_string(s.xsave.size()) +
                                                 " bytes) is larger than this host's (" + std::to_string(xsave_size) + ")");
    std::vector<uint8_t> xsave(static_cast<size_t>(xsave_size), 0);
    std::memcpy(xsave.data(), s.xsave.data(), s.xsave.size());
    US_TRYV(kvm_ioctl(fd(), kKvmSetXsave, xsave.data(), "KVM_SET_XSAVE"));
    US_TRYV(kvm_ioctl(fd(), KVM_SET_XCRS, &s.xcrs, "KVM_SET_XCRS"));
    US_TRYV(kvm_ioctl(fd(), KVM_SET_DEBUGREGS, &s.debugregs, "KVM_SET_DEBUGREGS"));
    if (s.lapic.has_value() != vm_.config().pc_platform)
        return make_error(Errc::invalid_input, s.lapic ? "the vCPU state has a LAPIC; this VM has no irqchip"
                                                       : "the vCPU state has no LAPIC; this VM has the PC platform");
    if (s.lapic) US_TRYV(kvm_ioctl(fd(), KVM_SET_LAPIC, &*s.lapic, "KVM_SET_LAPIC"));
    restore_tsc_rate(s.tsc_khz); // before the TSC itself, which KVM keeps at this rate

    constexpr uint32_t kMsrTscDeadline = 0x6e0;
    std::vector<MsrValue> ordered = s.msrs;
    std::stable_partition(ordered.begin(), ordered.end(), [](const MsrValue& m) { return m.index != kMsrTscDeadline; });
    MsrBuffer msrs(ordered.size());
    for (size_t i = 0; i < ordered.size(); ++i) msrs.data()[i] = kvm_msr_entry{ordered[i].index, 0, ordered[i].value};
    int n = US_TRY(kvm_ioctl(fd(), kKvmSetMsrs, msrs.ptr(), "KVM_SET_MSRS"));
    if (n != static_cast<int>(s.msrs.size()))
        return make_error(Errc::unsupported, "KVM_SET_MSRS accepted " + std::to_string(n) + " of " +
                                                 std::to_string(s.msrs.size()) + " saved MSRs");
    US_TRYV(kvm_ioctl(fd(), KVM_SET_VCPU_EVENTS, &s.events, "KVM_SET_VCPU_EVENTS"));
    // EINVAL: the guest has not enabled kvmclock (yet), so there is nothing to tell it.
    if (vm_.config().pc_platform && ::ioctl(fd(), KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
        return sys_error("KVM_KVMCLOCK_CTRL");
    return {};
}

Result<void> Vcpu::start() {
    install_kick_handler();
    // KVM_RUN runs with the thread's mask minus the kick signal.
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, nullptr, &mask);
    sigdelset(&mask, kick_signal());
    KvmFlex<KvmCountHeader32, uint8_t> km(8); // the kernel's sigset_t is 8 bytes
    std::memcpy(km.data(), &mask, 8);
    US_TRYV(kvm_ioctl(fd(), kKvmSetSignalMask, km.ptr(), "KVM_SET_SIGNAL_MASK"));

    store_immediate_exit(run_, 1);
    // Block the kick in the new thread from its first instruction: it inherits our mask.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, kick_signal());
    pthread_sigmask(SIG_BLOCK, &block, &old);
    try {
        thread_ = std::thread([this] { thread_main(); });
    } catch (const std::system_error& e) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return make_error(Errc::system, std::string("starting vCPU thread: ") + e.what());
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    thread_handle_ = thread_.native_handle();
    wait_parked();
    return {};
}

void Vcpu::kick() {
    if (thread_.joinable()) pthread_kill(thread_handle_, kick_signal());
}

void Vcpu::change_control(uint32_t set, uint32_t clear) {
    uint32_t c = control_.load(std::memory_order_relaxed);
    while (!control_.compare_exchange_weak(c, ((c | set) & ~clear) + kChangeStep, std::memory_order_seq_cst)) {
    }
    control_.notify_all();
}

void Vcpu::request_pause() {
    // immediate_exit first: it stops a thread that is about to enter KVM_RUN; the signal
    // stops one that is already inside.
    store_immediate_exit(run_, 1);
    change_control(kPauseBit, 0);
    kick();
}

void Vcpu::request_resume() { change_control(0, kPauseBit); }

void Vcpu::request_stop() {
    change_control(kStopBit, 0);
    store_immediate_exit(run_, 1);
    kick();
}

void Vcpu::wait_parked() const {
    const uint32_t request = control_.load(std::memory_order_acquire);
    for (int spin = 0;; ++spin) {
        if (state_.load(std::memory_order_acquire) == VcpuRunState::exited) return;
        uint32_t at = parked_at_.load(std::memory_order_acquire);
        if (at == request) return;
        if (spin < 100) {
            __builtin_ia32_pause();
            continue;
        }
        parked_at_.wait(at, std::memory_order_acquire);
    }
}

void Vcpu::join() {
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

Result<void> Vcpu::finish_instruction() {
    // With immediate_exit set, KVM completes the pending port or MMIO access (copies read
    // data into the guest) and returns EINTR without running guest code. An instruction
    // that needs userspace more than once (an access split across a page, `rep movs` or
    // `rep ins` on a device) instead returns its next exit: it is handled like any other
    // and KVM re-entered, until the instruction is done. Dropping it would lose a write
    // or feed the guest a stale read after the resume.
    store_immediate_exit(run_, 1);
    for (;;) {
        if (::ioctl(fd(), KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) break;
            return sys_error("KVM_RUN completing an instruction before pausing");
        }
        US_TRYV(handle_exit());
    }
    consume_kick();
    return {};
}

void Vcpu::park() {
    state_.store(VcpuRunState::paused, std::memory_order_release);
    // Acknowledge every pause request seen while parked, including one that arrives
    // after a resume this thread has not woken for yet.
    for (;;) {
        uint32_t c = control_.load(std::memory_order_acquire);
        if (!(c & kPauseBit) || (c & kStopBit)) break;
        parked_at_.store(c, std::memory_order_release);
        parked_at_.notify_all();
        vm_.vcpu_parked();
        control_.wait(c, std::memory_order_acquire);
    }
    store_immediate_exit(run_, 0);
    state_.store(VcpuRunState::running, std::memory_order_release);
}

void Vcpu::thread_main() {
    for (;;) {
        uint32_t c = control_.load(std::memory_order_seq_cst);
        if (c & kStopBit) break;
        Result<void> r;
        if (c & kPauseBit) {
            r = finish_instruction();
            if (r) {
                park();
                continue;
            }
        } else if (::ioctl(fd(), KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                consume_kick();
                continue;
            }
            r = sys_error("KVM_RUN");
        } else {
            r = handle_exit();
        }
        if (!r) {
            VmStopKind kind = r.error().code == Errc::guest_fault ? VmStopKind::guest_fault : VmStopKind::host_error;
            vm_.stop_with({kind, 0, "vCPU " + std::to_string(index_) + ": " + r.error().describe()});
            break;
        }
    }
    state_.store(VcpuRunState::exited, std::memory_order_release);
    parked_at_.store(kNotParked, std::memory_order_release);
    parked_at_.notify_all();
    vm_.vcpu_parked();
}

Result<void> Vcpu::handle_exit() {
    switch (run_->exit_reason) {
    case KVM_EXIT_IO: {
        auto& io = run_->io;
        if (io.size != 1 && io.size != 2 && io.size != 4)
            return make_error(Errc::guest_fault, "port I/O of size " + std::to_string(io.size));
        uint64_t bytes = uint64_t(io.size) * io.count;
        if (io.data_offset < sizeof(kvm_run) || io.data_offset > run_size_ || bytes > run_size_ - io.data_offset)
            return make_error(Errc::system, "KVM reported port I/O data outside kvm_run");
        auto* data = reinterpret_cast<uint8_t*>(run_) + io.data_offset;
        for (uint32_t i = 0; i < io.count; ++i)
            US_TRYV(vm_.pio().dispatch(this, io.port, {data + i * io.size, io.size}, io.direction == KVM_EXIT_IO_OUT));
        return {};
    }
    case KVM_EXIT_MMIO: {
        auto& m = run_->mmio;
        if (m.len == 0 || m.len > 8) return make_error(Errc::guest_fault, "MMIO access of length " + std::to_string(m.len));
        return vm_.mmio().dispatch(this, m.phys_addr, {m.data, m.len}, m.is_write != 0);
    }
    case KVM_EXIT_DIRTY_RING_FULL: return vm_.dirty_tracker().drain_vcpu(index_);
    case KVM_EXIT_INTR: return {};
    case KVM_EXIT_HLT:
        return make_error(Errc::guest_fault, "the guest executed HLT with no interrupt source; guests halt with the HALT hypercall");
    // A fault stop carries the vCPU's registers and pending events (docs/guest-abi.md,
    // "When the guest faults"): the reason must be readable without a debugger.
    case KVM_EXIT_SHUTDOWN: {
        const auto hazard = host_kvm_hazard(this_host_kvm());
        return make_error(Errc::guest_fault, "the guest shut down the CPU (triple fault); vCPU state:" + describe_fault_state(fd()) +
                                                 (hazard ? "\n  note: " + *hazard : std::string()));
    }
    case KVM_EXIT_FAIL_ENTRY:
        return make_error(Errc::guest_fault, fmt::format("KVM could not enter the guest (hardware reason {:#x}); vCPU state:{}",
                                                         run_->fail_entry.hardware_entry_failure_reason, describe_fault_state(fd())));
    case KVM_EXIT_INTERNAL_ERROR:
        return make_error(Errc::guest_fault, "KVM internal error, suberror " + std::to_string(run_->internal.suberror) +
                                                 "; vCPU state:" + describe_fault_state(fd()));
    default: return make_error(Errc::system, "unexpected KVM exit reason " + std::to_string(run_->exit_reason));
    }
}

} // namespace understudy::hv
