#include "hv/acpi.hpp"

#include <fmt/format.h>

#include <cstring>

namespace understudy::hv {

namespace {

constexpr uint32_t kLapicAddress = 0xfee00000;
constexpr uint32_t kIoapicAddress = 0xfec00000;
constexpr uint8_t kI8042ResetPort = 0x64, kI8042ResetValue = 0xfe;
constexpr uint16_t kCom1Port = 0x3f8;
constexpr uint8_t kCom1Irq = 4;

using Bytes = std::vector<uint8_t>;

void put_le(Bytes& b, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void set_le(Bytes& b, size_t at, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint8_t checksum(const uint8_t* p, size_t n) {
    uint8_t s = 0;
    for (size_t i = 0; i < n; ++i) s = static_cast<uint8_t>(s + p[i]);
    return static_cast<uint8_t>(-s);
}

// The 36-byte header every system description table starts with; length and checksum
// are set by finish_table().
Bytes table_header(const char sig[4], uint8_t revision) {
    Bytes t(sig, sig + 4);
    put_le(t, 0, 4); // length
    t.push_back(revision);
    t.push_back(0); // checksum
    for (char c : std::string("USTDY ")) t.push_back(static_cast<uint8_t>(c));    // OEM ID (6)
    for (char c : std::string("USTDYVM ")) t.push_back(static_cast<uint8_t>(c));  // OEM table ID (8)
    put_le(t, 1, 4);                                                              // OEM revision
    for (char c : std::string("USTD")) t.push_back(static_cast<uint8_t>(c));      // creator ID
    put_le(t, 1, 4);                                                              // creator revision
    return t;
}
void finish_table(Bytes& t) {
    set_le(t, 4, t.size(), 4);
    t[9] = checksum(t.data(), t.size());
}

// --- AML (ACPI 6.4, chapter 20) ---
Bytes pkg_length(size_t content) {
    // The length counts its own bytes: 1 byte up to 63, else a lead byte with the count of
    // following bytes in bits 6-7 and the low nibble, then 8 bits each.
    for (size_t n = 1; n <= 4; ++n) {
        size_t total = content + n;
        if (n == 1 && total < 0x40) return {static_cast<uint8_t>(total)};
        if (n > 1 && total < (size_t(1) << (4 + 8 * (n - 1)))) {
            Bytes b{static_cast<uint8_t>(((n - 1) << 6) | (total & 0xf))};
            for (size_t i = 1; i < n; ++i) b.push_back(static_cast<uint8_t>(total >> (4 + 8 * (i - 1))));
            return b;
        }
    }
    return {}; // unreachable for tables this size
}
Bytes with_pkg(uint8_t op, const Bytes& body, bool ext = false) {
    Bytes b;
    if (ext) b.push_back(0x5b);
    b.push_back(op);
    Bytes len = pkg_length(body.size());
    b.insert(b.end(), len.begin(), len.end());
    b.insert(b.end(), body.begin(), body.end());
    return b;
}
Bytes name_seg(const std::string& s) { // four characters, '_'-padded
    Bytes b(s.begin(), s.end());
    b.resize(4, '_');
    return b;
}
Bytes integer(uint64_t v) {
    Bytes b;
    if (v == 0) return {0x00};
    if (v == 1) return {0x01};
    if (v <= 0xff) b = {0x0a}, put_le(b, v, 1);
    else if (v <= 0xffff) b = {0x0b}, put_le(b, v, 2);
    else if (v <= 0xffffffff) b = {0x0c}, put_le(b, v, 4);
    else b = {0x0e}, put_le(b, v, 8);
    return b;
}
Bytes string(const std::string& s) {
    Bytes b{0x0d};
    b.insert(b.end(), s.begin(), s.end());
    b.push_back(0);
    return b;
}
Bytes dword(uint32_t v) { // always the 4-byte encoding, as EISA IDs are written
    Bytes b{0x0c};
    put_le(b, v, 4);
    return b;
}
Bytes name(const std::string& n, const Bytes& value) {
    Bytes b{0x08};
    Bytes seg = name_seg(n);
    b.insert(b.end(), seg.begin(), seg.end());
    b.insert(b.end(), value.begin(), value.end());
    return b;
}
// EISA ID ("PNP0501"): three letters in 5 bits each and four hex digits, stored big-endian.
uint32_t eisa_id(const char id[8]) {
    auto hex = [](char c) { return static_cast<uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10); };
    uint32_t v = ((uint32_t(id[0] - 0x40) & 0x1f) << 26) | ((uint32_t(id[1] - 0x40) & 0x1f) << 21) |
                 ((uint32_t(id[2] - 0x40) & 0x1f) << 16) | (hex(id[3]) << 12) | (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
    return __builtin_bswap32(v);
}
Bytes buffer(const Bytes& bytes) {
    Bytes body = integer(bytes.size());
    body.insert(body.end(), bytes.begin(), bytes.end());
    return with_pkg(0x11, body);
}
// A resource template: the descriptors and the end tag (checksum 0: "valid").
Bytes resources(Bytes descriptors) {
    descriptors.push_back(0x79);
    descriptors.push_back(0x00);
    return buffer(descriptors);
}
Bytes device(const std::string& n, const Bytes& body) {
    Bytes b = name_seg(n);
    b.insert(b.end(), body.begin(), body.end());
    return with_pkg(0x82, b, true);
}
Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes b;
    for (const auto& p : parts) b.insert(b.end(), p.begin(), p.end());
    return b;
}

Bytes com1() {
    Bytes io{0x47, 0x01}; // I/O port descriptor, 16-bit decode
    put_le(io, kCom1Port, 2), put_le(io, kCom1Port, 2), io.push_back(1), io.push_back(8);
    Bytes irq{0x22};
    put_le(irq, 1u << kCom1Irq, 2);
    return device("COM1", concat({name("_HID", dword(eisa_id("PNP0501"))), name("_UID", integer(0)),
                                  name("_CRS", resources(concat({io, irq})))}));
}

Bytes virtio_mmio(unsigned index, const AcpiMmioDevice& d) {
    Bytes mem{0x86, 0x09, 0x00, 0x01}; // Memory32Fixed, read-write
    put_le(mem, d.base, 4), put_le(mem, d.size, 4);
    Bytes irq{0x89, 0x06, 0x00, 0x03, 0x01}; // Extended Interrupt: consumer, edge, active high, exclusive; one
    put_le(irq, d.irq, 4);
    return device(fmt::format("V{:03X}", index),
                  concat({name("_HID", string("LNRO0005")), name("_UID", integer(index)), name("_CRS", resources(concat({mem, irq})))}));
}

} // namespace

std::vector<uint8_t> dsdt_aml(const std::vector<AcpiMmioDevice>& devices) {
    Bytes sb = com1();
    for (size_t i = 0; i < devices.size(); ++i) {
        Bytes d = virtio_mmio(static_cast<unsigned>(i), devices[i]);
        sb.insert(sb.end(), d.begin(), d.end());
    }
    Bytes scope_body{0x5c}; // the root, then _SB_
    Bytes sbname = name_seg("_SB_");
    scope_body.insert(scope_body.end(), sbname.begin(), sbname.end());
    scope_body.insert(scope_body.end(), sb.begin(), sb.end());
    // \_S5: the sleep type the guest writes to power off (SLP_TYP 5 in the control register).
    Bytes s5 = name("_S5", with_pkg(0x12, concat({{0x02}, integer(5), integer(0)})));
    return concat({with_pkg(0x10, scope_body), s5});
}

Result<uint64_t> write_acpi_tables(GuestMemory& mem, unsigned vcpus, const std::vector<AcpiMmioDevice>& devices) {
    // Layout in the area: RSDP, then XSDT, FADT, MADT, DSDT, each 16-byte aligned.
    const uint64_t rsdp_at = kAcpiGpa;
    uint64_t next = kAcpiGpa + 64;
    auto place = [&](size_t bytes) {
        uint64_t at = next;
        next = (next + bytes + 15) & ~uint64_t(15);
        return at;
    };

    Bytes dsdt = table_header("DSDT", 2);
    Bytes aml = dsdt_aml(devices);
    dsdt.insert(dsdt.end(), aml.begin(), aml.end());
    finish_table(dsdt);

    Bytes madt = table_header("APIC", 5);
    put_le(madt, kLapicAddress, 4);
    put_le(madt, 1, 4); // PCAT_COMPAT: the 8259s are there too
    for (unsigned i = 0; i < vcpus; ++i) {
        madt.insert(madt.end(), {0, 8, static_cast<uint8_t>(i), static_cast<uint8_t>(i)}); // processor i, APIC ID i
        put_le(madt, 1, 4);                                                                 // enabled
    }
    madt.insert(madt.end(), {1, 12, static_cast<uint8_t>(vcpus), 0}); // the IOAPIC, ID after the CPUs
    put_le(madt, kIoapicAddress, 4);
    put_le(madt, 0, 4); // GSI base
    finish_table(madt);

    // FADT, revision 6 (276 bytes): only the fields a hardware-reduced platform uses.
    Bytes fadt = table_header("FACP", 6);
    fadt.resize(276, 0);
    fadt[131] = 4; // minor version: 6.4
    constexpr uint32_t kResetRegSup = 1u << 10, kHwReduced = 1u << 20;
    set_le(fadt, 112, kResetRegSup | kHwReduced, 4);
    // IAPC_BOOT_ARCH 0: no 8042 is announced. The i8042 here is only its reset line; told
    // one is present, Linux probes the controller protocol, fails ("Can't read CTR") and
    // spends a second and a half on it at boot. Reset through port 0x64 works regardless.
    set_le(fadt, 109, 0, 2);
    auto gas_io = [&](size_t at, uint16_t port) { // Generic Address Structure: one byte of port I/O
        fadt[at] = 1, fadt[at + 1] = 8, fadt[at + 2] = 0, fadt[at + 3] = 1;
        set_le(fadt, at + 4, port, 8);
    };
    gas_io(116, kI8042ResetPort);
    fadt[128] = kI8042ResetValue;
    gas_io(244, kSleepControlPort); // SLEEP_CONTROL_REG
    gas_io(256, kSleepControlPort); // SLEEP_STATUS_REG (reads 0: never "woken")
    set_le(fadt, 268, 0x4d56444e55ull, 8); // hypervisor vendor identity: "UNDVM"

    Bytes xsdt = table_header("XSDT", 1);
    const uint64_t xsdt_at = place(xsdt.size() + 2 * 8); // two entries: FADT, MADT
    const uint64_t fadt_at = place(fadt.size()), madt_at = place(madt.size()), dsdt_at = place(dsdt.size());
    set_le(fadt, 40, dsdt_at, 4);  // DSDT
    set_le(fadt, 140, dsdt_at, 8); // X_DSDT
    finish_table(fadt);
    put_le(xsdt, fadt_at, 8);
    put_le(xsdt, madt_at, 8);
    finish_table(xsdt);
    // The last 16 bytes below 1 MiB are the reset vector (hv/linux_loader.cpp).
    if (next > kAcpiEnd - 16) return make_error(Errc::invalid_input, "the ACPI tables do not fit below 1 MiB");

    Bytes rsdp{'R', 'S', 'D', ' ', 'P', 'T', 'R', ' ', 0};
    for (char c : std::string("USTDY ")) rsdp.push_back(static_cast<uint8_t>(c));
    rsdp.push_back(2);  // revision: ACPI 2.0+, XSDT
    put_le(rsdp, 0, 4); // no RSDT
    put_le(rsdp, 36, 4);
    put_le(rsdp, xsdt_at, 8);
    rsdp.insert(rsdp.end(), {0, 0, 0, 0});
    rsdp[8] = checksum(rsdp.data(), 20);
    rsdp[32] = checksum(rsdp.data(), 36);

    US_TRYV(mem.write(Gpa{rsdp_at}, rsdp));
    US_TRYV(mem.write(Gpa{xsdt_at}, xsdt));
    US_TRYV(mem.write(Gpa{fadt_at}, fadt));
    US_TRYV(mem.write(Gpa{madt_at}, madt));
    US_TRYV(mem.write(Gpa{dsdt_at}, dsdt));
    return rsdp_at;
}

} // namespace understudy::hv
