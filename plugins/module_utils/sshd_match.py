# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sshd's pattern matching (OpenSSH match.c and addrmatch.c), for USER@HOST patterns
of AllowUsers/DenyUsers and the from= option of authorized keys.

Return values follow sshd: 1 match, 0 no match, -1 negated match (or, for
match_host_and_ip, an invalid list), -2 an invalid address list.
"""

from __future__ import annotations

import ipaddress
import re


def match_pattern(text, pattern):
    """``*`` and ``?`` wildcards; every other character is literal (no classes)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def match_pattern_list(text, patterns, dolower=False):
    """Comma-separated patterns, each optionally negated with ``!``."""
    positive = 0
    for item in patterns.split(","):
        negated = item.startswith("!")
        if negated:
            item = item[1:]
        if dolower:
            item = item.lower()
        if match_pattern(text, item):
            if negated:
                return -1
            positive = 1
    return positive


def _cidr(text):
    """(network, ok): ok 0 = parsed, -1 = not an address (try wildcards), -2 = an
    address with an invalid mask or host bits set (the whole list is invalid)."""
    addr, sep, mask = text.partition("/")
    if sep and (not mask.isdigit() or int(mask) > 128):
        return None, -1
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None, -1
    length = int(mask) if sep else ip.max_prefixlen
    if length > ip.max_prefixlen:
        return None, -2
    try:
        return ipaddress.ip_network(f"{ip}/{length}", strict=True), 0
    except ValueError:
        return None, -2


def addr_match_list(address, patterns):
    """sshd's addr_match_list: CIDR networks, bare addresses or wildcard patterns."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0
    result = 0
    for item in patterns.split(","):
        negated = item.startswith("!")
        if negated:
            item = item[1:]
        if not item:
            return -2
        network, ok = _cidr(item)
        if ok == -2:
            return -2
        hit = (ip.version == network.version and ip in network) if ok == 0 else match_pattern(address, item)
        if hit:
            if negated:
                return -1
            result = 1
    return result


def match_host_and_ip(host, address, patterns):
    """sshd's match_host_and_ip: 1 when the host or address is admitted, 0 when not
    (or a negated entry matches), -1 when the list is invalid."""
    by_address = addr_match_list(address, patterns)
    if by_address == -2:
        return -1
    if by_address == -1:
        return 0
    by_name = match_pattern_list(host.lower(), patterns, dolower=True)
    if by_name == -1:
        return 0
    return 1 if by_name == 1 or by_address == 1 else 0
