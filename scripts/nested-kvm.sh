#!/usr/bin/env bash
# Runs a command where /dev/kvm works, on a machine without it: inside a Linux VM that
# QEMU's emulator (TCG) runs with an emulated AMD-V CPU (-cpu max), so that Debian's kernel
# there loads kvm_amd and offers a real /dev/kvm. The VM sees this machine's whole file
# system (9p, read-write, as root), with its own /tmp, /run and /dev/shm, loopback up and
# the modules the network tests use loaded; the command runs in the current directory.
#
#   scripts/nested-kvm.sh 'cd build && ctest -L kvm'      exit status: the command's
#
# Everything runs emulated, guest CPL0 code included, so it is slow and its timings are
# not this machine's: use it to run the KVM suites and tools where /dev/kvm is missing,
# never to measure (docs/testing.md, "Without /dev/kvm"). Needs root and, once, Debian's
# kernel and busybox packages, fetched into .deps/nested-kvm (nothing is installed).
# NESTED_KVM_MEM (default 8G) and NESTED_KVM_TIMEOUT (seconds, default 3600) tune it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$repo/.deps/nested-kvm
[ $# -eq 1 ] || { echo "usage: scripts/nested-kvm.sh 'COMMAND'" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "nested-kvm: needs root (9p as root, modules, namespaces)" >&2; exit 2; }
for tool in qemu-system-x86_64 apt-get dpkg-deb depmod cpio gzip; do
  command -v "$tool" >/dev/null || { echo "nested-kvm: '$tool' is missing (scripts/install-deps.sh)" >&2; exit 2; }
done

prepare() {
  echo "== nested-kvm: fetching Debian's kernel and busybox into $dir"
  rm -rf "$dir" && mkdir -p "$dir/debs" && chmod 755 "$dir/debs"
  # The kernel the metapackage points at now, unpacked, not installed.
  local image
  image=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
  [ -n "$image" ] || { echo "nested-kvm: no kernel behind linux-image-amd64 (apt-get update?)" >&2; exit 1; }
  (cd "$dir/debs" && apt-get download -q "$image" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed')
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  rm -rf "$dir/debs"
  local version
  version=$(ls "$dir/root/lib/modules")
  depmod -b "$dir/root" "$version"
  ln -s "boot/vmlinuz-$version" "$dir/root/vmlinuz"

  # The initramfs: busybox and the modules that mount this machine's root over 9p.
  local init=$dir/initramfs kernel=$dir/root/lib/modules/$version/kernel
  mkdir -p "$init"/{bin,proc,sys,dev,mnt,mod}
  cp "$dir/root/bin/busybox" "$init/bin/"
  local mods="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache
    net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p"
  for m in $mods; do cp "$kernel/$m.ko" "$init/mod/"; done
  cat >"$init/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(for m in $mods; do printf '%s ' "${m##*/}"; done); do insmod /mod/\$m.ko || echo "nested-kvm: insmod \$m failed"; done
run=\$(sed -n 's/.*understudy.run=\([^ ]*\).*/\1/p' /proc/cmdline)
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 hostroot /mnt; then
  mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount --bind /dev /mnt/dev
  mkdir -p /mnt/dev/pts /mnt/dev/shm; mount -t devpts pts /mnt/dev/pts; mount -t tmpfs shm /mnt/dev/shm
  mount -t tmpfs tmp /mnt/tmp; mount -t tmpfs run /mnt/run
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

[ -f "$dir/.prepared" ] || prepare

run=$(mktemp -d /var/tmp/nested-kvm.XXXXXX)
trap 'rm -rf "$run"' EXIT
# Run inside the VM: the modules, loopback, then the command; its status comes back in a file.
cat >"$run/inside.sh" <<EOF
for m in kvm_amd tun veth bridge br_netfilter sch_netem; do
  modprobe -d '$dir/root' "\$m" || echo "nested-kvm: modprobe \$m failed"
done
ip link set lo up
[ -c /dev/kvm ] || echo "nested-kvm: no /dev/kvm in the VM"
cd '$PWD' && bash -c $(printf '%q' "$1")
echo \$? >'$run/status'
EOF

echo "== nested-kvm: $1"
timeout "${NESTED_KVM_TIMEOUT:-3600}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$(nproc)" \
  -m "${NESTED_KVM_MEM:-8G}" -nographic -no-reboot -kernel "$dir/root/vmlinuz" -initrd "$dir/initramfs.gz" \
  -append "console=ttyS0 loglevel=4 panic=-1 understudy.run=$run" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,id=hostroot,multidevs=remap" </dev/null |
  sed -u -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e '/^\(SeaBIOS\|iPXE\|Press Ctrl-B\|Booting from ROM\)/d' || true
[ -f "$run/status" ] || { echo "nested-kvm: the VM ended before the command did (timeout or crash)" >&2; exit 124; }
exit "$(cat "$run/status")"
