#!/usr/bin/env bash
# Build the local Debian base images molecule and the demo fleet run on.
# No registry is reachable, so images are made with debootstrap + docker import.
# An image is rebuilt only when its recipe (this file) changed: the recipe hash is
# kept as a label and compared before building.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages baked into the images: systemd as PID 1, Python for Ansible, the
# firewall tools, and the distribution packages the roles manage (firewall:
# python3-netaddr, ipset, nftables; tor_exit: tor, unbound, dns-root-data;
# exit_notice: nginx, openssl; metrics: prometheus-node-exporter), so molecule and
# the demo converge without reaching a mirror: their apt tasks find everything
# installed and report ok.
INCLUDE="python3,python3-apt,python3-netaddr,systemd,systemd-sysv,dbus,iproute2,iptables,nftables,ipset,conntrack,procps,sudo,ca-certificates,openssl,openssh-server,openssh-client,ufw,tor,unbound,dns-root-data,nginx,prometheus-node-exporter,curl,netbase,cron,locales"
# Bump RECIPE_VERSION when the steps below change in a way that alters the image.
RECIPE_VERSION=2
RECIPE_HASH=$(printf '%s %s' "$RECIPE_VERSION" "$INCLUDE" | sha256sum | cut -c1-16)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

cleanup() {
  # debootstrap may leave /proc or /sys mounted inside the target after a failure:
  # unmount before removing, never remove through a live mount.
  local dir=$1
  # (grep finds nothing in the usual case: not a failure under pipefail)
  { findmnt -rn -o TARGET | grep -F "$dir/" || true; } | sort -r | xargs -r umount -l
  if findmnt -rn -o TARGET | grep -qF "$dir/"; then
    echo "build-images: mounts remain under $dir, not removing it" >&2
    return 1
  fi
  rm -rf "$dir" "$dir.log"
}

build() {
  local suite=$1 tag=$2
  local have
  have=$(docker image inspect --format '{{ index .Config.Labels "torexit.recipe" }}' "$tag" 2>/dev/null || true)
  if [ "$have" = "$RECIPE_HASH" ]; then
    echo "build-images: $tag is current (recipe $RECIPE_HASH), skipping"
    return 0
  fi
  local dir
  dir=$(mktemp -d /var/tmp/torexit-rootfs.XXXXXX)
  echo "build-images: debootstrap $suite into $dir"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$suite" "$dir" "$MIRROR" >"$dir.log" 2>&1; then
    tail -30 "$dir.log" >&2
    cleanup "$dir"
    exit 1
  fi
  # Containers have no real kernel console or udev; keep systemd quiet and fast.
  rm -f "$dir"/etc/machine-id && : >"$dir"/etc/machine-id
  for unit in systemd-udevd.service systemd-udev-trigger.service getty@tty1.service \
              systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$dir/etc/systemd/system/$unit"
  done
  tar -C "$dir" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change "LABEL torexit.recipe=$RECIPE_HASH" \
    --change 'ENV container=docker' \
    - "$tag" >/dev/null
  cleanup "$dir"
  echo "build-images: built $tag"
}

build bookworm torexit/debian:12
build trixie torexit/debian:13
