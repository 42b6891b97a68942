#!/usr/bin/env bash
# Installs what bench/vs_qemu needs besides the project's own dependencies, from
# Debian 12's archive. Idempotent; run as root.
# The project's own list already has qemu-system-x86 (QEMU 7.2: microvm, live migration,
# COLO), the peer it compares against, and python3, its driver (standard library only, QMP
# over a unix socket).
#   python3-matplotlib  the PNG plot of both distributions
set -euo pipefail
exec "$(dirname "$0")/../../scripts/install-deps.sh" python3-matplotlib
