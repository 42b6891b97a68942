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
  # One build serves both the sanitizer suites and the fuzz smoke: host C++ with clang 16
  # (libFuzzer's compiler), ASan + UBSan and fuzzer coverage; the guest images (C) stay
  # with gcc. Building the fuzz targets separately cost another 12 minutes on 2 cores.
  echo "== build with AddressSanitizer and UndefinedBehaviorSanitizer (clang 16, with the fuzz targets)"
  CC=gcc CXX=clang++-16 BUILD_DIR=build-asan scripts/build.sh -DUNDERSTUDY_SANITIZE=ON -DUNDERSTUDY_FUZZ=ON \
    -DUNDERSTUDY_BENCH=OFF
  echo "== tests under sanitizers"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure --timeout 900)
  echo "== fuzz smoke: every fuzz target for a few seconds (docs/fuzzing.md)"
  FUZZ_BUILD_DIR=build-asan scripts/fuzz.sh --smoke
fi
