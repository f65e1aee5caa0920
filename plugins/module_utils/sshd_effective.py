# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading ``sshd -T``: the effective configuration for one connection."""

from __future__ import annotations

import ipaddress
import re


def parse_effective(text):
    """``sshd -T`` output as {keyword: [value, ...]} (keywords lower case)."""
    eff = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts:
            eff.setdefault(parts[0].lower(), []).append(parts[1] if len(parts) > 1 else "")
    return eff


def first(eff, key, default=""):
    values = eff.get(key)
    return values[0] if values else default


def words(eff, key):
    return [w for v in eff.get(key, []) for w in v.split()]


def effective_diff(before, after):
    keys = sorted(set(before) | set(after))
    return {k: {"before": before.get(k, []), "after": after.get(k, [])}
            for k in keys if before.get(k, []) != after.get(k, [])}


def listen_ports(eff):
    """TCP ports sshd listens on: from ListenAddress (which sshd -T prints with its
    port), else from Port."""
    ports = set()
    for value in eff.get("listenaddress", []):
        addr = value.split()[0]
        match = re.search(r":(\d+)$", addr)
        if match:
            ports.add(int(match.group(1)))
    if not ports:
        ports = {int(p) for p in eff.get("port", []) if p.isdigit()}
    return ports


def ip_or_none(text):
    """The address as an ipaddress object (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        addr = ipaddress.ip_address((text or "").strip("[]"))
    except ValueError:
        return None
    return addr.ipv4_mapped if addr.version == 6 and addr.ipv4_mapped else addr


def listens_on(eff, address, port):
    """Whether a ListenAddress of ``eff`` (sshd -T prints each as ADDR:PORT or
    [ADDR]:PORT, numeric) accepts connections to ``address``:``port``. The wildcards
    0.0.0.0 and :: cover their own family only (sshd sets IPV6_V6ONLY)."""
    target = ip_or_none(address)
    for value in eff.get("listenaddress", []):
        host, _sep, lport = value.split()[0].rpartition(":")
        listen = ip_or_none(host)
        if not lport.isdigit() or int(lport) != port or listen is None or target is None:
            continue
        if listen == target or (listen.is_unspecified and listen.version == target.version):
            return True
    return False


def connection_spec(user=None, address=None, port=None):
    """The -C argument of ``sshd -T`` for the connecting user (Match blocks apply)."""
    spec = []
    if user:
        spec.append("user=" + user)
    if address:
        spec += ["addr=" + address, "host=" + address]
    if port:
        spec.append(f"lport={port}")
    return ",".join(spec)
