#!/bin/sh
# ctest drill_matrix: the failover matrix of issue 5 (bench/drill.py matrix, see
# bench/README.md "drill.py"): {primary, backup} fails x {steady, transmission,
# initial-sync} x {kill, hang, partition}, DRILL_MATRIX_RUNS runs per cell (default 0:
# skipped, as in CI, until every cell passes reliably). Fails when any run's outcome
# differs from its cell's expectation. Prints the table with each cell's wall time per
# run; the summary JSON goes to drill_matrix.json and every run's figures and logs to
# drill_matrix_runs.json in the current directory.
# usage: drill_matrix.sh BUILD_DIR. Exit 77 (skipped) without root or /dev/kvm.
set -eu
runs=${DRILL_MATRIX_RUNS:-0}
case $runs in
  '' | *[!0-9]*) echo "DRILL_MATRIX_RUNS must be a whole number, not '$runs'" >&2; exit 2 ;;
esac
if [ "$runs" -eq 0 ]; then echo "drill_matrix: skipped (set DRILL_MATRIX_RUNS=N to run N runs per cell)"; exit 77; fi
if [ "$(id -u)" -ne 0 ] || [ ! -w /dev/kvm ]; then echo "needs root and /dev/kvm: skipped"; exit 77; fi
exec python3 "$(dirname "$0")/../bench/drill.py" matrix --runs "$runs" --build "$1" --json drill_matrix.json \
  --runs-json drill_matrix_runs.json
