"""Where and how a figure was measured, for the Python benchmarks' JSON: the same fields
as bench_common.hpp's add_provenance() (commit, command, host, kernel, CPU, CPU count,
KVM backend). Standard library only."""
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance():
    try:
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The module behind /dev/kvm; a module loaded without /dev/kvm (kvm_pvm in a PVM guest) is no KVM.
    kvm = "none" if not os.path.exists("/dev/kvm") else next(
        (name for module, name in (("kvm_pvm", "pvm"), ("kvm_intel", "intel"), ("kvm_amd", "amd"))
         if os.path.exists("/sys/module/" + module)), "none")
    return {"commit": commit, "command": " ".join(sys.argv), "host": platform.node(), "kernel": platform.release(),
            "cpu": cpu, "cpus": os.cpu_count(), "kvm": kvm}
