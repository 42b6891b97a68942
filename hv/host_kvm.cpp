#include "hv/host_kvm.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>

namespace understudy::hv {

namespace {

std::optional<std::string> read_text(const std::string& path) {
    std::ifstream f(path);
    if (!f) return std::nullopt;
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

bool module_loaded(const std::string& name) { return ::access(("/sys/module/" + name).c_str(), F_OK) == 0; }

} // namespace

bool HostKvm::emulated_cpu() const { return cpu.find("QEMU TCG") != std::string::npos; }

std::string cpu_model_from_cpuinfo(std::string_view cpuinfo) {
    for (size_t at = 0; at < cpuinfo.size();) {
        size_t end = cpuinfo.find('\n', at);
        if (end == std::string_view::npos) end = cpuinfo.size();
        std::string_view line = cpuinfo.substr(at, end - at);
        at = end + 1;
        if (!line.starts_with("model name")) continue;
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        std::string_view v = line.substr(colon + 1);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\r')) v.remove_suffix(1);
        if (!v.empty()) return std::string(v);
    }
    return "unknown";
}

std::optional<bool> parse_module_flag(std::string_view param) {
    if (param.ends_with('\n')) param.remove_suffix(1);
    if (param == "Y" || param == "1") return true;
    if (param == "N" || param == "0") return false;
    return std::nullopt;
}

HostKvm probe_host_kvm() {
    HostKvm h;
    // A vendor module can be loaded without offering /dev/kvm (kvm_pvm in a kernel that is
    // itself a PVM guest does not bind): that host has no KVM.
    if (::access("/dev/kvm", F_OK) != 0) h.backend = "none";
    else if (module_loaded("kvm_pvm")) h.backend = "pvm";
    else if (module_loaded("kvm_intel")) h.backend = "intel";
    else if (module_loaded("kvm_amd")) h.backend = "amd";
    if (auto info = read_text("/proc/cpuinfo")) h.cpu = cpu_model_from_cpuinfo(*info);
    const char* param = h.backend == "amd" ? "/sys/module/kvm_amd/parameters/npt"
                        : h.backend == "intel" ? "/sys/module/kvm_intel/parameters/ept"
                                               : nullptr;
    if (param)
        if (auto text = read_text(param)) h.nested_paging = parse_module_flag(*text);
    return h;
}

const HostKvm& this_host_kvm() {
    static const HostKvm host = probe_host_kvm();
    return host;
}

std::optional<std::string> host_kvm_hazard(const HostKvm& h) {
    if (!h.emulated_cpu() || h.nested_paging != true) return std::nullopt;
    const std::string option = h.backend == "intel" ? "kvm_intel ept=0" : "kvm_amd npt=0";
    return "this host's KVM runs inside QEMU's emulator (" + h.cpu + ") with nested paging on: there, guests under load "
           "were seen to triple-fault and to stop answering, an emulator fault (docs/testing.md, \"Nested paging under "
           "QEMU's emulator\"); load the module with " + option + " (scripts/nested-kvm.sh does)";
}

} // namespace understudy::hv
