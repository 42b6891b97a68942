#!/usr/bin/env bash
# Installs what bench/vs_qemu needs beyond scripts/install-deps.sh, from Debian 12's
# archive, and nothing that is already there. Idempotent; run as root.
#   qemu-system-x86     the peer it compares against (QEMU 7.2: microvm, live migration, COLO)
#   python3             the driver (standard library only, QMP over a unix socket)
#   python3-matplotlib  the PNG plot of both distributions
set -euo pipefail

packages=(qemu-system-x86 python3 python3-matplotlib)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "== vs_qemu dependencies: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "vs_qemu install-deps: these packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
echo "== installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
