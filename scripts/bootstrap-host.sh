#!/usr/bin/env bash
# Install the Debian packages `make test`, `make bench` and `make demo` need,
# only those that are missing. Run as root on Debian 12.
set -euo pipefail
PKGS=(docker.io debootstrap nftables iptables ipset conntrack iproute2 ufw rsync git
      tor openssh-client chromium fonts-dejavu-core prometheus)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap-host: all Debian packages present"
  exit 0
fi
echo "bootstrap-host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages' maintainer scripts must not start servers here (prometheus would listen on
# :9090; only its promtool is used): a policy-rc.d that refuses every start, unless the
# host already has one.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# bootstrap-host.sh: no service starts during package installs\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  own_policy=true
fi
trap 'if $own_policy; then rm -f "$policy"; fi' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The tor and prometheus packages start servers on the build host; the tests only use
# their binaries (tor, promtool).
# (policy-rc.d kept them from starting now; keep them from starting at boot too.)
for unit in tor prometheus; do
  if [[ " ${missing[*]} " == *" $unit "* ]] && command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done
