// Boots a Linux bzImage through the 64-bit boot protocol (Documentation/arch/x86/boot.rst),
// as Firecracker, kvmtool and QEMU's microvm do: the protected-mode kernel at its preferred
// address, the zero page with the setup header, an e820 map and the command line, the
// initrd at the top of low RAM, identity-mapped page tables and a flat GDT, and the boot
// vCPU in long mode at the 64-bit entry (load address + 0x200) with RSI = zero page.
// The other vCPUs wait for Linux's INIT/SIPI in the in-kernel LAPIC, so the VM must have
// the PC platform (VmConfig::pc_platform). Every field of the kernel is checked first.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "common/error.hpp"

namespace understudy::hv {

class Vm;

struct BzImage {
    uint16_t protocol = 0;        // boot protocol version, e.g. 0x020f
    uint64_t setup_bytes = 0;     // the real-mode setup code before the kernel, in the file
    uint64_t load_address = 0;    // where the protected-mode kernel goes
    uint32_t init_size = 0;       // memory the kernel needs from load_address to decompress
    uint32_t initrd_addr_max = 0; // highest address the initrd may end at
    uint32_t cmdline_size = 0;    // longest command line, without its NUL
};

// Where the loader puts what it writes below 1 MiB (and the command line above 64 KiB).
inline constexpr uint64_t kLinuxGdtGpa = 0x500;
inline constexpr uint64_t kLinuxZeroPageGpa = 0x7000;
inline constexpr uint64_t kLinuxPml4Gpa = 0x9000;
inline constexpr uint64_t kLinuxCmdlineGpa = 0x20000;
inline constexpr uint64_t kLinuxMaxCmdline = 4095;

// Parses and validates without touching any VM: a bzImage of boot protocol 2.12 or later
// with a 64-bit entry point.
Result<BzImage> parse_bzimage(std::span<const uint8_t> kernel);

// The command line must fit the kernel's limit (and this loader's) and hold no NUL.
Result<void> check_linux_cmdline(const BzImage& k, std::string_view cmdline);

// Loads kernel and initrd (empty: none) with cmdline and points the boot vCPU at the
// kernel. Refuses what does not fit in guest memory, with the sizes in the message.
Result<BzImage> load_linux(Vm& vm, std::span<const uint8_t> kernel, std::span<const uint8_t> initrd, std::string_view cmdline);

} // namespace understudy::hv
