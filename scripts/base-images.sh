#!/usr/bin/env bash
# Make local stand-ins for the upstream base images that the Dockerfile's ARG defaults name, on a
# host that cannot reach any image registry, and tag them with those upstream names so that an
# unmodified `podman build .` resolves them from local storage (pull policy "missing").
#
#   sudo bash scripts/base-images.sh [--rebuild]
#
# Needs scripts/podman-setup.sh to have run (podman configured, localhost/debian:bookworm present,
# also tagged docker.io/library/debian:bookworm); scripts/build-image.sh runs both.
# Idempotent: an image whose upstream name is already in local storage (a stand-in from an earlier
# run, or the real image pulled or loaded by other means) is left alone; --rebuild remakes both
# without podman's layer cache (e.g. after the host toolchain changed).
#
#   RUST_IMAGE    (default docker.io/library/rust:1.95-bookworm)  ->  localhost/rust:<X.Y>-host
#     Laid out like the official image: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo,
#     rustup and its proxies in /usr/local/cargo/bin, gcc + libc6-dev + ca-certificates, on
#     debian:bookworm. The toolchain is the HOST's rustup toolchain of the same X.Y (without docs),
#     copied in through a read-only bind mount: nothing is downloaded for it. Like the official
#     image it has only the host toolchain's std targets (here: gnu); the Dockerfile's
#     `rustup target add` fetches the musl std from static.rust-lang.org during the project build.
#   RUNTIME_IMAGE (default gcr.io/distroless/static-debian12:nonroot) -> localhost/distroless-static:nonroot
#     FROM scratch plus what distroless/static ships, taken from Debian bookworm packages:
#     /etc/passwd and /etc/group with root, nobody and nonroot (65532), nsswitch.conf, the
#     ca-certificates bundle, tzdata, netbase's /etc/services and /etc/protocols, /tmp (1777),
#     /home/nonroot; USER 65532:65532 for the :nonroot tag. No shell, no libc.
#
# Neither image needs HTTPS to build (apt uses the http mirror), so no CA bundle is mounted: a
# read-only bundle mount would also make ca-certificates' postinst fail. All output goes to stderr.
set -euo pipefail
exec 1>&2

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKERFILE=$REPO/Dockerfile
DEBIAN_IMAGE=docker.io/library/debian:bookworm
LOCK=/run/lock/nfs-subdir-provisioner-base-images.lock
LABEL=org.nfs-subdir-provisioner.stand-in

REBUILD=0
for arg in "$@"; do
  case $arg in
    --rebuild) REBUILD=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "base-images: unknown argument: $arg"; exit 2 ;;
  esac
done

T0=$EPOCHREALTIME
log() { echo "base-images: $*"; }
die() { echo "base-images: ERROR: $*"; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman)"
command -v podman >/dev/null || die "podman not found: run scripts/podman-setup.sh first"
podman image exists "$DEBIAN_IMAGE" || die "$DEBIAN_IMAGE not in local storage: run scripts/podman-setup.sh first"

# The names to stand in for are the Dockerfile's own defaults, so the two cannot drift apart.
arg_default() { sed -n "s/^ARG $1=\(.*\)$/\1/p" "$DOCKERFILE" | head -n1; }
RUST_IMAGE=$(arg_default RUST_IMAGE)
RUNTIME_IMAGE=$(arg_default RUNTIME_IMAGE)
{ [ -n "$RUST_IMAGE" ] && [ -n "$RUNTIME_IMAGE" ]; } || die "no ARG RUST_IMAGE=/RUNTIME_IMAGE= defaults in $DOCKERFILE"

mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -n 9 || { log "another base-images run holds $LOCK; waiting"; flock 9; }

work=$(mktemp -d /var/tmp/base-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ensure UPSTREAM LOCAL BUILD_FUNCTION: build LOCAL unless UPSTREAM already exists, then tag it.
ensure() {
  local upstream=$1 local_name=$2 build=$3 t
  t=$EPOCHREALTIME
  if [ $REBUILD = 0 ] && podman image exists "$upstream"; then
    log "$upstream present"
    return 0
  fi
  if [ $REBUILD = 1 ] || ! podman image exists "$local_name"; then
    log "building $local_name (stand-in for $upstream)"
    "$build" "$local_name" "$upstream"
  fi
  podman tag "$local_name" "$upstream"
  log "$upstream = $local_name, $(mb "$local_name") ($(elapsed "$t") s)"
}

# podman build with its output kept in a log that is shown only on failure.
build_quietly() {
  local no_cache=()
  [ $REBUILD = 0 ] || no_cache=(--no-cache)
  podman build "${no_cache[@]}" "$@" >"$work/build.log" 2>&1 || { cat "$work/build.log"; die "podman build $* failed (log above)"; }
}

# --- builder: the host's rustup toolchain, laid out like docker.io/library/rust ----------------
build_rust() {
  local name=$1 upstream=$2 tag want tc sysroot rustup_bin version host_triple
  tag=${upstream##*:}   # 1.95-bookworm
  want=${tag%%-*}       # 1.95
  case $tag in *-bookworm) ;; *) die "$upstream: only *-bookworm builder tags can be made locally" ;; esac
  command -v rustup >/dev/null || die "rustup not found on the host: it provides the builder's toolchain"
  rustup_bin=$(readlink -f "$(command -v rustup)")
  sysroot=
  while read -r tc _; do
    [ -n "$tc" ] || continue
    version=$(rustup run "$tc" rustc --version 2>/dev/null | awk '{ print $2 }') || continue
    case $version in "$want" | "$want".*) sysroot=$(rustup run "$tc" rustc --print sysroot); break ;; esac
  done < <(rustup toolchain list)
  [ -n "$sysroot" ] || die "no host rustup toolchain is rustc $want (have: $(rustup toolchain list | tr '\n' ' ')); install one, e.g. 'rustup toolchain install $want'"
  version=$(rustup run "$tc" rustc --version | awk '{ print $2 }')
  host_triple=$(rustup run "$tc" rustc -vV | sed -n 's/^host: //p')
  local targets=() d
  for d in "$sysroot"/lib/rustlib/*-*/; do d=${d%/}; targets+=("${d##*/}"); done
  log "toolchain: host $tc = rustc $version ($sysroot); std for: ${targets[*]}"

  # Like the official image: docs left out (600 MB instead of 1.4 GB), everything world-writable
  # so that non-root build users can add targets, default toolchain pinned by settings.toml.
  cat >"$work/Containerfile.rust" <<EOF
FROM $DEBIAN_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config \\
 && rm -rf /var/lib/apt/lists/*
RUN tc="\$RUSTUP_HOME/toolchains/$version-$host_triple" \\
 && mkdir -p "\$tc" "\$CARGO_HOME/bin" \\
 && tar -C /mnt/toolchain --exclude=./share/doc -cf - . | tar -C "\$tc" -xf - \\
 && install -m 0755 /mnt/rustup "\$CARGO_HOME/bin/rustup" \\
 && for p in cargo cargo-clippy cargo-fmt clippy-driver rust-gdb rust-gdbgui rust-lldb rustc rustdoc rustfmt; do ln "\$CARGO_HOME/bin/rustup" "\$CARGO_HOME/bin/\$p"; done \\
 && printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n\n[overrides]\n' "$version-$host_triple" >"\$RUSTUP_HOME/settings.toml" \\
 && chmod -R a+w "\$RUSTUP_HOME" "\$CARGO_HOME" \\
 && rustc --version && cargo --version
LABEL $LABEL="host rustup toolchain $tc (rustc $version) on $DEBIAN_IMAGE, for $upstream"
EOF
  build_quietly --network=host -v "$sysroot:/mnt/toolchain:ro" -v "$rustup_bin:/mnt/rustup:ro" \
    -f "$work/Containerfile.rust" -t "$name" "$work"
}

# --- runtime: what distroless/static ships, from Debian packages, on scratch -------------------
build_distroless_static() {
  local name=$1 upstream=$2 user=0:0 home=/root
  case $upstream in
    */static-debian12:nonroot) user=65532:65532 home=/home/nonroot ;;
    */static-debian12:latest) ;;
    *) die "$upstream: only gcr.io/distroless/static-debian12[:nonroot] can be made locally" ;;
  esac
  cat >"$work/Containerfile.runtime" <<EOF
FROM $DEBIAN_IMAGE AS rootfs
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tzdata netbase \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /out/etc/ssl/certs /out/usr/share /out/usr/lib /out/home/nonroot /out/root /out/tmp \\
 && cp -a /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \\
 && cp -a /usr/share/zoneinfo /out/usr/share/ \\
 && cp -a /etc/services /etc/protocols /out/etc/ \\
 && cp -a /usr/lib/os-release /out/usr/lib/ && ln -s ../usr/lib/os-release /out/etc/os-release \\
 && printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >/out/etc/passwd \\
 && printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >/out/etc/group \\
 && printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >/out/etc/nsswitch.conf \\
 && chmod 0644 /out/etc/passwd /out/etc/group /out/etc/nsswitch.conf \\
 && chmod 1777 /out/tmp && chmod 0700 /out/root && chown 65532:65532 /out/home/nonroot

FROM scratch
COPY --from=rootfs /out/ /
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER $user
WORKDIR $home
LABEL $LABEL="Debian bookworm ca-certificates, tzdata, netbase on scratch, for $upstream"
EOF
  build_quietly --network=host -f "$work/Containerfile.runtime" -t "$name" "$work"
}

ensure "$RUST_IMAGE" "localhost/rust:$(tag=${RUST_IMAGE##*:}; echo "${tag%%-*}")-host" build_rust
ensure "$RUNTIME_IMAGE" "localhost/distroless-static:${RUNTIME_IMAGE##*:}" build_distroless_static
log "done in $(elapsed "$T0") s"
