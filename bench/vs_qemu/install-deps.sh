#!/usr/bin/env bash
# Installs what bench/vs_qemu needs besides the project's own dependencies, from
# Debian 12's archive. Idempotent; run as root.
#   qemu-system-x86     the peer it compares against (QEMU 7.2: microvm, live migration, COLO)
#   python3             the driver (standard library only, QMP over a unix socket)
#   python3-matplotlib  the PNG plot of both distributions
set -euo pipefail
exec "$(dirname "$0")/../../scripts/install-deps.sh" qemu-system-x86 python3 python3-matplotlib
