#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite: once on the normal
# build and once on the ASan+UBSan build, then the fuzz smoke. Suites labelled `kvm` run
# natively where /dev/kvm works and otherwise inside the nested VM (scripts/nested-kvm.sh,
# real KVM under QEMU's emulator); a kvm suite that is skipped anyway fails the run. Ends
# with a summary per build: each suite, where it ran (native, nested) and its result
# (docs/testing.md, "What scripts/test.sh runs, and where").
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/install-deps.sh

# Where the kvm suites run: all here (native); all in the nested VM (no /dev/kvm); or, on
# KVM's PVM backend (kvm_pvm without kvm_intel or kvm_amd), which runs guest kernel code
# about 1,700 times slower than native, all here but those whose guest is a kernel
# (label kernel_guest: the Linux guests), which run in the nested VM (pvm).
if [ -w /dev/kvm ] && [ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
  kvm_where=pvm
  echo "== /dev/kvm is KVM's PVM backend: the kernel_guest suites (Linux guests) run in the nested VM (its times are the emulator's), the other kvm suites here"
elif [ -w /dev/kvm ]; then
  kvm_where=native
else
  kvm_where=nested
  echo "== no /dev/kvm here: the kvm suites run in the nested VM (scripts/nested-kvm.sh; its times are the emulator's)"
fi
# ctest's limits for the kvm suites may be multiplied in the nested VM (the suites' own
# waits scale with UNDERSTUDY_TEST_TIME_SCALE, which the runner sets). Not by default:
# every suite passed nested within half of its limit (docs/testing.md), and a larger
# limit only makes a stuck suite (a guest that died under a long wait) cost CI more.
timeout_scale=1
[ "$kvm_where" != native ] && timeout_scale=${UNDERSTUDY_NESTED_TIMEOUT_SCALE:-1}

failed=0
summaries=()
counts=$(mktemp)
trap 'rm -f "$counts"' EXIT
nested_vm_failures=()
# run_suites BUILD_DIR NAME [--left-out SUITE=REASON ...] [--nested-only REGEX] [--beside-nested FUNCTION]
# Runs every suite of BUILD_DIR: natively, but for those that must run in the nested VM
# (kvm_where nested: the kvm ones; pvm: the kernel_guest ones), which run there if they
# match REGEX and are not left out; then prints the build's summary. FUNCTION (the next
# build) runs while the nested suites do, at the scheduler's idle priority, or after the
# native suites where nothing runs nested.
run_suites() {
  local build=$1 name=$2 left=() only='.' skip='^$' beside= tests_s
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --left-out) left+=(--left-out "$2"); skip="$skip|^${2%%=*}\$"; shift 2 ;;
      --nested-only) only=$2; shift 2 ;;
      --beside-nested) beside=$2; shift 2 ;;
    esac
  done
  local results=$build/test-results
  rm -rf "$results" && mkdir -p "$results"
  local runs=() t0=$SECONDS
  local nested_label=
  case $kvm_where in nested) nested_label=kvm ;; pvm) nested_label=kernel_guest ;; esac
  if [ -z "$nested_label" ]; then
    echo "== tests ($name build)"
    (cd "$build" && ctest --output-on-failure --timeout 600 --output-junit test-results/native.xml) || true
    runs+=("$results/native.xml:native")
    tests_s=$(( SECONDS - t0 ))
    [ -z "$beside" ] || "$beside"
  else
    echo "== tests ($name build), all but the $nested_label suites"
    (cd "$build" && ctest --output-on-failure --timeout 600 -LE "$nested_label" --output-junit test-results/native.xml) || true
    runs+=("$results/native.xml:native")
    echo "== tests ($name build), the $nested_label suites in the nested VM ($(( SECONDS - t0 )) s so far)"
    # One ctest per suite, each with its own report, so that a VM that dies part way
    # keeps the results of the suites before it. A suite that fails runs once more; the
    # summary then shows both results. A VM that panicked, ended on its own or hung (the
    # runner's 121, 123 and 125: the emulated machine failed, not a suite; docs/testing.md,
    # "When the nested VM fails") runs the suites left without a result once more, in a
    # fresh VM, and the summary says so.
    local suites attempt status f rest beside_pid= beside_log
    if [ -n "$beside" ]; then
      beside_log=$(mktemp)
      echo "== $beside runs beside the nested suites, at idle priority (its output: after them)"
      (chrt --idle -p 0 "$BASHPID" || true; renice -n 19 -p "$BASHPID" >/dev/null || true; "$beside") >"$beside_log" 2>&1 &
      beside_pid=$!
    fi
    suites=$(cd "$build" && ctest -N -L "$nested_label" -R "$only" -E "$skip" | sed -n 's/^ *Test *#[0-9]*: //p')
    for attempt in 1 2 3; do
      rest=()
      for t in $suites; do [ -e "$results/nested-$t.xml" ] || rest+=("$t"); done
      [ ${#rest[@]} -gt 0 ] || break
      [ "$attempt" -gt 1 ] && echo "== the nested VM failed (status $status): ${rest[*]} again, in a fresh VM"
      status=0
      NESTED_KVM_CONSOLE=$results/nested-console-$attempt.log scripts/nested-kvm.sh "cd '$build' &&
        for t in ${rest[*]}; do
          ctest --output-on-failure -R \"^\$t\\\$\" --output-junit test-results/nested-\$t.xml ||
            ctest --output-on-failure -R \"^\$t\\\$\" --output-junit test-results/nested-\$t.rerun.xml
        done" || status=$?
      case $status in 121 | 123 | 125) ;; *) break ;; esac
      nested_vm_failures+=("$name build: nested VM $attempt failed with status $status (console: $results/nested-console-$attempt.log)")
    done
    for f in "$results"/nested-*.xml; do [ -e "$f" ] && runs+=("$f:nested"); done
    tests_s=$(( SECONDS - t0 ))
    if [ -n "$beside_pid" ]; then
      echo "== the nested suites ended; waiting for $beside"
      status=0
      wait "$beside_pid" || status=$?
      cat "$beside_log" && rm -f "$beside_log"
      [ "$status" -eq 0 ] || { echo "== $beside failed (status $status)"; exit 1; }
    fi
  fi
  echo "== $name build: tests took $tests_s s"
  local summary
  summary=$(python3 scripts/test-summary.py "$name" "$build" --counts "$counts" ${left[@]+"${left[@]}"} "${runs[@]}") || failed=1
  summaries+=("$summary")
}

echo "== build"
# Line tables only (-g1): enough for backtraces and perf, and 15-20% less compile time
# than -g (docs/testing.md). The sanitizer build picks -O1 -g1 itself (CMakeLists.txt).
scripts/build.sh -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DUNDERSTUDY_KVM_TIMEOUT_SCALE="$timeout_scale"
# The Linux test guest (Debian's kernel, busybox, redis-server) for the linux_guest suite,
# built here because the nested VM has no route to Debian's archive.
scripts/linux-guest.sh "$PWD/build/linux-guest"
# drill_matrix is a measuring campaign (bench/drill.py matrix: 18 drills, about 7 minutes
# natively), run by hand with DRILL_MATRIX_RUNS set; the drills themselves are tested by
# drill_cli and drill_fake_pair.
# One build serves both the sanitizer suites and the fuzz smoke: host C++ with clang 16
# (libFuzzer's compiler), ASan + UBSan and fuzzer coverage; the guest images (C) stay
# with gcc. Building the fuzz targets separately cost another 12 minutes on 2 cores.
sanitizer_build() {
  echo "== build with AddressSanitizer and UndefinedBehaviorSanitizer (clang 16, with the fuzz targets)"
  CC=gcc CXX=clang++-16 BUILD_DIR=build-asan scripts/build.sh -DUNDERSTUDY_SANITIZE=ON -DUNDERSTUDY_FUZZ=ON \
    -DUNDERSTUDY_BENCH=OFF -DUNDERSTUDY_KVM_TIMEOUT_SCALE="$timeout_scale"
}
# The sanitizer build compiles while the normal build's suites run nested: the emulated
# VM leaves about a third of these 2 cores idle (it waits on its guests and their
# timeouts), and at the idle priority the compiler takes only that (docs/testing.md, "How
# long the test run takes, and why").
beside=()
[ "${UNDERSTUDY_SKIP_SANITIZERS:-0}" = 1 ] || beside=(--beside-nested sanitizer_build)
run_suites "$PWD/build" normal \
  --left-out "drill_matrix=a measuring campaign, run by hand (DRILL_MATRIX_RUNS; docs/testing.md)" \
  ${beside[@]+"${beside[@]}"}

if [ "${UNDERSTUDY_SKIP_SANITIZERS:-0}" != 1 ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
  if [ "$kvm_where" = nested ]; then
    # In the nested VM the sanitizer build runs the kvm suites that exercise the VMM's own
    # code paths in a few minutes; the end-to-end ones (the whole pair over the network)
    # already ran nested on the normal build and would cost the run tens of minutes more
    # (docs/testing.md, "The sanitizer build in the nested VM", has the figures).
    asan_nested='^(dirty_tracking|pause_resume|disk|snapshot|bad_input|bad_virtio|virtio_kvm)$'
    left=()
    for s in replication capture link_security network fencing operations linux_guest linux_guest_net; do
      left+=(--left-out "$s=sanitizer build, nested: end to end, already run nested on the normal build (docs/testing.md)")
    done
    run_suites "$PWD/build-asan" sanitizer --nested-only "$asan_nested" "${left[@]}"
  elif [ "$kvm_where" = pvm ]; then
    left=()
    for s in linux_guest linux_guest_net; do
      left+=(--left-out "$s=sanitizer build on PVM: a Linux guest runs only in the nested VM, where it already ran on the normal build")
    done
    run_suites "$PWD/build-asan" sanitizer "${left[@]}"
  else
    run_suites "$PWD/build-asan" sanitizer
  fi
  echo "== fuzz smoke: every fuzz target for a few seconds (docs/fuzzing.md)"
  FUZZ_BUILD_DIR=build-asan scripts/fuzz.sh --smoke || { failed=1; echo "0 1 0 0" >>"$counts"; echo "== the fuzz smoke failed"; }
fi

echo
for s in "${summaries[@]}"; do echo "$s"; echo; done
for s in ${nested_vm_failures[@]+"${nested_vm_failures[@]}"}; do echo "== note: $s; its suites ran again in a fresh VM"; done
echo "== scripts/test.sh took $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
# One closing line for the whole run (suites left out are named above, never counted as run).
awk '{ p += $1; f += $2; s += $3 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$counts"
exit "$failed"
