// Bad input gets a clear error and no crash: malformed images, ABI mismatches, hostile
// hypercalls from a crafted guest, and guest memory sizes that are not allowed.
#include <catch2/catch.hpp>

#include <elf.h>

#include <cstring>

#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::abi;
using namespace std::chrono;

namespace {

std::vector<uint8_t> image_bytes(const std::string& name) {
    auto b = read_file(test::guest_image(name), 64 << 20);
    REQUIRE(b);
    return *b;
}

// Finds the n_type of a note by name inside the image's PT_NOTE segments; returns its
// descriptor offset in the file.
size_t find_note(const std::vector<uint8_t>& f, const char* name, uint32_t type) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, f.data(), sizeof eh);
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::memcpy(&ph, f.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_NOTE) continue;
        size_t pos = ph.p_offset;
        while (pos + sizeof(Elf64_Nhdr) <= ph.p_offset + ph.p_filesz) {
            Elf64_Nhdr nh;
            std::memcpy(&nh, f.data() + pos, sizeof nh);
            size_t name_off = pos + sizeof nh, desc_off = name_off + ((nh.n_namesz + 3) & ~3u);
            if (nh.n_type == type && std::strcmp(reinterpret_cast<const char*>(f.data() + name_off), name) == 0) return desc_off;
            pos = desc_off + ((nh.n_descsz + 3) & ~3u);
        }
    }
    FAIL("note " << name << " not found");
    return 0;
}

Error load_error(const std::vector<uint8_t>& image) {
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    auto vm = Vm::create(cfg);
    REQUIRE(vm);
    auto r = load_pvh_image(**vm, image, "");
    REQUIRE(!r);
    return r.error();
}

// Boots bad_hypercall with case=NAME, waits for it to stop, and checks how it stopped
// and that the reason holds every one of `says`.
void check_stop(const char* name, VmStopKind kind, std::initializer_list<const char*> says) {
    VmConfig cfg;
    cfg.memory_bytes = 32 * kMiB;
    auto vm = test::boot("bad_hypercall", std::string("case=") + name, cfg);
    REQUIRE(vm->start());
    auto stop = vm->wait_for(test::scaled(seconds(30)));
    REQUIRE(stop.has_value());
    INFO(name << ": " << stop->message);
    CHECK(stop->kind == kind);
    for (const char* s : says) CHECK_THAT(stop->message, Catch::Contains(s));
}

} // namespace

TEST_CASE("malformed images are refused with a clear error", "[bad-input][kvm]") {
    auto good = image_bytes("counter");
    REQUIRE(parse_pvh_image(good));

    SECTION("empty and truncated files") {
        CHECK_THAT(parse_pvh_image({}).error().message, Catch::Contains("past the end"));
        for (size_t cut : {size_t(10), size_t(64), size_t(100), good.size() / 2}) {
            std::vector<uint8_t> b(good.begin(), good.begin() + static_cast<long>(cut));
            auto r = parse_pvh_image(b);
            INFO("cut at " << cut);
            REQUIRE(!r);
            CHECK(r.error().code == Errc::invalid_input);
        }
    }
    SECTION("not ELF, wrong class, wrong machine") {
        auto b = good;
        b[1] = 'X';
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("not an ELF file"));
        b = good;
        b[EI_CLASS] = ELFCLASS32;
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("64-bit"));
        b = good;
        b[18] = 0x28; // e_machine = ARM
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("x86-64"));
    }
    SECTION("program headers or segments pointing outside the file") {
        auto b = good;
        Elf64_Ehdr eh;
        std::memcpy(&eh, b.data(), sizeof eh);
        eh.e_phoff = b.size() - 8;
        std::memcpy(b.data(), &eh, sizeof eh);
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("past the end"));
        b = good;
        std::memcpy(&eh, b.data(), sizeof eh);
        for (unsigned i = 0; i < eh.e_phnum; ++i) {
            Elf64_Phdr ph;
            std::memcpy(&ph, b.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
            if (ph.p_type != PT_LOAD) continue;
            ph.p_filesz = ~0ull - 5;
            std::memcpy(b.data() + eh.e_phoff + i * sizeof ph, &ph, sizeof ph);
            break;
        }
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("past the end"));
    }
    SECTION("a segment that does not fit in guest RAM") {
        auto b = good;
        Elf64_Ehdr eh;
        std::memcpy(&eh, b.data(), sizeof eh);
        for (unsigned i = 0; i < eh.e_phnum; ++i) {
            Elf64_Phdr ph;
            std::memcpy(&ph, b.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
            if (ph.p_type != PT_LOAD) continue;
            ph.p_memsz = 1ull << 40;
            std::memcpy(b.data() + eh.e_phoff + i * sizeof ph, &ph, sizeof ph);
            break;
        }
        CHECK_THAT(load_error(b).message, Catch::Contains("does not fit in guest RAM"));
    }
    SECTION("a missing PVH note") {
        auto b = good;
        size_t desc = find_note(b, "Xen", US_XEN_ELFNOTE_PHYS32_ENTRY);
        // The note header {namesz, descsz, type} precedes the name "Xen\0" (4 bytes).
        Elf64_Nhdr nh;
        size_t hdr = desc - 4 - sizeof nh;
        std::memcpy(&nh, b.data() + hdr, sizeof nh);
        nh.n_type = 99;
        std::memcpy(b.data() + hdr, &nh, sizeof nh);
        CHECK_THAT(parse_pvh_image(b).error().message, Catch::Contains("no PVH entry note"));
    }
    SECTION("an ABI version mismatch, and a missing ABI note") {
        auto b = good;
        size_t desc = find_note(b, US_ELFNOTE_NAME, US_ELFNOTE_ABI_VERSION);
        uint32_t v = UNDERSTUDY_ABI_VERSION + 1;
        std::memcpy(b.data() + desc, &v, 4);
        auto e = load_error(b);
        CHECK_THAT(e.message, Catch::Contains("guest ABI version " + std::to_string(v)));
        CHECK_THAT(e.message, Catch::Contains("speaks version " + std::to_string(UNDERSTUDY_ABI_VERSION)));
        // Rename the note so that it is not found at all.
        b = good;
        desc = find_note(b, US_ELFNOTE_NAME, US_ELFNOTE_ABI_VERSION);
        size_t name = desc - 12; // "Understudy\0" padded to 12
        b[name] = 'X';
        CHECK_THAT(load_error(b).message, Catch::Contains("no Understudy ABI note"));
    }
    SECTION("an over-long command line") {
        VmConfig cfg;
        cfg.memory_bytes = 32 * kMiB;
        auto vm = Vm::create(cfg);
        REQUIRE(vm);
        auto r = load_pvh_image(**vm, good, std::string(5000, 'x'));
        REQUIRE(!r);
        CHECK_THAT(r.error().message, Catch::Contains("command line"));
    }
}

TEST_CASE("hostile hypercalls stop the guest with a reason; the VMM survives", "[bad-input][kvm]") {
    // Each case: what must happen (guest stopped with a fault mentioning `expect`, or
    // the access absorbed and the guest continuing to exit(3)).
    struct Case {
        const char* name;
        bool stops;
        const char* expect;
    };
    const Case cases[] = {
        {"console_gpa_oob", true, "not guest RAM"},
        {"console_gpa_straddle", true, "not guest RAM"},
        {"console_len_4g1", true, "exceeds"},
        {"console_len_max", true, "exceeds"},
        {"console_len_over", true, "exceeds"},
        {"console_wrap", true, ""},
        {"args_oob", true, "not guest RAM"},
        {"args_4g_edge", true, "not guest RAM"},
        {"args_misaligned", true, "aligned"},
        {"time_args_oob", true, "not guest RAM"},
        {"abort_file_oob", true, "not guest RAM"},
        {"abort_len_max", true, "exceeds"},
        {"report_keys", true, "report key 64 is not below 64"},
        {"hc_undefined", true, "not defined"},
        {"port_outside", false, ""},
        {"port_read_outside", false, ""},
        {"mmio_read", false, ""},
        {"mmio_write", false, ""},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.name) {
            VmConfig cfg;
            cfg.memory_bytes = 32 * kMiB;
            auto console = std::make_shared<std::string>();
            auto vm = test::boot("bad_hypercall", std::string("case=") + c.name, cfg, console);
            REQUIRE(vm->start());
            auto stop = vm->wait_for(test::scaled(seconds(30)));
            REQUIRE(stop.has_value());
            INFO(stop->message << "\nconsole:\n" << *console);
            if (c.stops) {
                CHECK(stop->kind == VmStopKind::guest_fault);
                CHECK_THAT(stop->message, Catch::Contains(c.expect));
                CHECK(console->find("survived") == std::string::npos);
            } else {
                CHECK(stop->kind == VmStopKind::exited);
                CHECK(stop->status == 3);
                CHECK(vm->pio().unclaimed_accesses() + vm->mmio().unclaimed_accesses() >= 1);
            }
        }
    }
}

TEST_CASE("guest CPU faults and assertion failures are reported with their place", "[bad-input][kvm]") {
    check_stop("fault_ud2", VmStopKind::aborted, {"exception 6"});
    check_stop("fault_pf", VmStopKind::aborted, {"exception 14"});
    check_stop("assert_fail", VmStopKind::aborted, {"guest/images/bad_hypercall.c:"});
}

TEST_CASE("faults the guest cannot report itself stop it with the exception and the vCPU state", "[bad-input][kvm]") {
    // A fault while one is being reported: the runtime's FAULT hypercall names it.
    check_stop("fault_nested", VmStopKind::guest_fault,
               {"CPU exception 6 (#UD) at CPL3 that the guest could not report itself", "fault depth 2", "vCPU state:"});
    // A #PF whose frame cannot be pushed (the fault stack unmapped): the #DF runs on
    // its own stack and names itself, rather than the vCPU triple-faulting unexplained.
    check_stop("double_fault", VmStopKind::guest_fault,
               {"CPU exception 8 (#DF)", "that the guest could not report itself", "fault depth 0"});
    // A bare triple fault: KVM_EXIT_SHUTDOWN, with whatever KVM still has of the vCPU.
    check_stop("triple_fault", VmStopKind::guest_fault, {"triple fault", "rip=", "idt base="});
}
