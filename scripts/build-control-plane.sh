#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver + kube-controller-manager
# v1.20.2, etcd 3.4.x) from Debian's archive into a cache directory outside the
# repository, for the end-to-end tests.
#
#   export KUBEBUILDER_ASSETS=$(bash scripts/build-control-plane.sh)
#
# stdout: ONLY the absolute path of the bin directory (contains exactly `etcd`,
#         `kube-apiserver`, `kube-controller-manager`). Everything else -> stderr.
#
# Cache: ${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}/control-plane-v1.20.2/
#   bin/          the three binaries (final)
#   build.stamp   written last, only after a fully successful build
#   work/         downloads, private apt state, Go 1.15 toolchain, source tree, GOCACHE
#
# Sources (see /work/shared/reference/control-plane.md):
#   - kubernetes_1.20.5+really1.20.2.orig.tar.gz (Debian bullseye; git archive of
#     upstream v1.20.2 incl. vendor/), pinned by sha256.
#   - golang-1.15-go + golang-1.15-src from bullseye (Go >= 1.18 breaks reflect2 1.0.1).
#   - etcd-server from bookworm (etcd 3.4.23).
# The host's apt configuration is never modified: bullseye/bookworm indexes are
# fetched into a private apt state directory under work/.
#
# Environment knobs:
#   NFS_PROVISIONER_CACHE   cache root (default /var/cache/nfs-subdir-provisioner)
#   DEBIAN_MIRROR           Debian mirror (default http://deb.debian.org/debian)
#   CP_KEEP_WORK=0          delete work/ (source tree, GOCACHE, toolchain) after success
set -euo pipefail

# Everything goes to stderr; fd 3 is the real stdout, used once at the very end.
exec 3>&1 1>&2

K8S_VERSION=v1.20.2
K8S_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56   # `git get-tar-commit-id` of the orig tarball
K8S_BUILD_DATE=2021-01-13T13:19:01Z                   # mtime recorded in the orig tarball
ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
SRC_PKG_VERSION=1.20.5+really1.20.2-1
# Bump when the recipe changes so that existing caches are rebuilt.
RECIPE_ID="control-plane recipe 1: kubernetes ${K8S_VERSION} (${ORIG_SHA256}), go1.15 bullseye, etcd-server bookworm"

CACHE_ROOT=${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

case $CACHE_ROOT in
  /*) ;;
  *) CACHE_ROOT=$PWD/$CACHE_ROOT ;;
esac
CP_DIR=$CACHE_ROOT/control-plane-$K8S_VERSION
BIN_DIR=$CP_DIR/bin
STAMP=$CP_DIR/build.stamp
BINARIES=(etcd kube-apiserver kube-controller-manager)

# ---------------------------------------------------------------------------
# Fast path: no subprocesses, just file tests and a builtin read.
# ---------------------------------------------------------------------------
cache_is_valid() {
  local b line
  for b in "${BINARIES[@]}"; do
    [[ -f $BIN_DIR/$b && -x $BIN_DIR/$b ]] || return 1
  done
  [[ -f $STAMP ]] || return 1
  IFS= read -r line <"$STAMP" || return 1
  [[ $line == "$RECIPE_ID" ]]
}

if cache_is_valid; then
  printf '%s\n' "$BIN_DIR" >&3
  exit 0
fi

# ---------------------------------------------------------------------------
# Slow path helpers
# ---------------------------------------------------------------------------
STEP="startup"
SCRIPT_T0=$EPOCHREALTIME
STEP_T0=$EPOCHREALTIME

log() { printf 'build-control-plane: %s\n' "$*"; }
die() { log "ERROR in step '$STEP': $*"; exit 1; }

elapsed() { # $1 = start (EPOCHREALTIME) -> seconds with 1 decimal
  local now=$EPOCHREALTIME
  awk -v a="$1" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}

# Long steps (go build of kube-apiserver takes minutes) are never silent: every 30 s a line says
# which step is still running and for how long.
STEP_FILE=$(mktemp)
heartbeat() {
  local t0=$EPOCHREALTIME current
  while sleep 30; do
    IFS= read -r current <"$STEP_FILE" || current=?
    log "... still in step '$current' ($(elapsed "$t0")s since the build started)"
  done
}
heartbeat 3>&- &
HEARTBEAT=$!

step() {
  if [[ $STEP != startup ]]; then
    log "step '$STEP' done in $(elapsed "$STEP_T0")s"
  fi
  STEP=$1
  STEP_T0=$EPOCHREALTIME
  printf '%s\n' "$STEP" >"$STEP_FILE"
  log "==> step '$STEP'"
}

on_exit() {
  local rc=$?
  kill "$HEARTBEAT" 2>/dev/null || true
  rm -f "$STEP_FILE"
  if ((rc != 0)); then
    log "FAILED in step '$STEP' (exit $rc) after $(elapsed "$SCRIPT_T0")s; no stamp written, re-run to retry"
    # Remove half-done artefacts of this run; the next run also cleans them up.
    rm -rf "${WORK:-/nonexistent}"/*.partial "$CP_DIR/bin.partial" "$CP_DIR/build.stamp.partial" 2>/dev/null || true
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$CP_DIR/work

# ---------------------------------------------------------------------------
step "prepare cache directory"
mkdir -p "$CP_DIR" || die "cannot create $CP_DIR (set NFS_PROVISIONER_CACHE to a writable directory)"
[[ -w $CP_DIR ]] || die "$CP_DIR is not writable (set NFS_PROVISIONER_CACHE to a writable directory)"
# Serialise concurrent runs (e.g. several test processes calling this at once).
exec 9>"$CP_DIR/.lock"
if ! flock -n 9; then
  log "another build holds $CP_DIR/.lock; waiting"
  flock 9 || die "cannot lock $CP_DIR/.lock"
fi
if cache_is_valid; then
  log "cache was completed by a concurrent run"
  printf '%s\n' "$BIN_DIR" >&3
  exit 0
fi
# Invalidate first, so an interrupted build can never look complete.
rm -f "$STAMP" "$STAMP.partial"
rm -rf "$BIN_DIR" "$CP_DIR/bin.partial"
mkdir -p "$WORK"
# Remove half-extracted / half-downloaded leftovers of interrupted runs.
rm -rf "$WORK"/*.partial
log "cache: $CP_DIR"

# ---------------------------------------------------------------------------
step "install host build tools"
missing=()
command -v rsync >/dev/null || missing+=(rsync)
command -v make >/dev/null || missing+=(make)
command -v curl >/dev/null || missing+=(curl)
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
for t in tar gzip dpkg dpkg-deb apt-get sha256sum awk flock; do
  command -v "$t" >/dev/null || die "required tool '$t' is missing"
done
if ((${#missing[@]})); then
  ((EUID == 0)) || die "missing host packages (${missing[*]}) and not root; install them first"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    log "apt-get install failed; refreshing host package lists and retrying"
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
  fi
else
  log "all present (rsync, make, curl, ca-certificates)"
fi

# ---------------------------------------------------------------------------
step "private apt indexes (bullseye + bookworm)"
APT_DIR=$WORK/apt
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $KEYRING ]] || die "$KEYRING not found (package debian-archive-keyring)"
cat >"$APT_DIR/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR bullseye main
deb [signed-by=$KEYRING] $MIRROR bookworm main
EOF
cat >"$APT_DIR/sources-src.list" <<EOF
deb-src [signed-by=$KEYRING] $MIRROR bullseye main
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$APT_DIR/lists"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
  -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
  -o "Acquire::Retries=3"
)
apt-get "${APT_OPTS[@]}" -q update || die "apt-get update of the private bullseye/bookworm sources failed"

# ---------------------------------------------------------------------------
step "download kubernetes orig tarball"
DL=$WORK/downloads
mkdir -p "$DL"
TARBALL=$DL/$ORIG_TARBALL
sha_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | awk '{print $1}') == "$ORIG_SHA256" ]]; }
if sha_ok "$TARBALL"; then
  log "already downloaded, checksum ok"
else
  rm -f "$TARBALL"
  url=$MIRROR/pool/main/k/kubernetes/${ORIG_TARBALL//+/%2b}
  log "fetching $url"
  if curl -fsSL --retry 3 -o "$TARBALL.part" "$url" && mv "$TARBALL.part" "$TARBALL" && sha_ok "$TARBALL"; then
    log "checksum ok"
  else
    rm -f "$TARBALL" "$TARBALL.part"
    log "direct pool download failed; falling back to 'apt-get source' (bullseye deb-src)"
    SRC_OPTS=("${APT_OPTS[@]}" -o "Dir::Etc::SourceList=$APT_DIR/sources-src.list"
      -o "Dir::State::Lists=$APT_DIR/lists-src" -o "Dir::Cache=$APT_DIR/cache-src")
    mkdir -p "$APT_DIR/lists-src/partial" "$APT_DIR/cache-src/archives/partial"
    apt-get "${SRC_OPTS[@]}" -q update || die "apt-get update of bullseye deb-src failed"
    mkdir -p "$DL/src.partial"
    # Exits non-zero: the .dsc and .debian.tar.xz of this version 404, the orig tarball arrives.
    (cd "$DL/src.partial" && apt-get "${SRC_OPTS[@]}" -q --download-only source "kubernetes=$SRC_PKG_VERSION") ||
      log "(apt-get source exited non-zero, as expected: .dsc/.debian.tar.xz are gone from the pool)"
    [[ -f $DL/src.partial/$ORIG_TARBALL ]] || die "apt-get source did not fetch $ORIG_TARBALL"
    mv "$DL/src.partial/$ORIG_TARBALL" "$TARBALL"
    rm -rf "$DL/src.partial"
  fi
  sha_ok "$TARBALL" || { rm -f "$TARBALL"; die "sha256 mismatch for $ORIG_TARBALL (expected $ORIG_SHA256)"; }
fi

# ---------------------------------------------------------------------------
step "download debs (golang-1.15 from bullseye, etcd-server from bookworm)"
DEBS=$WORK/debs
rm -rf "$DEBS"
mkdir -p "$DEBS.partial"
(cd "$DEBS.partial" && apt-get "${APT_OPTS[@]}" -q download golang-1.15-go/bullseye golang-1.15-src/bullseye etcd-server/bookworm) ||
  die "apt-get download of golang-1.15-go, golang-1.15-src, etcd-server failed"
mv "$DEBS.partial" "$DEBS"
ls -l "$DEBS"

# ---------------------------------------------------------------------------
step "extract Go 1.15 toolchain"
GO_PREFIX=$WORK/go1.15
rm -rf "$GO_PREFIX"
mkdir -p "$GO_PREFIX.partial"
for deb in "$DEBS"/golang-1.15-go_*.deb "$DEBS"/golang-1.15-src_*.deb; do
  [[ -f $deb ]] || die "missing $deb"
  dpkg -x "$deb" "$GO_PREFIX.partial" || die "dpkg -x $deb failed"
done
mv "$GO_PREFIX.partial" "$GO_PREFIX"
export GOROOT=$GO_PREFIX/usr/lib/go-1.15
[[ -x $GOROOT/bin/go ]] || die "no go binary at $GOROOT/bin/go"
[[ -d $GOROOT/src/runtime ]] || die "Go sources missing under $GOROOT/src (golang-1.15-src)"
export PATH=$GOROOT/bin:$PATH
go_version=$(go version) || die "go version failed"
log "$go_version"
[[ $go_version == "go version go1.15."* ]] || die "expected go1.15.x, got: $go_version"

# ---------------------------------------------------------------------------
step "extract etcd"
ETCD_X=$WORK/etcd
rm -rf "$ETCD_X"
mkdir -p "$ETCD_X.partial"
deb=$(compgen -G "$DEBS/etcd-server_*.deb" | head -n1) || die "etcd-server deb missing"
dpkg -x "$deb" "$ETCD_X.partial" || die "dpkg -x $deb failed"
mv "$ETCD_X.partial" "$ETCD_X"
[[ -x $ETCD_X/usr/bin/etcd ]] || die "etcd binary not found in $deb"

# ---------------------------------------------------------------------------
export GOCACHE=$WORK/gocache
export GOPATH=$WORK/gopath
export GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=
export CGO_ENABLED=0
export HOME=${HOME:-/root}
mkdir -p "$GOCACHE" "$GOPATH"
# Version info for k8s' hack/ scripts, so they never ask git (the tree is not a
# git checkout, and the cache may live inside some unrelated repository).
export KUBE_GIT_VERSION=$K8S_VERSION KUBE_GIT_COMMIT=$K8S_COMMIT KUBE_GIT_TREE_STATE=clean
export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
export SOURCE_DATE_EPOCH=1610543941

SRC=$WORK/src
step "extract kubernetes source"
if [[ -f $SRC/.openapi-generated ]]; then
  log "reusing $SRC (openapi already generated)"
else
  rm -rf "$SRC" "$SRC.partial"
  mkdir -p "$SRC.partial"
  tar -xzf "$TARBALL" -C "$SRC.partial" --strip-components=1 --no-same-owner ||
    die "extracting $TARBALL failed"
  [[ -f $SRC.partial/cmd/kube-apiserver/apiserver.go && -f $SRC.partial/vendor/modules.txt ]] ||
    die "unexpected tarball layout (no cmd/kube-apiserver or vendor/)"
  mv "$SRC.partial" "$SRC"

  step "make gen_openapi"
  (cd "$SRC" && make gen_openapi) || die "make gen_openapi failed"
  [[ -f $SRC/pkg/generated/openapi/zz_generated.openapi.go ]] ||
    die "make gen_openapi did not produce pkg/generated/openapi/zz_generated.openapi.go"
  touch "$SRC/.openapi-generated"
fi

# ---------------------------------------------------------------------------
PKG=k8s.io/component-base/version
CPKG=k8s.io/client-go/pkg/version
LDFLAGS="-s -w"
for p in $PKG $CPKG; do
  LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
  LDFLAGS+=" -X $p.gitCommit=$K8S_COMMIT -X $p.gitTreeState=clean -X $p.buildDate=$K8S_BUILD_DATE"
done
OUT=$CP_DIR/bin.partial
mkdir -p "$OUT"
for cmd in kube-apiserver kube-controller-manager; do
  step "go build $cmd"
  (cd "$SRC" && GOFLAGS=-mod=vendor go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/$cmd" "./cmd/$cmd") ||
    die "go build ./cmd/$cmd failed"
done
cp "$ETCD_X/usr/bin/etcd" "$OUT/etcd"
chmod 0755 "$OUT"/*

# ---------------------------------------------------------------------------
step "verify binaries"
v=$("$OUT/kube-apiserver" --version 2>&1) || die "kube-apiserver --version failed: $v"
log "kube-apiserver: $v"
[[ $v == "Kubernetes $K8S_VERSION" ]] || die "kube-apiserver reports '$v', expected 'Kubernetes $K8S_VERSION'"
v=$("$OUT/kube-controller-manager" --version 2>&1) || die "kube-controller-manager --version failed: $v"
log "kube-controller-manager: $v"
[[ $v == "Kubernetes $K8S_VERSION" ]] || die "kube-controller-manager reports '$v', expected 'Kubernetes $K8S_VERSION'"
v=$("$OUT/etcd" --version 2>&1) || die "etcd --version failed: $v"
log "etcd: ${v//$'\n'/; }"
[[ $v == *"etcd Version: 3.4."* ]] || die "etcd reports '$v', expected 3.4.x"
extra=$(find "$OUT" -mindepth 1 -maxdepth 1 ! -name etcd ! -name kube-apiserver ! -name kube-controller-manager)
[[ -z $extra ]] || die "unexpected files in bin dir: $extra"

# ---------------------------------------------------------------------------
step "install into cache"
mv -T "$OUT" "$BIN_DIR"
{
  printf '%s\n' "$RECIPE_ID"
  printf 'built %s by %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$0"
  printf '%s\n' "$go_version"
  (cd "$BIN_DIR" && sha256sum "${BINARIES[@]}")
} >"$STAMP.partial"
mv "$STAMP.partial" "$STAMP"
ls -l "$BIN_DIR"

if [[ ${CP_KEEP_WORK:-1} == 0 ]]; then
  step "remove work directory"
  rm -rf "$WORK"
fi

log "step '$STEP' done in $(elapsed "$STEP_T0")s"
STEP="done"
log "control plane ready in $(elapsed "$SCRIPT_T0")s: $BIN_DIR"
printf '%s\n' "$BIN_DIR" >&3
