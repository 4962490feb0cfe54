#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit/property/filesystem tests, and the
# end-to-end suite against a real etcd + kube-apiserver + kube-controller-manager.
#
# The control plane comes from $KUBEBUILDER_ASSETS (a directory with etcd, kube-apiserver and
# kube-controller-manager); when unset it is built once from Debian's kubernetes 1.20.2 source
# package into a cache outside the repo (scripts/build-control-plane.sh; needs root for apt-get).
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

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
