// The PVH guest image parser (hv/pvh_loader.hpp, parse_pvh_image): an ELF64 file from
// the user. On success the result must satisfy what load_pvh_image relies on when it
// copies segments: each one's file bytes inside the file, no more file bytes than memory
// bytes, no wrap of the guest-physical address space, the entry inside a segment.

#include "fuzz/fuzz_support.hpp"
#include "hv/pvh_loader.hpp"

using namespace understudy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    std::span<const uint8_t> file(data, size);
    auto img = hv::parse_pvh_image(file);
    if (!img) return 0;
    bool entry_loaded = false;
    for (const auto& s : img->segments) {
        if (s.file_offset > size || s.file_size > size - s.file_offset || s.file_size > s.mem_size ||
            s.mem_size == 0 || s.paddr + s.mem_size < s.paddr) {
            fuzz::fail("pvh_loader: accepted a segment that load_pvh_image cannot copy safely");
        }
        entry_loaded |= img->entry >= s.paddr && img->entry - s.paddr < s.mem_size;
    }
    if (img->segments.empty() || !entry_loaded) fuzz::fail("pvh_loader: accepted an image whose entry is not loaded");
    return 0;
}
