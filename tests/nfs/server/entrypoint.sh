#!/bin/sh
# Start rpcbind (ganesha refuses to start unless it can register with it), then run ganesha in the
# foreground as the container's main process, logging to stdout (podman logs).
# rpcbind lives in the container's network namespace; only 2049 and 20048 are published.
set -eu

for d in /export /export-rootsquash; do
  if [ ! -d "$d" ]; then
    echo "entrypoint: $d is missing; bind-mount a host directory there" >&2
    exit 1
  fi
done

rm -f /run/rpcbind.lock /run/rpcbind.sock /run/ganesha.pid
mkdir -p /run/rpcbind /var/lib/nfs/ganesha
rpcbind -f &
i=0
while [ ! -S /run/rpcbind.sock ]; do
  i=$((i + 1))
  if [ "$i" -gt 250 ]; then
    echo "entrypoint: rpcbind did not create /run/rpcbind.sock within 5 s" >&2
    exit 1
  fi
  sleep 0.02
done

exec ganesha.nfsd -F -L /dev/stdout -f /etc/ganesha/ganesha.conf -p /run/ganesha.pid
