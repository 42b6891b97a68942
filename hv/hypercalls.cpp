#include "hv/hypercalls.hpp"

#include <fmt/format.h>

#include <cstring>
#include <iterator>

#include "guest/abi/understudy_abi.h"
#include "hv/fault_report.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

using namespace understudy::abi;

static_assert(US_HC_PORT_COUNT <= 64);

Result<std::unique_ptr<Hypercalls>> Hypercalls::install(Vm& vm) {
    std::unique_ptr<Hypercalls> h(new Hypercalls(vm));
    Hypercalls* self = h.get();
    US_TRYV(vm.pio().add(US_HC_PORT_BASE, US_HC_PORT_COUNT, "hypercalls", [self](IoAccess& a) { return self->on_port(a); }));
    US_TRYV(h->add_core());
    return h;
}

Result<void> Hypercalls::add(unsigned nr, HypercallHandler h) {
    if (nr == US_HC_PROBE || nr >= US_HC_PORT_COUNT)
        return make_error(Errc::invalid_input, "hypercall number " + std::to_string(nr) + " is out of range");
    std::lock_guard lock(mu_);
    if (handlers_[nr]) return make_error(Errc::invalid_input, "hypercall " + std::to_string(nr) + " is taken");
    handlers_[nr] = std::move(h);
    return {};
}

Result<void> Hypercalls::on_port(IoAccess& a) {
    unsigned nr = static_cast<unsigned>(a.offset);
    if (!a.is_write) {
        uint32_t v = (nr == US_HC_PROBE && a.data.size() == 4) ? US_ABI_PROBE_MAGIC : 0xffffffffu;
        std::memcpy(a.data.data(), &v, a.data.size());
        return {};
    }
    if (a.data.size() != 4)
        return make_error(Errc::guest_fault, "hypercall " + std::to_string(nr) + " made with a " + std::to_string(a.data.size()) +
                                                 "-byte write; the ABI uses 32-bit writes");
    uint32_t gpa;
    std::memcpy(&gpa, a.data.data(), 4);
    if (gpa % 8 != 0)
        return make_error(Errc::guest_fault, fmt::format("hypercall {} arguments at {:#x} are not 8-byte aligned", nr, gpa));
    HypercallHandler h;
    {
        std::lock_guard lock(mu_);
        h = handlers_[nr];
    }
    if (!h) return make_error(Errc::guest_fault, "hypercall " + std::to_string(nr) + " is not defined");
    if (!a.vcpu) return make_error(Errc::state, "hypercall " + std::to_string(nr) + " arrived without a vCPU");
    if (auto r = h(*a.vcpu, Gpa{gpa}); !r) return std::move(r.error()).wrap("hypercall " + std::to_string(nr));
    return {};
}

namespace {

// A guest string for an abort report: bounded, and only printable characters survive.
Result<std::string> guest_string(const GuestMemory& mem, uint64_t gpa, uint64_t len) {
    if (len > US_ABORT_STR_MAX) return make_error(Errc::guest_fault, "string length " + std::to_string(len) + " exceeds " + std::to_string(US_ABORT_STR_MAX));
    auto s = US_TRY(mem.span(Gpa{gpa}, len));
    std::string out;
    for (uint8_t c : s) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    return out;
}

const char* exception_name(uint64_t vector) {
    static const char* const names[] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF (coprocessor)",
                                        "#TS", "#NP", "#SS", "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM",
                                        "#VE", "#CP"};
    return vector < std::size(names) ? names[vector] : "exception";
}

} // namespace

std::string describe_guest_fault(unsigned vcpu, const us_hc_fault& f) {
    return fmt::format("vCPU {}: CPU exception {} ({}) at CPL{} that the guest could not report itself: rip={:#x} "
                       "cs={:#x} rflags={:#x} rsp={:#x} ss={:#x} error={:#x} cr2={:#x}, fault depth {}",
                       vcpu, f.vector, exception_name(f.vector), f.cs & 3, f.rip, f.cs, f.rflags, f.rsp, f.ss, f.error,
                       f.cr2, f.depth);
}

Result<void> Hypercalls::add_core() {
    Vm& vm = vm_;
    US_TRYV(add(US_HC_CONSOLE, [&vm](Vcpu&, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_console>(args));
        if (a.len > US_CONSOLE_MAX)
            return make_error(Errc::guest_fault, "console write of " + std::to_string(a.len) + " bytes exceeds " +
                                                     std::to_string(US_CONSOLE_MAX));
        auto bytes = US_TRY(vm.memory().span(Gpa{a.data_gpa}, a.len));
        vm.console_write({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
        return {};
    }));
    US_TRYV(add(US_HC_TIME, [&vm](Vcpu&, Gpa args) -> Result<void> {
        US_TRYV(vm.memory().read_obj<us_hc_time>(args)); // checks the range before writing
        return vm.memory().write_obj(args, us_hc_time{vm.clock().now_ns()});
    }));
    US_TRYV(add(US_HC_HALT, [&vm](Vcpu& v, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_halt>(args));
        a.reason = vm.halt(v, a.deadline_ns);
        return vm.memory().write_obj(args, a);
    }));
    US_TRYV(add(US_HC_EXIT, [&vm](Vcpu& v, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_exit>(args));
        vm.stop_with({VmStopKind::exited, a.status, "the guest exited with status " + std::to_string(a.status) + " (vCPU " + std::to_string(v.index()) + ")"});
        return {};
    }));
    US_TRYV(add(US_HC_ABORT, [&vm](Vcpu& v, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_abort>(args));
        auto file = US_TRY(guest_string(vm.memory(), a.file_gpa, a.file_len));
        auto msg = US_TRY(guest_string(vm.memory(), a.msg_gpa, a.msg_len));
        vm.stop_with({VmStopKind::aborted, a.line,
                      "guest assertion failed on vCPU " + std::to_string(v.index()) + " at " + file + ":" + std::to_string(a.line) + ": " + msg});
        return {};
    }));
    US_TRYV(add(US_HC_FAULT, [&vm](Vcpu& v, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_fault>(args));
        vm.stop_with({VmStopKind::guest_fault, a.vector, describe_guest_fault(v.index(), a) + "; vCPU state:" + describe_fault_state(v.fd())});
        return {};
    }));
    US_TRYV(add(US_HC_REPORT, [&vm](Vcpu& v, Gpa args) -> Result<void> {
        auto a = US_TRY(vm.memory().read_obj<us_hc_report>(args));
        if (a.key >= US_REPORT_KEY_LIMIT)
            return make_error(Errc::guest_fault, "report key " + std::to_string(a.key) + " is not below " + std::to_string(US_REPORT_KEY_LIMIT));
        vm.publish_report(v.index(), a.key, a.value);
        return {};
    }));
    return {};
}

} // namespace understudy::hv
