#!/usr/bin/env bash
# The main job: install what is missing, build, then protect the sample guest on this
# machine: a backup on loopback and a primary running `churn` (two vCPUs stamping 20,000
# pages a second each for eight seconds) that checkpoints to it every 25 ms. Shows the
# guest's console, the initial synchronization, one line of checkpoint figures a second,
# and finally restores the backup's last committed checkpoint to show it is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

port=${UNDERSTUDY_DEMO_PORT:-7400}
snapshot=$(mktemp -d)/committed.snap
build/cli/understudy backup --listen "127.0.0.1:$port" --sessions 1 --snapshot-to "$snapshot" &
backup_pid=$!
trap 'kill $backup_pid 2>/dev/null || true' EXIT

build/cli/understudy run build/guest/churn.elf --memory 256M --vcpus 2 \
  --cmdline "pages=4096 rate=20000 seconds=8" --backup "127.0.0.1:$port" --epoch-ms 25
wait $backup_pid

echo
echo "== the backup's last committed checkpoint, restored and run for two seconds:"
build/cli/understudy restore "$snapshot" --timeout 2 | tail -n 4
