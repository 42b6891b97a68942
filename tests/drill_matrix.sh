#!/bin/sh
# ctest drill_matrix: the failover matrix of issue 5 (bench/drill.py matrix, see
# bench/README.md "drill.py"): {primary, backup} fails x {steady, transmission,
# initial-sync} x {kill, hang, partition}, DRILL_MATRIX_RUNS runs per cell (default 1;
# 0 skips). Fails when any run's outcome differs from its cell's expectation. Prints the
# table with each cell's wall time per run; the JSON goes to drill_matrix.json here.
# usage: drill_matrix.sh BUILD_DIR. Exit 77 (skipped) without root or /dev/kvm.
set -eu
runs=${DRILL_MATRIX_RUNS:-1}
case $runs in
  '' | *[!0-9]*) echo "DRILL_MATRIX_RUNS must be a whole number, not '$runs'" >&2; exit 2 ;;
esac
if [ "$runs" -eq 0 ]; then echo "DRILL_MATRIX_RUNS=0: skipped"; exit 77; fi
if [ "$(id -u)" -ne 0 ] || [ ! -w /dev/kvm ]; then echo "needs root and /dev/kvm: skipped"; exit 77; fi
exec python3 "$(dirname "$0")/../bench/drill.py" matrix --runs "$runs" --build "$1" --json drill_matrix.json
