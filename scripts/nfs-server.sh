#!/usr/bin/env bash
# The tests' NFS server: nfs-ganesha in a podman container (tests/nfs/server/), serving two
# bind-mounted host directories on 127.0.0.1 only. See tests/nfs/server/README.md.
#
#   scripts/nfs-server.sh start NAME HOSTDIR NFS_PORT MOUNT_PORT
#       Build the image if missing or stale, (re)create container NAME serving HOSTDIR/export and
#       HOSTDIR/export-rootsquash on 127.0.0.1:NFS_PORT (NFS) and 127.0.0.1:MOUNT_PORT (MOUNT),
#       wait until it answers NFS requests, print the URLs (see below). A running container with
#       the same image and arguments is reused.
#   scripts/nfs-server.sh stop NAME          remove the container (no error if it does not exist)
#   scripts/nfs-server.sh wait NAME [SECS]   wait until NAME answers, print the URLs
#   scripts/nfs-server.sh status [NAME]      without NAME: list the servers; with NAME: print the
#                                            URLs and exit 0 if it answers, else exit 1
#   scripts/nfs-server.sh logs NAME          the container's log (ganesha's output)
#   scripts/nfs-server.sh build              only build the image (if missing or stale)
#
# stdout of start/wait/status NAME: only shell assignments, so that
#   eval "$(scripts/nfs-server.sh start nfs1 /tmp/nfs1 12049 12048)"
# exports NFS_TEST_URL, NFS_TEST_URL_V4, NFS_TEST_URL_ROOTSQUASH, NFS_TEST_URL_ROOTSQUASH_V4,
# NFS_TEST_SERVER, NFS_TEST_NFS_PORT, NFS_TEST_MOUNT_PORT, NFS_TEST_EXPORT_DIR,
# NFS_TEST_EXPORT_ROOTSQUASH_DIR. Everything else goes to stderr.
#
# Environment:
#   NFS_SERVER_TIMEOUT     seconds to wait for readiness (default 60)
#   NFS_SERVER_BASE_IMAGE  --build-arg BASE_IMAGE (default: the Containerfile's debian:bookworm)
#   NFS_SERVER_BIND        loopback address to publish on (default 127.0.0.1; any of 127.0.0.0/8,
#                          so tests can give each server its own host name); pass the same to
#                          wait/status
#   NFS_SERVER_PROTOCOLS   "3,4" (default) or "4": NFSv4 only, as EFS, Azure Files and hardened
#                          servers run: ganesha opens no MOUNT listener and MOUNT_PORT is not
#                          published (the argument is still taken, and ignored); the readiness
#                          check then speaks NFSv4 (libnfs does 4.0, so minor version 0 stays on)
#   NFS_SERVER_GRACE       seconds of NFSv4 grace period after each (re)start (default: none,
#                          Graceless); the lease is as long. Tests of a client's recovery use it
#
# Needs root (rootful podman; the VFS FSAL needs real root and CAP_DAC_READ_SEARCH). Runs
# scripts/podman-setup.sh first when podman or the base image is missing, and installs
# libnfs-utils (nfs-ls, used for the readiness check) when missing.
set -euo pipefail
exec 3>&1 1>&2

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$REPO/tests/nfs/server
IMAGE=localhost/nfs-subdir-provisioner-test-nfs:latest
BASE=${NFS_SERVER_BASE_IMAGE:-debian:bookworm}
LABEL=org.nfs-subdir-provisioner.test-nfs
TIMEOUT=${NFS_SERVER_TIMEOUT:-60}
BIND=${NFS_SERVER_BIND:-127.0.0.1}
PROTOCOLS=${NFS_SERVER_PROTOCOLS:-3,4}
case $PROTOCOLS in
  3,4 | 4) ;;
  *) echo "nfs-server: ERROR: NFS_SERVER_PROTOCOLS=$PROTOCOLS is neither 3,4 nor 4" >&2; exit 2 ;;
esac
GRACE=${NFS_SERVER_GRACE:-}
case $GRACE in
  '' | [1-9] | [1-9][0-9]) ;;
  *) echo "nfs-server: ERROR: NFS_SERVER_GRACE=$GRACE is not a number of seconds (1-99)" >&2; exit 2 ;;
esac
case $BIND in
  127.*) ;;
  *) echo "nfs-server: ERROR: NFS_SERVER_BIND=$BIND is not a loopback address (127.0.0.0/8)" >&2; exit 2 ;;
esac
LOCK=/run/lock/nfs-subdir-provisioner-test-nfs.lock

T0=$EPOCHREALTIME
log() { echo "nfs-server: $*"; }
die() { echo "nfs-server: ERROR: $*"; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# Print the container's state and last log lines, then fail.
die_with_logs() {
  local name=$1
  shift
  echo "nfs-server: ERROR: $*"
  echo "nfs-server: ---- container $name: $(podman container inspect --format '{{.State.Status}} (exit code {{.State.ExitCode}}) {{.State.Error}}' "$name" 2>&1) ----"
  echo "nfs-server: ---- podman logs --tail 60 $name ----"
  podman logs --tail 60 "$name" 2>&1 || true
  echo "nfs-server: ---- end of logs ----"
  exit 1
}

# Root, podman and the base image (running scripts/podman-setup.sh if needed), nfs-ls.
# Sets BASE_ID.
ensure_tools() {
  [ "$(id -u)" = 0 ] || die "must run as root (rootful podman; ganesha's VFS FSAL needs root)"
  if ! command -v podman >/dev/null || ! BASE_ID=$(podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null); then
    log "podman or the base image $BASE is missing; running scripts/podman-setup.sh"
    bash "$REPO/scripts/podman-setup.sh" || die "scripts/podman-setup.sh failed"
    BASE_ID=$(podman image inspect --format '{{.Id}}' "$BASE") || die "base image $BASE not found"
  fi
  if ! command -v nfs-ls >/dev/null; then
    log "installing libnfs-utils (nfs-ls)"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 \
      install -y --no-install-recommends libnfs-utils \
      || { apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Use-Pty=0 install -y --no-install-recommends libnfs-utils; } \
      || die "could not install libnfs-utils"
  fi
}

# Hash of everything the image is made of: the build files (not the README) and the base image.
source_hash() {
  {
    echo "base=$BASE $BASE_ID"
    for f in Containerfile ganesha.conf entrypoint.sh; do
      echo "== $f"
      cat "$SRC/$f"
    done
  } | sha256sum | cut -c1-16
}

image_hash() { podman image inspect --format "{{index .Labels \"$LABEL.hash\"}}" "$IMAGE" 2>/dev/null || true; }

# Build the image unless an image with the current hash exists. Sets WANT_HASH.
ensure_image() {
  WANT_HASH=$(source_hash)
  [ "$(image_hash)" = "$WANT_HASH" ] && return 0
  exec 9>"$LOCK"
  flock 9 # concurrent starts: build once
  if [ "$(image_hash)" != "$WANT_HASH" ]; then
    local t old_id build_log build_args=()
    t=$EPOCHREALTIME
    old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    [ -n "${NFS_SERVER_BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$NFS_SERVER_BASE_IMAGE")
    log "building $IMAGE (hash $WANT_HASH)"
    # --pull=never: the base image is local (scripts/podman-setup.sh); never ask a registry.
    build_log=$(mktemp)
    if ! podman build --pull=never --network=host "${build_args[@]}" \
      --label "$LABEL.hash=$WANT_HASH" -t "$IMAGE" -f "$SRC/Containerfile" "$SRC" >"$build_log" 2>&1; then
      cat "$build_log"
      rm -f "$build_log"
      die "podman build of $IMAGE failed (output above)"
    fi
    rm -f "$build_log"
    if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
      podman rmi "$old_id" >/dev/null 2>&1 || true # still used by a container: keep it
    fi
    log "built $IMAGE in $(elapsed "$t") s"
  fi
  flock -u 9
}

check_port() {
  if ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt 65535 ]; then die "not a port number: '$1'"; fi
}

# One podman call: state and labels of container NAME into C_STATE C_HASH C_HOSTDIR C_NPORT
# C_MPORT C_PROTOCOLS C_GRACE. Returns 1 if there is no such container.
inspect_container() {
  local us=$'\x1f' out
  out=$(podman container inspect --format "{{.State.Status}}$us{{index .Config.Labels \"$LABEL.hash\"}}$us{{index .Config.Labels \"$LABEL.hostdir\"}}$us{{index .Config.Labels \"$LABEL.nfs-port\"}}$us{{index .Config.Labels \"$LABEL.mount-port\"}}$us{{index .Config.Labels \"$LABEL.protocols\"}}$us{{index .Config.Labels \"$LABEL.grace\"}}" "$1" 2>/dev/null) \
    || return 1
  IFS=$us read -r C_STATE C_HASH C_HOSTDIR C_NPORT C_MPORT C_PROTOCOLS C_GRACE <<<"$out"
  # Containers from before these labels served both versions, graceless.
  C_PROTOCOLS=${C_PROTOCOLS:-3,4}
  C_GRACE=${C_GRACE:-none}
}

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; } # single-quote for the shell

# Print the shell assignments for a server (HOSTDIR NFS_PORT MOUNT_PORT) to the real stdout.
print_urls() {
  local hostdir=$1 nport=$2 mport=$3 q
  q="nfsport=$nport&mountport=$mport"
  {
    echo "export NFS_TEST_URL=$(sq "nfs://$BIND/export?$q")"
    echo "export NFS_TEST_URL_V4=$(sq "nfs://$BIND/export?version=4&nfsport=$nport")"
    echo "export NFS_TEST_URL_ROOTSQUASH=$(sq "nfs://$BIND/export-rootsquash?$q")"
    echo "export NFS_TEST_URL_ROOTSQUASH_V4=$(sq "nfs://$BIND/export-rootsquash?version=4&nfsport=$nport")"
    echo "export NFS_TEST_SERVER=$BIND"
    echo "export NFS_TEST_NFS_PORT=$nport"
    echo "export NFS_TEST_MOUNT_PORT=$mport"
    echo "export NFS_TEST_EXPORT_DIR=$(sq "$hostdir/export")"
    echo "export NFS_TEST_EXPORT_ROOTSQUASH_DIR=$(sq "$hostdir/export-rootsquash")"
  } >&3
}

# One NFS round trip against both exports: MNT + NFSv3 READDIRPLUS, or NFSv4 with no MOUNT.
answers() {
  local nport=$1 mport=$2 protocols=${3:-$PROTOCOLS} e q
  q="nfsport=$nport&mountport=$mport"
  [ "$protocols" = 4 ] && q="version=4&nfsport=$nport"
  for e in export export-rootsquash; do
    timeout 5 nfs-ls "nfs://$BIND/$e?$q" >/dev/null 2>&1 || return 1
  done
}

# wait_ready NAME NFS_PORT MOUNT_PORT TIMEOUT [PROTOCOLS]: poll until both exports answer.
wait_ready() {
  local name=$1 nport=$2 mport=$3 timeout=$4 protocols=${5:-$PROTOCOLS} deadline state t
  t=$EPOCHREALTIME
  deadline=$(awk -v t="$EPOCHREALTIME" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
  while true; do
    if answers "$nport" "$mport" "$protocols"; then
      if [ "$protocols" = 4 ]; then
        log "$name serves $BIND:$nport (NFSv4 only); answered after $(elapsed "$t") s"
      else
        log "$name serves $BIND:$nport (NFS) / $BIND:$mport (MOUNT); answered after $(elapsed "$t") s"
      fi
      return 0
    fi
    state=$(podman container inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo missing)
    [ "$state" = running ] || die_with_logs "$name" "container $name is $state, not running"
    if awk -v t="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(t > d) }'; then
      die_with_logs "$name" "$name did not answer NFS requests on $BIND:$nport/$mport within $timeout s"
    fi
    sleep 0.05
  done
}

cmd_start() {
  [ $# -eq 4 ] || { usage; die "start needs NAME HOSTDIR NFS_PORT MOUNT_PORT"; }
  local name=$1 hostdir=$2 nport=$3 mport=$4
  check_port "$nport"
  check_port "$mport"
  [ "$nport" != "$mport" ] || die "NFS_PORT and MOUNT_PORT must differ"
  ensure_tools
  ensure_image

  mkdir -p "$hostdir"
  hostdir=$(cd "$hostdir" && pwd -P)
  [ -d "$hostdir/export" ] || install -d -m 0755 "$hostdir/export"
  # World-writable, so that root squashed to 65534 (and any other uid) can create entries.
  [ -d "$hostdir/export-rootsquash" ] || install -d -m 0777 "$hostdir/export-rootsquash"

  # NFSv4 only, or with a grace period: the image's configuration changed accordingly, put in
  # beside the exports and over the image's.
  local conf=() publish_mount=(-p "$BIND:$mport:20048/tcp") edits=()
  if [ "$PROTOCOLS" = 4 ]; then
    edits+=(-e 's/^\( *\)NFS_Protocols = 3, 4;/\1NFS_Protocols = 4;/'
      -e 's/^\( *\)Protocols = 3, 4;/\1Protocols = 4;/'
      -e '/^ *MNT_Port = /d' -e '/^ *mount_path_pseudo = /d')
    publish_mount=()
  fi
  if [ -n "$GRACE" ]; then
    edits+=(-e "s/^\\( *\\)Graceless = true;/\\1Graceless = false;\\n\\1Grace_Period = $GRACE;/"
      -e "s/^\\( *\\)Lease_Lifetime = [0-9]*;/\\1Lease_Lifetime = $GRACE;/")
  fi
  if [ ${#edits[@]} -gt 0 ]; then
    sed "${edits[@]}" "$SRC/ganesha.conf" >"$hostdir/ganesha.conf"
    if [ "$PROTOCOLS" = 4 ]; then
      grep -q 'NFS_Protocols = 4;' "$hostdir/ganesha.conf" || die "could not make an NFSv4-only ganesha.conf"
    fi
    if [ -n "$GRACE" ]; then
      grep -q "Grace_Period = $GRACE;" "$hostdir/ganesha.conf" || die "could not set the grace period in ganesha.conf"
    fi
    conf=(-v "$hostdir/ganesha.conf:/etc/ganesha/ganesha.conf:ro")
  fi

  local exists=0
  if inspect_container "$name"; then
    exists=1
    if [ "$C_STATE $C_HASH $C_HOSTDIR $C_NPORT $C_MPORT $C_PROTOCOLS $C_GRACE" = "running $WANT_HASH $hostdir $nport $mport $PROTOCOLS ${GRACE:-none}" ]; then
      log "container $name is already running with these settings"
    else
      log "replacing container $name ($C_STATE, image hash ${C_HASH:-?}, $C_HOSTDIR, ports ${C_NPORT:-?}/${C_MPORT:-?})"
      podman rm -f -t0 "$name" >/dev/null
      exists=0
      # Superseded builds of our image that no container uses any more.
      [ "$C_HASH" = "$WANT_HASH" ] || podman image prune -f --filter "label=$LABEL.hash" >/dev/null 2>&1 || true
    fi
  fi
  if [ $exists = 0 ]; then
    podman run -d --name "$name" \
      --network bridge \
      --cap-add DAC_READ_SEARCH \
      --label "$LABEL=1" --label "$LABEL.hash=$WANT_HASH" --label "$LABEL.hostdir=$hostdir" \
      --label "$LABEL.nfs-port=$nport" --label "$LABEL.mount-port=$mport" \
      --label "$LABEL.protocols=$PROTOCOLS" --label "$LABEL.grace=${GRACE:-none}" \
      -v "$hostdir/export:/export" \
      -v "$hostdir/export-rootsquash:/export-rootsquash" \
      "${conf[@]}" \
      -p "$BIND:$nport:2049/tcp" \
      "${publish_mount[@]}" \
      "$IMAGE" >/dev/null \
      || {
        if podman container exists "$name"; then
          podman logs "$name" 2>&1 | tail -n 60 || true
          podman rm -f -t0 "$name" >/dev/null 2>&1 || true
        fi
        die "podman run of $name failed (see above; is $BIND:$nport or :$mport already in use?)"
      }
  fi
  wait_ready "$name" "$nport" "$mport" "$TIMEOUT"
  print_urls "$hostdir" "$nport" "$mport"
  log "start $name done in $(elapsed "$T0") s"
}

cmd_stop() {
  [ $# -eq 1 ] || die "stop needs NAME"
  if podman container exists "$1" 2>/dev/null; then
    podman rm -f -t0 "$1" >/dev/null
    # Superseded builds of our image that no container uses any more (cheap when there are none).
    podman image prune -f --filter "label=$LABEL.hash" >/dev/null 2>&1 || true
    log "removed $1"
  else
    log "$1: no such container (nothing to do)"
  fi
}

# inspect_container plus the check that the container was made by cmd_start.
inspect_ours() {
  inspect_container "$1" || die "no container named $1"
  if [ -z "$C_NPORT" ] || [ -z "$C_MPORT" ]; then die "container $1 was not started by this script (no port labels)"; fi
}

cmd_wait() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then die "wait needs NAME [SECONDS]"; fi
  inspect_ours "$1"
  wait_ready "$1" "$C_NPORT" "$C_MPORT" "${2:-$TIMEOUT}" "$C_PROTOCOLS"
  print_urls "$C_HOSTDIR" "$C_NPORT" "$C_MPORT"
}

cmd_status() {
  if [ $# -eq 0 ]; then
    podman ps -a --filter "label=$LABEL=1" \
      --format "{{.Names}}\t{{.State}}\t{{.Ports}}\t{{index .Labels \"$LABEL.hostdir\"}}"
    return 0
  fi
  local name=$1
  inspect_container "$name" || { log "$name: no such container"; return 1; }
  if [ "$C_STATE" != running ]; then
    log "$name: $C_STATE"
    return 1
  fi
  if answers "$C_NPORT" "$C_MPORT" "$C_PROTOCOLS"; then
    log "$name: running and answering"
    print_urls "$C_HOSTDIR" "$C_NPORT" "$C_MPORT"
  else
    log "$name: running but not answering NFS requests"
    return 1
  fi
}

[ $# -ge 1 ] || { usage; exit 2; }
cmd=$1
shift
case $cmd in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  wait) cmd_wait "$@" ;;
  status) cmd_status "$@" ;;
  logs) [ $# -eq 1 ] || die "logs needs NAME"; podman logs "$1" >&3 2>&1 ;;
  build) ensure_tools; ensure_image; log "image $IMAGE is up to date (hash $WANT_HASH)" ;;
  -h | --help | help) usage ;;
  *) usage; die "unknown command: $cmd" ;;
esac
