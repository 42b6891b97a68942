#!/usr/bin/env bash
# Installs what Understudy needs from Debian 12's archive, and nothing that is already
# there. Idempotent; run as root. Extra package names given as arguments are installed
# too (bench/vs_qemu/install-deps.sh uses this).
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  liburing-dev liblz4-dev libxxhash-dev libboost-dev libboost-program-options-dev
  libspdlog-dev libfmt-dev catch2
  iproute2 iputils-ping tcpdump tshark redis-tools etcd-server etcd-client curl
  python3 jq # tests/drill_fake_pair.py, tests/drill_cli.sh, bench/*.py
  libssl-dev libtomlplusplus-dev gnuplot-nox
  clang-16 libclang-rt-16-dev # libFuzzer; clang 14 cannot compile libstdc++ 12's std::expected
  qemu-system-x86 # tests/test_qemu_guest.cpp and bench/vs_qemu: the guest images under QEMU microvm
  kmod cpio # scripts/nested-kvm.sh (depmod, the initramfs)
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "== dependencies: all present"
  exec "$(dirname "$0")/fetch-lwip.sh"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: these packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
echo "== installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# wireshark-common (for tshark) asks whether non-root users may capture: answer no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
"$(dirname "$0")/fetch-lwip.sh"
