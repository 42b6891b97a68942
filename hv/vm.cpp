#include "hv/vm.hpp"

#include <sys/eventfd.h>

#include <cstdio>
#include <mutex>

#include "common/codec.hpp"
#include "common/log.hpp"
#include "common/records.hpp"

#include "guest/abi/understudy_abi.h"
#include "hv/host_kvm.hpp"
#include "hv/kvm_flex.hpp"
#include "hv/legacy/cmos_rtc.hpp"
#include "hv/legacy/i8042.hpp"

namespace understudy::hv {

const char* vm_stop_kind_name(VmStopKind k) {
    switch (k) {
    case VmStopKind::exited: return "exited";
    case VmStopKind::aborted: return "aborted";
    case VmStopKind::guest_fault: return "guest fault";
    case VmStopKind::host_error: return "host error";
    case VmStopKind::stopped: return "stopped";
    }
    return "?";
}

Result<void> validate_vm_config(const VmConfig& c) {
    US_TRYV(validate_memory_size(c.memory_bytes));
    if (c.vcpus < 1 || c.vcpus > kMaxVcpus)
        return make_error(Errc::invalid_input,
                          "vCPU count " + std::to_string(c.vcpus) + " is not allowed: 1 to " + std::to_string(kMaxVcpus));
    return {};
}

// Keeps only the MSRs this host lets us both read and write back, so that save_state()
// and restore_state() handle them all. The probe writes each MSR's own reset value to
// the fresh vCPU, which changes nothing.
static Result<std::vector<uint32_t>> saveable_msrs(int vcpu_fd, std::vector<uint32_t> indices) {
    std::vector<uint32_t> keep;
    for (;;) {
        MsrBuffer msrs(indices.size());
        for (size_t i = 0; i < indices.size(); ++i) msrs.data()[i] = kvm_msr_entry{indices[i], 0, 0};
        int n = US_TRY(kvm_ioctl(vcpu_fd, kKvmGetMsrs, msrs.ptr(), "KVM_GET_MSRS (probe)"));
        for (int i = 0; i < n; ++i) {
            MsrBuffer one(1);
            one.data()[0] = msrs.data()[i];
            if (::ioctl(vcpu_fd, kKvmSetMsrs, one.ptr()) == 1)
                keep.push_back(indices[static_cast<size_t>(i)]);
            else
                log::debug("MSR {:#x} cannot be written back; it is left out of saved state", indices[static_cast<size_t>(i)]);
        }
        if (n == static_cast<int>(indices.size())) break;
        log::debug("MSR {:#x} cannot be read; it is left out of saved state", indices[static_cast<size_t>(n)]);
        indices.erase(indices.begin(), indices.begin() + n + 1);
    }
    return keep;
}

Result<std::unique_ptr<Vm>> Vm::create(VmConfig cfg) {
    US_TRYV(validate_vm_config(cfg));
    auto mem = US_TRY(GuestMemory::create(cfg.memory_bytes));
    return create(std::move(cfg), std::move(mem));
}

Result<std::unique_ptr<Vm>> Vm::create(VmConfig cfg, GuestMemory mem) {
    US_TRYV(validate_vm_config(cfg));
    if (mem.size() != cfg.memory_bytes)
        return make_error(Errc::invalid_input, "guest memory of " + std::to_string(mem.size() >> 20) +
                                                   " MiB given for a VM of " + std::to_string(cfg.memory_bytes >> 20) + " MiB");
    auto kvm = US_TRY(Kvm::open());
    static std::once_flag hazard_told;
    if (auto hazard = host_kvm_hazard(this_host_kvm())) std::call_once(hazard_told, [&] { log::warn("{}", *hazard); });
    UniqueFd fd(US_TRY(kvm_ioctl(kvm.fd(), KVM_CREATE_VM, 0, "KVM_CREATE_VM")));
    std::unique_ptr<Vm> vm(new Vm(std::move(cfg), std::move(kvm), std::move(fd), std::move(mem)));
    US_TRYV(vm->setup());
    return vm;
}

namespace {
void print_console_line(std::string_view line) {
    std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
    std::fflush(stdout);
}
} // namespace

Vm::Vm(VmConfig cfg, Kvm kvm, UniqueFd fd, GuestMemory mem)
    : cfg_(std::move(cfg)), kvm_(std::move(kvm)), fd_(std::move(fd)), memory_(std::move(mem)),
      console_(cfg_.console ? cfg_.console : ConsoleBuffer::Sink(print_console_line)) {}

Result<void> Vm::setup() {
    // Intel needs a TSS region for real-mode emulation; it goes into the MMIO window.
    US_TRYV(kvm_ioctl(fd(), KVM_SET_TSS_ADDR, 0xfffbd000ul, "KVM_SET_TSS_ADDR"));
    // The dirty ring must be enabled before the first vCPU exists. A Linux guest gets the
    // bitmap unless the ring is asked for: KVM (6.1) pushes every page an emulated string
    // instruction writes into the ring without stopping at its soft limit, and a kernel's
    // `rep stos` over shadowed page tables overflows it (seen nested: KVM warns in
    // kvm_dirty_ring_push, the ring's indices no longer match, the vCPU exits for ever).
    DirtyConfig dirty = cfg_.dirty;
    if (dirty.mode == DirtyMode::automatic && cfg_.pc_platform) dirty.mode = DirtyMode::bitmap;
    dirty_ = US_TRY(make_dirty_tracker(kvm_, fd(), memory_, dirty));
    for (size_t i = 0; i < memory_.regions().size(); ++i) {
        const auto& r = memory_.regions()[i];
        kvm_userspace_memory_region slot{};
        slot.slot = static_cast<uint32_t>(i);
        slot.flags = dirty_->memslot_flags();
        slot.guest_phys_addr = r.gpa.value;
        slot.memory_size = r.size;
        slot.userspace_addr = reinterpret_cast<uint64_t>(memory_.host_base() + r.file_offset);
        US_TRYV(kvm_ioctl(fd(), KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION"));
    }
    hypercalls_ = US_TRY(Hypercalls::install(*this));
    if (cfg_.pc_platform) US_TRYV(create_pc_platform()); // the irqchip must exist before any vCPU
    for (unsigned i = 0; i < cfg_.vcpus; ++i) {
        vcpus_.push_back(US_TRY(Vcpu::create(*this, i)));
        US_TRYV(dirty_->attach_vcpu(i, vcpus_.back()->fd()));
        if (i == 0) kvm_.set_msr_indices(US_TRY(saveable_msrs(vcpus_[0]->fd(), kvm_.msr_indices())));
    }
    if (cfg_.pc_platform) {
        // The same TSC value written to every vCPU in a row is what KVM recognises as a
        // synchronised TSC; otherwise each starts at its own creation and Linux, finding
        // them apart, marks the TSC unstable.
        constexpr uint32_t kMsrTsc = 0x10;
        for (auto& v : vcpus_) US_TRYV(v->set_msr(kMsrTsc, 0));
        US_TRYV(attach_pc_devices());
    }
    return {};
}

Result<void> Vm::create_pc_platform() {
    for (long cap : {KVM_CAP_IRQCHIP, KVM_CAP_PIT2, KVM_CAP_PIT_STATE2, KVM_CAP_IRQ_ROUTING})
        if (kvm_.check(cap) <= 0) return make_error(Errc::unsupported, "KVM lacks capability " + std::to_string(cap) + " (PC platform)");
    US_TRYV(kvm_ioctl(fd(), KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP"));
    // The dummy speaker gives the guest port 0x61, which Linux reads to calibrate with the PIT.
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    US_TRYV(kvm_ioctl(fd(), KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2"));
    return {};
}

Result<void> Vm::attach_pc_devices() {
    auto uart = std::make_unique<Uart>();
    Uart* u = uart.get();
    US_TRYV(add_device(std::move(uart)));
    uart_ = u;
    US_TRYV(add_device(std::make_unique<I8042>()));
    US_TRYV(add_device(std::make_unique<CmosRtc>()));
    // Port 0x80 is the POST code port that Linux writes as an I/O delay: claimed, ignored.
    US_TRYV(pio_.add(0x80, 1, "POST code", [](IoAccess& a) -> Result<void> {
        if (!a.is_write) std::fill(a.data.begin(), a.data.end(), 0xff);
        return {};
    }));
    // ACPI's sleep control register (hv/acpi.hpp): SLP_EN (bit 5) is the guest powering off.
    return pio_.add(kSleepControlPort, 1, "ACPI sleep control", [this](IoAccess& a) -> Result<void> {
        constexpr uint8_t kSleepEnable = 1 << 5;
        if (!a.is_write) std::fill(a.data.begin(), a.data.end(), 0);
        else if (a.data.size() == 1 && (a.data[0] & kSleepEnable))
            stop_with({VmStopKind::exited, 0, "the guest powered off (ACPI S5)"});
        return {};
    });
}

Result<void> Vm::set_irq_line(uint32_t gsi, bool level) {
    if (!cfg_.pc_platform) return make_error(Errc::state, "interrupt lines need the PC platform");
    kvm_irq_level l{};
    l.irq = gsi;
    l.level = level ? 1 : 0;
    US_TRYV(kvm_ioctl(fd(), KVM_IRQ_LINE, &l, "KVM_IRQ_LINE"));
    return {};
}

Result<UniqueFd> Vm::edge_irqfd(uint32_t gsi) {
    if (!cfg_.pc_platform) return make_error(Errc::state, "interrupt lines need the PC platform");
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!efd.valid()) return sys_error("eventfd");
    kvm_irqfd req{};
    req.fd = static_cast<uint32_t>(efd.get());
    req.gsi = gsi;
    US_TRYV(kvm_ioctl(fd(), KVM_IRQFD, &req, "KVM_IRQFD"));
    return efd;
}

Result<PlatformState> Vm::save_platform() const {
    PlatformState p;
    p.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    p.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    p.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    for (kvm_irqchip* c : {&p.pic_master, &p.pic_slave, &p.ioapic}) US_TRYV(kvm_ioctl(fd(), KVM_GET_IRQCHIP, c, "KVM_GET_IRQCHIP"));
    US_TRYV(kvm_ioctl(fd(), KVM_GET_PIT2, &p.pit, "KVM_GET_PIT2"));
    return p;
}

Result<void> Vm::restore_platform(const PlatformState& p) {
    for (const kvm_irqchip* c : {&p.pic_master, &p.pic_slave, &p.ioapic})
        US_TRYV(kvm_ioctl(fd(), KVM_SET_IRQCHIP, c, "KVM_SET_IRQCHIP"));
    US_TRYV(kvm_ioctl(fd(), KVM_SET_PIT2, &p.pit, "KVM_SET_PIT2"));
    return {};
}

Vm::~Vm() {
    for (auto& v : vcpus_) v->request_stop();
    for (auto& v : vcpus_) v->join();
}

uint64_t Vm::config_digest() const {
    std::vector<uint8_t> b;
    Encoder e(b);
    e.u64(memory_.size());
    for (const auto& r : memory_.regions()) {
        e.u64(r.gpa.value);
        e.u64(r.size);
    }
    e.u32(vcpu_count());
    for (const auto& c : kvm_.cpuid_for_vcpu(0, cfg_.vcpus, cfg_.pc_platform)) e.pod(c);
    if (cfg_.pc_platform) e.u32(0x7063); // "pc": only here, so the digests of guest/ images stay as they were
    for (const auto& d : devices_) {
        std::string n = d->name();
        e.u32(static_cast<uint32_t>(n.size()));
        e.raw(n.data(), n.size());
    }
    return checksum64(b);
}

Result<void> Vm::add_device(std::unique_ptr<Device> d) {
    if (devices_.size() >= kMaxDevices)
        return make_error(Errc::invalid_input, "a VM has at most " + std::to_string(kMaxDevices) + " devices");
    for (const auto& other : devices_)
        if (other->name() == d->name()) return make_error(Errc::invalid_input, "a device named " + d->name() + " exists");
    US_TRYV(d->attach(*this));
    devices_.push_back(std::move(d));
    return {};
}

Result<void> Vm::start() {
    std::lock_guard lock(control_mu_);
    if (started_) return make_error(Errc::state, "the VM is already started");
    for (auto& v : vcpus_) US_TRYV(v->start());
    started_ = true;
    paused_ = true;
    for (auto& d : devices_) d->resume(); // as after every pause: a restored device rescans here
    for (auto& v : vcpus_) v->request_resume();
    paused_ = false;
    return {};
}

void Vm::pause_all() {
    std::lock_guard lock(control_mu_);
    if (!started_ || paused_) return;
    for (auto& v : vcpus_) v->request_pause();
    notify_guest_event(); // halted vCPUs return from the HALT hypercall to park
    for (auto& v : vcpus_) v->wait_parked();
    for (auto& d : devices_) d->suspend();
    paused_ = true;
}

void Vm::resume_all() {
    std::lock_guard lock(control_mu_);
    if (!started_ || !paused_) return;
    paused_ = false;
    for (auto& d : devices_) d->resume();
    for (auto& v : vcpus_) v->request_resume();
}

Result<void> Vm::harvest_dirty(Bitmap& out) {
    if (out.size() != memory_.page_count()) return make_error(Errc::state, "dirty bitmap size does not match guest memory");
    US_TRYV(dirty_->harvest(out));
    memory_.vmm_dirty().drain_into(out);
    return {};
}

std::vector<ReplicatedDisk*> Vm::disks() {
    std::vector<ReplicatedDisk*> out;
    for (auto& d : devices_)
        if (auto* disk = d->replicated_disk()) out.push_back(disk);
    return out;
}

Result<VmState> Vm::save_state() {
    std::lock_guard lock(control_mu_);
    if (started_ && !paused_) return make_error(Errc::state, "saving VM state needs every vCPU paused");
    VmState s;
    s.guest_time_ns = clock_.now_ns();
    US_TRYV(kvm_ioctl(fd(), KVM_GET_CLOCK, &s.kvmclock, "KVM_GET_CLOCK"));
    if (cfg_.pc_platform) s.platform = US_TRY(save_platform());
    for (auto& v : vcpus_) s.vcpus.push_back(US_TRY(v->save_state()));
    for (auto& d : devices_) s.devices.push_back(d->save());
    return s;
}

Result<void> Vm::restore_state(const VmState& s) {
    std::lock_guard lock(control_mu_);
    if (started_ && !paused_) return make_error(Errc::state, "restoring VM state needs every vCPU paused");
    if (s.vcpus.size() != vcpus_.size())
        return make_error(Errc::invalid_input, "state has " + std::to_string(s.vcpus.size()) + " vCPUs, the VM has " +
                                                   std::to_string(vcpus_.size()));
    if (s.platform.has_value() != cfg_.pc_platform)
        return make_error(Errc::invalid_input, s.platform ? "the state is a PC platform's (a Linux guest's); this VM has no irqchip"
                                                          : "the state has no irqchip state; this VM has the PC platform");
    for (size_t i = 0; i < s.vcpus.size(); ++i) // checked before anything is written to KVM
        if (s.vcpus[i].lapic.has_value() != cfg_.pc_platform)
            return make_error(Errc::invalid_input, "vCPU " + std::to_string(i) + "'s state " +
                                                       (cfg_.pc_platform ? "lacks the LAPIC" : "has a LAPIC") +
                                                       " that the VM state's version calls for");
    for (const auto& ds : s.devices) {
        bool found = false;
        for (auto& d : devices_)
            if (d->name() == ds.name) {
                US_TRYV(d->restore(ds));
                found = true;
            }
        if (!found) return make_error(Errc::invalid_input, "state names device '" + ds.name + "', which this VM lacks");
    }
    kvm_clock_data clock = s.kvmclock;
    clock.flags = 0; // KVM accepts no flags it reported on GET
    US_TRYV(kvm_ioctl(fd(), KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK"));
    // The irqchip and PIT before the vCPUs, as Firecracker orders it: a LAPIC restored
    // next may deliver to, or take an interrupt from, the IOAPIC and PICs restored here.
    if (s.platform) US_TRYV(restore_platform(*s.platform));
    for (size_t i = 0; i < vcpus_.size(); ++i) US_TRYV(vcpus_[i]->restore_state(s.vcpus[i]));
    clock_.set(s.guest_time_ns);
    return {};
}

void Vm::stop_with(VmStop why) {
    {
        std::lock_guard lock(mu_);
        if (stop_) return;
        if (why.kind == VmStopKind::guest_fault || why.kind == VmStopKind::host_error || why.kind == VmStopKind::aborted)
            log::error("VM stopped ({}): {}", vm_stop_kind_name(why.kind), why.message);
        stop_ = std::move(why);
    }
    for (auto& v : vcpus_) v->request_stop();
    cv_.notify_all();
}

void Vm::stop() { stop_with({VmStopKind::stopped, 0, "stopped by the host"}); }

std::optional<VmStop> Vm::stop_reason() const {
    std::lock_guard lock(mu_);
    return stop_;
}

VmStop Vm::wait() {
    for (auto& v : vcpus_) v->join();
    (void)console_.flush(std::chrono::seconds(1)); // a stalled reader must not hold the caller
    std::lock_guard lock(mu_);
    return stop_.value_or(VmStop{VmStopKind::stopped, 0, "no vCPU ran"});
}

std::optional<VmStop> Vm::wait_for(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    std::unique_lock lock(mu_);
    auto all_exited = [&] {
        for (auto& v : vcpus_)
            if (v->run_state() != VcpuRunState::exited) return false;
        return true;
    };
    while (!all_exited()) {
        if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && !all_exited()) return std::nullopt;
    }
    lock.unlock();
    return wait();
}

void Vm::vcpu_parked() {
    std::lock_guard lock(mu_);
    cv_.notify_all();
}

void Vm::console_write(std::string_view bytes) { console_.write(bytes); }

void Vm::publish_report(unsigned vcpu, uint64_t key, uint64_t value) {
    std::lock_guard lock(mu_);
    reports_[{vcpu, key}] = value;
    cv_.notify_all();
}

std::optional<uint64_t> Vm::report(unsigned vcpu, uint64_t key) const {
    std::lock_guard lock(mu_);
    auto it = reports_.find({vcpu, key});
    if (it == reports_.end()) return std::nullopt;
    return it->second;
}

std::optional<uint64_t> Vm::wait_report(unsigned vcpu, uint64_t key, std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, limit, [&] { return reports_.count({vcpu, key}) > 0 || stop_.has_value(); });
    auto it = reports_.find({vcpu, key});
    if (it == reports_.end()) return std::nullopt;
    return it->second;
}

void Vm::notify_guest_event() {
    {
        std::lock_guard lock(mu_);
        ++event_seq_;
    }
    cv_.notify_all();
}

void Vm::notify_moved() {
    {
        std::lock_guard lock(mu_);
        ++moved_seq_;
    }
    cv_.notify_all();
}

std::vector<Vm::VcpuActivity> Vm::vcpu_activity() const {
    std::lock_guard lock(mu_);
    return {activity_.begin(), activity_.begin() + vcpus_.size()};
}

uint64_t Vm::halt(Vcpu& v, uint64_t deadline_ns) {
    std::unique_lock lock(mu_);
    // An event counts if it came after this vCPU's previous halt returned, not only
    // during this one: the guest may have polled just before a frame arrived and then
    // halted, and must not sleep until the deadline with the frame waiting.
    uint64_t& seen = halt_seen_.at(v.index());
    auto host_deadline = clock_.host_deadline(deadline_ns);
    VcpuActivity& act = activity_.at(v.index());
    act.halted = true;
    act.halted_since = std::chrono::steady_clock::now();
    struct Returned { // every return below, under the lock
        VcpuActivity& a;
        ~Returned() {
            a.halted = false;
            ++a.halts;
        }
    } returned{act};
    auto done = [&](uint64_t reason) {
        seen = event_seq_;
        return reason;
    };
    for (;;) {
        if (v.pause_requested() || stop_) return done(abi::US_HALT_SPURIOUS);
        if (uint64_t& m = moved_seen_.at(v.index()); m != moved_seq_) {
            m = moved_seq_;
            return abi::US_HALT_MOVED; // events stay pending for the next halt
        }
        if (event_seq_ != seen) return done(abi::US_HALT_EVENT);
        if (std::chrono::steady_clock::now() >= host_deadline) return done(abi::US_HALT_TIMEOUT);
        if (host_deadline == std::chrono::steady_clock::time_point::max()) cv_.wait(lock); // wait_until overflows on max()
        else cv_.wait_until(lock, host_deadline);
    }
}

} // namespace understudy::hv
