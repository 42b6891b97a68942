#include "hv/linux_loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "hv/acpi.hpp"
#include "hv/mp_table.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

namespace {

// Offsets in the zero page (struct boot_params) and the setup header inside it, which
// sits at the same offset (0x1f1) in the file and in the zero page.
constexpr size_t kSetupSects = 0x1f1, kBootFlag = 0x1fe, kJump = 0x200, kHeaderMagic = 0x202, kVersion = 0x206;
constexpr size_t kTypeOfLoader = 0x210, kLoadFlags = 0x211, kRamdiskImage = 0x218, kRamdiskSize = 0x21c;
constexpr size_t kCmdLinePtr = 0x228, kInitrdAddrMax = 0x22c, kKernelAlignment = 0x230, kRelocatable = 0x234;
constexpr size_t kXloadFlags = 0x236, kCmdlineSize = 0x238, kPrefAddress = 0x258, kInitSize = 0x260;
constexpr size_t kAcpiRsdpAddr = 0x070, kE820Entries = 0x1e8, kE820Table = 0x2d0, kE820Max = 128;
constexpr size_t kZeroPageSize = 4096;
constexpr uint32_t kHdrS = 0x53726448; // "HdrS"
constexpr uint16_t kMinProtocol = 0x020c; // 2.12: xloadflags, so the 64-bit entry can be checked
constexpr uint16_t kXlfKernel64 = 1;
constexpr uint8_t kLoadedHigh = 1;
constexpr uint64_t kEntry64Offset = 0x200;
constexpr uint64_t kHighMemory = 0x100000;
constexpr uint32_t kE820Ram = 1, kE820Reserved = 2;
// Page tables: PML4, one PDPT, four page directories of 2 MiB pages: the first 4 GiB
// identity-mapped, which covers every address the loader uses.
constexpr uint64_t kPdptGpa = kLinuxPml4Gpa + 0x1000, kPdGpa = kLinuxPml4Gpa + 0x2000;
constexpr unsigned kPageDirectories = 4;
constexpr uint64_t kBootCs = 0x10, kBootDs = 0x18; // the selectors the boot protocol names

Error bad(const std::string& why) { return make_error(Errc::invalid_input, "Linux kernel: " + why); }

template <class T>
T get(std::span<const uint8_t> f, size_t off) {
    T v;
    std::memcpy(&v, f.data() + off, sizeof v);
    return v;
}

template <class T>
void put(std::vector<uint8_t>& b, size_t off, T v) {
    std::memcpy(b.data() + off, &v, sizeof v);
}

struct E820 {
    uint64_t addr, size;
    uint32_t type;
};

Result<void> write_page_tables(GuestMemory& mem) {
    std::vector<uint64_t> table(512, 0);
    table[0] = kPdptGpa | 0x3; // present, writable
    US_TRYV(mem.write(Gpa{kLinuxPml4Gpa}, {reinterpret_cast<const uint8_t*>(table.data()), 4096}));
    std::fill(table.begin(), table.end(), 0);
    for (unsigned i = 0; i < kPageDirectories; ++i) table[i] = (kPdGpa + i * 0x1000) | 0x3;
    US_TRYV(mem.write(Gpa{kPdptGpa}, {reinterpret_cast<const uint8_t*>(table.data()), 4096}));
    for (unsigned d = 0; d < kPageDirectories; ++d) {
        for (uint64_t i = 0; i < 512; ++i) table[i] = ((d * 512 + i) << 21) | 0x83; // present, writable, 2 MiB
        US_TRYV(mem.write(Gpa{kPdGpa + d * 0x1000}, {reinterpret_cast<const uint8_t*>(table.data()), 4096}));
    }
    return {};
}

// What a BIOS has at the reset vector, reduced to a reset: Linux on hardware-reduced ACPI
// without EFI reboots "through the BIOS" by default (reboot_type BOOT_EFI, then BOOT_BIOS:
// real mode at f000:fff0), so the code there pulses the i8042's reset line, which ends
// the VM as a reboot. In real mode: mov al, 0xfe; out 0x64, al; hlt; jmp to the hlt.
constexpr uint64_t kResetVectorGpa = 0xffff0;
Result<void> write_reset_vector(GuestMemory& mem) {
    const uint8_t code[] = {0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd};
    return mem.write(Gpa{kResetVectorGpa}, code);
}

Result<void> write_gdt(GuestMemory& mem) {
    const uint64_t gdt[4] = {0, 0, 0x00af9b000000ffff /* 64-bit code */, 0x00cf93000000ffff /* flat data */};
    return mem.write(Gpa{kLinuxGdtGpa}, {reinterpret_cast<const uint8_t*>(gdt), sizeof gdt});
}

} // namespace

Result<BzImage> parse_bzimage(std::span<const uint8_t> f) {
    if (f.size() < kInitSize + 4) return bad("is too small to be a bzImage (" + std::to_string(f.size()) + " bytes)");
    if (get<uint16_t>(f, kBootFlag) != 0xaa55 || get<uint32_t>(f, kHeaderMagic) != kHdrS)
        return bad("not a bzImage (no boot sector signature or \"HdrS\" setup header)");
    BzImage k;
    k.protocol = get<uint16_t>(f, kVersion);
    if (k.protocol < kMinProtocol)
        return bad(fmt::format("boot protocol {}.{:02} is too old; this VMM needs 2.12 or later (Linux 3.8+)", k.protocol >> 8,
                               k.protocol & 0xff));
    if (!(get<uint16_t>(f, kXloadFlags) & kXlfKernel64)) return bad("has no 64-bit entry point (XLF_KERNEL_64); is it a 32-bit kernel?");
    if (!(f[kLoadFlags] & kLoadedHigh)) return bad("is a zImage (not loaded high); only bzImages are supported");
    uint64_t sects = f[kSetupSects] ? f[kSetupSects] : 4;
    k.setup_bytes = (sects + 1) * 512;
    if (k.setup_bytes >= f.size()) return bad("its setup code takes the whole file; there is no kernel after it");
    k.init_size = get<uint32_t>(f, kInitSize);
    k.initrd_addr_max = get<uint32_t>(f, kInitrdAddrMax);
    k.cmdline_size = get<uint32_t>(f, kCmdlineSize);
    uint64_t pref = get<uint64_t>(f, kPrefAddress);
    uint32_t align = get<uint32_t>(f, kKernelAlignment);
    if (k.init_size < f.size() - k.setup_bytes) return bad("init_size is smaller than the kernel itself");
    if (f[kRelocatable]) {
        if (align == 0 || (align & (align - 1)) != 0) return bad("kernel_alignment is not a power of two");
        k.load_address = std::max<uint64_t>(pref, kHighMemory);
        k.load_address = (k.load_address + align - 1) & ~uint64_t(align - 1);
    } else {
        k.load_address = pref;
    }
    if (k.load_address < kHighMemory || k.load_address >= kMmioWindowStart)
        return bad(fmt::format("wants to be loaded at {:#x}, outside low RAM", k.load_address));
    return k;
}

Result<void> check_linux_cmdline(const BzImage& k, std::string_view cmdline) {
    const uint64_t limit = std::min<uint64_t>(k.cmdline_size, kLinuxMaxCmdline);
    if (cmdline.size() > limit)
        return make_error(Errc::invalid_input, fmt::format("the kernel command line is {} bytes; this kernel takes at most {}", cmdline.size(), limit));
    if (cmdline.find('\0') != std::string_view::npos) return make_error(Errc::invalid_input, "the kernel command line contains a NUL byte");
    return {};
}

Result<BzImage> load_linux(Vm& vm, std::span<const uint8_t> kernel, std::span<const uint8_t> initrd, std::string_view cmdline) {
    if (!vm.config().pc_platform) return make_error(Errc::invalid_input, "booting Linux needs a VM with the PC platform");
    auto k = US_TRY(parse_bzimage(kernel));
    US_TRYV(check_linux_cmdline(k, cmdline));

    auto& mem = vm.memory();
    const MemoryRegion& low = mem.regions().front(); // RAM from 0 up to the MMIO window or the end
    const uint64_t low_end = low.gpa.value + low.size;
    const uint64_t kernel_end = k.load_address + k.init_size;
    if (kernel_end > low_end)
        return bad(fmt::format("needs {} MiB from {:#x} to decompress; the guest has {} MiB below {:#x}", (k.init_size + kMiB - 1) >> 20,
                               k.load_address, low_end >> 20, low_end));
    uint64_t initrd_at = 0;
    if (!initrd.empty()) {
        uint64_t top = std::min<uint64_t>(low_end, uint64_t(k.initrd_addr_max) + 1);
        if (initrd.size() > top || ((top - initrd.size()) & ~(kPageSize - 1)) < kernel_end)
            return make_error(Errc::invalid_input,
                              fmt::format("the initrd ({} MiB) does not fit in guest memory between the kernel's end at {} MiB and {} MiB; "
                                          "give the VM more memory",
                                          (initrd.size() + kMiB - 1) >> 20, (kernel_end + kMiB - 1) >> 20, top >> 20));
        initrd_at = (top - initrd.size()) & ~(kPageSize - 1);
        US_TRYV(mem.write(Gpa{initrd_at}, initrd));
    }
    US_TRYV(mem.write(Gpa{k.load_address}, kernel.subspan(k.setup_bytes)));

    std::vector<uint8_t> cmd(cmdline.begin(), cmdline.end());
    cmd.push_back(0);
    US_TRYV(mem.write(Gpa{kLinuxCmdlineGpa}, cmd));

    std::vector<uint8_t> zp(kZeroPageSize, 0);
    // The setup header runs from 0x1f1 to the end the byte at 0x201 gives (relative to 0x202).
    size_t header_end = std::min<size_t>(kJump + 2 + kernel[kJump + 1], kZeroPageSize);
    std::memcpy(zp.data() + kSetupSects, kernel.data() + kSetupSects, header_end - kSetupSects);
    zp[kTypeOfLoader] = 0xff; // a boot loader without an assigned ID
    put<uint32_t>(zp, kCmdLinePtr, static_cast<uint32_t>(kLinuxCmdlineGpa));
    put<uint32_t>(zp, kRamdiskImage, static_cast<uint32_t>(initrd_at));
    put<uint32_t>(zp, kRamdiskSize, static_cast<uint32_t>(initrd.size()));
    std::vector<E820> map{{0, kMpTableGpa, kE820Ram}, {kMpTableGpa, kMpTableEnd - kMpTableGpa, kE820Reserved},
                          {kAcpiGpa, kAcpiEnd - kAcpiGpa, kE820Reserved}, {kHighMemory, low_end - kHighMemory, kE820Ram}};
    for (size_t i = 1; i < mem.regions().size(); ++i) map.push_back({mem.regions()[i].gpa.value, mem.regions()[i].size, kE820Ram});
    if (map.size() > kE820Max) return make_error(Errc::invalid_input, "too many e820 entries");
    zp[kE820Entries] = static_cast<uint8_t>(map.size());
    for (size_t i = 0; i < map.size(); ++i) { // 20-byte entries, packed
        put<uint64_t>(zp, kE820Table + i * 20, map[i].addr);
        put<uint64_t>(zp, kE820Table + i * 20 + 8, map[i].size);
        put<uint32_t>(zp, kE820Table + i * 20 + 16, map[i].type);
    }
    const uint64_t rsdp = US_TRY(write_acpi_tables(mem, vm.vcpu_count(), vm.acpi_devices()));
    if (k.protocol >= 0x020e) put<uint64_t>(zp, kAcpiRsdpAddr, rsdp); // 2.14+; older kernels scan for it
    US_TRYV(mem.write(Gpa{kLinuxZeroPageGpa}, zp));
    US_TRYV(write_page_tables(mem));
    US_TRYV(write_gdt(mem));
    US_TRYV(write_reset_vector(mem));
    US_TRYV(write_mp_table(mem, vm.vcpu_count()));
    US_TRYV(vm.vcpu(0).set_linux_boot_state(k.load_address + kEntry64Offset, kLinuxZeroPageGpa, kLinuxPml4Gpa, kLinuxGdtGpa, 4 * 8));
    return k;
}

} // namespace understudy::hv
