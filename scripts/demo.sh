#!/usr/bin/env bash
# The main job: install what is missing, build, boot the sample guest (churn on two
# vCPUs for three seconds), show its console and a dirty-page summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec build/cli/understudy run build/guest/churn.elf --memory 256M --vcpus 2 \
  --cmdline "pages=4096 rate=20000 seconds=3"
