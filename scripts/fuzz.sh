#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, docs/fuzzing.md) with clang 16 into build-fuzz/
# (or $FUZZ_BUILD_DIR) and runs each for a while, starting from its seed corpus
# (fuzz/corpus/<target>/) and its regression inputs (fuzz/regressions/<target>/).
#
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh 600 wire        one target, 10 minutes
#   scripts/fuzz.sh --smoke         every target, 4 s each (scripts/test.sh runs this)
#
# New inputs that grow coverage go to build-fuzz/fuzz-corpus/<target>/ (not the
# repository); a crash leaves its input in build-fuzz/fuzz-artifacts/<target>/ and makes
# the script exit 1. Keep a crashing input as fuzz/regressions/<target>/<name> once fixed.
# Extra libFuzzer flags: FUZZ_FLAGS="-jobs=2 -workers=2" scripts/fuzz.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
smoke=0
targets=()
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1; seconds=4 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    ''|*[!0-9]*) targets+=("$a") ;;
    *) seconds=$a ;;
  esac
done
all=(wire page_codec control_link virtqueue snapshot_records pvh_loader etcd_json config virtio_blk)
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

build=${FUZZ_BUILD_DIR:-build-fuzz}
# Debian 12's clang 14 cannot compile libstdc++ 12's <expected> (it lacks conditionally
# trivial destructors, P0848); clang 16 can once told that concepts are complete.
cc=${FUZZ_CC:-clang-16}
cxx=${FUZZ_CXX:-clang++-16}
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=$cc CXX=$cxx cmake -S . -B "$build" -DUNDERSTUDY_FUZZ=ON -DBUILD_TESTING=OFF -DUNDERSTUDY_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -gline-tables-only" >/dev/null
fi
# The config target exists only once cli/config.cpp does.
have=()
for t in "${targets[@]}"; do
  if grep -q "^fuzz_$t:" <(cmake --build "$build" --target help | sed 's/^\.\.\. //;s/$/:/'); then have+=("$t")
  else echo "fuzz: no target '$t' in this tree, skipped"; fi
done
targets=("${have[@]}")
echo "== fuzz: building ${targets[*]}"
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null

failed=()
summary=""
for t in "${targets[@]}"; do
  work="$build/fuzz-corpus/$t"
  arts="$build/fuzz-artifacts/$t"
  mkdir -p "$work" "$arts"
  dirs=("$work" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  log="$build/fuzz-$t.log"
  echo "== fuzz: $t for ${seconds}s"
  set +e
  # shellcheck disable=SC2086
  "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$arts/" ${FUZZ_FLAGS:-} "${dirs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  line=$(printf '%-18s %6ss %10s runs %8s exec/s  cov %6s' "$t" "$seconds" "${runs:-?}" "${rate:-?}" "${cov:-?}")
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    line="$line  FAILED (exit $rc; log $log, input in $arts/)"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|[a-z_]+: )' "$log" | head -5 || true
  fi
  summary+="$line"$'\n'
done
echo "== fuzz summary"
printf '%s' "$summary"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
