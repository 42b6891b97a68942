#!/usr/bin/env bash
# ctest linux_guest: Debian's own kernel and an initramfs of busybox (scripts/linux-guest.sh)
# under `understudy run --kernel`, each case checked by what the guest prints:
#   1. boot with 2 vCPUs to the init's marker; the serial console both ways (a line on
#      stdin is read back by the guest); the guest's reboot ends the VM with status 0;
#   2. a snapshot taken at a random moment while the guest runs its own check (us-check:
#      clocks only forward, memory intact, no stall in the kernel log), restored, and the
#      check completed by the restored VM;
#   3. protected (checkpoint every 100 ms to a backup on loopback), the primary killed in
#      the middle of the check: the backup promotes and the check completes there;
#   4. bad input refused with a clear message and no VM: not a bzImage, a command line
#      longer than the kernel takes, guest memory too small for the kernel.
# With `network` (ctest linux_guest_net), instead: in the namespace topology
# (scripts/topology.sh), redis-server in the guest, protected with output commit, and
# `understudy drill kill-primary` from the client's namespace: a pass with 0 acknowledged
# writes lost, the connections kept, the survivor watched serving and the replica verified.
# usage: linux_guest.sh BUILD_DIR [LIMIT_S [network]]. Exit 77 (skipped) without /dev/kvm,
# and for `network` without root, iproute2 or jq. LIMIT_S is
# ctest's limit: the script ends itself 20 s before it, with its logs printed.
set -Eeuo pipefail
build=$(cd "${1:?usage: linux_guest.sh BUILD_DIR [LIMIT_S [network]]}" && pwd)
limit=${2:-0}
mode=${3:-}
[ -z "$mode" ] || [ "$mode" = network ] || { echo "linux_guest: unknown mode '$mode' (only: network)" >&2; exit 2; }
[[ $limit =~ ^[0-9]+$ ]] || { echo "linux_guest: LIMIT_S '$limit' is not a number of seconds" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
cli=$build/cli/understudy
topology=$here/../scripts/topology.sh
if [ ! -w /dev/kvm ]; then
  echo "linux_guest: needs /dev/kvm (scripts/nested-kvm.sh provides one): skipped"
  exit 77
fi
if [ "$mode" = network ] && { [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v jq >/dev/null; }; then
  echo "linux_guest network: needs root, iproute2 and jq: skipped"
  exit 77
fi
name=lg$(printf '%05d' $(($$ % 100000)))
# Waits scale with UNDERSTUDY_TEST_TIME_SCALE on slow hosts (docs/testing.md); checks do not.
scaled() { awk -v n="$1" -v s="${UNDERSTUDY_TEST_TIME_SCALE:-1}" 'BEGIN { printf "%d", n * s + 0.5 }'; }

work=$(mktemp -d /tmp/understudy-linux-guest.XXXXXX)
pids=()
timer=
cleanup() {
  local rc=$?
  [ -z "$timer" ] || { pkill -P "$timer" 2>/dev/null; kill "$timer" 2>/dev/null; } || true
  for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$topology" down "$name" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do [ -e "$f" ] || continue; echo "--- $f (tail)"; grep -v 'unclaimed' "$f" | tail -n 30 || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "linux_guest: out of time: 20 s before the limit of $limit s" >&2; exit 124' TERM
if [ "$limit" -gt 20 ]; then
  (sleep $((limit - 20)) && kill -TERM $$ && pkill -TERM -P $$) </dev/null >/dev/null 2>&1 &
  timer=$!
fi

fail() { echo "linux_guest: FAILED: $*" >&2; exit 1; }
expect() { # FILE PATTERN WHAT
  grep -q -- "$2" "$1" || fail "$3 (no '$2' in $(basename "$1"))"
}
# Waits until FILE has PATTERN, at most SECONDS (scaled).
wait_for() {
  local deadline=$((SECONDS + $(scaled "$3")))
  until grep -q -- "$2" "$1"; do
    [ $SECONDS -lt $deadline ] || fail "waited $(scaled "$3") s for '$2' in $(basename "$1")"
    sleep 0.5
  done
}

# Built by scripts/test.sh before the nested VM starts (it has no route to Debian's
# archive); here it only confirms the guest is up to date, or builds it where it can.
guest=$build/linux-guest
"$here/../scripts/linux-guest.sh" "$guest" >"$work/build-guest.log" 2>&1 ||
  { cat "$work/build-guest.log"; fail "scripts/linux-guest.sh $guest failed (in the nested VM: run it outside first)"; }
kernel=(--kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" --memory 512M)
# reboot=k: the guest's reboot goes through the i8042, which ends the VM with status 0.
base="console=ttyS0 reboot=k"

if [ "$mode" = network ]; then
echo "== redis-server in the guest, protected with the network; the kill-primary drill"
"$topology" up "$name" >/dev/null
"$cli" keygen "$work/link.key" >/dev/null
psock=$work/net-primary.sock bsock=$work/net-backup.sock
# The product's failure timeout scaled on slow hosts, as in drill_cli: a starved
# heartbeat must not end the session before the drill does.
net_link=(--link-key "$work/link.key" --failure-timeout-ms "$(scaled 100)")
ip netns exec "$name-backup" "$cli" backup --listen 10.77.0.12:7400 --promote --net-tap "$name-tap" \
  --control-socket "$bsock" "${net_link[@]}" </dev/null >"$work/net-backup.log" 2>&1 &
pids+=($!)
wait_for "$work/net-backup.log" "listening on" 10
ip netns exec "$name-primary" "$cli" run "${kernel[@]}" --vcpus 2 --net-tap "$name-tap" --backup 10.77.0.12:7400 \
  --control-socket "$psock" "${net_link[@]}" --epoch-ms 50 --append "$base usnet=10.77.0.2/24" \
  </dev/null >"$work/net-primary.log" 2>&1 &
pids+=($!)
wait_for "$work/net-primary.log" "redis-server on 10.77.0.2:6379" 180
out=$(ip netns exec "$name-client" "$cli" drill kill-primary --primary-socket "$psock" --backup-socket "$bsock" \
  --service 10.77.0.2:6379 --warmup 1 --after 10 --max-stall "$(scaled 5)" --timeout "$(scaled 30)" --json \
  2>"$work/drill.log") || { echo "$out"; fail "the drill did not pass (exit status)"; }
echo "$out" | jq -e '.verdict == "pass" and .writes_lost == 0 and .writes_acknowledged > 0 and .connections_survived and
  .survivor == "backup" and .service_stopped == null and .watched_s >= 9.5 and .verification_verdict == "match"' >/dev/null ||
  { echo "$out"; fail "the drill's report is not a pass with 0 writes lost, the connections kept and the replica verified"; }
echo "   $(echo "$out" | jq -r '"\(.writes_acknowledged) writes acknowledged, \(.writes_lost) lost; detection \(.detection_ms | floor) ms, outage \(.outage_ms | floor) ms"')"

  echo "linux_guest network: passed"
  exit 0
fi

echo "== 1. boot, 2 vCPUs, the console both ways"
t0=$SECONDS
echo "hello-from-the-host" | "$cli" run "${kernel[@]}" --vcpus 2 --timeout "$(scaled 120)" \
  --append "$base uscmd=\"read -r line; echo guest-read:\$line\"" >"$work/boot.log" 2>&1 || fail "the VM did not end with status 0"
expect "$work/boot.log" "understudy-linux: up (.*, 2 CPUs)" "the guest did not come up with 2 CPUs"
expect "$work/boot.log" "guest-read:hello-from-the-host" "the guest did not read the console's input"
expect "$work/boot.log" "command exited with status 0" "the guest's command failed"
expect "$work/boot.log" "VM stopped: exited (status 0).*i8042 reset" "the guest's reboot did not end the VM"
echo "   booted and rebooted in $((SECONDS - t0)) s"

echo "== 2. snapshot at a random moment during the guest's check, restored"
# `understudy snapshot` on the running VM, 0 to 4 s after the check's tenth tick (of 100).
"$cli" run "${kernel[@]}" --vcpus 2 --timeout "$(scaled 300)" --control-socket "$work/snapshot.sock" \
  --append "$base uscmd=\"us-check 20\"" </dev/null >"$work/snapshot.log" 2>&1 &
running=$!
pids+=("$running")
wait_for "$work/snapshot.log" "us-check: tick 10," 180
sleep "$((RANDOM % 5)).$((RANDOM % 10))"
"$cli" snapshot --control-socket "$work/snapshot.sock" "$work/linux.snap" >"$work/snapshot-cmd.log" 2>&1 ||
  { cat "$work/snapshot-cmd.log"; fail "understudy snapshot failed"; }
at=$(grep -o 'us-check: tick [0-9]*' "$work/snapshot.log" | tail -1)
kill -TERM "$running"
wait "$running" || true
"$cli" restore "$work/linux.snap" --timeout "$(scaled 120)" </dev/null >"$work/restore.log" 2>&1 || fail "the restored VM did not end with status 0"
expect "$work/restore.log" "us-check: ok" "the restored guest's check did not pass"
expect "$work/restore.log" "VM stopped: exited (status 0)" "the restored guest did not reboot"
echo "   snapshot after '$at'; the restored guest's check passed: $(grep -c 'us-check: tick' "$work/restore.log") ticks after restore"

echo "== 3. protected, the primary killed during the guest's check"
port=$((20000 + $$ % 20000))
"$cli" keygen "$work/link.key" >/dev/null
link=(--link-key "$work/link.key" --failure-timeout-ms "$(scaled 1000)" --heartbeat-ms 100)
"$cli" backup --listen "127.0.0.1:$port" --promote --sessions 1 "${link[@]}" </dev/null >"$work/backup.log" 2>&1 &
backup=$!
pids+=("$backup")
wait_for "$work/backup.log" "listening on" 10
"$cli" run "${kernel[@]}" --vcpus 2 --backup "127.0.0.1:$port" --epoch-ms 100 "${link[@]}" --timeout "$(scaled 300)" \
  --append "$base uscmd=\"us-check 20\"" </dev/null >"$work/primary.log" 2>&1 &
primary=$!
pids+=("$primary")
wait_for "$work/primary.log" "us-check: tick 40" 180
expect "$work/primary.log" "checkpoints: epoch" "the primary reported no checkpoints"
kill -KILL "$primary"
wait "$backup" || fail "the promoted backup did not end with status 0"
expect "$work/backup.log" "PROMOTED: running checkpoint" "the backup did not promote"
expect "$work/backup.log" "us-check: ok" "the promoted guest's check did not pass"
expect "$work/backup.log" "VM stopped: exited (status 0)" "the promoted guest did not reboot"
echo "   promoted: $(grep -o 'PROMOTED: running checkpoint [0-9]*' "$work/backup.log"); the check passed on the backup"

echo "== 4. bad input"
refused() { # WHAT PATTERN ARGS...
  local what=$1 pattern=$2
  shift 2
  if "$cli" run "$@" </dev/null >"$work/bad.log" 2>&1; then fail "$what was accepted"; fi
  expect "$work/bad.log" "$pattern" "$what: unclear error"
}
refused "an initrd given as the kernel" "not a bzImage" --kernel "$guest/initrd.img"
refused "a command line of 3000 bytes" "takes at most" --kernel "$guest/vmlinuz" --append "$(head -c 3000 /dev/zero | tr '\0' x)"
refused "32 MiB of guest memory" "to decompress; the guest has 32 MiB" --kernel "$guest/vmlinuz" --memory 32M
echo "linux_guest: all cases passed"
