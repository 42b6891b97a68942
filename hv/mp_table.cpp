#include "hv/mp_table.hpp"

#include <cstring>
#include <vector>

namespace understudy::hv {

namespace {

constexpr uint32_t kLapicAddress = 0xfee00000;
constexpr uint32_t kIoapicAddress = 0xfec00000;
constexpr unsigned kIoapicPins = 24;
constexpr uint8_t kSpecRevision = 4; // MP specification 1.4

#pragma pack(push, 1)
struct FloatingPointer {
    char signature[4]; // "_MP_"
    uint32_t config_table;
    uint8_t length; // in 16-byte units
    uint8_t spec_revision;
    uint8_t checksum;
    uint8_t features[5]; // all 0: a configuration table is present; virtual-wire mode
};
struct ConfigHeader {
    char signature[4]; // "PCMP"
    uint16_t base_length;
    uint8_t spec_revision;
    uint8_t checksum;
    char oem[8];
    char product[12];
    uint32_t oem_table;
    uint16_t oem_table_size;
    uint16_t entry_count;
    uint32_t lapic_address;
    uint16_t extended_length;
    uint8_t extended_checksum;
    uint8_t reserved;
};
struct ProcessorEntry {
    uint8_t type; // 0
    uint8_t apic_id;
    uint8_t apic_version;
    uint8_t flags; // bit 0 enabled, bit 1 bootstrap processor
    uint32_t signature;
    uint32_t features;
    uint32_t reserved[2];
};
struct BusEntry {
    uint8_t type; // 1
    uint8_t bus_id;
    char bus_type[6];
};
struct IoapicEntry {
    uint8_t type; // 2
    uint8_t apic_id;
    uint8_t version;
    uint8_t flags; // bit 0 enabled
    uint32_t address;
};
struct InterruptEntry { // I/O (type 3) and local (type 4) interrupt assignments
    uint8_t type;
    uint8_t interrupt_type; // 0 INT, 1 NMI, 3 ExtINT
    uint16_t flags;         // 0: as the bus defines
    uint8_t source_bus;
    uint8_t source_irq;
    uint8_t dest_apic;
    uint8_t dest_pin;
};
#pragma pack(pop)
static_assert(sizeof(FloatingPointer) == 16 && sizeof(ConfigHeader) == 44 && sizeof(ProcessorEntry) == 20 &&
              sizeof(BusEntry) == 8 && sizeof(IoapicEntry) == 8 && sizeof(InterruptEntry) == 8);

uint8_t checksum_of(const uint8_t* p, size_t n) {
    uint8_t sum = 0;
    for (size_t i = 0; i < n; ++i) sum = static_cast<uint8_t>(sum + p[i]);
    return static_cast<uint8_t>(-sum);
}

template <class T>
void append(std::vector<uint8_t>& out, const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof v);
}

} // namespace

Result<void> write_mp_table(GuestMemory& mem, unsigned vcpus) {
    if (vcpus == 0 || vcpus > 254) return make_error(Errc::invalid_input, "an MP table lists 1 to 254 CPUs");
    const uint8_t ioapic_id = static_cast<uint8_t>(vcpus);
    std::vector<uint8_t> entries;
    uint16_t count = 0;
    for (unsigned i = 0; i < vcpus; ++i, ++count) {
        ProcessorEntry p{};
        p.apic_id = static_cast<uint8_t>(i);
        p.apic_version = 0x14;
        p.flags = i == 0 ? 3 : 1;
        p.signature = 0x600; // family 6: what Linux expects of a CPU with a LAPIC
        p.features = 0x201;  // FPU, APIC
        append(entries, p);
    }
    BusEntry bus{1, 0, {'I', 'S', 'A', ' ', ' ', ' '}};
    append(entries, bus), ++count;
    append(entries, IoapicEntry{2, ioapic_id, 0x11, 1, kIoapicAddress}), ++count;
    for (unsigned pin = 0; pin < kIoapicPins; ++pin, ++count)
        append(entries, InterruptEntry{3, 0, 0, 0, static_cast<uint8_t>(pin), ioapic_id, static_cast<uint8_t>(pin)});
    append(entries, InterruptEntry{4, 3, 0, 0, 0, 0xff, 0}), ++count; // the PIC on every LAPIC's LINT0
    append(entries, InterruptEntry{4, 1, 0, 0, 0, 0xff, 1}), ++count; // NMI on LINT1

    ConfigHeader h{};
    std::memcpy(h.signature, "PCMP", 4);
    h.base_length = static_cast<uint16_t>(sizeof h + entries.size());
    h.spec_revision = kSpecRevision;
    std::memcpy(h.oem, "UNDRSTDY", 8);
    std::memcpy(h.product, "UNDERSTUDY  ", 12);
    h.entry_count = count;
    h.lapic_address = kLapicAddress;
    std::vector<uint8_t> table;
    append(table, h);
    table.insert(table.end(), entries.begin(), entries.end());
    table[offsetof(ConfigHeader, checksum)] = checksum_of(table.data(), table.size());

    FloatingPointer fp{};
    std::memcpy(fp.signature, "_MP_", 4);
    fp.config_table = static_cast<uint32_t>(kMpTableGpa + sizeof fp);
    fp.length = 1;
    fp.spec_revision = kSpecRevision;
    fp.checksum = checksum_of(reinterpret_cast<const uint8_t*>(&fp), sizeof fp);

    if (kMpTableGpa + sizeof fp + table.size() > kMpTableEnd)
        return make_error(Errc::invalid_input, "the MP table for " + std::to_string(vcpus) + " vCPUs does not fit below 640 KiB");
    US_TRYV(mem.write_obj(Gpa{kMpTableGpa}, fp));
    return mem.write(Gpa{kMpTableGpa + sizeof fp}, table);
}

} // namespace understudy::hv
