#!/usr/bin/env bash
# Build the project's container image with podman on a host without registry access, from
# nothing, reproducibly; the Dockerfile stays a standard one (it builds unchanged with Docker).
#
#   sudo bash scripts/build-image.sh [--tag IMAGE] [--no-smoke] [-- PODMAN_BUILD_ARGS...]
#   e.g. sudo bash scripts/build-image.sh -- --build-arg CARGO_PROFILE=release
#
# Steps (each timed; all progress to stderr, the image name alone to stdout):
#   1. scripts/podman-setup.sh   podman + config + localhost/debian:bookworm (no-op when present)
#   2. scripts/base-images.sh    local stand-ins for the Dockerfile's default base images, made
#                                from Debian's archive and the host's rustup toolchain and tagged
#                                with the upstream names (no-op when present)
#   3. podman build              the Dockerfile as is, with the host CA bundle bind-mounted into RUN
#                                steps (crates.io goes through a TLS-intercepting proxy here; the
#                                bundle is not baked into any layer). Cargo's registry and target/
#                                are cache mounts, so a rebuild after a source change recompiles
#                                only the crate itself (plus fat LTO).
#   4. smoke test                podman run --read-only --user 65532:65532 --cap-drop ALL IMAGE --version
#
# Environment: IMAGE (default localhost/nfs-subdir-provisioner:dev; --tag overrides),
#              CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
# Idempotent. The previous image under the same tag is removed when replaced and unused.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/nfs-subdir-provisioner:dev}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SMOKE=1
BUILD_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag) [ $# -ge 2 ] || { echo "build-image: --tag needs a value" >&2; exit 2; }; IMAGE=$2; shift ;;
    --tag=*) IMAGE=${1#--tag=} ;;
    --no-smoke) SMOKE=0 ;;
    --) shift; BUILD_ARGS=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument: $1 (podman build arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done

T0=$EPOCHREALTIME
T_STEP=$T0
log() { echo "build-image: $*" >&2; }
die() { echo "build-image: ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
step_done() { log "$1 ($(elapsed "$T_STEP") s)"; T_STEP=$EPOCHREALTIME; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman)"

bash "$REPO/scripts/podman-setup.sh"
step_done "podman ready"
bash "$REPO/scripts/base-images.sh"
step_done "base images ready"

ca_mount=()
if [ -f "$CA_BUNDLE" ]; then
  ca_mount=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
else
  log "note: $CA_BUNDLE not found; building without the CA bind mount"
fi
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "podman build -t $IMAGE ${BUILD_ARGS[*]} $REPO"
# --network=host: the RUN steps reach the Debian mirror, crates.io and the rustup dist server
# directly (no per-build bridge or nft rules); --pull=missing: never contact a registry for a base
# image that is in local storage.
podman build --pull=missing --network=host "${ca_mount[@]}" -t "$IMAGE" "${BUILD_ARGS[@]}" \
  -f "$REPO/Dockerfile" "$REPO" >&2 || die "podman build failed"
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
step_done "podman build"

if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  if podman rmi "$old_id" >/dev/null 2>&1; then log "removed the previous $IMAGE (${old_id:0:12})"; fi
fi

if [ $SMOKE = 1 ]; then
  out=$(podman run --rm --network=none --read-only --user 65532:65532 --cap-drop ALL "$IMAGE" --version 2>&1) \
    || die "smoke test failed: $out"
  step_done "smoke test: $out"
fi

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "$IMAGE ${new_id:0:12}: $(awk -v s="$size" 'BEGIN { printf "%.1f MB (%d bytes)", s / 1e6, s }')"
log "done in $(elapsed "$T0") s"
echo "$IMAGE"
