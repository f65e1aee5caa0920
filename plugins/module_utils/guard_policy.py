# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The egress guard's policy model: module options in, validated thresholds out.

Every backend renders the same `Policy`. All validation happens here, before any
backend touches the host, and every error names the option and the value.

Detectors (all act on *new* outbound TCP connections of the guarded user only):

* flood: while more than `concurrent` connections to one address are open,
  new connections to that address and port are rate limited (`rate`/s beyond a
  burst of `burst`); exceeding that bans the address and port for `ban_time`.
  An uploader opening a few connections at a time never reaches the gate.
* horizontal scan: first contacts of distinct hosts on one port are counted per
  prefix (IPv4 /24 and /16, IPv6 /48 and /32 by default). More than N distinct
  hosts of one prefix on one port within `scan_window` bans that prefix and
  port. N depends on the port's tier: `strict` ports that scanners favour, `web`
  ports where CDNs put thousands of sites in one prefix, and the `default` tier.
* vertical scan: more than `ports` distinct ports of one host within
  `scan_window` bans that host.
* repeated login (strict ports): more than `login.rate` new connections per
  minute to one host and strict port (beyond a burst of `login.burst`) after
  the first contact, bans that host and port for `login.ban_time`.
  Password guessing opens sessions far faster than a person or a git client.
* prefix sweep (every tier, web ports included): a /22 (IPv6 /48) is
  confirmed for `confirm_time` seconds by reply data on any guarded connection
  into it. First contacts into unconfirmed /22s are counted per prefix and port
  at each level of `prefixes_v4`/`prefixes_v6` whose `burst` is not 0 (by
  default one level: the /16 and IPv6 /32), and so are failed first contacts
  (refused, or unanswered: a retransmitted SYN) into any /22. More than `burst`
  (then `rate` per minute) bans the prefix and port for `ban_time`. A
  browser's CDN /22 answers with data at once, so only sweeps fill the meters.
* wide scan (strict ports): first contacts per strict port across all prefixes
  beyond `wide_scan.rate` per second (burst `burst`) are rejected except one
  in `pass_one_in`, at random, and not recorded as seen (a retry is a first
  contact again). Repeats never pass this gate, and no port is ever banned.

Thresholds scale with the relay's size through `profile` (or `bandwidth_mbit`).
"""

from __future__ import annotations

import hashlib
import json
import math

try:
    import netaddr

    HAS_NETADDR = True
    NETADDR_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised on hosts without netaddr
    HAS_NETADDR = False
    NETADDR_IMPORT_ERROR = exc

TABLE = "torexit_guard"

# Profiles: (scale factor, largest bandwidth in Mbit/s the profile is meant for).
PROFILES = {
    "small": (0.5, 20),
    "medium": (1.0, 200),
    "large": (4.0, 1000),
    "xlarge": (10.0, None),
}

# Ports scanners favour: remote shells, remote desktops, databases, file shares.
DEFAULT_STRICT_PORTS = [21, 22, 23, 135, 139, 445, 1433, 2222, 2323, 3306, 3389,
                        5432, 5900, 5901, 6379, 9200, 11211, 27017]
# Ports where one prefix legitimately hosts thousands of sites (CDNs).
DEFAULT_WEB_PORTS = [80, 443, 8080, 8443]

REJECT_CHOICES = ["tcp-reset", "icmp-admin-prohibited", "drop"]
MODE_CHOICES = ["enforce", "monitor", "exitpolicy"]

# Defaults for the medium profile (factor 1). `None` in the module's options means
# "take the profile's value".
BASE = {
    "scan_window": 600,
    "ban_time": 600,
    "flood": {"concurrent": 24, "rate": 25, "burst": 50, "ban_time": 300},
    "horizontal_scan": {
        "prefixes_v4": [24, 16],
        "prefixes_v6": [48, 32],
        "hosts_strict": [16, 48],
        "hosts_default": [32, 256],
        "hosts_web": [0, 2048],
    },
    "vertical_scan": {"ports": 48},
    "set_size": 262144,
    # rate: new connections per minute to one host and strict port; git over SSH
    # opens at most one a second, 16-way guessing 20
    "login": {"rate": 120, "burst": 8, "ban_time": 600},
    # per destination prefix and port, counted while the /22 (the first level)
    # has not sent reply data lately. One budget per /16 by default (the /22
    # level is off: burst 0): burst + 4 x rate = 144 stays under the 150 new
    # connections into a /22 within 4 minutes that provider netscan alarms
    # count, and a /16 sweep leaks about 100 of 65,000 hosts
    "prefix_sweep": {"prefixes_v4": [22, 16], "prefixes_v6": [48, 32], "burst": [0, 96], "rate": [24, 12],
                     "confirm_time": 600, "ban_time": 600},
    # first contacts per second on one strict port, all prefixes together
    # (the burst absorbs the first contacts a /16 sweep makes before its ban)
    "wide_scan": {"rate": 2, "burst": 100, "pass_one_in": 128},
}

# The options of the repeated-login, prefix-sweep and wide-scan detectors and
# their bounds (lowest, highest); 0 turns a detector (or a prefix-sweep level) off
# where the lowest bound allows it.
DETECTOR_BOUNDS = {
    "login": {"rate": (0, 60000), "burst": (1, 10000), "ban_time": (1, 2147483)},
    "prefix_sweep": {"prefixes_v4": (8, 30), "prefixes_v6": (16, 64), "burst": (0, 10000),
                     "rate": (1, 60000), "confirm_time": (10, 2147483), "ban_time": (1, 2147483)},
    "wide_scan": {"rate": (0, 100000), "burst": (1, 1000000), "pass_one_in": (1, 65536)},
}


# Largest (and for set_size smallest) values every backend loads: ipset timeouts end at
# 2147483 s, hashlimit bursts at 1000000; set_size below 1024 fills within minutes
# and detection stops. Values beyond them used to wrap around or fail inside nft.
BOUNDS = {
    "bandwidth_mbit": (1, 1000000),
    "scan_window": (1, 86400),
    "ban_time": (1, 2147483),
    "set_size": (1024, 16777216),
    "flood.concurrent": (1, 65535),
    "flood.rate": (1, 100000),
    "flood.burst": (1, 1000000),
    "flood.ban_time": (1, 2147483),
    "horizontal_scan.hosts": (0, 1000000),
    "vertical_scan.ports": (0, 65535),
}


class PolicyError(ValueError):
    """Raised for invalid options; the message names the option and the value."""


def _scaled(value, factor, minimum=1):
    if not value:
        return value
    return max(minimum, int(round(value * factor)))


def profile_for_bandwidth(mbit):
    for name, (_factor, ceiling) in PROFILES.items():
        if ceiling is None or mbit <= ceiling:
            return name
    return "xlarge"  # pragma: no cover - the last profile has no ceiling


def profile_defaults(profile):
    """Thresholds of a profile: flood and web/default scan tiers and set sizes
    scale with the factor; the strict tier does not (nobody sweeps SSH more
    because more people use the exit), the default tier with its square root."""
    factor = PROFILES[profile][0]
    hs = BASE["horizontal_scan"]
    return {
        "scan_window": BASE["scan_window"],
        "ban_time": BASE["ban_time"],
        "flood": {
            "concurrent": _scaled(BASE["flood"]["concurrent"], factor, 8),
            "rate": _scaled(BASE["flood"]["rate"], factor, 5),
            "burst": _scaled(BASE["flood"]["burst"], factor, 10),
            "ban_time": BASE["flood"]["ban_time"],
        },
        "horizontal_scan": {
            "prefixes_v4": list(hs["prefixes_v4"]),
            "prefixes_v6": list(hs["prefixes_v6"]),
            "hosts_strict": list(hs["hosts_strict"]),
            "hosts_default": [_scaled(v, math.sqrt(factor), 8) for v in hs["hosts_default"]],
            "hosts_web": [_scaled(v, factor, 64) for v in hs["hosts_web"]],
        },
        "vertical_scan": {"ports": BASE["vertical_scan"]["ports"]},
        "set_size": _scaled(BASE["set_size"], factor, 65536),
        # many users of a big exit share one forge: the square root, never below medium
        "login": {
            "rate": _scaled(BASE["login"]["rate"], math.sqrt(max(factor, 1.0)), 1),
            "burst": _scaled(BASE["login"]["burst"], math.sqrt(max(factor, 1.0)), 1),
            "ban_time": BASE["login"]["ban_time"],
        },
        # a destination's alarm threshold does not grow with the exit: not scaled
        "prefix_sweep": dict((k, list(v) if isinstance(v, list) else v) for k, v in BASE["prefix_sweep"].items()),
        # legitimate first contacts on a strict port grow with the number of users
        "wide_scan": {
            "rate": _scaled(BASE["wide_scan"]["rate"], factor, 1),
            "burst": _scaled(BASE["wide_scan"]["burst"], factor, 10),
            "pass_one_in": BASE["wide_scan"]["pass_one_in"],
        },
    }


def _merge(defaults, given):
    """Options left unset (None) take the profile's value."""
    out = {}
    for key, value in defaults.items():
        mine = (given or {}).get(key)
        if isinstance(value, dict):
            out[key] = _merge(value, mine)
        else:
            out[key] = value if mine is None else mine
    return out


def _network(option, text):
    text = str(text).strip()
    addr, slash, length = text.partition("/")
    try:
        ip = netaddr.IPAddress(addr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise PolicyError("%s: %r is not a valid address or CIDR network" % (option, text)) from None
    if slash:
        maximum = 32 if ip.version == 4 else 128
        if not length.isdigit() or int(length) > maximum:
            raise PolicyError("%s: %r has a prefix length out of range 0-%d" % (option, text, maximum))
    net = netaddr.IPNetwork(text)
    if net.ip != net.network:
        raise PolicyError("%s: %r has host bits set; did you mean %s?" % (option, text, net.cidr))
    return net


def _port_range(option, text):
    parts = str(text).split("-")
    try:
        ports = [int(p) for p in parts]
    except ValueError:
        raise PolicyError("%s: %r is not a port or port range" % (option, text)) from None
    if len(ports) > 2 or any(p < 1 or p > 65535 for p in ports) or ports[0] > ports[-1]:
        raise PolicyError("%s: %r is not a port or port range within 1-65535" % (option, text))
    return (ports[0], ports[-1])


def parse_deny(option, entry):
    """`CIDR`, `CIDR:PORT`, `CIDR:LOW-HIGH`; IPv6 with ports as `[2001:db8::/32]:22`."""
    text = str(entry).strip()
    ports = None
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep:
            raise PolicyError("%s: %r lacks the closing ']'" % (option, entry))
        if rest:
            if not rest.startswith(":"):
                raise PolicyError("%s: %r: expected ':PORT' after ']'" % (option, entry))
            ports = _port_range(option, rest[1:])
        text = addr
    elif text.count(":") == 1:
        text, port_text = text.split(":")
        ports = _port_range(option, port_text)
    return {"net": _network(option, text), "ports": ports}


def _check_prefixes(option, prefixes, maximum):
    if not prefixes:
        raise PolicyError("%s: at least one prefix length is needed" % option)
    for p in prefixes:
        if not isinstance(p, int) or p < 8 or p > maximum:
            raise PolicyError("%s: prefix length %r is out of range 8-%d" % (option, p, maximum))
    if sorted(prefixes, reverse=True) != list(prefixes) or len(set(prefixes)) != len(prefixes):
        raise PolicyError("%s: %r must go from the narrowest prefix to the widest, without repeats"
                          % (option, prefixes))


def _check_ports(option, ports):
    for p in ports:
        if not isinstance(p, int) or p < 1 or p > 65535:
            raise PolicyError("%s: port %r is out of range 1-65535" % (option, p))


def _positive(option, value, allow_zero=False, bounds=None):
    if not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise PolicyError("%s: %r must be a %s integer" % (option, value, kind))
    low, high = BOUNDS[bounds or option]
    if not low <= value <= high:
        raise PolicyError("%s: %r is out of range %d-%d" % (option, value, low, high))


def _bounded(option, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError("%s: %r must be an integer within %d-%d" % (option, value, low, high))


def _check_detectors(th):
    """Bounds and shapes of the repeated-login, prefix-sweep and wide-scan options."""
    ps = th["prefix_sweep"]
    for key in ("prefixes_v4", "prefixes_v6", "burst", "rate"):
        if not isinstance(ps[key], list) or not ps[key]:
            raise PolicyError("prefix_sweep.%s: %r must be a non-empty list" % (key, ps[key]))
    for group, limits in DETECTOR_BOUNDS.items():
        for key, (low, high) in limits.items():
            value = th[group][key]
            for item in value if isinstance(value, list) else [value]:
                _bounded("%s.%s" % (group, key), item, low, high)
    for key in ("prefixes_v4", "prefixes_v6"):
        if sorted(ps[key], reverse=True) != list(ps[key]) or len(set(ps[key])) != len(ps[key]):
            raise PolicyError("prefix_sweep.%s: %r must go from the narrowest prefix to the widest, without repeats"
                              % (key, ps[key]))
    for key in ("prefixes_v6", "burst", "rate"):
        if len(ps[key]) != len(ps["prefixes_v4"]):
            raise PolicyError("prefix_sweep.%s: %r needs one value per level of prefixes_v4 %r"
                              % (key, ps[key], ps["prefixes_v4"]))


def build_policy(params, user_exists=None):
    """Validate module options and return the policy dict every backend renders.

    `user_exists` is a callable checking the owner; injected so unit tests need
    no real users.
    """
    if not HAS_NETADDR:
        raise PolicyError("the Python library netaddr is required on the managed host "
                          "(Debian package python3-netaddr)")
    mode = params.get("mode") or "enforce"
    if mode not in MODE_CHOICES:
        raise PolicyError("mode: %r is not one of %s" % (mode, ", ".join(MODE_CHOICES)))
    reject_with = params.get("reject_with") or "tcp-reset"
    if reject_with not in REJECT_CHOICES:
        raise PolicyError("reject_with: %r is not one of %s" % (reject_with, ", ".join(REJECT_CHOICES)))

    owner = params.get("owner") or "debian-tor"
    if owner != "any" and user_exists is not None and not user_exists(owner):
        raise PolicyError("owner: user %r does not exist on this host" % owner)

    bandwidth = params.get("bandwidth_mbit")
    profile = params.get("profile")
    if bandwidth is not None:
        _positive("bandwidth_mbit", bandwidth)
        if profile:
            raise PolicyError("profile and bandwidth_mbit: give one, not both (profile=%r, bandwidth_mbit=%r)"
                              % (profile, bandwidth))
        profile = profile_for_bandwidth(bandwidth)
    profile = profile or "medium"
    if profile not in PROFILES:
        raise PolicyError("profile: %r is not one of %s" % (profile, ", ".join(PROFILES)))

    for group, limits in DETECTOR_BOUNDS.items():
        given = params.get(group) or {}
        if not isinstance(given, dict):
            raise PolicyError("%s: %r must be a dictionary of %s" % (group, given, ", ".join(limits)))
        unknown = sorted(k for k in set(given) - set(limits) if given[k] is not None)
        if unknown:
            raise PolicyError("%s: unknown option(s) %s; known: %s" % (group, unknown, ", ".join(limits)))
    th = _merge(profile_defaults(profile), {
        "scan_window": params.get("scan_window"),
        "ban_time": params.get("ban_time"),
        "flood": params.get("flood"),
        "horizontal_scan": params.get("horizontal_scan"),
        "vertical_scan": params.get("vertical_scan"),
        "set_size": params.get("set_size"),
        "login": params.get("login"),
        "prefix_sweep": params.get("prefix_sweep"),
        "wide_scan": params.get("wide_scan"),
    })
    _check_detectors(th)

    for key in ("scan_window", "ban_time", "set_size"):
        _positive(key, th[key])
    fl = th["flood"]
    for key in ("concurrent", "rate", "burst", "ban_time"):
        _positive("flood.%s" % key, fl[key])
    if fl["burst"] < fl["rate"]:
        raise PolicyError("flood.burst: %r is below flood.rate (%r); the burst must be at least the rate"
                          % (fl["burst"], fl["rate"]))
    hs = th["horizontal_scan"]
    _check_prefixes("horizontal_scan.prefixes_v4", hs["prefixes_v4"], 32)
    _check_prefixes("horizontal_scan.prefixes_v6", hs["prefixes_v6"], 128)
    if len(hs["prefixes_v4"]) != len(hs["prefixes_v6"]):
        raise PolicyError("horizontal_scan.prefixes_v6: %r must have as many levels as prefixes_v4 (%r)"
                          % (hs["prefixes_v6"], hs["prefixes_v4"]))
    for tier in ("strict", "default", "web"):
        key = "hosts_" + tier
        if len(hs[key]) != len(hs["prefixes_v4"]):
            raise PolicyError("horizontal_scan.%s: %r needs one threshold per prefix level %r"
                              % (key, hs[key], hs["prefixes_v4"]))
        for value in hs[key]:
            _positive("horizontal_scan.%s" % key, value, allow_zero=True, bounds="horizontal_scan.hosts")
    _positive("vertical_scan.ports", th["vertical_scan"]["ports"], allow_zero=True)

    strict_ports = params.get("strict_ports")
    strict_ports = list(DEFAULT_STRICT_PORTS if strict_ports is None else strict_ports)
    web_ports = params.get("web_ports")
    web_ports = list(DEFAULT_WEB_PORTS if web_ports is None else web_ports)
    _check_ports("strict_ports", strict_ports)
    _check_ports("web_ports", web_ports)
    both = sorted(set(strict_ports) & set(web_ports))
    if both:
        raise PolicyError("strict_ports and web_ports: port(s) %s are in both" % both)

    if mode == "exitpolicy" and params.get("deny"):
        raise PolicyError("deny: %r is not used in mode exitpolicy; put static rejects into the "
                          "tor_exit role's exit policy" % params["deny"])
    allow = [_network("allow[%d]" % i, a) for i, a in enumerate(params.get("allow") or [])]
    deny = [parse_deny("deny[%d]" % i, d) for i, d in enumerate(params.get("deny") or [])]
    for d in deny:
        for a in allow:
            if d["net"] in a or a in d["net"]:
                raise PolicyError("deny: %s overlaps allow entry %s; an address cannot be both"
                                  % (d["net"], a))

    return {
        "mode": mode,
        "owner": owner,
        "profile": profile,
        "reject_with": reject_with,
        "scan_window": th["scan_window"],
        "ban_time": th["ban_time"],
        "set_size": th["set_size"],
        "flood": fl,
        "horizontal_scan": hs,
        "vertical_scan": th["vertical_scan"],
        "login": th["login"],
        "prefix_sweep": th["prefix_sweep"],
        "wide_scan": th["wide_scan"],
        "strict_ports": sorted(set(strict_ports)),
        "web_ports": sorted(set(web_ports)),
        "allow_v4": sorted(str(n.cidr) for n in allow if n.version == 4),
        "allow_v6": sorted(str(n.cidr) for n in allow if n.version == 6),
        "deny": sorted(
            ({"net": str(d["net"].cidr), "version": d["net"].version, "ports": d["ports"]} for d in deny),
            key=lambda d: (d["version"], d["net"], d["ports"] or (0, 0))),
        "relay_allowlist": bool(params.get("relay_allowlist", True)),
    }


def policy_digest(policy):
    """A stable digest of the policy, stored in the kernel to detect drift."""
    blob = json.dumps(policy, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
