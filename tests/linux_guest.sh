#!/usr/bin/env bash
# ctest linux_guest: Debian's own kernel and an initramfs of busybox (scripts/linux-guest.sh)
# under `understudy run --kernel`, each case checked by what the guest prints:
#   1. boot with 2 vCPUs to the init's marker; the serial console both ways (a line on
#      stdin is read back by the guest); the guest's reboot ends the VM with status 0;
#   2. a snapshot taken at a random moment while the guest runs its own check (us-check:
#      clocks only forward, memory intact, no stall in the kernel log), restored, and the
#      check completed by the restored VM;
#   3. protected with an ext4 disk (checkpoint every 100 ms to a backup on loopback, whose
#      copy of the disk starts empty), the primary killed in the middle of the check and
#      of a loop that appends a numbered line to a file and syncs: the backup promotes,
#      the check completes there, and the copy holds lines 1..N, N as the promoted guest
#      counted them, with a clean file system (e2fsck -fn);
#   4. two disks (docs/disks.md): ext4 written through Linux's own virtio_blk, then
#      checked from the host (debugfs, e2fsck -fn); a read-only disk read, never written;
#   5. bad input refused with a clear message and no VM: not a bzImage, a command line
#      longer than the kernel takes, guest memory too small for the kernel, a snapshot
#      of a VM with a disk.
# With `network` (ctest linux_guest_net), instead: in the namespace topology
# (scripts/topology.sh), redis-server in the guest, protected with output commit, and
# `understudy drill` kill-primary, hang-primary and partition from the client's namespace,
# one after the other on the same guest (`understudy reprotect` to a fresh backup between
# them): each a pass with 0 acknowledged writes lost, the connections kept, the survivor
# watched serving and the replica verified.
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
if [ "$mode" = network ] && { [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v jq >/dev/null ||
                                 ! command -v etcd >/dev/null; }; then
  echo "linux_guest network: needs root, iproute2, jq and etcd: skipped"
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
echo "== redis-server in the guest, protected with the network; kill-primary, hang-primary, partition"
"$topology" up "$name" >/dev/null
"$cli" keygen "$work/link.key" >/dev/null
# The product's failure timeout scaled on slow hosts, as in drill_cli: a starved
# heartbeat must not end the session before the drill does.
net_link=(--link-key "$work/link.key" --failure-timeout-ms "$(scaled 100)")
# Fenced through etcd in the client's namespace (as ctest fencing does): without an
# arbiter a partition is Remus's split brain, which loses the writes the cut-off primary
# acknowledged (docs/failover.md). The product's lease timings, scaled on slow hosts.
ip netns exec "$name-client" etcd --name lg --data-dir "$work/etcd" --listen-client-urls http://10.77.0.10:2379 \
  --advertise-client-urls http://10.77.0.10:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster lg=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_for "$work/etcd.log" "ready to serve client requests" 20
fenced() { # HOLDER
  echo --arbiter etcd --arbiter-endpoint 10.77.0.10:2379 --arbiter-key /understudy/lg/primary --arbiter-holder "$1" \
    --lease-ttl-ms $((($(scaled 2000) + 999) / 1000 * 1000)) --lease-margin-ms "$(scaled 500)" \
    --lease-renew-ms "$(scaled 500)" --arbiter-timeout-ms "$(scaled 500)"
}
# A backup in namespace $1 (primary or backup) at ADDR:PORT $2, control socket $3, log $4.
start_backup() {
  # shellcheck disable=SC2046 # fenced's words are flags
  ip netns exec "$name-$1" "$cli" backup --listen "$2" --promote --net-tap "$name-tap" \
    --control-socket "$3" "${net_link[@]}" $(fenced "${4%.log}") </dev/null >"$work/$4" 2>&1 &
  pids+=($!)
  wait_for "$work/$4" "listening on" 10
}
wait_protected() { # SOCKET
  local state='' deadline=$((SECONDS + $(scaled 120)))
  until [ "$state" = protected ]; do
    [ $SECONDS -lt $deadline ] || fail "not protected within $(scaled 120) s (state: ${state:-none})"
    sleep 0.5
    state=$("$cli" status --control-socket "$1" --json 2>/dev/null | jq -r .state) || true
  done
}
# A drill from the client's namespace: KIND PRIMARY_SOCKET BACKUP_SOCKET [options]; a pass
# with 0 writes lost, the connections kept, a full watch and the replica verified.
lg_drill() {
  local kind=$1 p=$2 b=$3 out
  shift 3
  out=$(ip netns exec "$name-client" "$cli" drill "$kind" --primary-socket "$p" --backup-socket "$b" \
    --service 10.77.0.2:6379 --warmup 1 --after 10 --max-stall "$(scaled 5)" --timeout "$(scaled 30)" --reply-timeout "$(scaled 6)" --json "$@" \
    2>"$work/drill-$kind.log") || { echo "$out"; fail "$kind: the drill did not pass (exit status)"; }
  echo "$out" | jq -e '.verdict == "pass" and .writes_lost == 0 and .writes_acknowledged > 0 and .connections_survived and
    .survivor == "backup" and .service_stopped == null and .watched_s >= 9.5 and .verification_verdict == "match"' >/dev/null ||
    { echo "$out"; fail "$kind: not a pass with 0 writes lost, the connections kept and the replica verified"; }
  echo "   $kind: $(echo "$out" | jq -r '"\(.writes_acknowledged) writes acknowledged, \(.writes_lost) lost; detection \(.detection_ms | floor) ms, outage \(.outage_ms | floor) ms"')"
}
# Each drill leaves the promoted backup as the only copy; the next hop protects it again
# with `understudy reprotect` to a fresh backup in the other namespace, so one boot of
# the guest is failed over three times, each way.
s1=$work/net-primary.sock s2=$work/net-backup.sock s3=$work/net-backup2.sock s4=$work/net-backup3.sock
start_backup backup 10.77.0.12:7400 "$s2" net-backup.log
# shellcheck disable=SC2046
ip netns exec "$name-primary" "$cli" run "${kernel[@]}" --vcpus 2 --net-tap "$name-tap" --backup 10.77.0.12:7400 \
  --control-socket "$s1" "${net_link[@]}" $(fenced net-primary) --epoch-ms 50 --append "$base usnet=10.77.0.2/24" \
  </dev/null >"$work/net-primary.log" 2>&1 &
pids+=($!)
wait_for "$work/net-primary.log" "redis-server on 10.77.0.2:6379" 180
wait_protected "$s1"
lg_drill kill-primary "$s1" "$s2"

start_backup primary 10.77.0.11:7400 "$s3" net-backup2.log
"$cli" reprotect --control-socket "$s2" --backup 10.77.0.11:7400 >/dev/null
wait_protected "$s2"
lg_drill hang-primary "$s2" "$s3"

# Port 7401: the process that listened on 10.77.0.12:7400 was SIGKILLed by the drill just
# now, and may not have closed its socket yet.
start_backup backup 10.77.0.12:7401 "$s4" net-backup3.log
"$cli" reprotect --control-socket "$s3" --backup 10.77.0.12:7401 >/dev/null
wait_protected "$s3"
# Cut the primary's host from the backup and from etcd, both ways (the guest's own frames
# still reach the switch): it loses the role and stops releasing, the backup takes over.
cut_rules="ip rule add priority 10 to 10.77.0.12/32 blackhole && ip rule add priority 11 from 10.77.0.12/32 blackhole &&
  ip rule add priority 12 to 10.77.0.10/32 blackhole && ip rule add priority 13 from 10.77.0.10/32 blackhole &&
  ip rule add priority 100 lookup local && ip rule del priority 0 lookup local"
heal_rules="ip rule add priority 0 lookup local && ip rule del priority 100 &&
  for p in 10 11 12 13; do ip rule del priority \$p; done"
lg_drill partition "$s3" "$s4" --partition-command "ip netns exec $name-primary sh -c '$cut_rules'" \
  --heal-command "ip netns exec $name-primary sh -c '$heal_rules'"
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

echo "== 3. protected with a disk, the primary killed during the guest's check and its fsync loop"
port=$((20000 + $$ % 20000))
"$cli" keygen "$work/link.key" >/dev/null
link=(--link-key "$work/link.key" --failure-timeout-ms "$(scaled 1000)" --heartbeat-ms 100)
# The primary's disk: a fresh ext4; the backup's copy: an empty file of its size, which the
# initial synchronization fills. The guest appends a numbered line to a file and syncs,
# over and over, until its check ends; then it prints how many lines it appended.
truncate -s 64M "$work/protected.img" "$work/copy.img"
mkfs.ext4 -q -F "$work/protected.img"
"$cli" backup --listen "127.0.0.1:$port" --promote --sessions 1 --disk "$work/copy.img" "${link[@]}" </dev/null \
  >"$work/backup.log" 2>&1 &
backup=$!
pids+=("$backup")
wait_for "$work/backup.log" "listening on" 10
cmd='mkdir -p /mnt && mount -t ext4 /dev/vda /mnt &&
 ( i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo line-$i >>/mnt/log; sync; done; echo appended:$i ) &
 us-check 20; touch /tmp/stop; wait; umount /mnt'
"$cli" run "${kernel[@]}" --vcpus 2 --backup "127.0.0.1:$port" --epoch-ms 100 "${link[@]}" --timeout "$(scaled 300)" \
  --disk "$work/protected.img" --append "$base uscmd=\"$(echo "$cmd" | tr '\n' ' ')\"" </dev/null >"$work/primary.log" 2>&1 &
primary=$!
pids+=("$primary")
wait_for "$work/primary.log" "us-check: tick 40" 180
expect "$work/primary.log" "checkpoints: epoch" "the primary reported no checkpoints"
kill -KILL "$primary"
wait "$backup" || fail "the promoted backup did not end with status 0"
expect "$work/backup.log" "PROMOTED: running checkpoint" "the backup did not promote"
expect "$work/backup.log" "us-check: ok" "the promoted guest's check did not pass"
expect "$work/backup.log" "command exited with status 0" "the promoted guest's commands failed"
expect "$work/backup.log" "VM stopped: exited (status 0)" "the promoted guest did not reboot"
# The copy holds exactly what the guest believes it wrote: lines 1..N, each once, in order,
# N as the promoted guest counted; and a clean file system.
appended=$(grep -o 'appended:[0-9]*' "$work/backup.log" | tail -1 | cut -d: -f2)
debugfs -R "cat /log" "$work/copy.img" 2>/dev/null >"$work/log.txt"
[ -n "$appended" ] && [ "$appended" -gt 0 ] || fail "the promoted guest did not report its appends"
seq 1 "$appended" | sed 's/^/line-/' | cmp -s - "$work/log.txt" ||
  fail "the file on the promoted disk is not lines 1..$appended (it has $(wc -l <"$work/log.txt") lines)"
e2fsck -fn "$work/copy.img" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck found the promoted disk damaged"; }
echo "   promoted: $(grep -o 'PROMOTED: running checkpoint [0-9]*' "$work/backup.log"); the check passed on the backup;"
echo "   $appended lines appended and synced, all on the copy in order; the file system clean"

echo "== 4. disks: ext4 through Linux's virtio_blk, checked from the host; a read-only disk"
truncate -s 64M "$work/disk.img"
mkfs.ext4 -q -F "$work/disk.img"
mkdir "$work/seed" && echo "seeded-on-the-host" >"$work/seed/seed"
truncate -s 16M "$work/ro.img"
mkfs.ext4 -q -F -d "$work/seed" "$work/ro.img"
ro_before=$(md5sum <"$work/ro.img")
# vda: a file system written, a 4 MiB file's digest printed, synced; vdb (read-only):
# mounted and read; a raw write to it must fail in the guest.
cmd='mkdir -p /mnt /ro && mount -t ext4 /dev/vda /mnt && echo disk-hello >/mnt/hello &&
 dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null && sync && md5sum /mnt/big &&
 echo serial:$(cat /sys/block/vda/serial) && mount -t ext4 -o ro /dev/vdb /ro && cat /ro/seed && umount /mnt &&
 if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo vdb-written; else echo vdb-refused; fi'
"$cli" run "${kernel[@]}" --timeout "$(scaled 120)" --disk "$work/disk.img" --disk "$work/ro.img,readonly" \
  --append "$base uscmd=\"$(echo "$cmd" | tr '\n' ' ')\"" </dev/null >"$work/disk.log" 2>&1 || fail "the VM with disks did not end with status 0"
expect "$work/disk.log" "command exited with status 0" "the guest's disk commands failed"
expect "$work/disk.log" "serial:understudy-disk0" "the disk's serial (GET_ID) was not seen"
expect "$work/disk.log" "seeded-on-the-host" "the read-only disk's file was not read"
expect "$work/disk.log" "vdb-refused" "a write to the read-only disk did not fail"
[ "$(debugfs -R "cat /hello" "$work/disk.img" 2>/dev/null)" = disk-hello ] || fail "the file the guest wrote is not on the disk"
debugfs -R "dump /big $work/big" "$work/disk.img" >/dev/null 2>&1
guest_md5=$(grep -o '^[0-9a-f]\{32\}  /mnt/big' "$work/disk.log" | cut -c1-32)
[ -n "$guest_md5" ] && [ "$(md5sum <"$work/big" | cut -c1-32)" = "$guest_md5" ] ||
  fail "the 4 MiB file on the disk differs from what the guest wrote (guest: ${guest_md5:-none})"
e2fsck -fn "$work/disk.img" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "e2fsck found the guest's file system damaged"; }
[ "$(md5sum <"$work/ro.img")" = "$ro_before" ] || fail "the read-only disk changed"
echo "   ext4 written by the guest, read back and checked clean on the host; the read-only disk untouched"

echo "== 5. bad input"
refused() { # WHAT PATTERN ARGS...
  local what=$1 pattern=$2
  shift 2
  if "$cli" run "$@" </dev/null >"$work/bad.log" 2>&1; then fail "$what was accepted"; fi
  expect "$work/bad.log" "$pattern" "$what: unclear error"
}
refused "an initrd given as the kernel" "not a bzImage" --kernel "$guest/initrd.img"
refused "a command line of 3000 bytes" "takes at most" --kernel "$guest/vmlinuz" --append "$(head -c 3000 /dev/zero | tr '\0' x)"
refused "32 MiB of guest memory" "to decompress; the guest has 32 MiB" --kernel "$guest/vmlinuz" --memory 32M
refused "a snapshot of a VM with a disk" "snapshots do not carry disks" --kernel "$guest/vmlinuz" \
  --disk "$work/disk.img" --snapshot-after 1 --snapshot-to "$work/never.snap"
refused "a disk of 19 bytes" "multiple of 512 bytes" --kernel "$guest/vmlinuz" --disk "$work/seed/seed"
echo "linux_guest: all cases passed"
