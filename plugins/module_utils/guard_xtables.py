# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the iptables and ufw backends share: the policy of guard_policy rendered
for iptables/ip6tables and ipset, with the same detectors as the nftables backend,
and the reading and changing of those rules and sets. Not a backend itself.

* kernel state lives in ipsets named `torexit_*` (the ban sets keep the names of
  docs/guard-sets.md with that prefix, e.g. `torexit_ban_hscan_v4_24`) and in
  hashlimit tables named after the policy's digest;
* first contacts are tracked in `hash:ip,port` sets with a timeout
  (`torexit_seen_v4`), horizontal scans with hashlimit per destination prefix and
  port (`--hashlimit-dstmask`), vertical scans with hashlimit per host, floods
  with connlimit (open connections per address) plus hashlimit (rate per address
  and port); a detection adds the prefix to a ban set with a timeout;
* the prefix sweep follows the connections it saw with the conntrack mark bits of
  guard_common (CONNMARK): first contacts into a /22 (IPv6 /48) that is not in the
  confirmation set `torexit_confirm_v4` (`hash:ip netmask 22`, timeout) are limited
  by hashlimit per prefix and port; a second hook, first in INPUT (ufw:
  `ufw-before-input`), sends only the replies of marked, unsettled connections to
  the chain REPLY: reply data confirms the /22, a RST to a first contact counts as
  a failed one, like a retransmitted SYN in DETECT (hashlimit per prefix and port,
  one table per direction);
* rules live in chains of their own (prefix `TOREXIT-`, `TOREXIT-UFW-` for ufw),
  loaded with `iptables-restore --noflush` in one transaction per family, hooked
  by a single rule in OUTPUT (and, with the prefix sweep on, one in INPUT); no
  other chain or rule is touched.

Counters are the packet counters of rules tagged with a comment naming them
(guard_common.COUNTERS); the digest of the policy is the comment of the first
rule of the entry chain.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as common
from ansible_collections.torexit.hardening.plugins.module_utils import guard_host

CHAIN_PREFIX = "TOREXIT-"
# The chains of one family after the prefix, in declaration order; HSHIT-<n> (one per
# horizontal-scan level) come between the two groups, PSHIT-<n> (one per prefix-sweep
# level that is on) after them.
HEAD_CHAINS = ("GUARD", "DETECT", "SCAN", "HS-STRICT", "HS-WEB", "HS-DEFAULT")
TAIL_CHAINS = ("VSHIT", "FLHIT", "FLOOD", "LGHIT", "WIDE", "WIDEHIT", "PSWEEP", "PSFAIL-OUT", "REPLY",
               "PSFAIL-IN")
# mark bits: connection seen by the guard / a first contact / settled (guard_common)
CONTACT, FIRST, SETTLED = common.MARK_CONTACT, common.MARK_FIRST, common.MARK_SETTLED
SET_PREFIX = "torexit_"
# Sets of the firewall role's inbound DoS rules (and their refresh's temporary copies):
# never the guard's, though they share SET_PREFIX.
INBOUND_SET_PREFIXES = ("torexit_in_", "torexit_tmp_in_")
DIGEST_TAG = "torexit.hardening egress_guard sha256:"
# ipset family and command prefix per family
IPSET_FAMILY = {"v4": "inet", "v6": "inet6"}
COMMAND = {"v4": "iptables", "v6": "ip6tables"}
# (family, command) in the order both families are handled
FAMILY_COMMANDS = tuple((f.name, COMMAND[f.name]) for f in common.FAMILIES)
REJECT = {
    "tcp-reset": ("-j REJECT --reject-with tcp-reset", "-j REJECT --reject-with tcp-reset"),
    "icmp-admin-prohibited": ("-j REJECT --reject-with icmp-admin-prohibited",
                              "-j REJECT --reject-with icmp6-adm-prohibited"),
    "drop": ("-j DROP", "-j DROP"),
}
COUNTER_NAMES = common.COUNTER_NAMES
OPTOUT_TIMEOUT = 86400   # default timeout of opt-out entries added without one


class IptablesError(common.GuardError):
    pass


# --- what the kernel should hold --------------------------------------------------

def _split_zero(net):
    """ipset hash:net cannot hold /0: 0.0.0.0/0 becomes two /1 halves."""
    if net == "0.0.0.0/0":
        return ["0.0.0.0/1", "128.0.0.0/1"]
    if net == "::/0":
        return ["::/1", "8000::/1"]
    return [net]


def _port_text(ports):
    return "%d-%d" % ports if ports[0] != ports[1] else "%d" % ports[0]


def ipsets(policy):
    """The sets the rules use, in creation order: a list of dicts with
    name, type, family (None for port bitmaps), options (create arguments as an
    ordered list of (key, value)), static (True when the policy defines the
    contents) and elements (for static sets)."""
    p = policy
    size = p["set_size"]
    out = [
        {"name": SET_PREFIX + "strict_ports", "type": "bitmap:port", "family": None,
         "options": [("range", "0-65535")], "static": True, "elements": [str(x) for x in p["strict_ports"]]},
        {"name": SET_PREFIX + "web_ports", "type": "bitmap:port", "family": None,
         "options": [("range", "0-65535")], "static": True, "elements": [str(x) for x in p["web_ports"]]},
    ]
    for fam, family in ((f.name, IPSET_FAMILY[f.name]) for f in common.FAMILIES):
        ver = 4 if fam == "v4" else 6
        deny = [d for d in p["deny"] if d["version"] == ver]
        out += [
            {"name": SET_PREFIX + "allow_" + fam, "type": "hash:net", "family": family, "options": [],
             "static": True, "elements": [n for a in p["allow_" + fam] for n in _split_zero(a)]},
            {"name": SET_PREFIX + "deny_" + fam, "type": "hash:net", "family": family, "options": [],
             "static": True, "elements": [n for d in deny if not d["ports"] for n in _split_zero(d["net"])]},
            {"name": SET_PREFIX + "deny_port_" + fam, "type": "hash:net,port", "family": family, "options": [],
             "static": True, "elements": ["%s,tcp:%s" % (n, _port_text(d["ports"]))
                                          for d in deny if d["ports"] for n in _split_zero(d["net"])]},
            {"name": SET_PREFIX + "relays_" + fam, "type": "hash:ip", "family": family,
             "options": [("maxelem", common.RELAYS_SIZE)], "static": False},
            {"name": SET_PREFIX + "optout_" + fam, "type": "hash:net", "family": family,
             "options": [("maxelem", common.OPTOUT_SIZE), ("timeout", OPTOUT_TIMEOUT)], "static": False, "keep": True},
            {"name": SET_PREFIX + "seen_" + fam, "type": "hash:ip,port", "family": family,
             "options": [("maxelem", size), ("hashsize", kernel_hashsize(size)), ("timeout", p["scan_window"])],
             "static": False},
        ]
        if psweep_on(p):
            # a /22 (IPv6 /48: the first prefix-sweep level) that sent reply data lately
            options = [("maxelem", size), ("hashsize", kernel_hashsize(size)),
                       ("timeout", p["prefix_sweep"]["confirm_time"]), ("netmask", p["prefix_sweep"]["prefixes_" + fam][0])]
            out.append({"name": SET_PREFIX + "confirm_" + fam, "type": "hash:ip", "family": family,
                        "options": options, "static": False})
    for ban in common.ban_sets(p):
        options = [("maxelem", size), ("hashsize", kernel_hashsize(size)), ("timeout", ban.ban_time)]
        if ban.detector in ("hscan", "psweep"):
            options.append(("netmask", ban.length))
        out.append({"name": SET_PREFIX + ban.name, "type": "hash:ip,port" if ban.by_port else "hash:ip",
                    "family": IPSET_FAMILY[ban.family], "options": options, "static": False, "keep": True})
    return out


def kernel_hashsize(maxelem):
    """Buckets for a set that iptables' SET target fills. The kernel grows a hash
    set only for adds from user space; in the packet path an add fails once its
    bucket holds `bucketsize` (12) elements, so the default 1024 buckets would cap
    such a set near 12,288 elements whatever maxelem says. With maxelem/4 buckets
    (a power of two, as ipset lists it) a full set holds about 4 per bucket, and a
    bucket reaching 12 is rare (at maxelem/8 a 184,000-host fill still overflowed
    285 buckets)."""
    size = 64
    while size < maxelem // 4:
        size *= 2
    return size


def set_header(spec):
    """The create arguments after `create NAME`."""
    words = [spec["type"]]
    if spec["family"]:
        words += ["family", spec["family"]]
    for key, value in spec["options"]:
        words += [key, str(value)]
    return " ".join(words)


def ipset_file(policy):
    """`ipset restore -exist` input that creates every set and fills the static
    ones; loaded at boot before the rules (the sets are empty at boot)."""
    lines = ["# Managed by torexit.hardening.egress_guard: changes here are overwritten."]
    for spec in ipsets(policy):
        lines.append("create %s %s" % (spec["name"], set_header(spec)))
        for elem in spec.get("elements") or []:
            lines.append("add %s %s" % (spec["name"], elem))
    return "\n".join(lines) + "\n"


def psweep_on(policy):
    return any(policy["prefix_sweep"]["burst"])


def chains(policy, prefix=CHAIN_PREFIX):
    """Names of the chains of one family, the entry chain first."""
    names = [prefix + n for n in HEAD_CHAINS]
    names += [prefix + "HSHIT-%d" % i for i in range(len(policy["horizontal_scan"]["prefixes_v4"]))]
    names += [prefix + n for n in TAIL_CHAINS]
    names += [prefix + "PSHIT-%d" % i for i in range(len(common.psweep_levels(policy, common.FAMILIES[0])))]
    return names


def input_hook(prefix=CHAIN_PREFIX):
    """The rule (after `-A PARENT `) that sends the replies of connections the prefix
    sweep follows and has not settled to the chain REPLY, as iptables-save prints it."""
    return "-p tcp -m connmark --mark 0x%08x/0x%08x -j %sREPLY" % (CONTACT, CONTACT | SETTLED, prefix)


def _mark(bits, mask=None):
    return "-m connmark --mark 0x%08x/0x%08x" % (bits, bits if mask is None else mask)


def _psweep_meters(p, fam):
    """(index, prefix length, hashlimit rate, burst, element lifetime in s) of the
    prefix-sweep levels that are on (the lifetime as guard_nftables keeps a meter's)."""
    return [(i, length, "%d/minute" % rate, burst, max(60, -(-burst * 60 // rate) + 60))
            for i, (length, burst, rate) in enumerate(common.psweep_levels(p, common.FAMILY[fam]))]


def _hl(name, rate, burst, mode, size, expire_s, mask=None):
    words = ["-m hashlimit --hashlimit-above %s --hashlimit-burst %d --hashlimit-mode %s"
             % (rate, burst, mode)]
    if mask is not None:
        words.append("--hashlimit-%smask %d" % ("src" if mode.startswith("src") else "dst", mask))
    words.append("--hashlimit-name %s --hashlimit-htable-max %d --hashlimit-htable-expire %d"
                 % (name, size, expire_s * 1000))
    return " ".join(words)


def _counted(name):
    return '-m comment --comment "%s"' % name


def _step(p, fam, verdict, detect, step):
    """The rules of one step of guard_common.DECISION_ORDER for one family."""
    name, S = step.name, SET_PREFIX
    if name == "protocol":
        return ["! -p tcp -j RETURN"]
    if name == "ct_new":
        return ["-p tcp -m conntrack ! --ctstate NEW -j RETURN"]
    if name == "owner":
        return ["-p tcp -m owner ! --uid-owner %s -j RETURN" % p["owner"]] if p["owner"] != "any" else []
    if name == "loopback":
        return ["-o lo -p tcp -j RETURN"]
    if name == "guarded":
        return ["-p tcp %s" % _counted(step.counter)]
    if name in ("allow", "relays"):
        return ["-p tcp -m set --match-set %s%s_%s dst %s -j RETURN" % (S, name, fam, _counted(step.counter))]
    if name == "deny_port":
        return ["-p tcp -m set --match-set %sdeny_port_%s dst,dst %s %s" % (S, fam, _counted(step.counter), verdict)]
    if name in ("deny", "optout"):
        return ["-p tcp -m set --match-set %s%s_%s dst %s %s" % (S, name, fam, _counted(step.counter), verdict)]
    if name == "bans":
        return ["-p tcp -m set --match-set %s%s %s %s %s" % (S, b.name, "dst,dst" if b.by_port else "dst",
                                                             _counted("blocked_" + b.detector), verdict)
                for b in common.ban_sets(p) if b.family == fam]
    if name == "detect":
        return ["-p tcp -j %s" % detect]
    raise ValueError("no iptables rule for step %r" % name)


def rules(policy, digest, fam, prefix=CHAIN_PREFIX):
    """The `-A` lines of one family's chains (v4 or v6)."""
    p = policy
    idx = 0 if fam == "v4" else 1
    host = 32 if fam == "v4" else 128
    verdict = REJECT[p["reject_with"]][idx] if p["mode"] == "enforce" else "-j RETURN"
    size, window = p["set_size"], p["scan_window"]
    fl, hs = p["flood"], p["horizontal_scan"]
    tag = "tx%s_" % digest[:8]      # a new policy gets fresh hashlimit tables
    guard, detect, scan, hs_strict, hs_web, hs_default = chains(p, prefix)[:6]
    hit = {length: prefix + "HSHIT-%d" % i for i, length in enumerate(hs["prefixes_" + fam])}
    vshit, flhit = prefix + "VSHIT", prefix + "FLHIT"
    lghit, wide, widehit = prefix + "LGHIT", prefix + "WIDE", prefix + "WIDEHIT"
    lg, ws = p["login"], p["wide_scan"]
    S = SET_PREFIX

    L = []

    def add(chain, text):
        L.append("-A %s %s" % (chain, text))

    add(guard, '-m comment --comment "%s%s"' % (DIGEST_TAG, digest))
    for rule in common.walk(lambda step, _fam: _step(p, fam, verdict, detect, step), families=False):
        add(guard, rule)

    psweep = psweep_on(p)
    psweep_chain, pfail_out = prefix + "PSWEEP", prefix + "PSFAIL-OUT"
    flood = prefix + "FLOOD"
    if psweep:
        # the kernel retransmits a SYN (no answer yet): the first one was decided
        add(detect, "-p tcp %s -g %s" % (_mark(CONTACT | FIRST, CONTACT | FIRST | SETTLED), pfail_out))
        add(detect, "-p tcp %s -j RETURN" % _mark(CONTACT))
        add(detect, "-p tcp -j CONNMARK --or-mark 0x%08x" % CONTACT)
    # a first contact of a host and port can be a scan, a repeated one a flood
    add(detect, "-p tcp -m set --match-set %sseen_%s dst,dst -g %s" % (S, fam, flood))
    add(detect, "-p tcp -j SET --add-set %sseen_%s dst,dst" % (S, fam))
    if psweep:
        add(detect, "-p tcp -m set --match-set %sseen_%s dst,dst -j CONNMARK --or-mark 0x%08x" % (S, fam, FIRST))
        add(detect, "-p tcp %s -g %s" % (_mark(FIRST), scan))
    else:
        add(detect, "-p tcp -m set --match-set %sseen_%s dst,dst -g %s" % (S, fam, scan))
    # reached only when the seen set is full: keep counting strict ports and floods
    add(detect, "-p tcp %s" % _counted("seen_full"))
    add(detect, "-p tcp -m set --match-set %sstrict_ports dst -g %s" % (S, scan))
    add(detect, "-p tcp -g %s" % flood)
    # repeated logins: repeated new connections to one host and strict port
    if lg["rate"]:
        add(flood, "-p tcp -m set --match-set %sstrict_ports dst %s -g %s"
            % (S, _hl(tag + "login_" + fam, "%d/minute" % lg["rate"], lg["burst"], "dstip,dstport",
                      max(1024, size // 4), 60), lghit))
    # flood: rate limit only while many connections to the address are open
    add(flood, "-p tcp -m connlimit --connlimit-above %d --connlimit-mask %d --connlimit-daddr %s -g %s"
        % (fl["concurrent"], host, _hl(tag + "flood_" + fam, "%d/second" % fl["rate"], fl["burst"],
                                       "dstip,dstport", size, 60), flhit))

    ports = p["vertical_scan"]["ports"]
    if ports:
        add(scan, "-p tcp %s -g %s" % (_hl(tag + "vscan_" + fam, common.rate(ports, window), ports, "dstip",
                                           size, window), vshit))
    if psweep:
        # a prefix nobody received data from lately: first contacts there are limited
        add(scan, "-p tcp -m set ! --match-set %sconfirm_%s dst -j %s" % (S, fam, psweep_chain))
    add(scan, "-p tcp -m set --match-set %sstrict_ports dst -g %s" % (S, hs_strict))
    add(scan, "-p tcp -m set --match-set %sweb_ports dst -g %s" % (S, hs_web))
    add(scan, "-p tcp -g %s" % hs_default)
    for tier, chain in (("strict", hs_strict), ("web", hs_web), ("default", hs_default)):
        for length, hosts in zip(hs["prefixes_" + fam], hs["hosts_" + tier]):
            if hosts:
                # a level the prefix sweep covers counts confirmed prefixes only (guard_common.psweep_covers)
                confirmed = ("-m set --match-set %sconfirm_%s dst " % (S, fam)
                             if psweep and common.psweep_covers(p, common.FAMILY[fam], length, hosts) else "")
                add(chain, "-p tcp %s%s -g %s" % (confirmed, _hl(
                    "%shs_%s_%s_%d" % (tag, tier, fam, length), common.rate(hosts, window), hosts,
                    "dstip,dstport", size, window, mask=length), hit[length]))
        if tier == "strict" and ws["rate"]:
            # first contacts on this port across all prefixes above what the exit's size explains
            add(chain, "-p tcp %s %s -g %s" % (_hl(tag + "wide_" + fam, "%d/second" % ws["rate"], ws["burst"],
                                                   "dstport", 65536, 60), _counted("detect_wide"), wide))
    if ws["rate"] and ws["pass_one_in"] > 1:
        # all but one in pass_one_in at random; a refused first contact is forgotten (a retry is a first contact)
        add(wide, "-p tcp -m statistic --mode random --probability %.8f -g %s"
            % (1.0 - 1.0 / ws["pass_one_in"], widehit))
        if p["mode"] == "enforce":
            add(widehit, "-p tcp -j SET --del-set %sseen_%s dst,dst" % (S, fam))
        add(widehit, "-p tcp %s %s" % (_counted("blocked_wide"), verdict))
    if lg["rate"]:
        add(lghit, "-p tcp -j SET --add-set %sban_login_%s_%d dst,dst" % (S, fam, host))
        add(lghit, "-p tcp %s %s" % (_counted("detect_login"), verdict))
    for length in hs["prefixes_" + fam]:
        add(hit[length], "-p tcp -j SET --add-set %sban_hscan_%s_%d dst,dst" % (S, fam, length))
        add(hit[length], "-p tcp %s %s" % (_counted("detect_hscan"), verdict))
    add(vshit, "-p tcp -j SET --add-set %sban_vscan_%s_%d dst" % (S, fam, host))
    add(vshit, "-p tcp %s %s" % (_counted("detect_vscan"), verdict))
    add(flhit, "-p tcp -j SET --add-set %sban_flood_%s_%d dst,dst" % (S, fam, host))
    add(flhit, "-p tcp %s %s" % (_counted("detect_flood"), verdict))
    if psweep:
        _psweep_rules(add, p, fam, tag, _psweep_meters(p, fam), prefix)
    return L


def _psweep_rules(add, p, fam, tag, meters, prefix):
    """The prefix sweep's meters, bans and failed first contacts (guard_nftables:
    psweep_*, retransmit, failed_out, input, failed_in). Failed contacts are counted
    per prefix and port in one hashlimit table per direction (a table keys by the
    mode of the rule that made it): retransmitted SYNs by destination, RSTs by source."""
    S = SET_PREFIX
    size = p["set_size"]
    verdict = REJECT[p["reject_with"]][0 if fam == "v4" else 1] if p["mode"] == "enforce" else "-j RETURN"
    psweep_chain, pfail_out, reply, pfail_in = (prefix + n for n in ("PSWEEP", "PSFAIL-OUT", "REPLY", "PSFAIL-IN"))
    for i, length, rate, burst, keep in meters:
        add(psweep_chain, "-p tcp %s -g %sPSHIT-%d" % (
            _hl("%sps_%s_%d" % (tag, fam, length), rate, burst, "dstip,dstport", size, keep, mask=length), prefix, i))
    for i, length, _rate, _burst, _keep in meters:
        add("%sPSHIT-%d" % (prefix, i), "-p tcp -j SET --add-set %sban_psweep_%s_%d dst,dst" % (S, fam, length))
        add("%sPSHIT-%d" % (prefix, i), "-p tcp %s %s" % (_counted("detect_psweep"), verdict))
    settle = "-j CONNMARK --or-mark 0x%08x" % SETTLED
    for chain, direction in ((pfail_out, "dst"), (pfail_in, "src")):
        add(chain, "-p tcp %s %s" % (_counted("psweep_failed"), settle))
        for _i, length, rate, burst, keep in meters:
            add(chain, "-p tcp %s %s -j SET --add-set %sban_psweep_%s_%d %s,%s" % (
                _hl("%spf%s_%s_%d" % (tag, direction[0], fam, length), rate, burst, "%sip,%sport" % (direction, direction),
                    size, keep, mask=length), _counted("detect_psweep"), S, fam, length, direction, direction))
    # replies of marked, unsettled connections (the INPUT hook matches only those):
    # a RST to a first contact is a failed one; data (longer than the largest
    # IPv4 + TCP header, 20 + 60; IPv6: 40 + 60) confirms the sender's /22
    add(reply, "-p tcp --tcp-flags RST RST %s -g %s" % (_mark(FIRST), pfail_in))
    data = "-m length --length %d:65535" % (81 if fam == "v4" else 101)
    add(reply, "-p tcp %s -j SET --add-set %sconfirm_%s src --exist" % (data, S, fam))
    add(reply, "-p tcp %s %s" % (data, settle))


def render(policy, digest, fam, hook=False, stale=(), prefix=CHAIN_PREFIX, parent="OUTPUT", in_hook=None,
           in_parent="INPUT"):
    """One family's `iptables-restore --noflush` input: declares (and so empties)
    our chains, fills them, optionally hooks the entry chain (first rule of
    OUTPUT; last of ufw's chain for the ufw backend), adds (in_hook "add"),
    moves to the top ("move") or deletes ("delete") the reply hook, first rule of
    `in_parent`, and deletes our chains that the policy no longer has. Nothing
    else is touched."""
    p = policy
    L = ["# Managed by torexit.hardening.egress_guard (backend %s): changes here are overwritten."
         % ("iptables" if prefix == CHAIN_PREFIX else "ufw"),
         "# mode=%s profile=%s owner=%s reject_with=%s family=%s"
         % (p["mode"], p["profile"], p["owner"], p["reject_with"], fam),
         "*filter"]
    L += [":%s - [0:0]" % c for c in chains(p, prefix) + list(stale)]
    L += rules(p, digest, fam, prefix)
    if hook:
        L.append(("-I OUTPUT 1 -j %sGUARD" if parent == "OUTPUT" else "-A " + parent + " -j %sGUARD") % prefix)
    if in_hook in ("delete", "move"):
        L.append("-D %s %s" % (in_parent, input_hook(prefix)))
    if in_hook in ("add", "move"):
        L.append("-I %s 1 %s" % (in_parent, input_hook(prefix)))
    L += ["-X %s" % c for c in stale]
    L.append("COMMIT")
    return "\n".join(L) + "\n"


# --- reading and changing the kernel ------------------------------------------------

def _cmd(run, args, data=None, check=True):
    rc, out, err = run(args, data=data)
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    if check and rc != 0:
        raise IptablesError("%s failed: %s" % (" ".join(args[:3]), (err or out).strip()))
    return rc, out, err


def save(run, cmd, counters=False):
    """`iptables-save -t filter` (with counters) of one family, '' when unavailable."""
    rc, out, _err = _cmd(run, ["%s-save" % cmd, "-t", "filter"] + (["-c"] if counters else []), check=False)
    return out if rc == 0 else ""


def our_chains(saved, prefix=CHAIN_PREFIX):
    """The guard's chains declared in an iptables-save text: only the names
    chains() makes, so other TOREXIT-* chains (the firewall role's TOREXIT-INPUT,
    the ufw backend's TOREXIT-UFW-*) are never taken for ours."""
    fixed = "|".join(re.escape(n) for n in HEAD_CHAINS + TAIL_CHAINS)
    pattern = re.compile(r"^:(%s(?:%s|[HP]SHIT-\d+)) " % (re.escape(prefix), fixed))
    return [m.group(1) for m in map(pattern.match, saved.splitlines()) if m]


def digest_of(saved, prefix=CHAIN_PREFIX):
    m = re.search(r"-A %sGUARD .*--comment \"?%s([0-9a-f]{64})" % (re.escape(prefix), re.escape(DIGEST_TAG)), saved)
    return m.group(1) if m else None


def hooked(saved, prefix=CHAIN_PREFIX, parent="OUTPUT"):
    return re.search(r"^(\[\d+:\d+\] )?-A %s -j %sGUARD$" % (parent, re.escape(prefix)), saved, re.M) is not None


def input_hooked(saved, prefix=CHAIN_PREFIX, parent="INPUT"):
    """(hooked, in front): the reply hook is in `parent`, and no rule of `parent` that
    accepts (`-j ACCEPT`, or a jump to the firewall role's TOREXIT-INPUT, which
    accepts established traffic) comes before it: replies accepted earlier in the
    chain never reach it."""
    rule = re.compile(r"^(?:\[\d+:\d+\] )?-A %s (.*)$" % re.escape(parent))
    accepted = False
    for line in saved.splitlines():
        m = rule.match(line)
        if not m:
            continue
        if m.group(1) == input_hook(prefix):
            return True, not accepted
        accepted = accepted or m.group(1).endswith(("-j ACCEPT", "-j TOREXIT-INPUT"))
    return False, False


def list_sets(run, name=None):
    """{name: {"type", "header" (dict), "entries" [(key, seconds left or None)]}} of our
    ipsets (of the one set `name`)."""
    rc, out, _err = _cmd(run, ["ipset", "list"] + ([name] if name else []), check=False)
    if rc != 0:
        return {}
    sets, cur, members = {}, None, False
    for line in out.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip()
            ours = name.startswith(SET_PREFIX) and not name.startswith(INBOUND_SET_PREFIXES)
            cur = {"type": None, "header": {}, "entries": []} if ours else None
            if cur is not None:
                sets[name] = cur
            members = False
        elif cur is None:
            continue
        elif line.startswith("Type: "):
            cur["type"] = line[6:].strip()
        elif line.startswith("Header: "):
            words = line[8:].split()
            cur["header"] = dict(zip(words[::2], words[1::2]))
        elif line.startswith("Members:"):
            members = True
        elif members and line.strip():
            words = line.split()
            left = int(words[words.index("timeout") + 1]) if "timeout" in words else None
            cur["entries"].append((words[0], left))
    return sets


def set_matches(spec, live):
    """Whether a live set was created with the spec's type and options."""
    if live is None or live["type"] != spec["type"]:
        return False
    h = live["header"]
    if spec["family"] and h.get("family") != spec["family"]:
        return False
    for key, value in spec["options"]:
        if h.get(key) != str(value):
            return False
    return True


def sets_ok(policy, live):
    return all(set_matches(spec, live.get(spec["name"])) for spec in ipsets(policy))


def ipset_script(policy, live, dropped=None):
    """`ipset restore` input that brings the sets to the policy: missing sets are
    created; static sets are refilled through a temporary set and `swap`, so the
    rules never see a half-filled set; a set created with other options is
    replaced the same way, carrying over bans and opt-outs with the time they
    have left (as the nftables backend does); when they no longer fit, those with
    the most time left, and the number left out is appended to `dropped`."""
    lines = []
    for spec in ipsets(policy):
        name, header = spec["name"], set_header(spec)
        cur = live.get(name)
        if cur is None:
            lines.append("create %s %s" % (name, header))
            lines += ["add %s %s" % (name, e) for e in spec.get("elements") or []]
            continue
        wanted = spec.get("elements") or []
        if set_matches(spec, cur) and (not spec["static"] or
                                       _keys(wanted) == _keys(entry[0] for entry in cur["entries"])):
            continue
        tmp = (SET_PREFIX + "tmp_" + name[len(SET_PREFIX):])[:31]
        lines.append("create %s %s" % (tmp, header))
        lines += ["add %s %s" % (tmp, e) for e in wanted]
        if spec.get("keep") or (spec["name"].endswith(("relays_v4", "relays_v6"))):
            options = dict(spec["options"])
            timeout = "timeout" in options
            entries, lost = common.keep_longest(cur["entries"], options.get("maxelem", len(cur["entries"])))
            if dropped is not None:
                dropped.append(lost)
            for key, left in entries:
                if timeout and left:
                    lines.append("add -exist %s %s timeout %d" % (tmp, key, left))
                elif not timeout:
                    lines.append("add -exist %s %s" % (tmp, key))
        lines.append("swap %s %s" % (tmp, name))
        lines.append("destroy %s" % tmp)
    return lines


def _keys(elements):
    """Set elements as comparable keys: ipset lists a port range element as one
    entry per port and may print addresses in another notation."""
    out = set()
    for text in elements:
        if text.isdigit():
            out.add(int(text))
            continue
        net, _sep, port = text.partition(",")
        net = ipaddress.ip_network(net, strict=False)
        if not port:
            out.add((net, None))
            continue
        low, _dash, high = port.split(":", 1)[-1].partition("-")
        out.update((net, p) for p in range(int(low), int(high or low) + 1))
    return out


def _restore_sets(run, lines):
    rc, out, err = _cmd(run, ["ipset", "restore"], data="\n".join(lines) + "\n", check=False)
    if rc != 0:
        raise IptablesError("ipset restore failed: %s" % common.scrub(err or out))


def apply_sets(run, policy):
    """Bring the ipsets to the policy; returns how many bans did not fit any more.
    A ban or opt-out set that is replaced keeps its old contents under the temporary
    name until they were read again after the swap: what the kernel or the opt-out
    service added since the first read is carried over too. An error never echoes
    the carried elements (destinations)."""
    dropped = []
    live = list_sets(run)
    lines = ipset_script(policy, live, dropped)
    if not lines:
        return 0
    keep = set(spec["name"] for spec in ipsets(policy) if spec.get("keep"))
    swapped = dict(line.split()[1:3] for line in lines if line.startswith("swap ") and line.split()[2] in keep)
    _restore_sets(run, [line for line in lines if not (line.startswith("destroy ") and line.split()[1] in swapped)])
    late = []
    for tmp, name in swapped.items():
        known = set(key for key, _left in live[name]["entries"])
        timeout = "timeout" in live[name]["header"]
        for key, left in list_sets(run, tmp).get(tmp, {"entries": []})["entries"]:
            if key not in known and (left or not timeout):
                late.append("add -exist %s %s%s" % (name, key, " timeout %d" % left if left else ""))
        late.append("destroy %s" % tmp)
    if late:
        _restore_sets(run, late)
    return sum(dropped)


def destroy_sets(run, names):
    """Destroy our sets that are no longer referenced; a set still in use (by the
    other iptables-based backend) is left."""
    for name in names:
        _cmd(run, ["ipset", "destroy", name], check=False)


def stale_sets(policy, live):
    wanted = set(spec["name"] for spec in ipsets(policy))
    return sorted(n for n in live if n not in wanted)


def check(run, cmd, text):
    _cmd(run, ["%s-restore" % cmd, "--test", "--noflush"], data=text)


def restore(run, cmd, text):
    _cmd(run, ["%s-restore" % cmd, "--noflush"], data=text)


class Chains(NamedTuple):
    """The guard's rules as loaded in one family."""
    digest: str | None      # the digest tag of the entry chain
    hooked: bool            # the parent chain jumps to the entry chain
    names: list             # our chains (guard_xtables.our_chains)
    parent: bool            # the parent chain exists
    in_hooked: bool = False     # the reply hook (input_hook) is in the input parent chain
    in_front: bool = False      # ... before any rule there that accepts (input_hooked)


def live_state(run, prefix=CHAIN_PREFIX, parents=None, in_parents=None):
    """{fam: Chains} of the loaded rules; `parents` maps the family to the chain
    holding the hook (default OUTPUT), `in_parents` to the one holding the reply
    hook (default INPUT)."""
    out = {}
    for fam, cmd in FAMILY_COMMANDS:
        parent = (parents or {}).get(fam, "OUTPUT")
        saved = save(run, cmd)
        out[fam] = Chains(digest_of(saved, prefix), hooked(saved, prefix, parent), our_chains(saved, prefix),
                          parent == "OUTPUT" or (":%s " % parent) in saved,
                          *input_hooked(saved, prefix, (in_parents or {}).get(fam, "INPUT")))
    return out


def in_hook_change(policy, loaded):
    """What render's in_hook must do to the loaded Chains for the policy: "add" the
    reply hook, "move" it to the top (another rule that accepts came before it, e.g.
    the firewall role inserted its TOREXIT-INPUT first), "delete" it, or None."""
    if psweep_on(policy) and not loaded.in_hooked:
        return "add"
    if psweep_on(policy) and not loaded.in_front:
        return "move"
    if loaded.in_hooked and not psweep_on(policy):
        return "delete"
    return None


def remove_text(chain_names, hook, prefix=CHAIN_PREFIX, parent="OUTPUT", in_hook=False, in_parent="INPUT"):
    """`iptables-restore --noflush` input that unhooks and deletes our chains."""
    L = ["*filter"]
    if hook:
        L.append("-D %s -j %sGUARD" % (parent, prefix))
    if in_hook:
        L.append("-D %s %s" % (in_parent, input_hook(prefix)))
    L += [":%s - [0:0]" % c for c in chain_names]
    L += ["-X %s" % c for c in chain_names]
    L.append("COMMIT")
    return "\n".join(L) + "\n"


def delete(run, prefix=CHAIN_PREFIX):
    """Unhook and delete our chains in both families; True when something was removed."""
    changed = False
    for _fam, cmd in FAMILY_COMMANDS:
        saved = save(run, cmd)
        names = our_chains(saved, prefix)
        hook, in_hook = hooked(saved, prefix), input_hooked(saved, prefix)[0]
        if names or hook or in_hook:
            restore(run, cmd, remove_text(names, hook, prefix, in_hook=in_hook))
            changed = True
    return changed


def read_state(run, show_bans=False, prefix=CHAIN_PREFIX):
    """Counters, ban counts and set fill levels, with the keys of guard_nftables.read_state."""
    counters = dict((name, {"packets": 0, "bytes": 0}) for name in COUNTER_NAMES)
    digest = None
    found = False
    for _fam, cmd in FAMILY_COMMANDS:
        saved = save(run, cmd, counters=True)
        if not our_chains(saved, prefix):
            continue
        found = True
        digest = digest or digest_of(saved, prefix)
        for line in saved.splitlines():
            m = re.match(r"^\[(\d+):(\d+)\] -A %s\S+ .*--comment \"?([a-z_]+)\"?( |$)" % re.escape(prefix), line)
            if m and m.group(3) in counters:
                counters[m.group(3)]["packets"] += int(m.group(1))
                counters[m.group(3)]["bytes"] += int(m.group(2))
    if not found:
        return None
    fill, bans = {}, {}
    for name, s in list_sets(run).items():
        short = name[len(SET_PREFIX):]
        maxelem = s["header"].get("maxelem")
        fill[short] = {"elements": len(s["entries"]), "size": int(maxelem) if maxelem else None}
        if short.startswith("ban_") or short.startswith("optout_"):
            entry = {"count": len(s["entries"])}
            if show_bans:
                entry["entries"] = [{"key": _key_text(k), "expires": left} for k, left in s["entries"]]
            bans[short] = entry
    return {"digest": digest, "counters": counters, "sets": fill, "bans": bans}


def _key_text(key):
    """ipset's `198.18.0.0,tcp:22` in the nftables notation `198.18.0.0 . 22`."""
    if "," in key:
        addr, port = key.split(",", 1)
        return "%s . %s" % (addr, port.split(":", 1)[-1])
    return key


# --- the relay refresh the iptables and ufw backends share ---------------------------

RELAYS_SCRIPT = "/usr/local/libexec/torexit-guard-relays-ipset"
RELAYS_UNIT = "torexit-guard-relays-ipset.service"
RELAYS_TIMER = "torexit-guard-relays-ipset.timer"
UNIT_DIR = "/etc/systemd/system"
RELAY_PATHS = [RELAYS_SCRIPT, UNIT_DIR + "/" + RELAYS_UNIT, UNIT_DIR + "/" + RELAYS_TIMER]
# What each of the two backends checks of the other before removing what they share.
IPTABLES_UNIT = "torexit-egress-guard-iptables.service"
UFW_UNIT = "torexit-egress-guard-ufw-ipsets.service"
UFW_BEGIN = "# BEGIN torexit.hardening egress_guard"
UFW_FILES = {"v4": "/etc/ufw/before.rules", "v6": "/etc/ufw/before6.rules"}

RELAYS_UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard
[Unit]
Description=torexit.hardening: refresh the egress guard's relay ipsets
After={after}

[Service]
Type=oneshot
ExecStart={relays}
"""


def relays_script():
    return guard_host.relays_script("ipset")


def relay_files(after_unit):
    return {
        RELAYS_SCRIPT: (relays_script(), 0o755),
        UNIT_DIR + "/" + RELAYS_UNIT: (RELAYS_UNIT_TEXT.format(after=after_unit, relays=RELAYS_SCRIPT), 0o644),
        UNIT_DIR + "/" + RELAYS_TIMER: (guard_host.RELAYS_TIMER_TEXT.format(what="relay ipsets"), 0o644),
    }


def refresh_relays(run, policy):
    """Fill the relay ipsets now (the timer keeps them fresh)."""
    if policy["relay_allowlist"]:
        run(["/bin/sh", "-s"], data=relays_script())


def other_backend_keep(mine):
    """The relay refresh files are shared by the iptables and ufw backends: one
    keeps them while the other one is installed."""
    other = UFW_UNIT if mine == "iptables" else IPTABLES_UNIT
    return list(RELAY_PATHS) if guard_host.read(UNIT_DIR + "/" + other) is not None else []


def ufw_block_present():
    return any(UFW_BEGIN in (guard_host.read(path) or "") for path in UFW_FILES.values())
