#!/usr/bin/env bash
# ctest load: the kv guest under sustained load for minutes (issue 21), in the namespace
# topology (scripts/topology.sh), as users run it:
#   1. alone (no backup): a single-connection writer (tests/load_writer.py: unique keys,
#      one SET at a time, as fast as the guest answers) for LOAD_S seconds;
#   2. protected: the same, then `understudy verify` (the replica is the VM);
#   3. kill-primary and 4. hang-primary: `understudy drill` with one connection writing
#      as fast as it is answered, LOAD_S/2 seconds before the fault and LOAD_S/2 after.
# Each phase checks that the service answered throughout (no gap over 5 s), that every
# acknowledged write reads back, the kv image's own SELFCHECK, and that the VM never
# reported a stall (GUEST STALL) or stopped.
# usage: load_cli.sh BUILD_DIR [LIMIT_S]. LOAD_S: UNDERSTUDY_LOAD_S (default 60). Exit 77
# (skipped) without root, /dev/kvm, iproute2, jq or python3.
set -Eeuo pipefail
build=$(cd "${1:?usage: load_cli.sh BUILD_DIR [LIMIT_S]}" && pwd)
limit=${2:-0}
[[ $limit =~ ^[0-9]+$ ]] || { echo "load: LIMIT_S '$limit' is not a number of seconds" >&2; exit 2; }
load_s=${UNDERSTUDY_LOAD_S:-60}
[[ $load_s =~ ^[0-9]+$ ]] && [ "$load_s" -ge 10 ] || { echo "load: UNDERSTUDY_LOAD_S must be a number of seconds, 10 or more" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
cli=$build/cli/understudy
kv=$build/guest/kv.elf
topology=$here/../scripts/topology.sh
writer=$here/load_writer.py
if [ "$(id -u)" -ne 0 ] || [ ! -w /dev/kvm ] || ! command -v ip >/dev/null || ! command -v jq >/dev/null ||
   ! command -v python3 >/dev/null; then
  echo "load: needs root, /dev/kvm, iproute2, jq and python3: skipped"
  exit 77
fi
for f in "$cli" "$kv"; do [ -e "$f" ] || { echo "load: $f missing" >&2; exit 2; }; done

# Waits scale with UNDERSTUDY_TEST_TIME_SCALE on slow hosts (docs/testing.md); the load's
# length and what is checked do not.
scaled() { awk -v n="$1" -v s="${UNDERSTUDY_TEST_TIME_SCALE:-1}" 'BEGIN { printf "%d", n * s + 0.5 }'; }

name=ld$(printf '%05d' $(($$ % 100000)))
work=$(mktemp -d /tmp/understudy-load.XXXXXX)
psock=$work/primary.sock bsock=$work/backup.sock key=$work/link.key
pids=()
timer=
stop_all() { # waits for these processes only: a bare `wait` would wait for the timer too
  for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
  for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
  pids=()
  rm -f "$psock" "$bsock"
}
cleanup() {
  local rc=$?
  [ -z "$timer" ] || { pkill -P "$timer" 2>/dev/null; kill "$timer" 2>/dev/null; } || true
  stop_all
  "$topology" down "$name" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do [ -e "$f" ] || continue; echo "--- $f (tail)"; tail -n 25 "$f" || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "load: out of time: 20 s before the limit of $limit s" >&2; exit 124' TERM
if [ "$limit" -gt 20 ]; then
  (sleep $((limit - 20)) && kill -TERM $$ && pkill -TERM -P $$) </dev/null >/dev/null 2>&1 &
  timer=$!
fi

"$topology" up "$name" >/dev/null
"$cli" keygen "$key" >/dev/null
patient=(--failure-timeout-ms "$(scaled 100)")
alive() { kill -0 "$1" 2>/dev/null || { echo "load: the $2 exited early" >&2; exit 1; }; }
client() { ip netns exec "$name-client" "$@"; }

start_backup() { # extra flags
  ip netns exec "$name-backup" "$cli" backup --listen 10.77.0.12:7400 --net-tap "$name-tap" --link-key "$key" \
    --control-socket "$bsock" "${patient[@]}" "$@" >"$work/backup.log" 2>&1 &
  pids+=($!)
  for _ in $(seq "$(scaled 100)"); do
    grep -q "backup: listening" "$work/backup.log" && return 0
    alive "${pids[-1]}" backup
    sleep 0.1
  done
  echo "load: the backup did not listen" >&2
  exit 1
}
start_primary() { # extra flags
  ip netns exec "$name-primary" "$cli" run "$kv" --memory 128M --net-tap "$name-tap" -c "net.ip=10.77.0.2/24" \
    --link-key "$key" --control-socket "$psock" "${patient[@]}" "$@" >"$work/primary.log" 2>&1 &
  pids+=($!)
  local vm=$!
  for _ in $(seq "$(scaled 300)"); do
    client redis-cli -h 10.77.0.2 -p 6379 PING 2>/dev/null | grep -q PONG && return 0
    alive "$vm" primary
    sleep 0.2
  done
  echo "load: the guest did not answer PING" >&2
  exit 1
}
wait_protected() {
  local state='' end=$((SECONDS + $(scaled 60)))
  while [ "$SECONDS" -lt "$end" ]; do
    state=$("$cli" status --control-socket "$psock" --json 2>/dev/null | jq -r .state) || true
    [ "$state" = protected ] && return 0
    sleep 0.1
  done
  echo "load: the primary was not protected within $(scaled 60) s (its state: ${state:-none})" >&2
  exit 1
}
# The writer for SECONDS; its JSON line must show no error and nothing lost.
write_for() { # phase seconds
  local out rc=0
  out=$(client python3 "$writer" 10.77.0.2 6379 "$2" --prefix "$1") || rc=$?
  echo "$1: $out"
  [ "$rc" -eq 0 ] || { echo "load: $1: the service stalled, broke or lost writes: $out" >&2; exit 1; }
}
selfcheck() {
  local answer
  answer=$(client redis-cli -h 10.77.0.2 -p 6379 SELFCHECK 2>&1) || true
  echo "$1: SELFCHECK $answer"
  [[ $answer == OK\ keys=* ]] || { echo "load: $1: the self-check failed: $answer" >&2; exit 1; }
}
no_stall() { # log file
  if grep -E "GUEST STALL|== VM stopped" "$1"; then echo "load: the VM stalled or stopped (above)" >&2; exit 1; fi
}

# 1. Alone.
start_primary
write_for alone "$load_s"
selfcheck alone
no_stall "$work/primary.log"
stop_all

# 2. Protected, then the replica verified.
start_backup
start_primary --backup 10.77.0.12:7400
wait_protected
write_for protected "$load_s"
selfcheck protected
out=$("$cli" verify --control-socket "$psock" --timeout-s "$(scaled 120)") ||
  { echo "load: protected: verify: $out" >&2; exit 1; }
echo "protected: $out"
[ "$("$cli" status --control-socket "$psock" --json | jq -r .state)" = protected ] ||
  { echo "load: protected: the primary lost its backup under load" >&2; exit 1; }
no_stall "$work/primary.log"
stop_all

# 3, 4. Failovers under load, through the drill.
half=$((load_s / 2))
for kind in kill-primary hang-primary; do
  start_backup --promote
  start_primary --backup 10.77.0.12:7400
  wait_protected
  rc=0
  out=$(client "$cli" drill "$kind" --primary-socket "$psock" --backup-socket "$bsock" --service 10.77.0.2:6379 \
    --connections 1 --interval-ms 0 --warmup "$half" --after "$half" --max-stall 5 --timeout "$(scaled 30)" --json \
    2>"$work/drill-$kind.log") || rc=$?
  echo "$kind: exit $rc: $out"
  echo "$out" | jq -e '.verdict == "pass" and .writes_lost == 0 and .survivor == "backup" and .service_stopped == null and
    .verification_verdict == "match" and (.selfcheck | startswith("+OK keys="))' >/dev/null ||
    { echo "load: $kind: not a pass (above)" >&2; exit 1; }
  no_stall "$work/backup.log"
  stop_all
done
echo "load: alone, protected, kill-primary and hang-primary under ${load_s} s of load: passed"
