#!/usr/bin/env bash
# ctest drill_cli: `understudy drill` against a protected kv pair that this script starts
# in the namespace topology (scripts/topology.sh, docs/testing.md), as an operator would:
#   1. corrupt-link: the primary flips one bit of its checkpoint stream; the backup must
#      refuse the stream and not promote, the primary must serve on unprotected;
#   2. `understudy reprotect` to the same backup, then kill-primary: the backup promotes.
# Each drill must report verdict "pass" with writes_lost 0 (and exit 0), the replica
# verified against the VM before the fault.
# usage: drill_cli.sh BUILD_DIR [LIMIT_S]. Exit 77 (skipped) without root, /dev/kvm,
# iproute2 or jq. LIMIT_S is ctest's limit: the script ends itself 20 s before it, with
# its logs printed (ctest's own kill would leave nothing to read).
set -Eeuo pipefail
build=$(cd "${1:?usage: drill_cli.sh BUILD_DIR [LIMIT_S]}" && pwd)
limit=${2:-0}
[[ $limit =~ ^[0-9]+$ ]] || { echo "drill_cli: LIMIT_S '$limit' is not a number of seconds" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
cli=$build/cli/understudy
kv=$build/guest/kv.elf
topology=$here/../scripts/topology.sh
if [ "$(id -u)" -ne 0 ] || [ ! -w /dev/kvm ] || ! command -v ip >/dev/null || ! command -v jq >/dev/null; then
  echo "drill_cli: needs root, /dev/kvm, iproute2 and jq: skipped"
  exit 77
fi
for f in "$cli" "$kv"; do [ -e "$f" ] || { echo "drill_cli: $f missing" >&2; exit 2; }; done

# Waits (and the drill's own --timeout) scale with UNDERSTUDY_TEST_TIME_SCALE on slow
# hosts (docs/testing.md, "Deadlines on slow hosts"); what is checked does not.
scaled() { awk -v n="$1" -v s="${UNDERSTUDY_TEST_TIME_SCALE:-1}" 'BEGIN { printf "%d", n * s + 0.5 }'; }

name=dc$(printf '%05d' $(($$ % 100000)))
work=$(mktemp -d /tmp/understudy-drill-cli.XXXXXX)
psock=$work/primary.sock bsock=$work/backup.sock key=$work/link.key
pids=()
timer=
cleanup() {
  local rc=$?
  [ -z "$timer" ] || { pkill -P "$timer" 2>/dev/null; kill "$timer" 2>/dev/null; } || true
  for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$topology" down "$name" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do [ -e "$f" ] || continue; echo "--- $f (tail)"; tail -n 25 "$f" || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "drill_cli: out of time: 20 s before the limit of $limit s" >&2; exit 124' TERM
if [ "$limit" -gt 20 ]; then
  # The script first, then its children: bash runs the trap once its foreground child ends.
  # Its output goes nowhere: ctest waits for every holder of the test's pipes to exit.
  (sleep $((limit - 20)) && kill -TERM $$ && pkill -TERM -P $$) </dev/null >/dev/null 2>&1 &
  timer=$!
fi

"$topology" up "$name" >/dev/null
"$cli" keygen "$key" >/dev/null
# The product's 100 ms failure timeout, scaled on slow hosts on both sides: a starved
# heartbeat must not end a session (and promote the backup) that the drill did not end.
patient=(--failure-timeout-ms "$(scaled 100)")
ip netns exec "$name-backup" "$cli" backup --listen 10.77.0.12:7400 --promote --net-tap "$name-tap" \
  --link-key "$key" --control-socket "$bsock" "${patient[@]}" >"$work/backup.log" 2>&1 &
pids+=($!)
alive() { kill -0 "$1" 2>/dev/null || { echo "drill_cli: the $2 exited early" >&2; exit 1; }; }
for _ in $(seq "$(scaled 100)"); do
  grep -q "backup: listening" "$work/backup.log" && break
  alive "${pids[0]}" backup
  sleep 0.1
done
ip netns exec "$name-primary" "$cli" run "$kv" --memory 128M --net-tap "$name-tap" -c "net.ip=10.77.0.2/24" \
  --backup 10.77.0.12:7400 --link-key "$key" --control-socket "$psock" "${patient[@]}" >"$work/primary.log" 2>&1 &
pids+=($!)

wait_protected() {
  local state='' end=$((SECONDS + $(scaled 60)))
  while [ "$SECONDS" -lt "$end" ]; do
    state=$("$cli" status --control-socket "$psock" --json 2>/dev/null | jq -r .state) || true
    [ "$state" = protected ] && return 0
    alive "${pids[0]}" backup
    alive "${pids[1]}" primary
    sleep 0.1
  done
  echo "drill_cli: the primary was not protected within $(scaled 60) s (its state: ${state:-none})" >&2
  return 1
}

# One drill from the client's namespace; checks its JSON report and exit code.
drill() {
  local kind=$1 out rc=0
  out=$(ip netns exec "$name-client" "$cli" drill "$kind" --primary-socket "$psock" --backup-socket "$bsock" \
    --service 10.77.0.2:6379 --warmup 1 --after 10 --max-stall "$(scaled 5)" --timeout "$(scaled 30)" --json \
    2>"$work/drill-$kind.log") || rc=$?
  echo "$kind: exit $rc: $out"
  # The survivor served the whole watch, and the kv image's own self-check passed.
  echo "$out" | jq -e '.verdict == "pass" and .writes_lost == 0 and .writes_acknowledged > 0 and
    .service_stopped == null and .watched_s >= 9.5 and (.selfcheck | startswith("+OK keys=")) and
    .verification_verdict == "match"' >/dev/null ||
    { echo "drill_cli: $kind: not a pass with the replica verified, 0 writes lost, a full watch and a clean self-check" >&2
      return 1; }
  [ "$rc" -eq 0 ] || { echo "drill_cli: $kind: exit $rc on a pass" >&2; return 1; }
  echo "$out" | jq -e "$2" >/dev/null || { echo "drill_cli: $kind: expected $2" >&2; return 1; }
}

wait_protected
drill corrupt-link '.survivor == "primary" and .connections_survived and .detection_ms != null'
grep -q "UNPROTECTED" "$work/primary.log" || { echo "drill_cli: the primary never said UNPROTECTED" >&2; exit 1; }
if grep -q "PROMOTED" "$work/backup.log"; then echo "drill_cli: the backup promoted after a corrupt stream" >&2; exit 1; fi

"$cli" reprotect --control-socket "$psock" --backup 10.77.0.12:7400
wait_protected
drill kill-primary '.survivor == "backup" and .connections_survived and .promotion_ms != null and .detection_source != ""'
grep -q "PROMOTED" "$work/backup.log" || { echo "drill_cli: the backup never said PROMOTED" >&2; exit 1; }
echo "drill_cli: both drills passed"
