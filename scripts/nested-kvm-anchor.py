#!/usr/bin/env python3
"""Holds one idle KVM VM with one vCPU open inside the nested VM, until it powers off.

KVM flips two of the kernel's static keys: preempt_notifier_key when the first VM is
created or the last one destroyed, and kvm_has_noapic_vcpu for the first or last vCPU
without an in-kernel local APIC (every Understudy vCPU). Each flip rewrites kernel text
(text_poke_bp: an int3 first, then the new instruction). Under QEMU's multi-threaded
TCG, the nested VM's other CPU went on executing the int3 at the key's site in
finish_task_switch after the patch was done, for ever (docs/testing.md, "When the
nested VM fails"). With one VM and one vCPU held from the start, neither key returns to
zero, so the test suites' VMs never make the kernel patch itself."""
import fcntl
import os
import signal
import sys

KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
KVM_CREATE_VCPU = 0xAE41  # _IO(KVMIO, 0x41)

try:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
except OSError as e:
    sys.exit(f"nested-kvm: holding an idle KVM VM failed: {e}")
# The VM exists once this returns: a child keeps it (its descriptors) until the end.
if os.fork() == 0:
    os.setsid()
    while True:
        signal.pause()
print("nested-kvm: an idle KVM VM is held open (scripts/nested-kvm-anchor.py)")
