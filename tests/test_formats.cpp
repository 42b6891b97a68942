// Unit tests that need no KVM: byte codecs, record framing, bitmaps, the I/O bus, the
// vCPU state encoding, and option parsing.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>

#include "common/codec.hpp"
#include "common/records.hpp"
#include "hv/dirty_tracker.hpp"
#include "hv/fault_report.hpp"
#include "hv/guest_clock.hpp"
#include "hv/guest_memory.hpp"
#include "hv/host_kvm.hpp"
#include "hv/io_bus.hpp"
#include "hv/vcpu_state.hpp"
#include "hv/vm.hpp"

using namespace understudy;
using namespace understudy::hv;

TEST_CASE("decoder refuses to read past its input", "[codec]") {
    std::vector<uint8_t> buf;
    Encoder e(buf);
    e.u32(7);
    e.field_pod(3, uint64_t(42));
    Decoder d(buf, "test");
    CHECK(*d.u32() == 7);
    auto f = d.field();
    REQUIRE(f);
    CHECK(f->tag == 3);
    CHECK(*Decoder::as_pod<uint64_t>(*f, "x") == 42);
    CHECK(d.done());
    CHECK(!d.u32());
    CHECK_THAT(d.u32().error().message, Catch::Contains("truncated"));

    // A field whose length runs past the end.
    std::vector<uint8_t> bad;
    Encoder b(bad);
    b.u32(1);
    b.u32(1000);
    b.u64(0);
    Decoder bd(bad, "test");
    CHECK(!bd.field());
    // A field of the wrong size for its type.
    CHECK(!Decoder::as_pod<uint32_t>(*f, "x"));
}

TEST_CASE("records carry a checksum and are 8-byte aligned", "[records]") {
    std::vector<uint8_t> out;
    std::vector<uint8_t> body = {1, 2, 3, 4, 5};
    append_record(out, 9, body);
    REQUIRE(out.size() == sizeof(RecordHeader) + 8);
    RecordHeader h;
    std::memcpy(&h, out.data(), sizeof h);
    CHECK(h.type == 9);
    CHECK(h.length == 5);
    CHECK(h.checksum == checksum64(body));
    CHECK(out[sizeof h + 5] == 0);
}

TEST_CASE("bitmaps: set, iterate, drain", "[bitmap]") {
    Bitmap b(200);
    for (size_t i : {0, 63, 64, 199}) b.set(i);
    std::vector<size_t> seen;
    b.for_each_set([&](size_t i) { seen.push_back(i); });
    CHECK(seen == std::vector<size_t>{0, 63, 64, 199});
    CHECK(b.count() == 4);
    AtomicBitmap a(200);
    a.set_range(10, 3);
    Bitmap out(200);
    a.drain_into(out);
    CHECK(out.count() == 3);
    Bitmap again(200);
    a.drain_into(again);
    CHECK(again.count() == 0);
}

TEST_CASE("the I/O bus refuses overlaps and absorbs unclaimed accesses", "[io-bus]") {
    IoBus bus("test");
    int hits = 0;
    REQUIRE(bus.add(0x100, 0x10, "a", [&](IoAccess& a) {
        ++hits;
        CHECK(a.offset == 4);
        return Result<void>{};
    }));
    CHECK(!bus.add(0x10f, 1, "b", nullptr));
    CHECK(!bus.add(0xf0, 0x11, "c", nullptr));
    CHECK(bus.add(0x110, 1, "d", [](IoAccess&) { return Result<void>{}; }));
    CHECK(!bus.add(~0ull - 1, 4, "wrap", nullptr));
    uint8_t data[4] = {};
    REQUIRE(bus.dispatch(nullptr, 0x104, data, true));
    CHECK(hits == 1);
    REQUIRE(bus.dispatch(nullptr, 0x200, data, false));
    CHECK(data[0] == 0xff);
    CHECK(bus.unclaimed_accesses() == 1);
    // An access that starts inside a range but runs past its end is not the owner's.
    REQUIRE(bus.dispatch(nullptr, 0x10e, data, false));
    CHECK(hits == 1);
    CHECK(bus.unclaimed_accesses() == 2);
}

TEST_CASE("vCPU state round-trips through its encoding and rejects damage", "[state]") {
    VcpuState s;
    s.cpuid.resize(3);
    s.cpuid[1].function = 7;
    s.regs.rip = 0x1234;
    s.regs.rax = 99;
    s.sregs.cr3 = 0x5000;
    s.xsave.assign(4096, 0xab);
    s.msrs = {{0x10, 123}, {0xc0000080, 0x500}};
    s.events.exception.nr = 6;
    std::vector<uint8_t> buf;
    encode_vcpu_state(s, buf);
    auto back = decode_vcpu_state(buf);
    REQUIRE(back);
    CHECK(back->regs.rip == 0x1234);
    CHECK(back->regs.rax == 99);
    CHECK(back->sregs.cr3 == 0x5000);
    CHECK(back->cpuid.size() == 3);
    CHECK(back->cpuid[1].function == 7);
    CHECK(back->xsave == s.xsave);
    REQUIRE(back->msrs.size() == 2);
    CHECK(back->msrs[1].index == 0xc0000080);
    CHECK(back->msrs[1].value == 0x500);
    CHECK(back->events.exception.nr == 6);

    // Truncation anywhere is an error, never a crash.
    for (size_t cut = 0; cut < buf.size(); cut += 97) {
        auto r = decode_vcpu_state(std::span(buf).first(cut));
        CHECK(!r);
    }
    // An unknown field from a newer writer is skipped.
    std::vector<uint8_t> extended = buf;
    Encoder e(extended);
    e.field_pod(1000, uint64_t(1));
    CHECK(decode_vcpu_state(extended));
}

TEST_CASE("the TSC frequency travels with the vCPU state, and a state without it still reads", "[state]") {
    VcpuState s;
    s.xsave.assign(4096, 0);
    std::vector<uint8_t> without;
    encode_vcpu_state(s, without); // as an older writer, or a host where KVM did not know the rate
    auto old = decode_vcpu_state(without);
    REQUIRE(old);
    CHECK(old->tsc_khz == 0);

    s.tsc_khz = 2'758'398;
    std::vector<uint8_t> with;
    encode_vcpu_state(s, with);
    auto back = decode_vcpu_state(with);
    REQUIRE(back);
    CHECK(back->tsc_khz == 2'758'398);

    // A rate of 0 or beyond 100 GHz is malformed, not "unknown".
    for (uint32_t bad : {0u, kMaxTscKhz + 1}) {
        std::vector<uint8_t> forged = without;
        Encoder e(forged);
        e.field_pod(12, bad);
        auto r = decode_vcpu_state(forged);
        REQUIRE(!r);
        CHECK_THAT(r.error().message, Catch::Contains("TSC frequency of " + std::to_string(bad) + " kHz is out of range"));
    }
}

TEST_CASE("a fault stop names the registers, descriptor tables and pending events", "[state]") {
    kvm_regs r{};
    kvm_sregs s{};
    kvm_vcpu_events e{};
    r.rip = 0x101234;
    r.rdi = 14;
    r.r10 = 1;
    s.cr2 = 0xdeadb000;
    s.cs.selector = 0x8;
    s.idt.base = 0x104000;
    s.idt.limit = 0;
    e.exception.injected = 1;
    e.exception.nr = 8;
    std::string text = format_fault_state(r, s, e);
    CHECK_THAT(text, Catch::Contains("rip=0x0000000000101234"));
    CHECK_THAT(text, Catch::Contains("rdi=0xe"));
    CHECK_THAT(text, Catch::Contains("r10=0x1"));
    CHECK_THAT(text, Catch::Contains("cr2=0xdeadb000"));
    CHECK_THAT(text, Catch::Contains("cs=0x0008"));
    CHECK_THAT(text, Catch::Contains("idt base=0x104000 limit=0x0"));
    CHECK_THAT(text, Catch::Contains("exception injected=1 nr=8"));
    CHECK_THAT(text, !Catch::Contains("reset state"));
    // Without a vCPU the registers cannot be read, and the report says so instead of failing.
    CHECK_THAT(describe_fault_state(-1), Catch::Contains("registers unreadable: KVM_GET_REGS"));

    // A triple fault on AMD: KVM has loaded the reset state; the report says so.
    kvm_regs reset_r{};
    kvm_sregs reset_s{};
    reset_r.rip = 0xfff0;
    reset_s.cs.base = 0xffff0000;
    reset_s.cr0 = 0x10;
    CHECK_THAT(format_fault_state(reset_r, reset_s, e), Catch::Contains("these registers are the CPU's reset state"));
}

TEST_CASE("the host's KVM: the CPU's name, module flags, and the emulator's nested paging named as a hazard", "[host]") {
    using understudy::hv::HostKvm;
    CHECK(understudy::hv::cpu_model_from_cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU TCG CPU "
                                                  "version 2.5+\nflags\t: fpu\n") == "QEMU TCG CPU version 2.5+");
    CHECK(understudy::hv::cpu_model_from_cpuinfo("model name\t:\nmodel name\t: Intel(R) Xeon(R)\r\n") == "Intel(R) Xeon(R)");
    CHECK(understudy::hv::cpu_model_from_cpuinfo("") == "unknown");
    CHECK(understudy::hv::cpu_model_from_cpuinfo("model name without a colon\n") == "unknown");
    CHECK(understudy::hv::parse_module_flag("Y\n") == true);
    CHECK(understudy::hv::parse_module_flag("1\n") == true);
    CHECK(understudy::hv::parse_module_flag("N\n") == false);
    CHECK(understudy::hv::parse_module_flag("0") == false);
    CHECK_FALSE(understudy::hv::parse_module_flag("maybe\n").has_value());
    CHECK_FALSE(understudy::hv::parse_module_flag("").has_value());

    HostKvm h;
    h.backend = "amd";
    h.cpu = "QEMU TCG CPU version 2.5+";
    h.nested_paging = true;
    auto hazard = understudy::hv::host_kvm_hazard(h);
    REQUIRE(hazard);
    CHECK_THAT(*hazard, Catch::Contains("kvm_amd npt=0"));
    CHECK_THAT(*hazard, Catch::Contains("QEMU TCG CPU version 2.5+"));
    h.nested_paging = false; // the nested runner's default
    CHECK_FALSE(understudy::hv::host_kvm_hazard(h));
    h.nested_paging.reset();
    CHECK_FALSE(understudy::hv::host_kvm_hazard(h));
    h.nested_paging = true;
    h.cpu = "AMD EPYC 7B13"; // hardware: nested paging is what it should be
    CHECK_FALSE(understudy::hv::host_kvm_hazard(h));
    // Whatever this machine is, the probe answers without failing.
    const HostKvm& here = understudy::hv::this_host_kvm();
    CHECK(&here == &understudy::hv::this_host_kvm());
    CHECK((here.backend == "none" || here.backend == "pvm" || here.backend == "intel" || here.backend == "amd"));
    // A module loaded without /dev/kvm (kvm_pvm in a PVM guest) is no KVM.
    if (::access("/dev/kvm", F_OK) != 0) CHECK(here.backend == "none");
}

TEST_CASE("the guest clock: no deadline means never, not the past", "[clock]") {
    using std::chrono::steady_clock;
    GuestClock c;
    auto far = steady_clock::now() + std::chrono::hours(24 * 365);
    CHECK(c.host_deadline(UINT64_MAX) > far); // us_halt_forever's deadline
    c.set(uint64_t(1) << 62);                 // a VM restored with a large guest time
    CHECK(c.host_deadline(UINT64_MAX - 1) > far);
    CHECK(c.host_deadline(0) <= steady_clock::now());
    auto soon = c.host_deadline(c.now_ns() + 1'000'000'000);
    CHECK(soon > steady_clock::now());
    CHECK(soon < steady_clock::now() + std::chrono::seconds(2));
}

TEST_CASE("device state and VM clock round-trip", "[state]") {
    DeviceState d{"virtio-net", 3, {1, 2, 3}};
    std::vector<uint8_t> buf;
    encode_device_state(d, buf);
    auto back = decode_device_state(buf);
    REQUIRE(back);
    CHECK(back->name == "virtio-net");
    CHECK(back->version == 3);
    CHECK(back->data == d.data);
    VmState vs;
    vs.guest_time_ns = 123456789;
    buf.clear();
    encode_vm_clock(vs, buf);
    VmState out;
    REQUIRE(decode_vm_clock(buf, out));
    CHECK(out.guest_time_ns == 123456789);
}

TEST_CASE("memory sizes and dirty modes are validated", "[config]") {
    CHECK(validate_memory_size(256 * kMiB));
    CHECK(!validate_memory_size(0));
    CHECK(!validate_memory_size(kMaxMemory + kMemoryGranule));
    CHECK(!validate_memory_size(17 * kMiB));
    CHECK(*parse_dirty_mode("ring") == DirtyMode::ring);
    CHECK(*parse_dirty_mode("auto") == DirtyMode::automatic);
    CHECK(!parse_dirty_mode("rings"));
}

TEST_CASE("a VM of a memory size or vCPU count that is not allowed is refused before KVM is asked", "[config]") {
    for (uint64_t bytes : {uint64_t(0), 8 * kMiB, 16 * kMiB + 4096, 13 * kGiB, ~uint64_t(0)}) {
        VmConfig cfg;
        cfg.memory_bytes = bytes;
        auto vm = Vm::create(cfg);
        INFO(bytes);
        REQUIRE(!vm);
        CHECK(vm.error().code == Errc::invalid_input);
        CHECK_THAT(vm.error().message, Catch::Contains("multiple of 2 MiB"));
    }
    for (unsigned n : {0u, kMaxVcpus + 1}) {
        VmConfig cfg;
        cfg.vcpus = n;
        auto vm = Vm::create(cfg);
        REQUIRE(!vm);
        CHECK_THAT(vm.error().message, Catch::Contains("vCPU count"));
    }
}
