#!/bin/bash
# bench/kvm-host.sh OUT_DIR [BUILD_DIR]: the benchmarks that need /dev/kvm, in about
# 8 minutes on a machine with /dev/kvm and at least 2 cores, ready for the first such
# machine the project gets (issue 20). Writes each benchmark's JSON and log into OUT_DIR,
# then OUT_DIR/report.md (bench/figures.py over that folder) and OUT_DIR/summary.txt
# (per benchmark: exit status and seconds). Run as root (the network benchmarks build
# namespaces and taps) from a built tree: cmake -S . -B build && cmake --build build -j2.
#
# Exit status: 0 when every benchmark ran and wrote its JSON, 1 when one failed (the
# others still run; summary.txt says which), 2 on bad usage or without /dev/kvm.
# Inside scripts/nested-kvm.sh this is a smoke test of the script only: most steps run
# out of time there, and the report labels each run "emulated by QEMU (TCG)" (its CPU
# is QEMU's), because the emulator's times are not KVM figures.
set -u -o pipefail

usage() { echo "usage: bench/kvm-host.sh OUT_DIR [BUILD_DIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$1
build=${2:-$repo/build}
if [ ! -c /dev/kvm ]; then
    echo "kvm-host.sh: /dev/kvm is missing: these benchmarks need a KVM host (scripts/nested-kvm.sh gives one for a smoke run)" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "kvm-host.sh: run as root (network namespaces and taps)" >&2; exit 2; }
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
cmake --build "$build" -j"$(nproc)" --target understudy bench_dirty bench_pause bench_checkpoint bench_disk bench_uffd guest_images \
    >"$out/build.log" 2>&1 || { echo "kvm-host.sh: the build failed, see $out/build.log" >&2; exit 2; }

failed=0
: >"$out/summary.txt"
# step NAME LIMIT_S COMMAND...: runs it with its output in OUT/NAME.log, bounded.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    echo "kvm-host.sh: $name (at most ${limit} s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    [ -s "$out/$name.json" ] || { [ $rc = 0 ] && rc=3; }
    printf '%-12s exit %-3s %4s s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$out/summary.txt"
    [ $rc = 0 ] || failed=1
}

b=$build/bench
# Budgets: these took 5 to 90 s each on a 2-core PVM host (bench/README.md "kvm-host.sh");
# the sum stays under 8 minutes with the build already done.
step dirty 100 "$b/bench_dirty" --rounds=3 --json "$out/dirty.json"
step pause 40 "$b/bench_pause" --json "$out/pause.json"
step checkpoint 120 "$b/bench_checkpoint" --json "$out/checkpoint.json"
step disk 60 "$b/bench_disk" --json "$out/disk.json"
step net 60 python3 "$here/bench_net.py" --quick --build "$build" --json "$out/net.json"
step drill 60 python3 "$here/drill.py" kill-primary --runs 3 --build "$build" --json "$out/drill.json"
# Not KVM, but the kernel's: whether a userfaultfd pause could pay off on this host.
step uffd 30 "$b/bench_uffd" --json "$out/uffd.json"
# QEMU's live migration next to Understudy's pauses, two rates, no COLO (writes
# vs_qemu-quick.json; the plot needs matplotlib, bench/vs_qemu/install-deps.sh).
step vs_qemu-quick 120 python3 "$here/vs_qemu/vs_qemu.py" --quick --rates 10000,30000 --no-colo --build-dir "$build" --out "$out"

python3 "$here/figures.py" --print --results "$out" >"$out/report.md" || failed=1
cat "$out/summary.txt" >&2
echo "kvm-host.sh: JSON, logs and report.md in $out" >&2
exit $failed
