#include "hv/pvh_loader.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fmt/format.h>

#include "common/unique_fd.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/vm.hpp"

namespace understudy::hv {

namespace {

// Xen's PVH start-of-day structures (public ABI, version 1).
struct HvmStartInfo {
    uint32_t magic;          // 0
    uint32_t version;        // 4
    uint32_t flags;          // 8
    uint32_t nr_modules;     // 12
    uint64_t modlist_paddr;  // 16
    uint64_t cmdline_paddr;  // 24
    uint64_t rsdp_paddr;     // 32
    uint64_t memmap_paddr;   // 40
    uint32_t memmap_entries; // 48
    uint32_t reserved;       // 52
};
static_assert(std::is_standard_layout_v<HvmStartInfo> && sizeof(HvmStartInfo) == 56);

struct HvmMemmapEntry {
    uint64_t addr;     // 0
    uint64_t size;     // 8
    uint32_t type;     // 16: 1 = RAM
    uint32_t reserved; // 20
};
static_assert(std::is_standard_layout_v<HvmMemmapEntry> && sizeof(HvmMemmapEntry) == 24);

constexpr uint32_t kHvmStartMagic = 0x336ec578;

Error bad(const std::string& why) { return make_error(Errc::invalid_input, "guest image: " + why); }

template <class T>
Result<T> read_at(std::span<const uint8_t> f, uint64_t off) {
    if (off > f.size() || sizeof(T) > f.size() - off) return bad("structure at offset " + std::to_string(off) + " runs past the end of the file");
    T v;
    std::memcpy(&v, f.data() + off, sizeof v);
    return v;
}

uint64_t align4(uint64_t v) { return (v + 3) & ~3ull; }

// Walks one PT_NOTE segment, picking out the PVH entry and the Understudy ABI note.
Result<void> parse_notes(std::span<const uint8_t> notes, PvhImage& img, bool& have_entry) {
    uint64_t pos = 0;
    while (pos + sizeof(Elf64_Nhdr) <= notes.size()) {
        auto nh = US_TRY(read_at<Elf64_Nhdr>(notes, pos));
        uint64_t name_off = pos + sizeof(Elf64_Nhdr);
        uint64_t desc_off = name_off + align4(nh.n_namesz);
        uint64_t next = desc_off + align4(nh.n_descsz);
        if (nh.n_namesz > 64 || nh.n_descsz > 4096 || next > notes.size()) return bad("malformed ELF note");
        std::string_view name(reinterpret_cast<const char*>(notes.data() + name_off), nh.n_namesz ? nh.n_namesz - 1 : 0);
        auto desc = notes.subspan(desc_off, nh.n_descsz);
        if (name == "Xen" && nh.n_type == US_XEN_ELFNOTE_PHYS32_ENTRY) {
            if (desc.size() != 4 && desc.size() != 8) return bad("PVH entry note has a " + std::to_string(desc.size()) + "-byte value");
            uint64_t entry = 0;
            std::memcpy(&entry, desc.data(), desc.size());
            if (entry > 0xffffffffu) return bad("PVH entry point is above 4 GiB");
            img.entry = static_cast<uint32_t>(entry);
            have_entry = true;
        } else if (name == US_ELFNOTE_NAME && nh.n_type == US_ELFNOTE_ABI_VERSION) {
            if (desc.size() != 4) return bad("Understudy ABI note has a " + std::to_string(desc.size()) + "-byte value");
            std::memcpy(&img.abi_version, desc.data(), 4);
            if (img.abi_version == 0) return bad("Understudy ABI note says version 0");
        }
        pos = next;
    }
    return {};
}

} // namespace

Result<PvhImage> parse_pvh_image(std::span<const uint8_t> f) {
    auto eh = US_TRY(read_at<Elf64_Ehdr>(f, 0));
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return bad("not an ELF file");
    if (eh.e_ident[EI_CLASS] != ELFCLASS64) return bad("not a 64-bit ELF file");
    if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return bad("not little-endian");
    if (eh.e_machine != EM_X86_64) return bad("not an x86-64 image");
    if (eh.e_type != ET_EXEC) return bad("not an executable (ET_EXEC) image");
    if (eh.e_phentsize != sizeof(Elf64_Phdr)) return bad("unexpected program header size");
    if (eh.e_phnum == 0 || eh.e_phnum > 64) return bad("has " + std::to_string(eh.e_phnum) + " program headers");
    if (eh.e_phoff > f.size() || uint64_t(eh.e_phnum) * sizeof(Elf64_Phdr) > f.size() - eh.e_phoff)
        return bad("program headers run past the end of the file");

    PvhImage img;
    bool have_entry = false;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        auto ph = US_TRY(read_at<Elf64_Phdr>(f, eh.e_phoff + i * sizeof(Elf64_Phdr)));
        if (ph.p_type != PT_LOAD && ph.p_type != PT_NOTE) continue;
        if (ph.p_offset > f.size() || ph.p_filesz > f.size() - ph.p_offset)
            return bad("segment " + std::to_string(i) + " runs past the end of the file");
        if (ph.p_type == PT_NOTE) {
            US_TRYV(parse_notes(f.subspan(ph.p_offset, ph.p_filesz), img, have_entry));
            continue;
        }
        if (ph.p_filesz > ph.p_memsz) return bad("segment " + std::to_string(i) + " has more file bytes than memory bytes");
        if (ph.p_paddr + ph.p_memsz < ph.p_paddr) return bad("segment " + std::to_string(i) + " wraps the address space");
        if (ph.p_memsz == 0) continue;
        img.segments.push_back({ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz});
    }
    if (!have_entry) return bad("no PVH entry note (Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY); is this a PVH image?");
    if (img.segments.empty()) return bad("no loadable segments");
    bool entry_loaded = false;
    for (const auto& s : img.segments) entry_loaded |= img.entry >= s.paddr && img.entry < s.paddr + s.mem_size;
    if (!entry_loaded) return bad("the PVH entry point lies outside every loadable segment");
    return img;
}

Result<PvhImage> load_pvh_image(Vm& vm, std::span<const uint8_t> file, std::string_view cmdline) {
    auto img = US_TRY(parse_pvh_image(file));
    if (img.abi_version == 0)
        return bad("carries no Understudy ABI note; rebuild it against guest/abi/understudy_abi.h");
    if (img.abi_version != UNDERSTUDY_ABI_VERSION)
        return bad("was built for guest ABI version " + std::to_string(img.abi_version) + ", this VMM speaks version " +
                   std::to_string(UNDERSTUDY_ABI_VERSION));
    if (cmdline.size() > kMaxCmdline)
        return make_error(Errc::invalid_input, "guest command line is " + std::to_string(cmdline.size()) + " bytes; the limit is " +
                                                   std::to_string(kMaxCmdline));

    auto& mem = vm.memory();
    for (const auto& s : img.segments) {
        if (s.paddr < kBootInfoEnd && s.paddr + s.mem_size > kStartInfoGpa)
            return bad("a segment overlaps the boot information area below 0x3000");
        if (!mem.contains(Gpa{s.paddr}, s.mem_size))
            return bad(fmt::format("segment at {:#x} ({} bytes) does not fit in guest RAM", s.paddr, s.mem_size));
        US_TRYV(mem.write(Gpa{s.paddr}, file.subspan(s.file_offset, s.file_size)));
        std::vector<uint8_t> zeros(s.mem_size - s.file_size, 0);
        US_TRYV(mem.write(Gpa{s.paddr + s.file_size}, zeros));
    }

    std::vector<uint8_t> cmd(cmdline.begin(), cmdline.end());
    cmd.push_back(0);
    US_TRYV(mem.write(Gpa{kCmdlineGpa}, cmd));
    std::vector<HvmMemmapEntry> map;
    for (const auto& r : mem.regions()) map.push_back({r.gpa.value, r.size, 1, 0});
    US_TRYV(mem.write(Gpa{kMemmapGpa}, {reinterpret_cast<const uint8_t*>(map.data()), map.size() * sizeof(HvmMemmapEntry)}));
    HvmStartInfo si{};
    si.magic = kHvmStartMagic;
    si.version = 1;
    si.cmdline_paddr = kCmdlineGpa;
    si.memmap_paddr = kMemmapGpa;
    si.memmap_entries = static_cast<uint32_t>(map.size());
    US_TRYV(mem.write_obj(Gpa{kStartInfoGpa}, si));
    static_assert(kMemmapGpa + 4 * sizeof(HvmMemmapEntry) <= kCmdlineGpa);

    for (unsigned i = 0; i < vm.vcpu_count(); ++i) US_TRYV(vm.vcpu(i).set_pvh_boot_state(img.entry, kStartInfoGpa));
    return img;
}

Result<std::vector<uint8_t>> read_file(const std::string& path, uint64_t max_bytes) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0) return sys_error("stat " + path);
    if (!S_ISREG(st.st_mode)) return make_error(Errc::invalid_input, path + " is not a regular file");
    if (static_cast<uint64_t>(st.st_size) > max_bytes)
        return make_error(Errc::invalid_input, path + " is larger than " + std::to_string(max_bytes) + " bytes");
    std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < buf.size()) {
        ssize_t n = ::read(fd.get(), buf.data() + done, buf.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("reading " + path);
        if (n == 0) return make_error(Errc::invalid_input, path + " shrank while being read");
        done += static_cast<size_t>(n);
    }
    return buf;
}

} // namespace understudy::hv
