// The parts of the Linux-guest platform that need no KVM: the bzImage header checks, the
// MP table, and the version-2 (PC platform) state encodings and their refusals.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>

#include "common/codec.hpp"
#include "hv/acpi.hpp"
#include "hv/cpuid.hpp"
#include "hv/guest_memory.hpp"
#include "hv/legacy/cmos_rtc.hpp"
#include "hv/linux_loader.hpp"
#include "hv/mp_table.hpp"
#include "hv/vcpu_state.hpp"

using namespace understudy;
using namespace understudy::hv;

namespace {

// The header fields of a bzImage that parse_bzimage reads, at their boot-protocol offsets.
std::vector<uint8_t> fake_bzimage(uint16_t protocol = 0x020f, uint16_t xloadflags = 1, size_t size = 64 * 1024) {
    std::vector<uint8_t> f(size, 0);
    auto put16 = [&](size_t o, uint16_t v) { std::memcpy(&f[o], &v, 2); };
    auto put32 = [&](size_t o, uint32_t v) { std::memcpy(&f[o], &v, 4); };
    auto put64 = [&](size_t o, uint64_t v) { std::memcpy(&f[o], &v, 8); };
    f[0x1f1] = 27;            // setup_sects
    put16(0x1fe, 0xaa55);     // boot_flag
    f[0x201] = 0x6a;          // jump: header end at 0x26c
    put32(0x202, 0x53726448); // "HdrS"
    put16(0x206, protocol);
    f[0x211] = 1;             // LOADED_HIGH
    put32(0x22c, 0x7fffffff); // initrd_addr_max
    put32(0x230, 0x200000);   // kernel_alignment
    f[0x234] = 1;             // relocatable
    put16(0x236, xloadflags);
    put32(0x238, 2047);       // cmdline_size
    put64(0x258, 0x1000000);  // pref_address
    put32(0x260, 0x2000000);  // init_size
    return f;
}

uint8_t sum(const uint8_t* p, size_t n) {
    uint8_t s = 0;
    for (size_t i = 0; i < n; ++i) s = static_cast<uint8_t>(s + p[i]);
    return s;
}

} // namespace

TEST_CASE("a bzImage's header is read and checked", "[linux]") {
    auto k = parse_bzimage(fake_bzimage());
    REQUIRE(k);
    CHECK(k->protocol == 0x020f);
    CHECK(k->setup_bytes == 28 * 512);
    CHECK(k->load_address == 0x1000000);
    CHECK(k->init_size == 0x2000000);
    CHECK(k->cmdline_size == 2047);

    auto refused = [](std::vector<uint8_t> f, const char* why) {
        auto r = parse_bzimage(f);
        REQUIRE(!r);
        CHECK(r.error().code == Errc::invalid_input);
        CHECK_THAT(r.error().message, Catch::Contains(why));
    };
    auto elf = fake_bzimage();
    std::memcpy(&elf[0x202], "\x7f" "ELF", 4);
    refused(elf, "not a bzImage");
    refused(fake_bzimage(0x020b), "boot protocol 2.11 is too old");
    refused(fake_bzimage(0x020f, 0), "no 64-bit entry point");
    refused(std::vector<uint8_t>(100, 0), "too small");
    auto zimage = fake_bzimage();
    zimage[0x211] = 0;
    refused(zimage, "zImage");
    auto setup_only = fake_bzimage(0x020f, 1, 0x1000);
    setup_only[0x1f1] = 100;
    refused(setup_only, "no kernel after it");
}

TEST_CASE("the MP table lists every vCPU, the IOAPIC and the ISA interrupts, with valid checksums", "[linux]") {
    auto mem = GuestMemory::create(16 * kMiB);
    REQUIRE(mem);
    for (unsigned vcpus : {1u, 8u}) {
        REQUIRE(write_mp_table(*mem, vcpus));
        std::vector<uint8_t> fp(16), table(1024);
        REQUIRE(mem->read(Gpa{kMpTableGpa}, fp));
        CHECK(std::memcmp(fp.data(), "_MP_", 4) == 0);
        CHECK(sum(fp.data(), 16) == 0);
        uint32_t at;
        std::memcpy(&at, &fp[4], 4);
        REQUIRE(at == kMpTableGpa + 16);
        REQUIRE(mem->read(Gpa{at}, table));
        CHECK(std::memcmp(table.data(), "PCMP", 4) == 0);
        uint16_t length, count;
        std::memcpy(&length, &table[4], 2);
        std::memcpy(&count, &table[34], 2);
        REQUIRE(at + length <= kMpTableEnd);
        CHECK(sum(table.data(), length) == 0);
        CHECK(count == vcpus + 1 + 1 + 24 + 2);
        // Processor entries: APIC IDs 0..n-1, vCPU 0 the bootstrap processor.
        for (unsigned i = 0; i < vcpus; ++i) {
            const uint8_t* e = &table[44 + i * 20];
            CHECK(e[0] == 0);
            CHECK(e[1] == i);
            CHECK(e[3] == (i == 0 ? 3 : 1));
        }
    }
    CHECK(!write_mp_table(*mem, 0));
}

TEST_CASE("PC platform state travels as version 2 and is refused where it does not fit", "[linux][state]") {
    VcpuState v;
    v.cpuid.resize(2);
    v.xsave.assign(4096, 0x5a);
    v.msrs = {{0x10, 12345}, {0x6e0, 99}};
    v.lapic.emplace();
    v.lapic->regs[0x20] = 0x42;
    std::vector<uint8_t> enc;
    encode_vcpu_state(v, enc);
    auto back = decode_vcpu_state(enc);
    REQUIRE(back);
    REQUIRE(back->lapic);
    CHECK(std::memcmp(back->lapic->regs, v.lapic->regs, sizeof v.lapic->regs) == 0);

    // The version field says 2: a build that reads only version 1 refuses the state
    // rather than drop the LAPIC it does not know.
    Decoder d(enc, "x");
    auto first = d.field();
    REQUIRE(first);
    CHECK(*Decoder::as_pod<uint32_t>(*first, "x") == kVcpuStateVersionPc);

    // Without its LAPIC a version-2 state is refused.
    VcpuState plain = v;
    plain.lapic.reset();
    std::vector<uint8_t> v1;
    encode_vcpu_state(plain, v1);
    REQUIRE(decode_vcpu_state(v1));
    std::vector<uint8_t> forged = v1;
    uint32_t two = kVcpuStateVersionPc;
    std::memcpy(forged.data() + 8, &two, 4); // the version field's body: tag, length, value
    auto r = decode_vcpu_state(forged);
    REQUIRE(!r);
    CHECK_THAT(r.error().message, Catch::Contains("lacks its LAPIC"));

    VmState s;
    s.guest_time_ns = 7;
    s.platform.emplace();
    s.platform->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    s.platform->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    s.platform->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    s.platform->pit.channels[0].count = 1193;
    std::vector<uint8_t> clock;
    encode_vm_clock(s, clock);
    VmState out;
    REQUIRE(decode_vm_clock(clock, out));
    REQUIRE(out.platform);
    CHECK(out.platform->pit.channels[0].count == 1193);

    // A chip in the wrong field, or a missing one, is refused.
    VmState swapped = s;
    std::swap(swapped.platform->pic_master, swapped.platform->pic_slave);
    std::vector<uint8_t> bad;
    encode_vm_clock(swapped, bad);
    VmState ignored;
    auto r2 = decode_vm_clock(bad, ignored);
    REQUIRE(!r2);
    CHECK_THAT(r2.error().message, Catch::Contains("holds chip"));
    // A part given twice (here the IOAPIC in place of the PIT) is refused.
    std::vector<uint8_t> twice;
    {
        Encoder e(twice);
        e.field_pod(1, kVmStateVersionPc);
        e.field_pod(2, uint64_t(7));
        e.field_pod(4, s.platform->pic_master);
        e.field_pod(5, s.platform->pic_slave);
        e.field_pod(6, s.platform->ioapic);
        e.field_pod(6, s.platform->ioapic);
    }
    auto r3 = decode_vm_clock(twice, ignored);
    REQUIRE(!r3);
    CHECK_THAT(r3.error().message, Catch::Contains("appears twice"));
    VmState no_platform = s;
    no_platform.platform.reset();
    std::vector<uint8_t> v1clock;
    encode_vm_clock(no_platform, v1clock);
    VmState plain_out;
    REQUIRE(decode_vm_clock(v1clock, plain_out));
    CHECK(!plain_out.platform);
}

TEST_CASE("the CMOS clock answers the host's UTC time in BCD, never mid-update", "[linux]") {
    auto from_bcd = [](uint8_t v) { return (v >> 4) * 10 + (v & 0xf); };
    std::time_t before = std::time(nullptr);
    std::tm t{};
    gmtime_r(&before, &t);
    CHECK(from_bcd(CmosRtc::read_register(0x09)) == t.tm_year % 100);
    CHECK(from_bcd(CmosRtc::read_register(0x32)) == (t.tm_year + 1900) / 100);
    CHECK(from_bcd(CmosRtc::read_register(0x08)) == t.tm_mon + 1);
    CHECK((CmosRtc::read_register(0x0a) & 0x80) == 0); // update in progress: never
    CHECK(CmosRtc::read_register(0x0b) == 0x02);       // 24-hour, BCD
}

TEST_CASE("the ACPI tables chain from the RSDP, each with a valid checksum, and name every virtio-mmio device", "[linux][acpi]") {
    auto mem = GuestMemory::create(16 * kMiB);
    REQUIRE(mem);
    std::vector<AcpiMmioDevice> devices{{0xd0000000, 0x1000, 5}, {0xd0001000, 0x1000, 6}};
    auto rsdp_at = write_acpi_tables(*mem, 2, devices);
    REQUIRE(rsdp_at);
    auto read = [&](uint64_t at, size_t n) {
        std::vector<uint8_t> b(n);
        REQUIRE(mem->read(Gpa{at}, b));
        return b;
    };
    auto u32 = [](const std::vector<uint8_t>& b, size_t o) {
        uint32_t v;
        std::memcpy(&v, &b[o], 4);
        return v;
    };
    auto rsdp = read(*rsdp_at, 36);
    CHECK(std::memcmp(rsdp.data(), "RSD PTR ", 8) == 0);
    CHECK(sum(rsdp.data(), 20) == 0);
    CHECK(sum(rsdp.data(), 36) == 0);
    uint64_t xsdt_at;
    std::memcpy(&xsdt_at, &rsdp[24], 8);
    auto table = [&](uint64_t at, const char* sig) {
        auto head = read(at, 8);
        REQUIRE(std::memcmp(head.data(), sig, 4) == 0);
        auto t = read(at, u32(head, 4));
        CHECK(sum(t.data(), t.size()) == 0);
        CHECK(at + t.size() <= kAcpiEnd);
        return t;
    };
    auto xsdt = table(xsdt_at, "XSDT");
    REQUIRE(xsdt.size() == 36 + 16);
    uint64_t fadt_at, madt_at;
    std::memcpy(&fadt_at, &xsdt[36], 8);
    std::memcpy(&madt_at, &xsdt[44], 8);
    auto fadt = table(fadt_at, "FACP");
    CHECK((u32(fadt, 112) & (1u << 20)) != 0); // hardware-reduced
    CHECK((fadt[109] | fadt[110] << 8) == 0);  // IAPC_BOOT_ARCH: no 8042 announced (only its reset line is here)
    auto madt = table(madt_at, "APIC");
    CHECK(madt.size() == 44 + 2 * 8 + 12); // two LAPICs, one IOAPIC
    auto dsdt = table(u32(fadt, 40), "DSDT");
    std::string aml(dsdt.begin(), dsdt.end());
    CHECK(aml.find("LNRO0005") != std::string::npos);
    CHECK(aml.find("V000") != std::string::npos);
    CHECK(aml.find("V001") != std::string::npos);
    CHECK(aml.find("COM1") != std::string::npos);
    // Each device's Extended Interrupt descriptor: consumer, edge, active high; its IRQ.
    for (uint8_t irq : {5, 6}) {
        const uint8_t want[] = {0x89, 0x06, 0x00, 0x03, 0x01, irq, 0, 0, 0};
        CHECK(std::search(dsdt.begin(), dsdt.end(), std::begin(want), std::end(want)) != dsdt.end());
    }
}

TEST_CASE("a Linux guest's CPUID describes one socket of its own vCPUs, not the host's topology", "[cpuid]") {
    auto entry = [](uint32_t fn, uint32_t idx, uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx) {
        kvm_cpuid_entry2 e{};
        e.function = fn;
        e.index = idx;
        e.eax = eax, e.ebx = ebx, e.ecx = ecx, e.edx = edx;
        return e;
    };
    // As a 64-thread host's KVM reports it: 32 cores of 2 threads, L3 shared by 64.
    const std::vector<kvm_cpuid_entry2> host = {
        entry(0, 0, 0x10, 0, 0, 0), // basic leaves up to 0x10
        entry(1, 0, 0x00a20f12, 0x3f400800, 0x7ed8320b, 0x178bfbff),
        entry(4, 0, 0xfc004121, 0, 0, 0),  // L1d, 2 threads share it, 64 cores
        entry(4, 1, 0xfc004122, 0, 0, 0),  // L1i
        entry(4, 2, 0xfc004143, 0, 0, 0),  // L2
        entry(4, 3, 0xfc0fc163, 0, 0, 0),  // L3, 64 threads share it
        entry(4, 4, 0, 0, 0, 0),           // no more caches
        entry(0xb, 0, 1, 2, 0x100, 17), entry(0xb, 1, 6, 64, 0x201, 17), entry(0xb, 2, 0, 0, 2, 17),
        entry(0x80000008, 0, 0x3030, 0, 0x703f, 0),
        entry(0x8000001d, 1, (1u << 14) | (1u << 8) | (1u << 5) | 2, 0, 0, 0), // L1i shared by 2 threads
        entry(0x8000001d, 3, (15u << 14) | (1u << 8) | (3u << 5) | 3, 0, 0, 0), // L3 shared by 16
        entry(0x8000001e, 0, 17, 0x108, 0x3, 0),
    };
    auto find = [](const std::vector<kvm_cpuid_entry2>& v, uint32_t fn, uint32_t idx) {
        for (const auto& e : v)
            if (e.function == fn && e.index == idx) return e;
        FAIL("no leaf " << fn << "." << idx);
        return kvm_cpuid_entry2{};
    };
    auto c = vcpu_cpuid(host, {.index = 2, .vcpus = 3, .pc_platform = true, .tsc_deadline = true});
    auto l1 = find(c, 1, 0);
    CHECK(l1.ebx >> 24 == 2);                 // initial APIC ID
    CHECK(((l1.ebx >> 16) & 0xff) == 3);      // logical processors in the package
    CHECK((l1.ebx & 0xffff) == 0x0800);       // CLFLUSH size and brand index kept
    CHECK((l1.edx & (1u << 28)) != 0);        // HTT: the count above is valid
    CHECK((l1.ecx & (1u << 31)) != 0);        // hypervisor
    CHECK((l1.ecx & (1u << 24)) != 0);        // TSC-deadline
    for (uint32_t i = 0; i < 4; ++i) {
        auto l4 = find(c, 4, i);
        INFO("cache " << i);
        CHECK(l4.eax >> 26 == 2);                                  // cores per package - 1
        CHECK(((l4.eax >> 14) & 0xfff) == (i == 3 ? 2u : 0u));     // sharing: L3 the socket, the rest one core
        CHECK((l4.eax & 0x3fff) == (find(host, 4, i).eax & 0x3fff)); // type, level, flags kept
    }
    CHECK(find(c, 4, 4).eax == 0);
    auto smt = find(c, 0xb, 0), core = find(c, 0xb, 1), none = find(c, 0xb, 2);
    CHECK((smt.eax == 0 && smt.ebx == 1 && smt.ecx == 0x100 && smt.edx == 2));
    CHECK((core.eax == 2 && core.ebx == 3 && core.ecx == 0x201 && core.edx == 2));
    CHECK((none.eax == 0 && none.ebx == 0 && none.ecx == 2 && none.edx == 2));
    CHECK(((find(c, 0x8000001d, 1).eax >> 14) & 0xfff) == 0);
    CHECK(((find(c, 0x8000001d, 3).eax >> 14) & 0xfff) == 2);
    CHECK((find(c, 0x8000001d, 3).eax & 0x3fff) == ((1u << 8) | (3u << 5) | 3));
    auto amd = find(c, 0x80000008, 0);
    CHECK((amd.ecx & 0xff) == 2);
    CHECK(((amd.ecx >> 12) & 0xf) == 2);
    CHECK((amd.ecx & 0xffff0000u) == (0x703fu & 0xffff0000u));
    auto ext = find(c, 0x8000001e, 0);
    CHECK(ext.eax == 2);
    CHECK((ext.ebx & 0xffff) == 2); // core 2, one thread per core
    CHECK((ext.ecx & 0x7ff) == 0);  // node 0

    size_t xtopo = 0;
    for (const auto& e : c) xtopo += e.function == 0xb;
    CHECK(xtopo == 3); // threads, cores, the end
    for (const auto& e : c) CHECK(e.function != 0x1f); // the host has no leaf 0x1f: none is made up

    // A host that lists only an empty subleaf 0 of leaf 0xb (older AMD) still gets the
    // core level: without it Linux would put each vCPU in a package of its own.
    std::vector<kvm_cpuid_entry2> bare = {entry(0, 0, 0xd, 0, 0, 0), entry(0xb, 0, 0, 0, 0, 0)};
    auto b = vcpu_cpuid(bare, {.index = 1, .vcpus = 4, .pc_platform = true, .tsc_deadline = false});
    auto bcore = find(b, 0xb, 1);
    CHECK((bcore.eax == 2 && bcore.ebx == 4 && bcore.ecx == 0x201 && bcore.edx == 1));
    CHECK((find(b, 0xb, 1).flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0);

    // A PVH image keeps the host's topology: only its APIC IDs are its own.
    auto pvh = vcpu_cpuid(host, {.index = 1, .vcpus = 3, .pc_platform = false, .tsc_deadline = true});
    CHECK(find(pvh, 1, 0).ebx == ((0x3f400800u & 0x00ffffffu) | (1u << 24)));
    CHECK(find(pvh, 1, 0).ecx == 0x7ed8320bu);
    CHECK(find(pvh, 4, 3).eax == 0xfc0fc163u);
    CHECK(find(pvh, 0xb, 1).eax == 6);
    CHECK(find(pvh, 0xb, 1).edx == 1);
}
