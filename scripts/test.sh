#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit/property/filesystem tests, and the
# end-to-end suite against a real etcd + kube-apiserver + kube-controller-manager.
#
# The control plane comes from $KUBEBUILDER_ASSETS (a directory with etcd, kube-apiserver and
# kube-controller-manager); when unset it is built once from Debian's kubernetes 1.20.2 source
# package into a cache outside the repo (scripts/build-control-plane.sh; needs root for apt-get).
# That cache, and those of Helm, kustomize and Prometheus below, are under $NFS_PROVISIONER_CACHE
# (default /var/cache/nfs-subdir-provisioner).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs: rsync and make build the control plane; bindfs and fuse3 give
# the hung-export trial a FUSE mount whose daemon can be stopped, as an NFS server stops answering.
missing=()
for tool in rsync:rsync make:make bindfs:bindfs fusermount3:fuse3; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (apt-get; needs root)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates "${missing[@]}" >/dev/null
fi

if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash scripts/build-control-plane.sh)"
  export KUBEBUILDER_ASSETS
fi
# Here the end-to-end suite must run: missing binaries are a failure, not a skip.
export E2E_REQUIRE=1

# The NFS servers for the direct backend's tests: nfs-ganesha in podman containers (podman and
# the base image are set up from Debian's archive on first use). One serving v3 and v4.1, shared by
# the conformance and client tests, and one NFSv4 only (no MOUNT, one port) for the NFSv4.1
# transport's conformance half, whose variables are renamed NFS_TEST_V4_*. The end-to-end and stall
# tests start their own.
bash scripts/podman-setup.sh
bash scripts/nfs-server.sh build
containers=()
trap 'for c in "${containers[@]}"; do bash scripts/nfs-server.sh stop "$c" >/dev/null 2>&1 || true; done' EXIT
# start_nfs_server NAME STATE_DIR PROTOCOLS VARIABLE_PREFIX: on two free loopback ports, from an
# empty state directory; exports its NFS_TEST_* variables under VARIABLE_PREFIX.
start_nfs_server() {
  local name=$1 state=$2 protocols=$3 prefix=$4 nfs_port mount_port
  read -r nfs_port mount_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
  rm -rf "$state" && mkdir -p "$state"
  containers+=("$name")
  eval "$(NFS_SERVER_PROTOCOLS=$protocols bash scripts/nfs-server.sh start "$name" "$state" "$nfs_port" "$mount_port" |
    sed "s/^export NFS_TEST_/export $prefix/")"
}
start_nfs_server "nfs-subdir-provisioner-test-$$" /var/tmp/nfs-subdir-provisioner-test-nfs 3,4 NFS_TEST_
start_nfs_server "nfs-subdir-provisioner-test-v4-$$" /var/tmp/nfs-subdir-provisioner-test-nfs4 4 NFS_TEST_V4_
export NFS_TEST_REQUIRE=1

# Real Helm and kustomize for the chart tests: Helm's own Go code as a Python library (no helm
# binary is packaged in Debian or on PyPI), in a venv cached outside the repo, and Debian's
# kustomize (from trixie; bookworm has none).
HELM_VENV=${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}/helm-venv
if ! "$HELM_VENV/bin/python" -c 'import helm_python' 2>/dev/null; then
  python3 -m venv "$HELM_VENV"
  "$HELM_VENV/bin/pip" install -q helm-python-sdk
fi
KUSTOMIZE="$(bash scripts/kustomize.sh)"
export HELM_PYTHON=$HELM_VENV/bin/python KUSTOMIZE CHART_REQUIRE_TOOLS=1

# Debian's Prometheus for the monitoring trials (promtool, and a server scraping a provisioner),
# unpacked from its package into a cache outside the repo; here its absence is a failure.
PROMETHEUS_BIN="$(bash scripts/prometheus.sh)"
export PROMETHEUS_BIN MONITORING_REQUIRE=1

# Dependency hygiene: permissive licences only, nothing yanked from crates.io.
python3 scripts/deps-report.py

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked

# The README's first command, played once: the trial's whole scenario on a fresh control plane,
# NFS server container and provisioner, torn down again (it reuses the caches built above).
bash scripts/trial.sh --once
