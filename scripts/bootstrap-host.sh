#!/usr/bin/env bash
# Install the Debian packages `make test`, `make bench` and `make demo` need,
# only those that are missing. Run as root on Debian 12.
set -euo pipefail
PKGS=(docker.io debootstrap nftables iptables ipset conntrack iproute2 ufw rsync git
      tor openssh-client chromium fonts-dejavu-core)
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
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The tor package starts a client on the build host; the tests only use its binary.
if [[ " ${missing[*]} " == *" tor "* ]] && command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl disable --now tor >/dev/null 2>&1 || true
fi
