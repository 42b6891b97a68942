#!/usr/bin/env python3
"""Reads what a hung nested VM's CPUs are doing, through QEMU's monitor, for
scripts/nested-kvm.sh: `info registers -a` (every CPU), each RIP also named as a symbol
of the VM's kernel (its /proc/kallsyms as the runner saved it, "ADDRESS NAME" lines; the
runner boots it with nokaslr), then ends QEMU.

  nested-kvm-monitor.py MONITOR_SOCKET KALLSYMS
"""
import bisect
import re
import socket
import sys
import time


def ask(sock, command, wait=1.0):
    sock.sendall(command.encode() + b"\n")
    out, end = b"", time.monotonic() + wait
    sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        except socket.timeout:
            pass
    return out.decode(errors="replace")


def symbols(path):
    addrs, names = [], []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    addrs.append(int(parts[0], 16))
                    names.append(parts[1])
    except OSError:
        pass
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order]


def main():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    ask(sock, "", 0.5)  # the banner
    addrs, names = symbols(sys.argv[2])
    # Twice, a second apart: a CPU whose RIP moves within a loop is spinning, not stuck.
    for round_ in (1, 2):
        text = ask(sock, "info registers -a", 2.0)
        print(f"nested-kvm: the VM's CPUs (look {round_} of 2):")
        for m in re.finditer(r"RIP=([0-9a-f]{16})", text):
            rip = int(m.group(1), 16)
            i = bisect.bisect_right(addrs, rip) - 1
            where = f"{names[i]}+{rip - addrs[i]:#x}" if i >= 0 and rip - addrs[i] < 0x100000 else "(not the kernel: a guest of KVM, or user space)"
            print(f"  RIP={rip:#018x} {where}")
        for line in text.splitlines():
            if line.startswith(("CPU#", "RIP=", "CR0=", "EFER=", "CS =", "HLT=")) or "HLT=" in line:
                print("  " + line.strip())
        time.sleep(1)
    ask(sock, "quit", 0.5)


if __name__ == "__main__":
    main()
