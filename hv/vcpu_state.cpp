#include "hv/vcpu_state.hpp"

#include "common/codec.hpp"

namespace understudy::hv {

namespace {
// Field tags of the vCPU state encoding. Never reuse a number.
enum VcpuTag : uint32_t {
    kTagVersion = 1,
    kTagCpuid = 2,
    kTagMpState = 3,
    kTagRegs = 4,
    kTagSregs = 5,
    kTagXsave = 6,
    kTagXcrs = 7,
    kTagDebugregs = 8,
    kTagMsrs = 9,
    kTagEvents = 10,
    kTagLapic = 11, // version 2
    kTagTscKhz = 12, // optional: older readers skip it and run the guest at their host's TSC rate
};
enum VmTag : uint32_t {
    kTagVmVersion = 1,
    kTagGuestTime = 2,
    kTagKvmClock = 3,
    kTagPicMaster = 4, // tags 4 to 7: version 2
    kTagPicSlave = 5,
    kTagIoapic = 6,
    kTagPit = 7,
};
enum DeviceTag : uint32_t { kTagDevName = 1, kTagDevVersion = 2, kTagDevData = 3 };

template <class T>
std::span<const uint8_t> as_bytes_of(const std::vector<T>& v) {
    return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}
} // namespace

void encode_vcpu_state(const VcpuState& s, std::vector<uint8_t>& out) {
    Encoder e(out);
    e.field_pod(kTagVersion, s.lapic ? kVcpuStateVersionPc : kVcpuStateVersion);
    e.field(kTagCpuid, as_bytes_of(s.cpuid));
    e.field_pod(kTagMpState, s.mp_state);
    e.field_pod(kTagRegs, s.regs);
    e.field_pod(kTagSregs, s.sregs);
    e.field(kTagXsave, s.xsave);
    e.field_pod(kTagXcrs, s.xcrs);
    e.field_pod(kTagDebugregs, s.debugregs);
    std::vector<uint8_t> msrs;
    Encoder m(msrs);
    for (const auto& v : s.msrs) {
        m.u32(v.index);
        m.u32(0);
        m.u64(v.value);
    }
    e.field(kTagMsrs, msrs);
    e.field_pod(kTagEvents, s.events);
    if (s.lapic) e.field_pod(kTagLapic, *s.lapic);
    if (s.tsc_khz) e.field_pod(kTagTscKhz, s.tsc_khz);
}

Result<VcpuState> decode_vcpu_state(std::span<const uint8_t> in) {
    const std::string what = "vCPU state";
    Decoder d(in, what);
    VcpuState s;
    uint32_t seen = 0, version = 0;
    while (!d.done()) {
        auto f = US_TRY(d.field());
        if (f.tag < 32) seen |= 1u << f.tag;
        switch (f.tag) {
        case kTagVersion: {
            version = US_TRY(Decoder::as_pod<uint32_t>(f, what));
            if (version != kVcpuStateVersion && version != kVcpuStateVersionPc)
                return d.error("version " + std::to_string(version) + " is not supported (this build reads 1 and 2)");
            break;
        }
        case kTagLapic: s.lapic = US_TRY(Decoder::as_pod<kvm_lapic_state>(f, what)); break;
        case kTagTscKhz:
            s.tsc_khz = US_TRY(Decoder::as_pod<uint32_t>(f, what));
            if (s.tsc_khz == 0 || s.tsc_khz > kMaxTscKhz)
                return d.error("TSC frequency of " + std::to_string(s.tsc_khz) + " kHz is out of range");
            break;
        case kTagCpuid:
            if (f.body.size() % sizeof(kvm_cpuid_entry2) != 0 || f.body.size() / sizeof(kvm_cpuid_entry2) > 4096)
                return d.error("CPUID field has a bad size");
            s.cpuid.resize(f.body.size() / sizeof(kvm_cpuid_entry2));
            if (!f.body.empty()) std::memcpy(s.cpuid.data(), f.body.data(), f.body.size());
            break;
        case kTagMpState: s.mp_state = US_TRY(Decoder::as_pod<kvm_mp_state>(f, what)); break;
        case kTagRegs: s.regs = US_TRY(Decoder::as_pod<kvm_regs>(f, what)); break;
        case kTagSregs: s.sregs = US_TRY(Decoder::as_pod<kvm_sregs>(f, what)); break;
        case kTagXsave:
            if (f.body.size() < 4096 || f.body.size() > (1u << 20)) return d.error("XSAVE field has a bad size");
            s.xsave.assign(f.body.begin(), f.body.end());
            break;
        case kTagXcrs: s.xcrs = US_TRY(Decoder::as_pod<kvm_xcrs>(f, what)); break;
        case kTagDebugregs: s.debugregs = US_TRY(Decoder::as_pod<kvm_debugregs>(f, what)); break;
        case kTagMsrs: {
            if (f.body.size() % 16 != 0) return d.error("MSR field has a bad size");
            Decoder md(f.body, "MSR list");
            while (!md.done()) {
                uint32_t idx = US_TRY(md.u32());
                if (US_TRY(md.u32()) != 0) return d.error("an MSR entry's reserved word is not zero");
                uint64_t val = US_TRY(md.u64());
                s.msrs.push_back({idx, val});
            }
            break;
        }
        case kTagEvents: s.events = US_TRY(Decoder::as_pod<kvm_vcpu_events>(f, what)); break;
        default: break; // a newer writer's field: skip
        }
    }
    for (uint32_t tag : {kTagVersion, kTagCpuid, kTagMpState, kTagRegs, kTagSregs, kTagXsave, kTagXcrs, kTagDebugregs,
                         kTagMsrs, kTagEvents})
        if (!(seen & (1u << tag))) return d.error("field " + std::to_string(tag) + " is missing");
    if ((version == kVcpuStateVersionPc) != s.lapic.has_value())
        return d.error(s.lapic ? "version 1 carries a LAPIC" : "version 2 lacks its LAPIC");
    return s;
}

void encode_vm_clock(const VmState& s, std::vector<uint8_t>& out) {
    Encoder e(out);
    e.field_pod(kTagVmVersion, s.platform ? kVmStateVersionPc : kVmStateVersion);
    e.field_pod(kTagGuestTime, s.guest_time_ns);
    e.field_pod(kTagKvmClock, s.kvmclock);
    if (s.platform) {
        e.field_pod(kTagPicMaster, s.platform->pic_master);
        e.field_pod(kTagPicSlave, s.platform->pic_slave);
        e.field_pod(kTagIoapic, s.platform->ioapic);
        e.field_pod(kTagPit, s.platform->pit);
    }
}

Result<void> decode_vm_clock(std::span<const uint8_t> in, VmState& s) {
    const std::string what = "VM state";
    Decoder d(in, what);
    bool have_time = false, have_clock = false;
    uint32_t version = 0;
    uint32_t platform_parts = 0; // bit per tag seen
    PlatformState p;
    auto part = [&](uint32_t tag) -> Result<void> {
        if (platform_parts & (1u << tag)) return d.error("field " + std::to_string(tag) + " appears twice");
        platform_parts |= 1u << tag;
        return {};
    };
    auto irqchip = [&](const Decoder::Field& f, uint32_t chip) -> Result<kvm_irqchip> {
        US_TRYV(part(f.tag));
        auto c = US_TRY(Decoder::as_pod<kvm_irqchip>(f, what));
        if (c.chip_id != chip) return d.error("irqchip field " + std::to_string(f.tag) + " holds chip " + std::to_string(c.chip_id));
        return c;
    };
    while (!d.done()) {
        auto f = US_TRY(d.field());
        switch (f.tag) {
        case kTagVmVersion: {
            version = US_TRY(Decoder::as_pod<uint32_t>(f, what));
            if (version != kVmStateVersion && version != kVmStateVersionPc)
                return d.error("version " + std::to_string(version) + " is not supported (this build reads 1 and 2)");
            break;
        }
        case kTagPicMaster: p.pic_master = US_TRY(irqchip(f, KVM_IRQCHIP_PIC_MASTER)); break;
        case kTagPicSlave: p.pic_slave = US_TRY(irqchip(f, KVM_IRQCHIP_PIC_SLAVE)); break;
        case kTagIoapic: p.ioapic = US_TRY(irqchip(f, KVM_IRQCHIP_IOAPIC)); break;
        case kTagPit:
            US_TRYV(part(f.tag));
            p.pit = US_TRY(Decoder::as_pod<kvm_pit_state2>(f, what));
            break;
        case kTagGuestTime:
            s.guest_time_ns = US_TRY(Decoder::as_pod<uint64_t>(f, what));
            have_time = true;
            break;
        case kTagKvmClock:
            s.kvmclock = US_TRY(Decoder::as_pod<kvm_clock_data>(f, what));
            have_clock = true;
            break;
        default: break;
        }
    }
    if (version == 0) return d.error("field 1 is missing (the version)");
    if (!have_time) return d.error("guest time is missing");
    // Restored, a zeroed clock would throw the guest's time back to 0.
    if (!have_clock) return d.error("field 3 is missing (the KVM clock)");
    if (version == kVmStateVersionPc) {
        const uint32_t all = (1u << kTagPicMaster) | (1u << kTagPicSlave) | (1u << kTagIoapic) | (1u << kTagPit);
        if (platform_parts != all) return d.error("version 2 needs the two PICs, the IOAPIC and the PIT, once each");
        s.platform = p;
    } else if (platform_parts != 0) {
        return d.error("version 1 carries irqchip state");
    }
    return {};
}

void encode_device_state(const DeviceState& dev, std::vector<uint8_t>& out) {
    Encoder e(out);
    e.field(kTagDevName, {reinterpret_cast<const uint8_t*>(dev.name.data()), dev.name.size()});
    e.field_pod(kTagDevVersion, dev.version);
    e.field(kTagDevData, dev.data);
}

Result<DeviceState> decode_device_state(std::span<const uint8_t> in) {
    const std::string what = "device state";
    Decoder d(in, what);
    DeviceState dev;
    bool have_name = false, have_version = false;
    while (!d.done()) {
        auto f = US_TRY(d.field());
        switch (f.tag) {
        case kTagDevName:
            if (f.body.empty() || f.body.size() > 64) return d.error("device name has a bad length");
            dev.name.assign(f.body.begin(), f.body.end());
            have_name = true;
            break;
        case kTagDevVersion:
            dev.version = US_TRY(Decoder::as_pod<uint32_t>(f, what));
            have_version = true;
            break;
        case kTagDevData: dev.data.assign(f.body.begin(), f.body.end()); break;
        default: break;
        }
    }
    if (!have_name) return d.error("device name is missing");
    if (!have_version) return d.error("device version is missing"); // a device cannot read unversioned state
    return dev;
}

Result<void> add_device_state(std::vector<DeviceState>& devices, DeviceState dev) {
    for (const auto& other : devices)
        if (other.name == dev.name) return make_error(Errc::invalid_input, "device '" + dev.name + "' is listed twice");
    if (devices.size() >= kMaxDevices)
        return make_error(Errc::invalid_input, "more than " + std::to_string(kMaxDevices) + " device states");
    devices.push_back(std::move(dev));
    return {};
}

} // namespace understudy::hv
