# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a TCP port is open in the active firewalls (ufw, nftables, legacy
iptables), read from their own listings."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex

from ansible_collections.torexit.hardening.plugins.module_utils.sshd_effective import ip_or_none


def _port_in(spec, port):
    for item in str(spec).split(","):
        low, _sep, high = item.partition(":")
        if low.isdigit() and int(low) <= port <= int(high if high.isdigit() else low):
            return True
    return False


def _in_network(source, text):
    try:
        return source is not None and source in ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        return False


def _ufw_row_applies(to_words, from_col, v6, source, interface):
    """True/False whether a ufw rule row applies to the connection, None when that
    cannot be decided (address or interface unknown)."""
    from_word = from_col.replace("(v6)", "").split()[0] if from_col.strip() else "Anywhere"
    row_v6 = v6 or ":" in from_word
    if source is not None and (source.version == 6) != row_v6:
        return False
    verdict = True
    if from_word != "Anywhere":
        verdict = None if source is None else _in_network(source, from_word)
    if verdict is not False and "on" in to_words[1:]:
        name = to_words[to_words.index("on", 1) + 1] if len(to_words) > to_words.index("on", 1) + 1 else ""
        if interface is None:
            verdict = None
        elif name != interface:
            verdict = False
    return verdict


def ufw_open(status_text, port, source=None, interface=None):
    """None when ufw is inactive; else whether the first ufw rule that names the TCP
    port and applies to a connection from ``source`` on ``interface`` (From column,
    IPv4/IPv6 row, ``on IFACE``) allows it (ALLOW or LIMIT). While the address or
    interface is unknown, a restricted ALLOW rule does not count and a restricted
    DENY/REJECT rule does. The app profile OpenSSH stands for port 22."""
    lines = status_text.splitlines()
    if not lines or lines[0].strip().lower() != "status: active":
        return None
    source = ip_or_none(source)
    for line in lines[1:]:
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) < 2 or cols[0] == "To" or set(cols[0]) <= set("- "):
            continue
        to_words = cols[0].replace("(v6)", "").split()
        spec, _sep, proto = to_words[0].partition("/")
        if proto not in ("", "tcp"):
            continue
        if spec == "OpenSSH":
            spec = "22"
        if not _port_in(spec, port):
            continue
        allows = cols[1].split()[0] in ("ALLOW", "LIMIT")
        applies = _ufw_row_applies(to_words, cols[2] if len(cols) > 2 else "", "(v6)" in line, source, interface)
        if applies or (applies is None and not allows):
            return allows
    return False


def _nft_values(right, sets):
    if isinstance(right, str) and right.startswith("@"):
        return _nft_values({"set": sets.get(right[1:], [])}, sets)
    if isinstance(right, dict) and "set" in right:
        out = []
        for elem in right["set"] if isinstance(right["set"], list) else [right["set"]]:
            out.extend(_nft_values(elem, sets))
        return out
    if isinstance(right, dict) and "range" in right:
        return [tuple(right["range"])]
    if isinstance(right, dict) and "elem" in right:
        return _nft_values(right["elem"].get("val"), sets)
    return [right]


def _addr_in(value, addr):
    """Whether ``addr`` is ``value``: an address, a prefix or a (low, high) range."""
    try:
        if isinstance(value, tuple):
            low, high = ipaddress.ip_address(value[0]), ipaddress.ip_address(value[1])
            return low.version == addr.version and low <= addr <= high
        if isinstance(value, dict) and "prefix" in value:
            prefix = value["prefix"]
            return addr in ipaddress.ip_network("{}/{}".format(prefix["addr"], prefix["len"]), strict=False)
        return ipaddress.ip_address(str(value)) == addr
    except (ValueError, TypeError, KeyError):
        return False


def _name_in(value, name):
    """nft's interface name match: a trailing unescaped * is a prefix wildcard."""
    text = str(value)
    if text.endswith("*") and not text.endswith("\\*"):
        return name.startswith(text[:-1])
    return name == text.replace("\\*", "*")


def _nft_condition(match, sets, source, interface):
    """For a source address or input interface match: whether this connection meets
    it (False when the address or interface is unknown). None for any other match."""
    left = match.get("left") if isinstance(match.get("left"), dict) else {}
    payload, meta = left.get("payload") or {}, left.get("meta") or {}
    if payload.get("field") == "saddr" and payload.get("protocol") in ("ip", "ip6"):
        if source is None or source.version != (4 if payload["protocol"] == "ip" else 6):
            return False
        hit = any(_addr_in(v, source) for v in _nft_values(match.get("right"), sets))
    elif meta.get("key") in ("iifname", "iif"):
        if interface is None:
            return False
        hit = any(_name_in(v, interface) for v in _nft_values(match.get("right"), sets))
    else:
        return None
    if match.get("op") in ("==", "in"):
        return hit
    return not hit if match.get("op") == "!=" else False


def _nft_rule_accepts(expr, port, sets, source=None, interface=None):
    """Whether the rule accepts TCP ``port`` for this connection: an accept verdict,
    a TCP destination port match naming the port, and every source address and
    input interface condition met. Other conditions are not evaluated."""
    if not any(isinstance(e, dict) and "accept" in e for e in expr):
        return False
    port_hit = False
    for e in expr:
        match = e.get("match") if isinstance(e, dict) else None
        if not match:
            continue
        payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
        if payload.get("field") == "dport" and payload.get("protocol") in ("tcp", "th"):
            if match.get("op") not in ("==", "in"):
                continue
            values = _nft_values(match.get("right"), sets)
            if not any((isinstance(v, tuple) and v[0] <= port <= v[1]) or (isinstance(v, int) and v == port)
                       for v in values):
                return False
            port_hit = True
        elif _nft_condition(match, sets, source, interface) is False:
            return False
    return port_hit


def _nft_unconditional_drop(expr):
    kinds = [next(iter(e)) for e in expr if isinstance(e, dict)]
    return bool(kinds) and kinds[-1] in ("drop", "reject") and set(kinds[:-1]) <= {"counter", "log"}


def nft_open(ruleset, port, skip_ufw=False, source=None, interface=None):
    """Whether every nftables table that filters input lets TCP ``port`` in.

    A table closes by default when one of its input base chains has policy drop or
    ends in an unconditional drop/reject; such a table counts as open for the port
    when any of its rules matches that TCP destination port (value, range, anonymous
    or named set) and accepts, and the rule's source address (``ip``/``ip6 saddr``)
    and input interface (``iifname``/``iif``) conditions hold for the connection
    from ``source`` arriving on ``interface``; a rule with such a condition does not
    count while the address or interface is unknown. Other conditions are not
    evaluated. Returns (open, names of the tables that block)."""
    source = ip_or_none(source)
    items = json.loads(ruleset).get("nftables", []) if ruleset.strip() else []
    tables = {}
    for item in items:
        kind, obj = next(iter(item.items()))
        if kind not in ("chain", "rule", "set") or obj.get("family") not in ("ip", "ip6", "inet"):
            continue
        table = tables.setdefault((obj["family"], obj["table"]), {"chains": [], "rules": [], "sets": {}})
        if kind == "chain":
            table["chains"].append(obj)
        elif kind == "rule":
            table["rules"].append(obj)
        else:
            table["sets"][obj["name"]] = obj.get("elem", [])
    blocking = []
    for (family, name), table in sorted(tables.items()):
        if skip_ufw and any(c["name"].startswith("ufw") for c in table["chains"]):
            continue
        inputs = [c["name"] for c in table["chains"] if c.get("hook") == "input"]
        closed = any(c.get("hook") == "input" and c.get("policy") == "drop" for c in table["chains"]) or any(
            r["chain"] in inputs and _nft_unconditional_drop(r.get("expr", [])) for r in table["rules"])
        if closed and not any(_nft_rule_accepts(r.get("expr", []), port, table["sets"], source, interface) for r in table["rules"]):
            blocking.append(f"{family} {name}")
    return not blocking, blocking


def _iptables_conditions_hold(args, source, interface):
    """Whether the -s/--source and -i/--in-interface conditions of an iptables-save
    rule (each possibly negated with a preceding !) hold for the connection; an
    unknown address or interface never holds. Other conditions are not evaluated."""
    for i, arg in enumerate(args[:-1]):
        negated = i > 0 and args[i - 1] == "!"
        if arg in ("-s", "--source"):
            if source is None:
                return False
            hit = any(_in_network(source, net) for net in args[i + 1].split(","))
        elif arg in ("-i", "--in-interface"):
            if interface is None:
                return False
            name = args[i + 1]
            hit = interface.startswith(name[:-1]) if name.endswith("+") else interface == name
        else:
            continue
        if hit == negated:
            return False
    return True


def iptables_open(save_text, port, skip_ufw=False, source=None, interface=None):
    """Same rule as nft_open for iptables-save output (legacy iptables): the filter
    table closes by default with INPUT policy DROP or an unconditional -j DROP/REJECT
    in INPUT, and is open for the port when an ACCEPT rule names it with --dport or
    --dports and its -s and -i conditions hold for the connection from ``source``
    arriving on ``interface``."""
    source = ip_or_none(source)
    closed = accepted = has_ufw = False
    in_filter = False
    for line in save_text.splitlines():
        if line.startswith("*"):
            in_filter = line.strip() == "*filter"
            continue
        if not in_filter:
            continue
        if line.startswith(":ufw"):
            has_ufw = True
        if line.startswith(":INPUT ") and line.split()[1] == "DROP":
            closed = True
        if not line.startswith("-A "):
            continue
        args = shlex.split(line)
        target = args[args.index("-j") + 1] if "-j" in args else ""
        if args[1] == "INPUT" and target in ("DROP", "REJECT") and len(args) == 4:
            closed = True
        if target == "ACCEPT" and ("tcp" in args or "6" in args) and _iptables_conditions_hold(args, source, interface):
            for flag in ("--dport", "--dports", "--destination-port", "--destination-ports"):
                if flag in args and _port_in(args[args.index(flag) + 1], port):
                    accepted = True
    if skip_ufw and has_ufw:
        return True
    return accepted or not closed


def route_interface(module, address):
    """The interface the kernel routes ``address`` through (lo for the host's own
    addresses): the interface a connection from there arrives on. None if unknown."""
    ip = module.get_bin_path("ip", opt_dirs=["/usr/sbin", "/sbin"])
    if not ip or ip_or_none(address) is None:
        return None
    rc, out, _err = module.run_command([ip, "-j", "route", "get", str(ip_or_none(address))])
    try:
        routes = json.loads(out) if rc == 0 else []
    except ValueError:
        return None
    return routes[0].get("dev") if routes and isinstance(routes[0], dict) else None


def firewall_checker(module, source=None):
    """``check(port)``: None when every active firewall lets TCP ``port`` in for a
    connection from ``source`` (the controller's address), else why."""
    interface = route_interface(module, source) if source else None
    seen_from = "from {} on {}".format(source or "an unknown address (set connecting_address)", interface or "an unknown interface")

    def check(port):
        ufw = module.get_bin_path("ufw")
        ufw_active = False
        if ufw:
            rc, out, _err = module.run_command([ufw, "status"])
            verdict = ufw_open(out, port, source, interface) if rc == 0 else None
            ufw_active = verdict is not None
            if verdict is False:
                return f"ufw has no ALLOW or LIMIT rule for {port}/tcp {seen_from}"
        nft = module.get_bin_path("nft")
        if nft:
            rc, out, err = module.run_command([nft, "-j", "list", "ruleset"])
            if rc != 0:
                return f"cannot read the nftables ruleset: {err.strip()}"
            is_open, blocking = nft_open(out, port, skip_ufw=ufw_active, source=source, interface=interface)
            if not is_open:
                return (f"nftables table(s) {', '.join(blocking)} drop input by default "
                        f"and no rule accepts tcp dport {port} {seen_from}")
        for tool, version in (("iptables-legacy-save", 4), ("ip6tables-legacy-save", 6)):
            path = module.get_bin_path(tool)
            if path and (ip_or_none(source) is None or ip_or_none(source).version == version):
                rc, out, _err = module.run_command([path, "-t", "filter"])
                if rc == 0 and not iptables_open(out, port, skip_ufw=ufw_active, source=source, interface=interface):
                    return f"{tool}: INPUT drops by default and no ACCEPT rule admits port {port} {seen_from}"
        return None
    return check
