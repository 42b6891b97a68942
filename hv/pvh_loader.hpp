// Loads a PVH guest image (ELF64 with Xen's PHYS32_ENTRY note, the boot convention of
// Firecracker, Cloud Hypervisor and QEMU microvm) and builds its hvm_start_info with the
// memory map and command line. Every field of the file is checked before use.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace understudy::hv {

class Vm;

struct PvhSegment {
    uint64_t paddr;
    uint64_t file_offset;
    uint64_t file_size;
    uint64_t mem_size;
};

struct PvhImage {
    uint32_t entry = 0;
    uint32_t abi_version = 0; // 0 when the image has no Understudy note
    std::vector<PvhSegment> segments;
};

// Where the VMM puts boot information in guest memory (below 1 MiB, under the image).
inline constexpr uint64_t kStartInfoGpa = 0x1000;
inline constexpr uint64_t kMemmapGpa = 0x1040;
inline constexpr uint64_t kCmdlineGpa = 0x2000;
inline constexpr uint64_t kBootInfoEnd = 0x3000;
inline constexpr size_t kMaxCmdline = 4095;

// Parses and validates without touching any VM.
Result<PvhImage> parse_pvh_image(std::span<const uint8_t> file);

// Parses, checks the ABI version, copies the segments, writes start_info, and points
// every vCPU at the entry.
Result<PvhImage> load_pvh_image(Vm& vm, std::span<const uint8_t> file, std::string_view cmdline);

Result<std::vector<uint8_t>> read_file(const std::string& path, uint64_t max_bytes);

} // namespace understudy::hv
