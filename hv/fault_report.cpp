#include "hv/fault_report.hpp"

#include <sys/ioctl.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace understudy::hv {

namespace {

std::string segment(const char* name, const kvm_segment& s) {
    return fmt::format("{}={:#06x} base={:#x} limit={:#x} type={:#x} dpl={} p={} l={} db={}", name, s.selector, s.base,
                       s.limit, s.type, s.dpl, s.present, s.l, s.db);
}

} // namespace

std::string format_fault_state(const kvm_regs& r, const kvm_sregs& s, const kvm_vcpu_events& e) {
    std::string out;
    out += fmt::format("\n  rip={:#018x} rsp={:#018x} rbp={:#018x} rflags={:#x}", r.rip, r.rsp, r.rbp, r.rflags);
    out += fmt::format("\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}", r.rax, r.rbx, r.rcx, r.rdx,
                       r.rsi, r.rdi);
    out += fmt::format("\n  r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}", r.r8, r.r9,
                       r.r10, r.r11, r.r12, r.r13, r.r14, r.r15);
    out += fmt::format("\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} apic_base={:#x}", s.cr0, s.cr2, s.cr3,
                       s.cr4, s.efer, s.apic_base);
    out += "\n  " + segment("cs", s.cs) + "\n  " + segment("ss", s.ss) + "\n  " + segment("ds", s.ds);
    out += "\n  " + segment("tr", s.tr);
    out += fmt::format("\n  gdt base={:#x} limit={:#x}  idt base={:#x} limit={:#x}", s.gdt.base, s.gdt.limit,
                       s.idt.base, s.idt.limit);
    out += fmt::format("\n  events: exception injected={} nr={} has_error={} error={:#x} pending={}; interrupt "
                       "injected={} nr={}; nmi injected={} pending={}; shadow={}",
                       e.exception.injected, e.exception.nr, e.exception.has_error_code, e.exception.error_code,
                       e.exception.pending, e.interrupt.injected, e.interrupt.nr, e.nmi.injected, e.nmi.pending,
                       e.interrupt.shadow);
    // KVM on AMD reinitialises the VMCB at a shutdown, so a triple fault reads as the reset
    // state; what survives is the event that was being delivered.
    if (r.rip == 0xfff0 && s.cs.base == 0xffff0000 && !(s.cr0 & 1))
        out += "\n  (these registers are the CPU's reset state, which KVM on AMD loads at a shutdown; the events line "
               "holds what the CPU was delivering when it gave up)";
    return out;
}

std::string describe_fault_state(int vcpu_fd) {
    kvm_regs r{};
    kvm_sregs s{};
    kvm_vcpu_events e{};
    const char* failed = nullptr;
    if (::ioctl(vcpu_fd, KVM_GET_REGS, &r) < 0) failed = "KVM_GET_REGS";
    else if (::ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0) failed = "KVM_GET_SREGS";
    else if (::ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &e) < 0) failed = "KVM_GET_VCPU_EVENTS";
    if (failed) return fmt::format("\n  (registers unreadable: {}: {})", failed, std::strerror(errno));
    return format_fault_state(r, s, e);
}

} // namespace understudy::hv
