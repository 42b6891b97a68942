#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite: once on the normal
# build and once on the ASan+UBSan build. Suites that need /dev/kvm report themselves
# skipped (not passed) on machines without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== build"
# Line tables only (-g1): enough for backtraces and perf, and 15-20% less compile time
# than -g (docs/testing.md). The sanitizer build picks -O1 -g1 itself (CMakeLists.txt).
scripts/build.sh -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
echo "== tests"
(cd build && ctest --output-on-failure --timeout 600)

if [ "${UNDERSTUDY_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== build with AddressSanitizer and UndefinedBehaviorSanitizer"
  BUILD_DIR=build-asan scripts/build.sh -DUNDERSTUDY_SANITIZE=ON -DUNDERSTUDY_BENCH=OFF
  echo "== tests under sanitizers"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure --timeout 900)
fi

# The fuzz smoke stage builds a third configuration (clang 16, libFuzzer, ASan+UBSan):
# about 12 minutes on 2 cores, which would put this job near CI's 30-minute limit, so it
# is opt-in until the build is cheaper. Every corpus and regression input is replayed in
# both builds above either way (fuzz_replay_*).
if [ "${UNDERSTUDY_FUZZ_SMOKE:-0}" = 1 ]; then
  echo "== fuzz smoke: every fuzz target for a few seconds (docs/fuzzing.md)"
  scripts/fuzz.sh --smoke
fi
