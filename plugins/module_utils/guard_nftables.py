# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables backend of the egress guard.

`render()` turns a policy (see guard_policy) into one ruleset file for the table
`inet torexit_guard`; its `output` chain and the family chains it hands each
packet to (`guard_v4`, `guard_v6`, one verdict-map lookup) are the one place
where the fate of a new outbound connection is decided, in the order of
guard_common.DECISION_ORDER (the ban lookups sit in `bans_v4`, `bans_v6`, which
a destination reaches only when its prefix holds a ban: see banned_set). The file replaces the table atomically
(`nft -f`), so other tables (ufw, iptables-nft, Docker) are never touched.
"""

from __future__ import annotations

import ipaddress
import json
import os

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as common
from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils.guard_policy import TABLE

NAME = "nftables"
COMMANDS = ["nft"]
PRESENT_COMMANDS = []
FAMILY = "inet"
QUALIFIED = "%s %s" % (FAMILY, TABLE)

VERDICTS = {
    "tcp-reset": "reject with tcp reset",
    "icmp-admin-prohibited": "reject with icmpx admin-prohibited",
    "drop": "drop",
}

# nft address expression and set key type per family
EXPR = {"v4": "ip daddr", "v6": "ip6 daddr"}
ADDR = {"v4": "ipv4_addr", "v6": "ipv6_addr"}
# (family, address expression, key type, host prefix length) as render() uses them
FAMILIES = tuple((f.name, EXPR[f.name], ADDR[f.name], f.host) for f in common.FAMILIES)


def _mask(version, length):
    net = ipaddress.ip_network("%s/%d" % ("0.0.0.0" if version == "v4" else "::", length))
    return str(net.netmask)


def _limit(count, window):
    return "limit rate over %s burst %d packets" % (common.rate(count, window), count)


def _per_minute(rate, burst):
    return "limit rate over %d/minute burst %d packets" % (rate, burst)


def _psweep_levels(policy, fam):
    """(prefix length, mask, limit, meter element lifetime) of the prefix-sweep levels that are on."""
    out = []
    for length, burst, rate in common.psweep_levels(policy, fam):
        # a meter's element must outlive the refill of its bucket (burst / rate)
        out.append((length, _mask(fam.name, length), _per_minute(rate, burst), max(60, -(-burst * 60 // rate) + 60)))
    return out


def ban_sets(policy):
    """The ban sets of guard_common.ban_sets with their nft key type and key
    expression: (name, type, key, detector, ban time)."""
    out = []
    hosts = dict((f.name, f.host) for f in common.FAMILIES)
    for b in common.ban_sets(policy):
        expr, typ = EXPR[b.family], ADDR[b.family]
        if b.length != hosts[b.family]:
            expr = "%s & %s" % (expr, _mask(b.family, b.length))
        if b.by_port:
            typ, expr = typ + " . inet_service", expr + " . tcp dport"
        out.append((b.name, typ, expr, b.detector, b.ban_time))
    return out


def banned_set(policy, fam):
    """(name, key expression, timeout) of the family's prefilter: the prefixes of
    guard_common.ban_prefix that hold a ban. Every rule that adds a ban refreshes
    its prefix here with the longest ban time, so the prefix outlives its bans;
    destinations outside these prefixes skip the ban lookups."""
    length = common.ban_prefix(policy, fam)
    expr = EXPR[fam.name] if length == fam.host else "%s & %s" % (EXPR[fam.name], _mask(fam.name, length))
    return ("banned_%s_%d" % (fam.name, length), expr,
            max(b.ban_time for b in common.ban_sets(policy) if b.family == fam.name))


def _note_ban(policy, fam, direction="out"):
    """The statement that refreshes the banned prefix of a destination (of the
    source of a reply with direction "in") in the prefilter."""
    name, key, _timeout = banned_set(policy, fam)
    if direction == "in":
        key = key.replace("daddr", "saddr")
    return "update @%s { %s }" % (name, key)


def _elements(items):
    return " elements = { %s }" % ", ".join(items) if items else ""


def _static(p, name, fam):
    """False for a list rendered from the policy that holds nothing for this family
    (allow, deny, deny_port; relays when the relay allowlist is off): its set stays
    empty, so its rule is not written (a lookup fewer per new connection)."""
    ver = 4 if fam.name == "v4" else 6
    if name == "allow":
        return bool(p["allow_" + fam.name])
    if name == "deny":
        return any(d["version"] == ver and not d["ports"] for d in p["deny"])
    if name == "deny_port":
        return any(d["version"] == ver and d["ports"] for d in p["deny"])
    if name == "relays":
        return p["relay_allowlist"]
    return True


def _step(p, verdict, step, fam):
    """The rules of one step of guard_common.DECISION_ORDER: the first steps in the
    output chain (fam None), the others in the chain of one family (guard_v4, guard_v6)."""
    name = step.name
    if name == "protocol":
        return ["meta l4proto != tcp return"]
    if name == "ct_new":
        return ["ct state != new return"]
    if name == "owner":
        return ['meta skuid != "%s" return' % p["owner"]] if p["owner"] != "any" else []
    if name == "loopback":
        # the interface index, not the name: no string copy per packet (lo never goes away)
        return ['oif "lo" return']
    if name == "guarded":
        return ["counter name %s" % step.counter]
    if name == "detect":
        return ["goto detect_%s" % fam.name]
    if not _static(p, name, fam):
        return []
    expr = EXPR[fam.name]
    if name in ("allow", "relays"):
        return ["%s @%s_%s counter name %s return" % (expr, name, fam.name, step.counter)]
    if name == "deny_port":
        return ["%s . tcp dport @deny_port_%s counter name %s %s" % (expr, fam.name, step.counter, verdict)]
    if name in ("deny", "optout"):
        return ["%s @%s_%s counter name %s %s" % (expr, name, fam.name, step.counter, verdict)]
    if name == "bans":
        banned, key, _timeout = banned_set(p, fam)
        return ["%s @%s goto bans_%s" % (key, banned, fam.name)]
    raise ValueError("no nftables rule for step %r" % name)


def _tier_levels(p, fam, tier, unconfirmed=False):
    """(prefix length, hosts) of a tier's horizontal-scan levels that are on; for
    first contacts into unconfirmed prefixes without those the prefix sweep covers."""
    hs = p["horizontal_scan"]
    return [(length, hosts) for length, hosts in zip(hs["prefixes_" + fam], hs["hosts_" + tier])
            if hosts and not (unconfirmed and common.psweep_covers(p, common.FAMILY[fam], length, hosts))]


def _tier_chain(p, fam, tier, unconfirmed=False):
    """The chain of a tier; first contacts into unconfirmed prefixes have their own
    where the prefix sweep covers one of the tier's levels."""
    if unconfirmed and _tier_levels(p, fam, tier, True) != _tier_levels(p, fam, tier):
        return "hscan_%s_%s_unconfirmed" % (tier, fam)
    return "hscan_%s_%s" % (tier, fam)


def _tier_map(p, fam, unconfirmed=False):
    """One verdict-map lookup sends a first contact to its port tier's chain (strict,
    web); other ports go on to the default tier."""
    chain = dict((tier, _tier_chain(p, fam, tier, unconfirmed)) for tier in ("strict", "web", "default"))
    items = ["%d : goto %s" % (port, chain["strict"]) for port in p["strict_ports"]]
    items += ["%d : goto %s" % (port, chain["web"]) for port in p["web_ports"]]
    rules = ["tcp dport vmap { %s }" % ", ".join(items)] if items else []
    return rules + ["goto %s" % chain["default"]]


def render(policy, digest):
    """The whole ruleset file. Loading it replaces the table in one transaction."""
    p = policy
    enforce = p["mode"] == "enforce"
    verdict = VERDICTS[p["reject_with"]] if enforce else "return"
    size = p["set_size"]
    window = p["scan_window"]
    fl, hs = p["flood"], p["horizontal_scan"]
    tiers = ("strict", "web", "default")
    lg, ws = p["login"], p["wide_scan"]
    psweep_on = any(p["prefix_sweep"]["burst"])
    fams = common.FAMILY

    L = []
    add = L.append
    add("# Managed by torexit.hardening.egress_guard: changes here are overwritten.")
    add("# mode=%s profile=%s owner=%s reject_with=%s" % (p["mode"], p["profile"], p["owner"], p["reject_with"]))
    add("# Replaces only the table %s; other tables are left alone." % QUALIFIED)
    add("table %s {}" % QUALIFIED)
    add("delete table %s" % QUALIFIED)
    add("table %s {" % QUALIFIED)
    add('\tcounter policy_id { comment "sha256:%s" }' % digest)
    for name, comment in common.COUNTERS:
        add('\tcounter %s { comment "%s" }' % (name, comment))
    add("")
    add("\t# Static lists")
    add("\tset strict_ports { type inet_service;%s }" % _elements([str(x) for x in p["strict_ports"]]))
    add("\tset web_ports { type inet_service;%s }" % _elements([str(x) for x in p["web_ports"]]))
    for fam, _expr, typ, _host in FAMILIES:
        nets = p["allow_" + fam]
        add("\tset allow_%s { type %s; flags interval;%s }" % (fam, typ, _elements(nets)))
        ver = 4 if fam == "v4" else 6
        plain = [d["net"] for d in p["deny"] if d["version"] == ver and not d["ports"]]
        ported = ["%s . %s" % (d["net"], "%d-%d" % d["ports"] if d["ports"][0] != d["ports"][1]
                               else d["ports"][0])
                  for d in p["deny"] if d["version"] == ver and d["ports"]]
        add("\tset deny_%s { type %s; flags interval;%s }" % (fam, typ, _elements(plain)))
        add("\tset deny_port_%s { type %s . inet_service; flags interval;%s }" % (fam, typ, _elements(ported)))
        add("\tset relays_%s { type %s; size %d; }" % (fam, typ, common.RELAYS_SIZE))
        add("\tset optout_%s { type %s; size %d; flags interval, timeout; }" % (fam, typ, common.OPTOUT_SIZE))
    add("")
    add("\t# Detector state: short-lived, bounded, no payload; keys are destinations only")
    for fam, _expr, typ, _host in FAMILIES:
        dyn = "size %d; flags dynamic, timeout;" % size
        add("\tset seen_%s { type %s . inet_service; %s timeout %ds; }" % (fam, typ, dyn, window))
        add("\tset vscan_%s { type %s; %s timeout %ds; }" % (fam, typ, dyn, window))
        for tier in tiers:
            for length in hs["prefixes_" + fam]:
                add("\tset hscan_%s_%s_%d { type %s . inet_service; %s timeout %ds; }"
                    % (tier, fam, length, typ, dyn, window))
        add("\tset flood_conc_%s { type %s; size %d; flags dynamic; }" % (fam, typ, size))
        add("\tset flood_rate_%s { type %s . inet_service; %s timeout 60s; }" % (fam, typ, dyn))
        if lg["rate"]:
            add("\tset login_%s { type %s . inet_service; size %d; flags dynamic, timeout; timeout 60s; }"
                % (fam, typ, max(1024, size // 4)))
        for length, _m, _lim, keep in _psweep_levels(p, fams[fam]):
            add("\tset psweep_%s_%d { type %s . inet_service; %s timeout %ds; }" % (fam, length, typ, dyn, keep))
            add("\tset pfail_%s_%d { type %s . inet_service; %s timeout %ds; }" % (fam, length, typ, dyn, keep))
        if psweep_on:
            add("\tset confirm_%s { type %s; %s timeout %ds; }" % (fam, typ, dyn, p["prefix_sweep"]["confirm_time"]))
    if ws["rate"]:
        add("\tset wide_rate { type inet_service; size 65536; flags dynamic, timeout; timeout 60s; }")
    add("")
    add("\t# Bans: keys are the banned prefix (and port); they expire by themselves")
    for name, typ, _key, _det, ban_time in ban_sets(p):
        add("\tset %s { type %s; size %d; flags dynamic, timeout; timeout %ds; }" % (name, typ, size, ban_time))
    add("\t# the prefixes that hold a ban: other destinations skip the ban lookups")
    for fam, _expr, typ, _host in FAMILIES:
        name, _key, timeout = banned_set(p, fams[fam])
        add("\tset %s { type %s; size %d; flags dynamic, timeout; timeout %ds; }" % (name, typ, size, timeout))
    add("")

    # The chains where every new outbound connection's fate is decided, in the
    # decision order: the shared steps (most packets leave at the first rule), then
    # one verdict-map lookup on the family, then that family's steps only.
    shared, per_family = common.split_walk(lambda step, fam: _step(p, verdict, step, fam))
    add("\tchain output {")
    add("\t\ttype filter hook output priority filter; policy accept;")
    L += ["\t\t" + rule for rule in shared]
    add("\t\tmeta nfproto vmap { %s }" % ", ".join(
        "ipv%d : goto guard_%s" % (f.version, f.name) for f in common.FAMILIES))
    add("\t}")
    for fam, _expr, _typ, _host in FAMILIES:
        add("\tchain guard_%s {" % fam)
        L += ["\t\t" + rule for rule in per_family[fam]]
        add("\t}")
    for fam, _expr, _typ, _host in FAMILIES:
        add("\tchain bans_%s {" % fam)
        L += ["\t\t%s @%s counter name blocked_%s %s" % (key, ban, det, verdict)
              for ban, _typ, key, det, _time in ban_sets(p) if ban.split("_")[2] == fam]
        add("\t\tgoto detect_%s" % fam)
        add("\t}")
    if psweep_on:
        _render_failures(add, p)
    contact = first = ""
    if psweep_on:
        contact = " ct mark set ct mark | 0x%08x" % common.MARK_CONTACT
        first = " ct mark set ct mark | 0x%08x" % (common.MARK_CONTACT | common.MARK_FIRST)
    for fam, expr, _typ, _host in FAMILIES:
        add("")
        add("\tchain detect_%s {" % fam)
        if psweep_on:
            add("\t\t# the kernel retransmits a SYN (no answer yet): the first one was decided")
            add("\t\tct mark & 0x%08x != 0 jump retransmit" % common.MARK_CONTACT)
        add("\t\t# a first contact of a host and port can be a scan, a repeated one a flood")
        add("\t\t%s . tcp dport @seen_%s%s goto flood_%s" % (expr, fam, contact, fam))
        add("\t\tadd @seen_%s { %s . tcp dport }%s goto scan_%s" % (fam, expr, first, fam))
        add("\t\t# reached only when the seen set is full: keep counting strict ports and floods")
        add("\t\tcounter name seen_full%s" % contact)
        add("\t\ttcp dport @strict_ports goto scan_%s" % fam)
        add("\t\tgoto flood_%s" % fam)
        add("\t}")
    for fam, expr, _typ, _host in FAMILIES:
        add("")
        add("\tchain flood_%s {" % fam)
        if lg["rate"]:
            add("\t\t# repeated logins: repeated new connections to one host and strict port")
            add("\t\ttcp dport @strict_ports update @login_%s { %s . tcp dport %s } goto login_hit_%s"
                % (fam, expr, _per_minute(lg["rate"], lg["burst"]), fam))
        add("\t\t# rate limit only while many connections to the address are open")
        add("\t\tadd @flood_conc_%s { %s ct count over %d } update @flood_rate_%s { %s . tcp dport "
            "limit rate over %d/second burst %d packets } goto flood_hit_%s"
            % (fam, expr, fl["concurrent"], fam, expr, fl["rate"], fl["burst"], fam))
        add("\t}")
    for fam, expr, _typ, host_len in FAMILIES:
        noted = _note_ban(p, fams[fam])
        add("")
        add("\tchain scan_%s {" % fam)
        if p["vertical_scan"]["ports"]:
            add("\t\tupdate @vscan_%s { %s %s } goto vscan_hit_%s"
                % (fam, expr, _limit(p["vertical_scan"]["ports"], window), fam))
        if psweep_on:
            add("\t\t# a prefix nobody received data from lately: first contacts there are limited")
            add("\t\t%s & %s != @confirm_%s goto psweep_%s"
                % (expr, _mask(fam, p["prefix_sweep"]["prefixes_" + fam][0]), fam, fam))
        L += ["\t\t" + rule for rule in _tier_map(p, fam)]
        add("\t}")
        chains = [(tier, False) for tier in tiers]
        chains += [(tier, True) for tier in tiers if psweep_on and _tier_chain(p, fam, tier, True) != _tier_chain(p, fam, tier)]
        for tier, unconfirmed in chains:
            add("\tchain %s {" % _tier_chain(p, fam, tier, unconfirmed))
            if unconfirmed:
                add("\t\t# in an unconfirmed prefix: without the levels the prefix sweep covers")
            for length, hosts in _tier_levels(p, fam, tier, unconfirmed):
                add("\t\tupdate @hscan_%s_%s_%d { %s & %s . tcp dport %s } goto hscan_hit_%s_%d"
                    % (tier, fam, length, expr, _mask(fam, length), _limit(hosts, window), fam, length))
            if tier == "strict" and ws["rate"]:
                add("\t\t# first contacts on this port across all prefixes above what the exit's size explains")
                add("\t\tupdate @wide_rate { tcp dport limit rate over %d/second burst %d packets } "
                    "counter name detect_wide goto wide_%s" % (ws["rate"], ws["burst"], fam))
            add("\t}")
        if ws["rate"]:
            add("\tchain wide_%s {" % fam)
            if ws["pass_one_in"] > 1:
                if enforce:
                    add("\t\tnumgen random mod %d != 0 delete @seen_%s { %s . tcp dport } counter name blocked_wide %s"
                        % (ws["pass_one_in"], fam, expr, verdict))
                else:
                    add("\t\tnumgen random mod %d != 0 counter name blocked_wide" % ws["pass_one_in"])
            add("\t}")
        if lg["rate"]:
            add("\tchain login_hit_%s {" % fam)
            add("\t\tadd @ban_login_%s_%d { %s . tcp dport } %s" % (fam, host_len, expr, noted))
            add("\t\tcounter name detect_login %s" % verdict)
            add("\t}")
        levels = _psweep_levels(p, fams[fam])
        if levels:
            add("\tchain psweep_%s {" % fam)
            for length, mask, limit, _keep in levels:
                add("\t\tupdate @psweep_%s_%d { %s & %s . tcp dport %s } goto psweep_hit_%s_%d"
                    % (fam, length, expr, mask, limit, fam, length))
            L += ["\t\t" + rule for rule in _tier_map(p, fam, unconfirmed=True)]
            add("\t}")
        for length, mask, _lim, _keep in levels:
            add("\tchain psweep_hit_%s_%d {" % (fam, length))
            add("\t\tadd @ban_psweep_%s_%d { %s & %s . tcp dport } %s" % (fam, length, expr, mask, noted))
            add("\t\tcounter name detect_psweep %s" % verdict)
            add("\t}")
        for length in hs["prefixes_" + fam]:
            add("\tchain hscan_hit_%s_%d {" % (fam, length))
            add("\t\tadd @ban_hscan_%s_%d { %s & %s . tcp dport } %s" % (fam, length, expr, _mask(fam, length), noted))
            add("\t\tcounter name detect_hscan %s" % verdict)
            add("\t}")
        add("\tchain vscan_hit_%s {" % fam)
        add("\t\tadd @ban_vscan_%s_%d { %s } %s" % (fam, host_len, expr, noted))
        add("\t\tcounter name detect_vscan %s" % verdict)
        add("\t}")
        add("\tchain flood_hit_%s {" % fam)
        add("\t\tadd @ban_flood_%s_%d { %s . tcp dport } %s" % (fam, host_len, expr, noted))
        add("\t\tcounter name detect_flood %s" % verdict)
        add("\t}")
    add("}")
    return "\n".join(L) + "\n"


def _render_failures(add, p):
    """Failed first contacts, counted per prefix and port once per connection:
    a RST before any reply data (refused) and a retransmitted SYN (no answer).
    Reply data on a guarded connection confirms its (narrowest) prefix instead.
    (Our own FIN/RST before any reply data is not counted: first contacts into
    unconfirmed prefixes are limited anyway, and counting every connection's
    close cost 2 set updates per connection.)"""
    settle = "ct mark set ct mark | 0x%08x" % common.MARK_SETTLED

    def count(direction):
        for fam in common.FAMILIES:
            expr = EXPR[fam.name]
            addr = expr if direction == "out" else expr.replace("daddr", "saddr")
            port = "tcp dport" if direction == "out" else "tcp sport"
            for length, mask, limit, _keep in _psweep_levels(p, fam):
                key = "%s & %s . %s" % (addr, mask, port)
                add("\t\tupdate @pfail_%s_%d { %s %s } add @ban_psweep_%s_%d { %s } %s counter name detect_psweep"
                    % (fam.name, length, key, limit, fam.name, length, key, _note_ban(p, fam, direction)))
    add("")
    add("\tchain retransmit {")
    add("\t\tct mark & 0x%08x == 0x%08x jump failed_out"
        % (common.MARK_FIRST | common.MARK_SETTLED, common.MARK_FIRST))
    add("\t\taccept")
    add("\t}")
    add("\tchain failed_out {")
    add("\t\t%s counter name psweep_failed" % settle)
    count("out")
    add("\t}")
    add("")
    add("\t# replies: only connections the guard marked and not yet settled go past the first rule")
    add("\tchain input {")
    add("\t\ttype filter hook input priority filter; policy accept;")
    add("\t\tct mark & 0x%08x != 0x%08x return" % (common.MARK_CONTACT | common.MARK_SETTLED, common.MARK_CONTACT))
    add("\t\ttcp flags & rst != 0 ct mark & 0x%08x != 0 jump failed_in" % common.MARK_FIRST)
    # payload: longer than the largest IPv4 + TCP header (20 + 60) / TCP header (60)
    for fam, length in (("v4", "ip length > 80"), ("v6", "ip6 length > 60")):
        src = "ip saddr" if fam == "v4" else "ip6 saddr"
        add("\t\t%s %s update @confirm_%s { %s & %s }"
            % (length, settle, fam, src, _mask(fam, p["prefix_sweep"]["prefixes_" + fam][0])))
    add("\t}")
    add("\tchain failed_in {")
    add("\t\t%s counter name psweep_failed" % settle)
    count("in")
    add("\t}")


# --- reading and changing the kernel ------------------------------------------------

class NftError(common.GuardError):
    pass


def _nft(run, args, data=None, check=True):
    rc, out, err = run(["nft"] + args, data=data)
    if check and rc != 0:
        raise NftError("nft %s failed: %s" % (" ".join(args), (err or out).strip()))
    return rc, out, err


def live_digest(run):
    """The digest stored in the loaded table, None without table or digest."""
    rc, out, _err = _nft(run, ["-j", "list", "counter", FAMILY, TABLE, "policy_id"], check=False)
    if rc != 0:
        return None
    for obj in json.loads(out).get("nftables", []):
        comment = obj.get("counter", {}).get("comment", "")
        if comment.startswith("sha256:"):
            return comment[len("sha256:"):]
    return None


def table_exists(run):
    """Without listing the table: a full table holds hundreds of thousands of
    set elements and `nft list table` would dump them all."""
    rc, out, _err = _nft(run, ["-j", "list", "tables", FAMILY], check=False)
    if rc != 0:
        return False
    return any(obj.get("table", {}).get("name") == TABLE for obj in json.loads(out).get("nftables", []))


def list_set(run, name):
    rc, out, _err = _nft(run, ["-j", "list", "set", FAMILY, TABLE, name], check=False)
    if rc != 0:
        return None
    for obj in json.loads(out).get("nftables", []):
        if "set" in obj:
            return obj["set"]
    return None


def _elem_text(val):
    if isinstance(val, dict) and "concat" in val:
        return " . ".join(_elem_text(v) for v in val["concat"])
    if isinstance(val, dict) and "prefix" in val:
        return "%s/%d" % (val["prefix"]["addr"], val["prefix"]["len"])
    if isinstance(val, dict) and "range" in val:
        return "%s-%s" % tuple(_elem_text(v) for v in val["range"])
    return str(val)


def set_elements(nftset):
    """[(key text, seconds left or None)] of a set as `nft -j` lists it."""
    out = []
    for item in nftset.get("elem", []) or []:
        if isinstance(item, dict) and "elem" in item:
            out.append((_elem_text(item["elem"]["val"]), item["elem"].get("expires")))
        else:
            out.append((_elem_text(item), None))
    return out


def carry_over(run, sizes):
    """`add element` lines that re-create current bans and opt-outs with the time
    they have left, so changing thresholds does not lift them, and how many did not
    fit: `sizes` maps each set to its new size; the bans with the most time left stay."""
    lines, dropped = [], 0
    for name, size in sizes.items():
        nftset = list_set(run, name)
        if not nftset:
            continue
        kept, lost = common.keep_longest([(key, left) for key, left in set_elements(nftset) if left], size)
        dropped += lost
        if kept:
            lines.append("add element %s %s { %s }" % (QUALIFIED, name,
                                                       ", ".join("%s timeout %ds" % e for e in kept)))
    return lines, dropped


def prefilters(policy):
    """{prefilter set: ((size, timeout), prefix length, [ban sets])} per family, for load()."""
    out = {}
    for fam in common.FAMILIES:
        name, _key, timeout = banned_set(policy, fam)
        out[name] = ((policy["set_size"], timeout), common.ban_prefix(policy, fam),
                     [b.name for b in common.ban_sets(policy) if b.family == fam.name])
    return out


def refill(run, banned, skip=()):
    """`add element` lines that put the prefix of every current ban into a
    prefilter set that is created anew (see banned_set), with the longest time a
    ban in it has left; the bans themselves are carried over by carry_over."""
    lines = []
    for name, ((size, _timeout), length, bans) in banned.items():
        if name in skip:
            continue
        left = {}
        for ban in bans:
            for key, seconds in set_elements(list_set(run, ban) or {}):
                addr = key.split(" . ")[0].split("/")[0]
                prefix = str(ipaddress.ip_network("%s/%d" % (addr, length), strict=False).network_address)
                left[prefix] = max(left.get(prefix, 0), seconds or 0)
        kept, _lost = common.keep_longest([(k, v) for k, v in left.items() if v], size)
        if kept:
            lines.append("add element %s %s { %s }" % (QUALIFIED, name, ", ".join("%s timeout %ds" % e for e in kept)))
    return lines


def check(run, text):
    """Validate a ruleset without touching the kernel (`nft -c`)."""
    _nft(run, ["-c", "-f", "-"], data=text)


def _loaded_objects(run):
    """Chains, counters and {set: (size, timeout)} of the loaded table, without set
    elements (`nft -t`); None without table."""
    rc, out, _err = _nft(run, ["-t", "-j", "list", "table", FAMILY, TABLE], check=False)
    if rc != 0:
        return None
    objs = json.loads(out).get("nftables", [])
    return {"chains": [o["chain"]["name"] for o in objs if "chain" in o],
            "counters": [o["counter"]["name"] for o in objs if "counter" in o],
            "sets": dict((o["set"]["name"], (o["set"].get("size"), o["set"].get("timeout")))
                         for o in objs if "set" in o)}


def _in_place(text, loaded, kept):
    """A transaction that replaces the loaded table's rules, counters and sets but
    leaves the sets in `kept` (bans and opt-outs whose definition is unchanged)
    untouched: elements the kernel or the opt-out service adds while the new rules
    are loaded are not lost, and nothing needs to be read and written back."""
    pre = ["flush chain %s %s" % (QUALIFIED, c) for c in loaded["chains"]]
    pre += ["delete chain %s %s" % (QUALIFIED, c) for c in loaded["chains"]]
    pre += ["delete set %s %s" % (QUALIFIED, s) for s in loaded["sets"] if s not in kept]
    pre += ["delete counter %s %s" % (QUALIFIED, c) for c in loaded["counters"]]
    body = [line for line in text.split("\n") if line not in ("table %s {}" % QUALIFIED, "delete table %s" % QUALIFIED)]
    return "\n".join(pre + body)


def load(run, text, keep_sets=None, banned=None):
    """Load the ruleset in one transaction, keeping the elements of the sets in
    `keep_sets` ({name: (new size, new timeout or None)}); returns how many did not
    fit. A kept set whose size and timeout stay is left in place (see _in_place);
    the others are re-created with their elements read just before. The prefilter
    sets in `banned` (see prefilters()) stay in place too, or are re-created from
    the bans. An error never echoes the carried elements (destinations), it counts them."""
    keep_sets = keep_sets or {}
    banned = banned or {}
    loaded = _loaded_objects(run) if keep_sets else None
    if loaded:
        kept = [n for n, want in keep_sets.items() if loaded["sets"].get(n) == want]
        kept += [n for n, spec in banned.items() if loaded["sets"].get(n) == spec[0]]
        extra, dropped = carry_over(run, dict((n, want[0]) for n, want in keep_sets.items() if n not in kept))
        extra += refill(run, banned, skip=kept)
        rc, _out, _err = _nft(run, ["-f", "-"], data=_in_place(text, loaded, kept) + "".join(
            "\n" + line for line in extra) + "\n", check=False)
        if rc == 0:
            return dropped
    # a fresh host, or the in-place load was refused: replace the whole table
    extra, dropped = carry_over(run, dict((n, want[0]) for n, want in keep_sets.items()))
    rc, out, err = _nft(run, ["-f", "-"], data=text + "".join(line + "\n" for line in extra + refill(run, banned)),
                        check=False)
    if rc != 0:
        carried = sum(line.count(" timeout ") for line in extra)
        raise NftError("nft -f - failed while carrying over %d bans and opt-outs: %s"
                       % (carried, common.scrub(err or out)))
    return dropped


def delete(run):
    if table_exists(run):
        _nft(run, ["delete", "table", FAMILY, TABLE])
        return True
    return False


# --- the backend interface ------------------------------------------------------------

def desired(policy, digest, env):
    text = render(policy, digest)
    persist = env.persist and env.systemd
    units = (host.GUARD_UNIT,) + ((host.RELAYS_TIMER,) if policy["relay_allowlist"] else ())
    return common.Desired(
        policy=policy, digest=digest, ruleset=text, view=host.RULESET,
        files=host.desired_files(text, policy["relay_allowlist"]) if persist else {}, edits={},
        units=units if persist else (), paths=tuple(host.ALL_PATHS) if persist else (), keep=(), rules=text)


def live(env, desired):
    digest = live_digest(env.run)
    shown = host.read(host.RULESET) if desired.files else None
    if shown is None:
        shown = "" if digest is None else "# loaded table, policy sha256:%s\n" % digest
    return common.Live(loaded=digest == desired.digest, sets=(), shown=shown, extra={}, state=digest)


def validate(env, plan):
    try:
        check(env.run, plan.desired.rules)
    except NftError as exc:
        raise NftError("the rendered ruleset does not load: %s" % exc) from None


def apply(env, plan):
    """Load the table, keeping bans and opt-outs, then fill the relay sets; with
    persist the unit does both when guard_apply starts it."""
    d = plan.desired
    if plan.live.loaded or host.GUARD_UNIT in plan.start:
        return
    keep = dict((b.name, (d.policy["set_size"], b.ban_time)) for b in common.ban_sets(d.policy))
    keep.update(optout_v4=(common.OPTOUT_SIZE, None), optout_v6=(common.OPTOUT_SIZE, None))
    dropped = load(env.run, d.rules, keep_sets=keep, banned=prefilters(d.policy))
    if d.policy["relay_allowlist"]:
        if d.files:
            env.run([host.RELAYS_SCRIPT])
        else:
            env.run(["/bin/sh", "-s"], data=host.relays_script())
    return {"bans_dropped": dropped} if dropped else None


def installed(env):
    loaded = table_exists(env.run)
    return common.Installed(
        loaded=loaded, paths=tuple(p for p in host.ALL_PATHS if host.read(p) is not None), edits={},
        units=(host.RELAYS_TIMER, host.GUARD_UNIT), dirs=(os.path.dirname(host.NFTABLES_DROPIN),),
        shown=host.read(host.RULESET) or ("# loaded table\n" if loaded else ""), state=None)


def remove(env, installed):
    delete(env.run)


def read_state(run, show_bans=False):
    """Counters, ban counts and set fill levels; ban keys only with show_bans."""
    rc, out, err = _nft(run, ["-j", "list", "table", FAMILY, TABLE], check=False)
    if rc != 0:
        return None
    counters, sets, digest = {}, {}, None
    for obj in json.loads(out).get("nftables", []):
        if "counter" in obj:
            c = obj["counter"]
            if c["name"] == "policy_id":
                digest = c.get("comment", "")[len("sha256:"):]
            else:
                counters[c["name"]] = {"packets": c.get("packets", 0), "bytes": c.get("bytes", 0)}
        elif "set" in obj:
            s = obj["set"]
            sets[s["name"]] = s
    fill = {}
    bans = {}
    for name, s in sets.items():
        elems = set_elements(s)
        fill[name] = {"elements": len(elems), "size": s.get("size")}
        if name.startswith("ban_") or name.startswith("optout_"):
            entry = {"count": len(elems)}
            if show_bans:
                entry["entries"] = [{"key": k, "expires": left} for k, left in elems]
            bans[name] = entry
    return {"digest": digest, "counters": counters, "sets": fill, "bans": bans}
