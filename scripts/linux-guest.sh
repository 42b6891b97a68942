#!/bin/bash
# Builds a Linux guest for `understudy run --kernel` from Debian packages only:
#   OUT_DIR/vmlinuz     Debian's own kernel (the one linux-image-amd64 points at)
#   OUT_DIR/initrd.img  busybox, the virtio/ext4 modules, and Debian's redis-server
# The kernel and busybox are downloaded (apt-get download, unpacked, never installed) into
# OUT_DIR/debs; redis-server is the installed redis-tools binary with the libraries ldd
# names. A second run with nothing changed rebuilds nothing.
#
# What the guest's init does (docs/linux-guests.md):
#   - prints "understudy-linux: up" with the kernel and CPU count, on ttyS0;
#   - with uscmd="..." on the kernel command line: runs it with sh -c, prints its exit
#     status ("understudy-linux: command exited with status N") and reboots (with
#     reboot=k on the command line, Understudy sees a reboot and the VM exits);
#     `us-check SECONDS` is there for tests: the guest's own check of its clocks, memory
#     and kernel log while it runs;
#   - with usnet=ADDR/PREFIX: gives eth0 that address and starts redis-server on it
#     (port 6379) before the command or the shell;
#   - otherwise a shell on the console.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: scripts/linux-guest.sh OUT_DIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
fail() { echo "linux-guest: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb depmod cpio gzip ldd; do
  command -v "$tool" >/dev/null || fail "'$tool' is missing (scripts/install-deps.sh)"
done
[ -x /usr/bin/redis-check-rdb ] || fail "Debian's redis-tools is not installed (it holds the redis-server binary)"

image=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
[ -n "$image" ] || fail "no kernel behind linux-image-amd64 (apt-get update?)"
stamp="$image $(sha256sum "$0" | cut -c1-16) $(sha256sum /usr/bin/redis-check-rdb | cut -c1-16)"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  echo "== linux-guest: $out is up to date ($image)"
  exit 0
fi

debs=$out/debs root=$out/root init=$out/initramfs
if ! ls "$debs/$image"_*.deb >/dev/null 2>&1; then
  rm -rf "$debs" && mkdir -p "$debs" && chmod 755 "$debs"
  echo "== linux-guest: downloading $image and busybox-static"
  (cd "$debs" && apt-get download -q "$image" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed') ||
    fail "could not download $image and busybox-static"
fi
rm -rf "$root" "$init"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
version=$(ls "$root/lib/modules")
cp "$root/boot/vmlinuz-$version" "$out/vmlinuz"

mkdir -p "$init"/{bin,sbin,proc,sys,dev,tmp,run,var/lib/redis,etc,root}
cp "$root/bin/busybox" "$init/bin/"
# The modules a virtio-mmio guest with a network and an ext4 disk needs, with modules.dep.
moddir=lib/modules/$version
for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_mmio drivers/net/virtio_net \
  drivers/net/net_failover net/core/failover drivers/block/virtio_blk fs/ext4/ext4 fs/jbd2/jbd2 fs/mbcache lib/crc16 \
  crypto/crc32c_generic; do
  src=$(ls "$root/$moddir/kernel/$m.ko"* 2>/dev/null | head -1) || true
  [ -n "$src" ] || fail "module $m is not in $image"
  mkdir -p "$init/$moddir/kernel/$(dirname "$m")"
  cp "$src" "$init/$moddir/kernel/$(dirname "$m")/"
done
cp "$root/$moddir"/modules.{order,builtin,builtin.modinfo} "$init/$moddir/" 2>/dev/null || true
depmod -b "$init" "$version"

# redis-server: Debian's binary (redis-check-rdb runs as the server under that name) and its libraries.
cp /usr/bin/redis-check-rdb "$init/bin/redis-server"
for lib in $(ldd /usr/bin/redis-check-rdb | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/lib[^ ]*\) .*/\1/p'); do
  mkdir -p "$init$(dirname "$lib")"
  cp -L "$lib" "$init$lib"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$init/etc/passwd"

# The guest's own check, for tests: clocks that only move forward, memory that keeps its
# contents, and no stall the kernel noticed, across whatever the VMM does meanwhile.
cat >"$init/bin/us-check" <<'CHECK'
#!/bin/sh
# us-check SECONDS: every 0.2 s for SECONDS, checks that uptime grows and the date never
# goes back, and every second that a 4 MiB file in RAM still has its checksum.
n=$(( ${1:-10} * 5 ))
dd if=/dev/urandom of=/tmp/us-check.data bs=64k count=64 2>/dev/null
sum=$(md5sum </tmp/us-check.data)
prev_up=0 prev_date=0 i=0
while [ $i -lt $n ]; do
  up=$(sed 's/^\([0-9]*\)\.\([0-9]*\) .*/\1\2/' /proc/uptime)
  now=$(date +%s)
  [ "$up" -gt "$prev_up" ] || { echo "us-check: FAILED: uptime went from ${prev_up}0 ms to ${up}0 ms"; exit 1; }
  [ "$now" -ge "$prev_date" ] || { echo "us-check: FAILED: the date went back from $prev_date to $now"; exit 1; }
  if [ $((i % 5)) -eq 0 ]; then
    [ "$(md5sum </tmp/us-check.data)" = "$sum" ] || { echo "us-check: FAILED: the file in RAM changed"; exit 1; }
    echo "us-check: tick $i, uptime ${up}0 ms"
  fi
  prev_up=$up prev_date=$now i=$((i + 1))
  sleep 0.2
done
if dmesg | grep -i -e 'soft lockup' -e 'rcu.*stall' -e 'hung task' -e 'clocksource.*unstable'; then
  echo "us-check: FAILED: the kernel reports a stall"
  exit 1
fi
echo "us-check: ok"
CHECK
chmod +x "$init/bin/us-check"

cat >"$init/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "understudy-linux: up ($(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs)"
# crc32c_generic by name: ext4's metadata checksums ask the crypto API for crc32c, and
# busybox's modprobe does not resolve that request's alias, so the mount would fail (ENOENT).
for m in virtio_mmio virtio_net virtio_blk crc32c_generic ext4; do modprobe "$m" 2>/dev/null; done
ip link set lo up
# usnet=ADDR/PREFIX: the first NIC's address (the kernel's own ip= would run before the
# virtio-net module is loaded); redis-server then serves on it, port 6379.
if [ -n "${usnet:-}" ]; then
  ip addr add "$usnet" dev eth0 && ip link set eth0 up && echo "understudy-linux: eth0 $usnet"
  redis-server --bind "${usnet%/*}" --port 6379 --protected-mode no --save "" --appendonly no --daemonize yes \
    --dir /var/lib/redis --logfile /var/lib/redis/log && echo "understudy-linux: redis-server on ${usnet%/*}:6379"
fi
if [ -n "${uscmd:-}" ]; then
  sh -c "$uscmd"
  echo "understudy-linux: command exited with status $?"
  sync
  reboot -f
fi
exec setsid cttyhack sh
INIT
chmod +x "$init/init"
(cd "$init" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n -1 >"$out/initrd.img.new")
mv "$out/initrd.img.new" "$out/initrd.img"
rm -rf "$root"
echo "$stamp" >"$out/.stamp"
echo "== linux-guest: $out/vmlinuz ($version), $out/initrd.img ($(du -h "$out/initrd.img" | cut -f1))"
