#!/usr/bin/env bash
# Debian's Prometheus (the server and promtool) for the monitoring test, unpacked from its .deb
# into a cache outside the repository: no service is installed or started, nothing in /usr.
#
#   export PROMETHEUS_BIN=$(bash scripts/prometheus.sh)
#
# stdout: ONLY the absolute path of the bin directory (holds `prometheus` and `promtool`).
#         Everything else goes to stderr.
#
# Cache: ${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}/prometheus/
#   bin/          prometheus, promtool
#   root/         the unpacked package (dpkg-deb -x)
#   stamp         the package version, written last, only after a working unpack
#
# Needs root the first time (apt-get download, and apt-get update when the package lists lack
# it). The binaries link only libc (Go), so the package's other dependencies (the web UI's
# JavaScript libraries, adduser) are not needed for the HTTP API and are not installed.
set -euo pipefail
exec 3>&1 1>&2

CACHE_ROOT=${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}
DIR=$CACHE_ROOT/prometheus
BIN=$DIR/bin
STAMP=$DIR/stamp

works() {
  [ -s "$STAMP" ] && "$BIN/prometheus" --version >/dev/null 2>&1 && "$BIN/promtool" --version >/dev/null 2>&1
}

if works; then
  echo "$BIN" >&3
  exit 0
fi

T0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/prometheus-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# _apt cannot write into a private mktemp directory; it downloads as root there (apt warns).
chmod 755 "$WORK"
if ! apt-get download -qq prometheus 2>/dev/null; then
  echo "prometheus.sh: prometheus not in the package lists; running apt-get update"
  apt-get update -qq
  apt-get download -qq prometheus
fi
deb=$(ls prometheus_*.deb)
version=$(dpkg-deb -f "$deb" Version)

rm -rf "$DIR"
mkdir -p "$DIR/root" "$BIN"
dpkg-deb -x "$deb" "$DIR/root"
ln -s ../root/usr/bin/prometheus "$BIN/prometheus"
ln -s ../root/usr/bin/promtool "$BIN/promtool"
"$BIN/prometheus" --version | head -1
"$BIN/promtool" --version | head -1
echo "prometheus $version" >"$STAMP"
echo "prometheus.sh: Debian's prometheus $version unpacked into $DIR in $((SECONDS - T0)) s"
echo "$BIN" >&3
