# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tor exit policies: presets, validation of extra entries, torrc lines.

Runs on the managed host (stdlib only). The effective policy is returned as a
list of strings such as ``accept *:443`` so other roles can show the policy in
force without typing it a second time.
"""

from __future__ import annotations

import ipaddress
import re

# tor's ReducedExitPolicy as compiled into tor before 0.4.9.4-rc
# (src/core/or/policies.c, REDUCED_EXIT_POLICY).
REDUCED_PORTS = (
    "20-23", "43", "53", "79-81", "88", "110", "143", "194", "220", "389",
    "443", "464", "465", "531", "543-544", "554", "563", "587", "636", "706",
    "749", "873", "902-904", "981", "989-995", "1194", "1220", "1293", "1500",
    "1533", "1677", "1723", "1755", "1863", "2082-2083", "2086-2087",
    "2095-2096", "2102-2104", "3128", "3389", "3690", "4321", "4643", "5050",
    "5190", "5222-5223", "5228", "5900", "6660-6669", "6679", "6697", "8000",
    "8008", "8074", "8080", "8082", "8087-8088", "8232-8233", "8332-8333",
    "8443", "8888", "9418", "9999", "10000", "11371", "19294", "19638",
    "50002", "64738",
)
# tor 0.4.9.4-rc added the Monero ports (ticket 41168).
REDUCED_MONERO_PORTS = ("18080-18081", "18089")
REDUCED_MONERO_SINCE = (0, 4, 9, 4)

# tor's default exit policy (DEFAULT_EXIT_POLICY in policies.c).
DEFAULT_POLICY = (
    "reject *:25", "reject *:119", "reject *:135-139", "reject *:445",
    "reject *:563", "reject *:1214", "reject *:4661-4666", "reject *:6346-6429",
    "reject *:6699", "reject *:6881-6999", "accept *:*",
)

PRESETS = ("reduced", "default", "web", "none")

_VERSION_RE = re.compile(r"Tor version (\d+)\.(\d+)\.(\d+)(?:\.(\d+))?")
_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


class ExitPolicyError(ValueError):
    """An exit policy entry or preset that tor would not accept as meant."""


def parse_tor_version(text):
    """Return the version tuple from ``tor --version`` output, or None."""
    match = _VERSION_RE.search(text or "")
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def reduced_ports(tor_version=None):
    """Port list of ReducedExitPolicy for the given tor version (None: newest)."""
    ports = list(REDUCED_PORTS)
    if tor_version is None or tuple(tor_version) >= REDUCED_MONERO_SINCE:
        ports.extend(REDUCED_MONERO_PORTS)
    return sorted(ports, key=lambda p: int(p.split("-")[0]))


def preset_policy(preset, tor_version=None):
    """The preset as a list of policy entries, ending in the catch-all."""
    if preset == "reduced":
        return [f"accept *:{p}" for p in reduced_ports(tor_version)] + ["reject *:*"]
    if preset == "default":
        return list(DEFAULT_POLICY)
    if preset == "web":
        return ["accept *:80", "accept *:443", "reject *:*"]
    if preset == "none":
        return ["reject *:*"]
    raise ExitPolicyError(f"exit policy preset {preset!r} is not one of {', '.join(PRESETS)}")


def _check_port(text, entry):
    if text == "*":
        return "*"
    match = _PORT_RE.match(text)
    if not match:
        raise ExitPolicyError(f"exit policy entry {entry!r}: port {text!r} is not *, N or N-M")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        raise ExitPolicyError(f"exit policy entry {entry!r}: port range {text!r} is outside 1-65535 or reversed")
    return str(low) if low == high else f"{low}-{high}"


def _check_address(text, entry):
    if text in ("*", "*4", "*6", "private"):
        return text
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ExitPolicyError(f"exit policy entry {entry!r}: unterminated [IPv6 address]")
        addr, rest = text[1:close], text[close + 1:]
        if rest and not rest.startswith("/"):
            raise ExitPolicyError(f"exit policy entry {entry!r}: unexpected {rest!r} after the IPv6 address")
        version = 6
    else:
        addr, _sep, rest = text.partition("/")
        rest = "/" + rest if rest else ""
        version = 4
    try:
        net = ipaddress.ip_network(addr + rest, strict=True)
    except ValueError as exc:
        raise ExitPolicyError(f"exit policy entry {entry!r}: {exc}") from None
    if net.version != version:
        raise ExitPolicyError(f"exit policy entry {entry!r}: IPv6 addresses must be written in [brackets]")
    if version == 4:
        return str(net) if net.prefixlen != 32 else str(net.network_address)
    if net.prefixlen == 128:
        return f"[{net.network_address}]"
    return f"[{net.network_address}]/{net.prefixlen}"


def normalize_target(target):
    """Validate ``ADDR[/LEN]:PORT`` (IPv6 in brackets) and return it normalized."""
    if not isinstance(target, str) or not target.strip():
        raise ExitPolicyError(f"exit policy entry {target!r} is empty or not a string")
    entry = target.strip()
    if " " in entry or "," in entry:
        raise ExitPolicyError(f"exit policy entry {entry!r}: give one ADDR:PORT without accept/reject, spaces or commas")
    addr, sep, port = entry.rpartition(":")
    if not sep or not addr:
        raise ExitPolicyError(f"exit policy entry {entry!r}: expected ADDR[/LEN]:PORT, e.g. 198.18.0.0/24:25 or [2001:db8::]/32:*")
    return f"{_check_address(addr, entry)}:{_check_port(port, entry)}"


def build(preset="reduced", accept=None, reject=None, ipv6_exit=True, tor_version=None,
          reduced_option=False):
    """Return ``(options, effective)`` for a preset plus extra entries.

    ``tor_version`` (a tuple, None for the newest) selects tor's own port list;
    ``reduced_option`` says the installed tor knows ``ReducedExitPolicy``, so
    the reduced preset is written as that option instead of explicit lines.

    ``options`` is an ordered list of ``(torrc option, values)``: the values
    list holds one string per torrc line. ``effective`` is the policy in force
    as a list of entries, first match first; the guard's dynamic rejects are
    not part of it (they live in their own included file).
    """
    if preset not in PRESETS:
        raise ExitPolicyError(f"exit policy preset {preset!r} is not one of {', '.join(PRESETS)}")
    rejects = ["reject " + normalize_target(t) for t in (reject or [])]
    accepts = ["accept " + normalize_target(t) for t in (accept or [])]
    extra = rejects + accepts
    is_exit = preset != "none"
    if not is_exit and accepts:
        raise ExitPolicyError(f"exit policy preset 'none' (no exit) cannot have accept entries: {', '.join(accepts)}")

    use_reduced_option = preset == "reduced" and bool(reduced_option)
    if preset == "default" or use_reduced_option:
        policy_lines = extra  # tor appends its own built-in list after these
    else:
        policy_lines = extra + preset_policy(preset, tor_version)

    options = [
        ("ExitRelay", ["1" if is_exit else "0"]),
        ("ExitPolicyRejectPrivate", ["1"]),
        ("ExitPolicyRejectLocalInterfaces", ["1"]),
        ("IPv6Exit", ["1" if (is_exit and ipv6_exit) else "0"]),
        ("ReducedExitPolicy", ["1"] if use_reduced_option else []),
        ("ExitPolicy", policy_lines),
    ]
    effective = ["reject private:*"] + extra + preset_policy(preset, tor_version)
    if not is_exit:
        effective = ["reject *:*"]
    return options, effective


def expand_ports(entries):
    """Set of every port an ``accept *:PORTS`` entry list accepts (for tests and checks)."""
    ports = set()
    for entry in entries:
        action, _sep, target = entry.partition(" ")
        if action != "accept" or not target.startswith("*:"):
            continue
        spec = target[2:]
        if spec == "*":
            return set(range(1, 65536))
        low, _sep, high = spec.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports
