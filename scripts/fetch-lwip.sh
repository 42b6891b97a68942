#!/usr/bin/env bash
# Fetches lwIP's source (Debian's source package `lwip`, bookworm) into .deps/lwip,
# which the guest build compiles freestanding (guest/CMakeLists.txt, US_LWIP_DIR).
# Uses a private sources file and lists directory: the system's apt configuration is
# neither read for sources nor changed, and no root is needed. Idempotent.
set -euo pipefail

version=2.1.3+dfsg1-2
unpacked=lwip-2.1.3+dfsg1
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=$repo/.deps/lwip
stamp=$dest/$unpacked/.fetched-$version

if [ -f "$stamp" ]; then
  echo "== lwip $version: present in $dest/$unpacked"
  exit 0
fi

for tool in apt-get dpkg-source; do
  command -v "$tool" >/dev/null || {
    echo "fetch-lwip: '$tool' is missing (apt-get install dpkg-dev, or run scripts/install-deps.sh)" >&2
    exit 1
  }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "fetch-lwip: $keyring is missing (package debian-archive-keyring)" >&2; exit 1; }

echo "== lwip $version: fetching Debian's source package into $dest"
rm -rf "$dest"
apt=$dest/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
cat >"$apt/src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: $keyring
SOURCES

opts=(
  -o "Dir::Etc::SourceList=$apt/src.sources" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
  -o APT::Sandbox::User="$(id -un)"
)
apt-get "${opts[@]}" -qq update || {
  echo "fetch-lwip: apt-get update from deb.debian.org failed (network?)" >&2
  exit 1
}
(cd "$dest" && apt-get "${opts[@]}" -q source "lwip=$version") || {
  echo "fetch-lwip: apt-get source lwip=$version failed" >&2
  exit 1
}
[ -f "$dest/$unpacked/src/core/tcp.c" ] || {
  echo "fetch-lwip: expected $dest/$unpacked/src/core/tcp.c after unpacking" >&2
  exit 1
}
rm -rf "$apt"
touch "$stamp"
echo "== lwip $version: unpacked in $dest/$unpacked"
