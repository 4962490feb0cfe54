#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit/property/filesystem tests, and the
# end-to-end suite against a real etcd + kube-apiserver + kube-controller-manager.
#
# The control plane comes from $KUBEBUILDER_ASSETS (a directory with etcd, kube-apiserver and
# kube-controller-manager); when unset it is built once from Debian's kubernetes 1.20.2 source
# package into a cache outside the repo (scripts/build-control-plane.sh; needs root for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  KUBEBUILDER_ASSETS="$(bash scripts/build-control-plane.sh)"
  export KUBEBUILDER_ASSETS
fi
# Here the end-to-end suite must run: missing binaries are a failure, not a skip.
export E2E_REQUIRE=1

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
