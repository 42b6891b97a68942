// The same guest images under QEMU microvm (the peer bench/vs_qemu compares against):
// churn with several vCPUs must run unchanged there, where the guest runtime starts the
// application processors itself (INIT-SIPI-SIPI, guest/runtime/smp.c) because QEMU's
// PVH boot starts only the boot vCPU. Checked from the serial console: every vCPU
// started, reports progress every second, and the guest exits cleanly.
// Exits 77 (skipped) where qemu-system-x86_64 or /dev/kvm is missing.
#include <catch2/catch.hpp>

#include "tests/support/catch_run.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <string>

namespace {

const char* const kQemu = "qemu-system-x86_64";

std::string churn_image() { return std::string(US_GUEST_DIR) + "/churn.elf"; }

bool qemu_available() { return std::system("command -v qemu-system-x86_64 >/dev/null 2>&1") == 0; }

// bench/vs_qemu's accelerator where the machine has one; TCG otherwise.
const char* accelerator() { return ::access("/dev/kvm", R_OK | W_OK) == 0 ? "kvm" : "tcg"; }

struct QemuRun {
    int status = -1;
    std::string console; // serial output and QEMU's own messages
};

// Boots `image` under QEMU microvm with the flags bench/vs_qemu uses; `timeout` s at most.
QemuRun boot_in_qemu(const std::string& image, unsigned vcpus, const std::string& cmdline, unsigned timeout) {
    std::string cmd = "timeout " + std::to_string(timeout) + " " + kQemu +
                      " -M microvm,x-option-roms=off,rtc=off -accel " + accelerator() +
                      " -cpu qemu64 -nographic -no-reboot"
                      " -m 256M -smp " + std::to_string(vcpus) + " -kernel '" + image + "' -append '" + cmdline +
                      "' </dev/null 2>&1";
    QemuRun r;
    FILE* f = ::popen(cmd.c_str(), "r");
    REQUIRE(f != nullptr);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
        r.console.append(buf, n);
    int st = ::pclose(f);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

struct VcpuSeen {
    unsigned apic = ~0u;
    std::vector<unsigned long> iterations; // from the once-a-second progress lines
    std::vector<unsigned long> rates;
};

std::map<unsigned, VcpuSeen> parse_churn(const std::string& console) {
    std::map<unsigned, VcpuSeen> seen;
    static const std::regex start(R"(churn: vcpu (\d+) \(apic (\d+)\) ws=)");
    static const std::regex progress(R"(churn: vcpu (\d+) iteration (\d+) \((\d+) pages/s\))");
    for (std::sregex_iterator it(console.begin(), console.end(), start), end; it != end; ++it)
        seen[std::stoul((*it)[1])].apic = std::stoul((*it)[2]);
    for (std::sregex_iterator it(console.begin(), console.end(), progress), end; it != end; ++it) {
        auto& v = seen[std::stoul((*it)[1])];
        v.iterations.push_back(std::stoul((*it)[2]));
        v.rates.push_back(std::stoul((*it)[3]));
    }
    return seen;
}

void check_every_vcpu_progressed(unsigned vcpus) {
    const unsigned pages = 500, rate = 1000, seconds = 4;
    QemuRun r = boot_in_qemu(churn_image(), vcpus,
                             "pages=" + std::to_string(pages) + " rate=" + std::to_string(rate) +
                                 " seconds=" + std::to_string(seconds),
                             60);
    INFO("QEMU -smp " << vcpus << " exited " << r.status << "; console:\n" << r.console);
    REQUIRE(r.status == 0);
    CHECK(r.console.find("no Understudy VMM") != std::string::npos);
    CHECK(r.console.find("guest: exit(0)") != std::string::npos);
    CHECK(r.console.find("ABORT") == std::string::npos);
    if (vcpus > 1)
        CHECK(r.console.find("smp: " + std::to_string(vcpus) + " of " + std::to_string(vcpus) +
                             " vCPUs started by INIT-SIPI-SIPI") != std::string::npos);
    else
        CHECK(r.console.find("smp:") == std::string::npos); // one vCPU: the LAPIC is left alone

    auto seen = parse_churn(r.console);
    REQUIRE(seen.size() == vcpus);
    std::set<unsigned> apics;
    for (unsigned i = 0; i < vcpus; i++) {
        INFO("vcpu " << i);
        REQUIRE(seen.count(i) == 1);
        const VcpuSeen& v = seen[i];
        apics.insert(v.apic);
        // Started, then at least two once-a-second reports: it kept running, at its rate.
        REQUIRE(v.iterations.size() >= 2);
        CHECK(v.iterations.back() > v.iterations.front());
        for (unsigned long x : v.rates) // paced, not exact: other work shares these cores
            CHECK(x > 0);
    }
    CHECK(apics.size() == vcpus); // distinct CPUs, not one vCPU running every working set
}

} // namespace

TEST_CASE("churn runs under QEMU microvm with one vCPU", "[qemu]") { check_every_vcpu_progressed(1); }

TEST_CASE("churn runs under QEMU microvm with two vCPUs, every one making progress", "[qemu]") {
    check_every_vcpu_progressed(2);
}

TEST_CASE("churn runs under QEMU microvm with three vCPUs (more vCPUs than host cores)", "[qemu]") {
    check_every_vcpu_progressed(3);
}

int main(int argc, char** argv) {
    if (!qemu_available()) {
        std::printf("SKIPPED: qemu-system-x86_64 is not installed (scripts/install-deps.sh)\n");
        return 77;
    }
    std::printf("QEMU accelerator: %s%s\n", accelerator(),
                std::strcmp(accelerator(), "tcg") == 0 ? " (no usable /dev/kvm: QEMU's emulator runs the guest)" : "");
    return understudy::test::run_catch(argc, argv);
}
