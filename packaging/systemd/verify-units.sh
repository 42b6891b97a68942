#!/bin/sh
# Checks the unit templates with `systemd-analyze verify` (syntax, directives, the
# binary's path) after pointing them at a built `understudy`. Exit 77 (skipped) without
# systemd-analyze. usage: verify-units.sh UNDERSTUDY_BINARY
set -eu
bin=$1
here=$(dirname "$0")
command -v systemd-analyze >/dev/null 2>&1 || { echo "systemd-analyze not found: skipped"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for role in primary backup; do
  sed "s|/usr/bin/understudy|$bin|g" "$here/understudy-$role@.service" >"$tmp/understudy-$role@check.service"
done
cd "$tmp"
out=$(systemd-analyze verify ./understudy-primary@check.service ./understudy-backup@check.service 2>&1) || { echo "$out"; exit 1; }
# verify prints warnings without failing: any line about our units is a failure here.
if printf '%s\n' "$out" | grep -q 'understudy-'; then echo "$out"; exit 1; fi
echo "units ok"
