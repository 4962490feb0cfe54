#!/usr/bin/env bash
# Make rootful podman usable on a Debian host (CI VM or laptop) without any container registry,
# and build the base image everything else starts FROM.
#
#   sudo bash scripts/podman-setup.sh [--rebuild-base]
#
# Idempotent; when everything is in place it only checks and prints timings (well under a second).
#   1. apt-get installs podman, runc, netavark, aardvark-dns, iptables, uidmap, mmdebstrap
#      (only the missing ones; apt-get update only when something is missing).
#   2. /etc/containers/containers.conf (written when absent, or rewritten when it carries the
#      marker line below and its contents differ):
#        runtime = "runc"          crun 1.8 cannot run on hybrid cgroup v1/v2 hosts
#        cgroup_manager = cgroupfs no systemd as PID 1 on the CI VMs
#        events_logger = "file"    no journald
#        default_ulimits           rootful podman 4.3 asks for nofile/nproc = 1048576, which fails
#                                  ("setrlimit RLIMIT_NOFILE: Operation not permitted") on hosts
#                                  without CAP_SYS_RESOURCE; the values are the host's hard limits.
#   3. Base image localhost/debian:bookworm (mmdebstrap --variant=minbase from the host's Debian
#      mirror, the official image's apt "docker-clean" settings, tar | podman import), built only
#      when absent; also tagged docker.io/library/debian:bookworm and :bookworm-slim so that
#      unmodified Dockerfiles resolve locally (the default pull policy "missing" never contacts
#      the registry for an image present in local storage; never pass --pull=always).
#
# Environment:
#   DEBIAN_MIRROR           Debian archive URL   (default: the host's apt sources, else deb.debian.org)
#   DEBIAN_SECURITY_MIRROR  security archive URL (default: the host's apt sources, else derived)
#
# Host changes (besides packages): /etc/containers/containers.conf; podman storage under
# /var/lib/containers; netavark enables net.ipv4.ip_forward and adds nft/iptables NETAVARK chains
# whenever a bridged container runs.
# All progress and timings go to stderr.
set -euo pipefail
exec 1>&2

BASE_IMAGE=localhost/debian:bookworm
BASE_ALIASES=(docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim)
SUITE=bookworm
CONF=/etc/containers/containers.conf
MARKER='# Managed by nfs-subdir-provisioner scripts/podman-setup.sh; delete this line to keep local edits.'
PACKAGES=(podman runc netavark aardvark-dns iptables uidmap mmdebstrap)
LOCK=/run/lock/nfs-subdir-provisioner-podman-setup.lock

REBUILD_BASE=0
for arg in "$@"; do
  case $arg in
    --rebuild-base) REBUILD_BASE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "podman-setup: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

T0=$EPOCHREALTIME
T_STEP=$T0
log() { echo "podman-setup: $*"; }
die() { echo "podman-setup: ERROR: $*"; exit 1; }
elapsed() { # elapsed seconds since $1, 2 decimals
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'
}
step_done() { log "$1 ($(elapsed "$T_STEP") s)"; T_STEP=$EPOCHREALTIME; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman, apt-get, /etc/containers)"

mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
if ! flock -n 9; then
  log "another podman-setup is running; waiting for it"
  flock 9
fi

# --- 1. packages -------------------------------------------------------------------------------
# Run apt-get, retrying while another process (another agent, unattended-upgrades) holds a lock.
apt_get() {
  local err attempt=0
  err=$(mktemp)
  while true; do
    if DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120 -o Dpkg::Use-Pty=0 "$@" 2>"$err"; then
      cat "$err"
      rm -f "$err"
      return 0
    fi
    cat "$err"
    if grep -qE 'Could not get lock|Unable to acquire|Unable to lock' "$err" && [ $attempt -lt 60 ]; then
      attempt=$((attempt + 1))
      log "apt is locked by another process; retrying in 5 s ($attempt/60)"
      sleep 5
      continue
    fi
    rm -f "$err"
    return 1
  done
}

missing=()
declare -A pkg_status=()
while read -r p st; do
  pkg_status[$p]=$st
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for p in "${PACKAGES[@]}"; do
  [ "${pkg_status[$p]:-}" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt_get update || die "apt-get update failed"
  # No Recommends: they would add buildah, fuse-overlayfs, slirp4netns and dbus-user-session, none
  # of which rootful podman with native overlay needs. iptables is listed explicitly because
  # netavark needs it for published ports but only podman's Suggests names it.
  apt_get install -y --no-install-recommends "${missing[@]}" || die "apt-get install failed"
  step_done "installed ${#missing[@]} package(s)"
else
  step_done "packages present"
fi
command -v podman >/dev/null || die "podman not found after installation"

# --- 2. containers.conf ------------------------------------------------------------------------
clamp() { # clamp VALUE MAX: "unlimited" or anything above MAX -> MAX
  case $1 in
    unlimited | '') echo "$2" ;;
    *) if [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi ;;
  esac
}
nofile=$(clamp "$(ulimit -Hn)" 1048576)
# Rootful podman lowers its own RLIMIT_NPROC to 32768 before starting the runtime, so a higher
# container value cannot be set.
nproc=$(clamp "$(ulimit -Hu)" 32768)
conf_text="$MARKER
# Why each setting is needed: see the header of scripts/podman-setup.sh.
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\""

if [ -n "${CONTAINERS_CONF:-}" ]; then
  log "note: CONTAINERS_CONF=$CONTAINERS_CONF is set in this environment; podman reads that file, not $CONF"
fi
if [ ! -e "$CONF" ]; then
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$conf_text" >"$CONF"
  step_done "wrote $CONF (nofile=$nofile, nproc=$nproc)"
elif head -n1 "$CONF" | grep -qxF "$MARKER"; then
  if [ "$(cat "$CONF")" != "$conf_text" ]; then
    printf '%s\n' "$conf_text" >"$CONF"
    step_done "updated $CONF (nofile=$nofile, nproc=$nproc)"
  else
    step_done "$CONF up to date"
  fi
else
  # An administrator's own file: leave it alone, but say what it must contain.
  for want in 'runtime *= *"runc"' 'default_ulimits' 'cgroup_manager' 'events_logger'; do
    grep -qE "^[[:space:]]*$want" "$CONF" \
      || log "WARNING: $CONF is not managed by this script and has no '${want%% *}' setting; podman may fail (see this script's header)"
  done
  step_done "$CONF is locally managed; left unchanged"
fi

# --- 3. base image -----------------------------------------------------------------------------
image_exists() { podman image exists "$1" 2>/dev/null; }

# Print "MAIN_URI SECURITY_URI" found in the host's apt sources (one-line and deb822 formats).
# Preference: entries for suite bookworm / bookworm-security, then any Debian suite.
host_mirrors() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk -v suite="$SUITE" '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    function add(uri, s) {
      if (uri !~ /^(https?|file):/) return
      sub(/\/+$/, "", uri)
      if (s == suite && main == "") main = uri
      else if ((s == suite "-security" || s == suite "/updates") && sec == "") sec = uri
      else if (s ~ /-security$|\/updates$/) { if (anysec == "") anysec = uri }
      else if (anymain == "") anymain = uri
    }
    function flush(   nu, ns, i, j, u, s) {
      if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
        nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
        for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) if (u[i] != "" && s[j] != "") add(u[i], s[j])
      }
      types = uris = suites = enabled = key = ""
    }
    FNR == 1 { flush() }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[ \t]*#/) next
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($0 ~ /^[ \t]/) { val = trim($0) } # continuation line
      else if (match($0, /^[A-Za-z0-9-]+:/)) { key = tolower(substr($0, 1, RLENGTH - 1)); val = trim(substr($0, RLENGTH + 1)) }
      else next
      if (key == "types") types = types " " val
      else if (key == "uris") uris = uris " " val
      else if (key == "suites") suites = suites " " val
      else if (key == "enabled") enabled = tolower(val)
      next
    }
    {
      line = $0; sub(/#.*/, "", line); gsub(/\[[^]]*\]/, " ", line)
      n = split(trim(line), f, /[ \t]+/)
      if (n >= 3 && f[1] == "deb") add(f[2], f[3])
    }
    END {
      flush()
      if (main == "") main = anymain
      if (sec == "") sec = anysec
      print main, sec
    }' "${files[@]}"
}

if [ $REBUILD_BASE = 1 ] || ! image_exists "$BASE_IMAGE"; then
  old_id=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
  read -r host_main host_sec < <(host_mirrors) || true
  MIRROR=${DEBIAN_MIRROR:-${host_main:-http://deb.debian.org/debian}}
  MIRROR=${MIRROR%/}
  if [ -n "${DEBIAN_SECURITY_MIRROR:-}" ]; then
    SEC_MIRROR=$DEBIAN_SECURITY_MIRROR
  elif [ -n "${host_sec:-}" ]; then
    SEC_MIRROR=$host_sec
  elif [[ $MIRROR == */debian ]]; then
    SEC_MIRROR=${MIRROR}-security
  else
    SEC_MIRROR=http://deb.debian.org/debian-security
  fi
  SEC_MIRROR=${SEC_MIRROR%/}
  log "building $BASE_IMAGE from $MIRROR (security: $SEC_MIRROR)"

  work=$(mktemp -d /var/tmp/podman-setup-rootfs.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  rootfs=$work/rootfs
  # --mode=root: we are root; minbase = Essential + apt, like the official image's base.
  # The merged-usr hook makes the /usr symlinks itself and installs usr-is-merged, instead of
  # the usrmerge package, which would pull perl into the image (+50 MB).
  # The path excludes are those of the official -slim images; mmdebstrap keeps them in
  # /etc/dpkg/dpkg.cfg.d/99mmdebstrap, so packages installed later are slim as well.
  mmdebstrap --quiet --variant=minbase --mode=root --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$rootfs" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SEC_MIRROR $SUITE-security main" \
    >"$work/mmdebstrap.log" 2>&1 \
    || { cat "$work/mmdebstrap.log"; die "mmdebstrap failed (log above)"; }
  step_done "mmdebstrap $SUITE minbase"

  # The official image's apt configuration: keep no .debs or pkgcache in image layers, no
  # translations, gzipped indexes, suggests are not important for autoremove.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # mmdebstrap leaves its own apt options file behind; the settings above replace it.
  rm -f "$rootfs/etc/apt/apt.conf.d/99mmdebstrap"
  # Do not start daemons from maintainer scripts during image builds (there is no init).
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/apt/* "$rootfs"/tmp/* \
    "$rootfs"/var/cache/ldconfig/aux-cache
  : >"$rootfs/etc/hostname"
  : >"$rootfs/etc/resolv.conf"
  printf '%s\n' "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SEC_MIRROR $SUITE-security main" >"$rootfs/etc/apt/sources.list"

  tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman import --quiet \
      --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "LABEL org.nfs-subdir-provisioner.base.mirror=$MIRROR" \
      --message "mmdebstrap --variant=minbase $SUITE $MIRROR" \
      - "$BASE_IMAGE" >/dev/null \
    || die "podman import failed"
  rm -rf "$work"
  trap - EXIT
  step_done "imported $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
  fresh_image=1
else
  step_done "$BASE_IMAGE present"
  fresh_image=0
fi

# One podman call in the common case: all names present and the same image.
ids=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" "${BASE_ALIASES[@]}" 2>/dev/null || true)
base_id=${ids%%$'\n'*}
if [ "$(sort -u <<<"$ids" | wc -l)" != 1 ] || [ "$(wc -l <<<"$ids")" != $((1 + ${#BASE_ALIASES[@]})) ]; then
  base_id=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE")
  for alias in "${BASE_ALIASES[@]}"; do
    if [ "$(podman image inspect --format '{{.Id}}' "$alias" 2>/dev/null || true)" != "$base_id" ]; then
      podman tag "$BASE_IMAGE" "$alias"
      log "tagged $alias"
    fi
  done
fi

if [ -n "${old_id:-}" ] && [ "$old_id" != "$base_id" ]; then
  # The replaced base image, unless images built on it still need it.
  if podman rmi "$old_id" >/dev/null 2>&1; then log "removed the previous base image ${old_id:0:12}"; fi
fi

if [ $fresh_image = 1 ] || [ ${#missing[@]} -gt 0 ]; then
  # Smoke test once after changes: exercises runtime, cgroups and ulimits.
  out=$(podman run --rm --network=none "$BASE_IMAGE" sh -c 'echo ok' 2>&1) || true
  [ "$out" = ok ] || die "podman run smoke test failed: $out"
  step_done "podman run smoke test"
fi
log "done in $(elapsed "$T0") s"
