#!/usr/bin/env bash
# The main job: install what is missing, build, then protect the sample service on this
# machine. Builds the network test topology (namespaces for a client, a primary host and
# a backup host on one segment; docs/testing.md), starts `understudy backup` on the
# backup host and the `kv` guest (a Redis-protocol server) protected by it on the
# primary, then talks to the guest from the client with the stock redis-cli and
# redis-benchmark. Every reply the client sees left the primary only after the backup
# acknowledged the checkpoint that produced it. Shows the primary's checkpoint and
# network figures, then ends with a kill-primary drill (bench/drill.py: the backup
# promotes while a client writes; its report). Then, where the Linux test guest can be built
# from Debian's packages (scripts/linux-guest.sh), the same for Debian's own kernel with
# redis-server inside: a redis-cli session and `understudy drill kill-primary`.
# Topologies are removed, also on failure.
#
# Where /dev/kvm is missing it says so, builds here, and runs the rest inside the nested
# VM (scripts/nested-kvm.sh: real KVM under QEMU's emulator), whose times are the
# emulator's; there its waits and the primary's run time are UNDERSTUDY_TEST_TIME_SCALE
# times longer (the runner sets 10).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${UNDERSTUDY_NESTED:-}" ]; then
  scripts/install-deps.sh
  scripts/build.sh
  # Here, not in the nested VM: it has no route to Debian's archive.
  scripts/linux-guest.sh build/linux-guest >build/linux-guest.log 2>&1 ||
    echo "== the Linux guest could not be built (build/linux-guest.log): its section is left out"
  if [ ! -w /dev/kvm ]; then
    echo "== no /dev/kvm here: the pair runs inside an emulated KVM host (scripts/nested-kvm.sh); its times are the emulator's, not KVM's"
    exec scripts/nested-kvm.sh scripts/demo.sh
  fi
fi
scaled() { awk -v n="$1" -v s="${UNDERSTUDY_TEST_TIME_SCALE:-1}" 'BEGIN { printf "%d", n * s + 0.5 }'; }

name=${UNDERSTUDY_DEMO_TOPOLOGY:-demo}
work=$(mktemp -d)
scripts/topology.sh up "$name" >/dev/null
pids=() # every VM and backup this script starts: none outlives it, also on failure
trap 'for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
      scripts/topology.sh down "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
eval "$(scripts/topology.sh status "$name")"
on() { local host=$1; shift; ip netns exec "$name-$host" "$@"; }

echo "== topology $name: client $client_ip, primary host $primary_ip, backup host $backup_ip, guest $guest_ip"
# The replication link is authenticated and encrypted with a key both hosts hold (docs/security.md).
build/cli/understudy keygen "$work/link.key" >/dev/null
ip netns exec "$name-backup" build/cli/understudy backup --listen "$backup_ip:7400" --link-key "$work/link.key" \
  >"$work/backup.log" 2>&1 &
backup=$!
pids+=($backup)
ip netns exec "$name-primary" build/cli/understudy run build/guest/kv.elf --memory 128M --net-tap "$tap" \
  -c "net.ip=$guest_ip/24" --backup "$backup_ip:7400" --link-key "$work/link.key" --epoch-ms 25 --timeout "$(scaled 30)" >"$work/primary.log" 2>&1 &
primary=$!
pids+=($primary)

for _ in $(seq "$(scaled 300)"); do
  grep -q "protected: initial checkpoint acknowledged" "$work/primary.log" && break
  kill -0 $primary 2>/dev/null || { cat "$work/primary.log"; exit 1; }
  sleep 0.1
done
echo "== the guest's console and the initial synchronization:"
grep -v -E "^(checkpoints|  pause parts|network):" "$work/primary.log"

echo
echo "== a redis-cli session from the client host, against the protected guest:"
session() {
  for cmd in "PING" "SET greeting 'hello from a protected VM'" "GET greeting" "INCR visits" "INCR visits" \
             "INCR visits" "DBSIZE" "NOSUCHCOMMAND"; do
    echo "$guest_ip:6379> $cmd"
    eval "on client redis-cli -h $guest_ip $cmd" | sed 's/^/  /'
  done
}
session
echo
echo "== redis-benchmark from the client host (20 clients):"
on client redis-benchmark -h "$guest_ip" -t set,get,incr -n 10000 -c 20 -q 2>/dev/null | tr '\r' '\n' | grep "per second"

echo
echo "== the primary's figures (one line a second: checkpoints, then output held for the backup):"
grep -E "^(checkpoints|network):" "$work/primary.log" | tail -n 6
kill -TERM $primary 2>/dev/null || true
wait $primary 2>/dev/null || true
echo
tail -n 4 "$work/primary.log"
kill -TERM $backup 2>/dev/null || true
wait $backup 2>/dev/null || true

echo
echo "== a failover drill: the primary is killed (SIGKILL) while a client writes; bench/drill.py"
bench/drill.py kill-primary --quick

if [ ! -e build/linux-guest/vmlinuz ] || [ ! -e build/linux-guest/initrd.img ]; then
  echo
  echo "== no Linux guest (scripts/linux-guest.sh build/linux-guest did not build one): its section is left out"
  exit 0
fi
echo
echo "== Debian's own kernel with redis-server inside, protected the same way (docs/linux-guests.md)"
ip netns exec "$name-backup" build/cli/understudy backup --listen "$backup_ip:7400" --link-key "$work/link.key" \
  --promote --net-tap "$tap" --control-socket "$work/linux-backup.sock" --failure-timeout-ms "$(scaled 100)" \
  >"$work/linux-backup.log" 2>&1 &
linux_backup=$!
pids+=($linux_backup)
ip netns exec "$name-primary" build/cli/understudy run --kernel build/linux-guest/vmlinuz \
  --initrd build/linux-guest/initrd.img --memory 512M --vcpus 2 --net-tap "$tap" --backup "$backup_ip:7400" \
  --link-key "$work/link.key" --control-socket "$work/linux-primary.sock" --failure-timeout-ms "$(scaled 100)" \
  --epoch-ms 50 --timeout "$(scaled 300)" --append "console=ttyS0 usnet=$guest_ip/24" </dev/null >"$work/linux-primary.log" 2>&1 &
linux_primary=$!
pids+=($linux_primary)
for _ in $(seq "$(scaled 1200)"); do
  grep -q "redis-server on" "$work/linux-primary.log" && break
  kill -0 $linux_primary 2>/dev/null || { tail -n 30 "$work/linux-primary.log"; exit 1; }
  sleep 0.1
done
grep -q "redis-server on" "$work/linux-primary.log" ||
  { tail -n 30 "$work/linux-primary.log"; echo "== redis-server did not come up in the Linux guest within $(scaled 120) s"; exit 1; }
grep -E "understudy-linux: (up|redis-server)|protected:" "$work/linux-primary.log"
echo "== a redis-cli session against redis-server in the protected Linux guest:"
for cmd in "PING" "SET greeting 'hello from a protected Linux VM'" "GET greeting" "INCR visits"; do
  echo "$guest_ip:6379> $cmd"
  eval "on client redis-cli -h $guest_ip $cmd" | sed 's/^/  /'
done
echo
echo "== understudy drill kill-primary against it, from the client host (docs/cli.md):"
on client build/cli/understudy drill kill-primary --primary-socket "$work/linux-primary.sock" \
  --backup-socket "$work/linux-backup.sock" --service "$guest_ip:6379" --warmup 1 --after 10 \
  --max-stall "$(scaled 5)" --timeout "$(scaled 30)"
wait $linux_primary 2>/dev/null || true # the drill killed it
kill -TERM $linux_backup 2>/dev/null || true # the promoted guest
wait 2>/dev/null || true
