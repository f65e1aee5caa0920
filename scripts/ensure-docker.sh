#!/usr/bin/env bash
# Make sure a Docker daemon answers. Starts dockerd only when `docker info` fails,
# and never stops a daemon it did not start (see ../shared/lab-notes.md).
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: dockerd not installed (package docker.io)" >&2
  exit 1
fi
echo "ensure-docker: starting dockerd (no init system runs here)"
mkdir -p /var/log
nohup dockerd --exec-opt native.cgroupdriver=cgroupfs >/var/log/torexit-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "ensure-docker: daemon ready"
    exit 0
  fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s, see /var/log/torexit-dockerd.log" >&2
exit 1
