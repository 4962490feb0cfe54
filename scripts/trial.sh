#!/usr/bin/env bash
# Try the provisioner on this machine in one command: a real Kubernetes control plane, the NFS
# server container (when podman can run it) and the provisioner of this checkout, all on
# 127.0.0.0/8, then the Kubernetes storage tutorials' scenario. Ctrl-C stops everything it started.
#
#   bash scripts/trial.sh           play the scenario, then keep the cluster running for you
#   bash scripts/trial.sh --once    play it, tear down, exit 0 only if every step held (CI)
#
# The first run builds Kubernetes 1.20 from Debian's source package (about ten minutes, cached in
# /var/cache/nfs-subdir-provisioner) and the provisioner; later runs reuse both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case ${1:-} in
  ""|--once) ;;
  *) echo "usage: bash scripts/trial.sh [--once]" >&2; exit 2 ;;
esac
if ! command -v cargo >/dev/null; then
  echo "trial: cargo is not installed (https://rustup.rs)" >&2
  exit 1
fi

# The control-plane build needs a few GiB once; say so rather than fail deep inside it.
cache=${NFS_PROVISIONER_CACHE:-/var/cache/nfs-subdir-provisioner}
if [[ ! -x $cache/control-plane-v1.20.2/bin/kube-apiserver ]]; then
  mkdir -p "$cache" 2>/dev/null || { echo "trial: cannot create $cache (run as root, or set NFS_PROVISIONER_CACHE)" >&2; exit 1; }
  free_kib=$(df -Pk "$cache" | awk 'NR == 2 { print $4 }')
  if ((free_kib < 8 * 1024 * 1024)); then
    echo "trial: only $((free_kib / 1024 / 1024)) GiB free in $cache; building the control plane once needs about 8 GiB" >&2
    exit 1
  fi
fi

t0=$SECONDS
echo "trial: the control plane (built once from Debian's kubernetes source package, then cached)" >&2
assets=$(bash scripts/build-control-plane.sh)
echo "trial: control plane binaries in $assets ($((SECONDS - t0)) s)" >&2
echo "trial: building the provisioner and the trial (cargo, incremental)" >&2
# One build: the trial target builds the provisioner binary it runs, with the dependencies the
# test suite has already built (a separate `cargo build` would build them again without the
# test features).
cargo test --locked --test trial --no-run
echo "trial: built ($((SECONDS - t0)) s)" >&2
KUBEBUILDER_ASSETS=$assets exec cargo test --locked -q --test trial -- "$@"
