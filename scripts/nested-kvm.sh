#!/usr/bin/env bash
# Runs a command where /dev/kvm works, on a machine without it: inside a Linux VM that
# QEMU's emulator (TCG) runs with an emulated AMD-V CPU (-cpu max), so that Debian's kernel
# there loads kvm_amd and offers a real /dev/kvm. The VM sees this machine's whole file
# system (9p, read-write, as root), with its own /tmp, /run and /dev/shm (the current
# directory and the repository stay visible even when they lie under those), loopback up
# and the modules the network tests use loaded; the command runs in the current directory.
#
#   scripts/nested-kvm.sh 'cd build && ctest -L kvm'
#
# Everything runs emulated, guest CPL0 code included, so it is slow and its timings are
# not this machine's: use it to run the KVM suites and tools where /dev/kvm is missing,
# never to measure (docs/testing.md, "Without /dev/kvm"). Needs root and, once, Debian's
# kernel and busybox packages, fetched into .deps/nested-kvm (nothing is installed).
#
# Inside, UNDERSTUDY_TEST_TIME_SCALE (docs/testing.md) is NESTED_KVM_TIME_SCALE (default
# 10) unless already set, and these variables of the caller are passed on: UNDERSTUDY_*,
# ASAN_OPTIONS, UBSAN_OPTIONS, CI. NESTED_KVM_MEM (default 8G) and NESTED_KVM_TIMEOUT
# (seconds, default 3600) tune the VM; the VM's console goes to NESTED_KVM_CONSOLE
# (default .deps/nested-kvm/console.log) as well as to the standard output.
# NESTED_KVM_AMD_OPTIONS (default npt=0) are kvm_amd's module options in the VM.
# NESTED_KVM_TCG_THREAD (multi, the default, or single) picks QEMU's TCG threading: one
# host thread per emulated CPU, or one for all (coherent after the kernel patches its
# own text, but the replication suite ran 2.6 times slower; docs/testing.md).
#
# Exit status: the command's own, or one of the runner's, each with its own last line:
#   120  the VM could not be set up (missing tool, no kernel, not root)
#   121  the VM's kernel panicked before the command finished
#   122  the VM could not reach the command (no /dev/kvm there, 9p mount failed)
#   123  the VM ended before the command did, for another reason
#   124  the command did not finish within NESTED_KVM_TIMEOUT
#   125  the VM hung: nothing on its console, not even the pulse, for NESTED_KVM_HANG_S
#        (default three pulses and a minute), or its kernel reports a CPU stuck for
#        100 s or more; what its CPUs were doing is printed
# A VM that hangs, panics or ends before the command starts is booted again, once.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$repo/.deps/nested-kvm
fail() { echo "nested-kvm: $2" >&2; exit "$1"; }
[ $# -eq 1 ] || { echo "usage: scripts/nested-kvm.sh 'COMMAND'" >&2; exit 120; }
[ "$(id -u)" -eq 0 ] || fail 120 "needs root (9p as root, modules, namespaces)"
for tool in qemu-system-x86_64 apt-get dpkg-deb depmod cpio gzip timeout; do
  command -v "$tool" >/dev/null || fail 120 "'$tool' is missing (scripts/install-deps.sh)"
done

prepare() {
  echo "== nested-kvm: fetching Debian's kernel and busybox into $dir"
  rm -rf "$dir" && mkdir -p "$dir/debs" && chmod 755 "$dir/debs"
  # The kernel the metapackage points at now, unpacked, not installed.
  local image
  image=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
  [ -n "$image" ] || fail 120 "no kernel behind linux-image-amd64 (apt-get update?)"
  (cd "$dir/debs" && apt-get download -q "$image" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed') ||
    fail 120 "could not download $image and busybox-static"
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  rm -rf "$dir/debs"
  local version
  version=$(ls "$dir/root/lib/modules")
  depmod -b "$dir/root" "$version"
  ln -s "boot/vmlinuz-$version" "$dir/root/vmlinuz"

  # The initramfs: busybox and the modules that mount this machine's root over 9p.
  local init=$dir/initramfs kernel=$dir/root/lib/modules/$version/kernel
  mkdir -p "$init"/{bin,proc,sys,dev,mnt,mod,host}
  cp "$dir/root/bin/busybox" "$init/bin/"
  local mods="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache
    net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p"
  for m in $mods; do cp "$kernel/$m.ko" "$init/mod/"; done
  # The VM's own /tmp, /run and /dev/shm are tmpfs (unix sockets and scratch files
  # must not go through 9p); the folders the command needs that lie under them
  # (understudy.keep=, colon-separated) are bound back from this machine's over 9p.
  cat >"$init/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(for m in $mods; do printf '%s ' "${m##*/}"; done); do insmod /mod/\$m.ko || echo "nested-kvm: insmod \$m failed"; done
arg() { sed -n "s/.*understudy\\.\$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
run=\$(arg run)
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 hostroot /mnt; then
  mount --bind /mnt /host
  mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount --bind /dev /mnt/dev
  mkdir -p /mnt/dev/pts /mnt/dev/shm; mount -t devpts pts /mnt/dev/pts; mount -t tmpfs shm /mnt/dev/shm
  mount -t tmpfs tmp /mnt/tmp; mount -t tmpfs run /mnt/run
  for p in \$(arg keep | tr ':' ' '); do mkdir -p "/mnt\$p" && mount --bind "/host\$p" "/mnt\$p"; done
  chroot /mnt /bin/bash "\$run/inside.sh"
else
  echo "nested-kvm: mounting this machine's root over 9p failed"
fi
poweroff -f
EOF
  chmod +x "$init/init"
  (cd "$init" && find . | cpio -o -H newc --quiet | gzip -1 >"$dir/initramfs.gz")
  touch "$dir/.prepared"
}

# Set up by an older version of this script (no /host in the initramfs): prepare again.
[ -f "$dir/.prepared" ] && [ -d "$dir/initramfs/host" ] || prepare

run=$(mktemp -d /var/tmp/nested-kvm.XXXXXX)
trap 'rm -rf "$run"' EXIT
# Folders under the VM's own tmpfs mounts that must stay this machine's.
keep=()
for p in "$PWD" "$repo"; do
  case $p in /tmp/* | /run/* | /dev/shm/*) keep+=("$p") ;; esac
done
[[ "$(printf '%s' "${keep[@]}")" != *[[:space:]:]* ]] || fail 120 "the current folder or the repository has a space or ':' in its path"

# The VM's KVM uses shadow paging (npt=0) by default: with the emulated nested paging,
# its guests triple-faulted now and then (a #PF whose delivery failed, in pages that are
# always mapped) and the VM's kernel panicked; docs/testing.md, "When the nested VM fails".
kvm_amd_options=${NESTED_KVM_AMD_OPTIONS-npt=0}
[[ $kvm_amd_options =~ ^[a-z_]+=[A-Za-z0-9]+( [a-z_]+=[A-Za-z0-9]+)*$|^$ ]] ||
  fail 120 "NESTED_KVM_AMD_OPTIONS='$kvm_amd_options' is not a list of name=value"
pulse=${NESTED_KVM_PULSE:-60}
[[ $pulse =~ ^[0-9]+$ ]] || fail 120 "NESTED_KVM_PULSE=$pulse is not a whole number of seconds"
# Run inside the VM: the modules, loopback, then the command; its status comes back in a file.
{
  echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
  echo "export UNDERSTUDY_TEST_TIME_SCALE=$(printf '%q' "${UNDERSTUDY_TEST_TIME_SCALE:-${NESTED_KVM_TIME_SCALE:-10}}")"
  echo "export UNDERSTUDY_NESTED=1"
  while read -r name; do
    [[ $name =~ ^(UNDERSTUDY_.*|ASAN_OPTIONS|UBSAN_OPTIONS|CI)$ ]] || continue
    [ "$name" = UNDERSTUDY_TEST_TIME_SCALE ] && continue
    printf 'export %s=%q\n' "$name" "${!name}"
  done < <(compgen -e)
  cat <<EOF
modprobe -d '$dir/root' kvm_amd $kvm_amd_options || echo "nested-kvm: modprobe kvm_amd $kvm_amd_options failed"
for m in tun veth bridge br_netfilter sch_netem; do
  modprobe -d '$dir/root' "\$m" || echo "nested-kvm: modprobe \$m failed"
done
ip link set lo up
# The kernel's code symbols, for naming a hung VM's RIPs (Debian ships no usable System.map).
awk '\$2 == "t" || \$2 == "T" { print \$1, \$3 }' /proc/kallsyms >'$run/kallsyms' &
if [ ! -c /dev/kvm ]; then echo unreachable >'$run/status'; echo "nested-kvm: no /dev/kvm in the VM"; exit; fi
cd '$PWD' || { echo unreachable >'$run/status'; exit; }
python3 '$repo/scripts/nested-kvm-anchor.py' || { echo unreachable >'$run/status'; exit; }
echo started >'$run/status'
# A sign of life every NESTED_KVM_PULSE seconds (default 60; 0: none): the VM's uptime,
# load and busiest processes, so that a slow run can be told from a stuck one.
pulse=$pulse
if [ "\$pulse" -gt 0 ] 2>/dev/null; then
  (while sleep "\$pulse"; do
     echo "nested-kvm: up \$(cut -d' ' -f1 /proc/uptime) s, load \$(cut -d' ' -f1-3 /proc/loadavg); busiest:"
     ps -eo pcpu=,etimes=,args= --sort=-pcpu | head -n 3 | cut -c1-150 | sed 's/^/  /'
   done) &
fi
bash -c $(printf '%q' "$1")
echo \$? >'$run/status'
EOF
} >"$run/inside.sh"

console=${NESTED_KVM_CONSOLE:-$dir/console.log}
limit=${NESTED_KVM_TIMEOUT:-3600}
tcg_thread=${NESTED_KVM_TCG_THREAD:-multi}
[[ $tcg_thread =~ ^(single|multi)$ ]] || fail 120 "NESTED_KVM_TCG_THREAD=$tcg_thread is neither single nor multi"
# A VM that prints nothing, not even its pulse, for this long has hung: the watchdog
# below records what its CPUs do (QEMU's monitor) and ends it.
silence=${NESTED_KVM_HANG_S:-$(( pulse > 0 ? 3 * pulse + 60 : 900 ))}
: >"$console"
# So has one whose kernel reports a CPU stuck for 100 s or more: it still prints, but
# nothing else runs (seen: both CPUs looping on an int3 of the kernel's own code patching,
# docs/testing.md).
watchdog() {
  local why
  while sleep 15; do
    [ -S "$run/monitor" ] || continue
    if [ $(( $(date +%s) - $(stat -c %Y "$console") )) -ge "$silence" ]; then
      why="no output from the VM for $silence s"
    elif grep -qE "soft lockup - CPU#[0-9]+ stuck for [0-9]{3,}s" "$console"; then
      why="the VM's kernel reports a CPU stuck for 100 s or more"
    elif [ ! -s "$run/status" ] && grep -q "soft lockup - CPU#" "$console"; then
      why="the VM's kernel reports a CPU stuck before the command started"
    else
      continue
    fi
    echo "nested-kvm: $why: it hung" >>"$console"
    touch "$run/hung" # before the monitor ends QEMU, which the main script then sees
    python3 "$repo/scripts/nested-kvm-monitor.py" "$run/monitor" "$run/kallsyms" >>"$console" 2>&1 || true
    return
  done
}
echo "== nested-kvm: $1"
# A VM that hangs, panics or ends before the command starts (seen: the VM's kernel stuck
# patching its own text when the first KVM VM is created, docs/testing.md) has run
# nothing of it: it is booted again, once, its console kept beside.
for boot in 1 2; do
  rm -f "$run/status" "$run/hung" "$run/monitor"
  : >"$console"
  watchdog &
  watchdog_pid=$!
  trap 'kill $watchdog_pid 2>/dev/null || true; rm -rf "$run"' EXIT
  set +e
  timeout "$limit" qemu-system-x86_64 -accel "tcg,thread=$tcg_thread" -cpu max -smp "$(nproc)" \
    -m "${NESTED_KVM_MEM:-8G}" -nographic -no-reboot -kernel "$dir/root/vmlinuz" -initrd "$dir/initramfs.gz" \
    -append "console=ttyS0 loglevel=4 panic=-1 nokaslr understudy.run=$run understudy.keep=$(IFS=:; echo "${keep[*]}")" \
    -monitor "unix:$run/monitor,server=on,wait=off" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,id=hostroot,multidevs=remap" </dev/null |
    sed -u -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e '/^\(SeaBIOS\|iPXE\|Press Ctrl-B\|Booting from ROM\)/d' |
    tee -a "$console"
  qemu_status=${PIPESTATUS[0]}
  set -e
  kill $watchdog_pid 2>/dev/null || true
  status=$(cat "$run/status" 2>/dev/null || true)
  [ "$boot" -eq 1 ] && [ -z "$status" ] && [ "$qemu_status" -ne 124 ] || break
  cp "$console" "$console.first-boot"
  echo "nested-kvm: the VM failed before the command started (console in $console.first-boot): booting it again"
done
case $status in
  [0-9]*) echo "nested-kvm: the command exited $status"; exit "$status" ;;
  unreachable) fail 122 "the VM could not run the command (see the lines above)" ;;
esac
if [ -f "$run/hung" ]; then
  sed -n '/^nested-kvm: .*: it hung$/,$p' "$console" >&2
  fail 125 "the VM hung (its CPUs above); console in $console"
fi
[ "$qemu_status" -eq 124 ] && fail 124 "timed out after $limit s (NESTED_KVM_TIMEOUT); console in $console"
grep -q "Kernel panic" "$console" && fail 121 "the VM's kernel panicked (${status:-before the command started}); console in $console"
fail 123 "the VM ended before the command did (QEMU exit $qemu_status); console in $console"
