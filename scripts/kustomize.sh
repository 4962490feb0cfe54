#!/usr/bin/env bash
# Prints the path of a kustomize binary for the chart tests, installing Debian's package on first
# use. bookworm has no kustomize; trixie's package (a Go binary needing only libc) is downloaded
# through a private apt state and unpacked into a cache outside the repo. The host's apt
# configuration is never modified. Needs root only for the first download.
set -euo pipefail

if command -v kustomize >/dev/null 2>&1; then
  command -v kustomize
  exit 0
fi

CACHE=${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}/kustomize
BIN=$CACHE/root/usr/bin/kustomize
if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || { echo "kustomize.sh: $KEYRING not found (package debian-archive-keyring)" >&2; exit 1; }
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/download"
touch "$APT/status"
echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main" >"$APT/sources.list"
OPTS=(
  -o "Dir::Etc::SourceList=$APT/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::State::Status=$APT/status"
  -o "Dir::Cache=$APT/cache"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
  -o "Acquire::Retries=3"
)
echo "kustomize.sh: downloading Debian trixie's kustomize into $CACHE" >&2
apt-get "${OPTS[@]}" -qq update >&2
(cd "$CACHE/download" && rm -f kustomize_*.deb && apt-get "${OPTS[@]}" -qq download kustomize/trixie >&2)
rm -rf "$CACHE/root"
dpkg-deb -x "$CACHE"/download/kustomize_*.deb "$CACHE/root"
"$BIN" version >&2
echo "$BIN"
