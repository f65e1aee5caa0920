# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export the egress guard's counters and ban gauges for Prometheus.

Reads the guard of whichever backend is loaded (the order of egress_guard_info's
`backend: auto`) and writes a file in the Prometheus text format for
node_exporter's textfile collector:

* nftables (table `inet torexit_guard`): set names and sizes from
  `nft -j -t list sets table inet torexit_guard` (terse: no elements); counters,
  the policy digest and the number of elements of each bounded set straight
  from the kernel over netlink (nfnetlink dumps of the table's counter objects
  and of each set's elements, counted without decoding a single key). nft 1.0.6
  loads every element of every set for any listing of the table, even
  `list counters` or `-t list table`: 1.5-2 s and 200-400 MB for a set of
  200,000 elements, every minute. When netlink is not usable, the full
  `nft -j list table` is read instead.
* iptables and ufw (chains `TOREXIT-*` / `TOREXIT-UFW-*`, ipsets `torexit_*`):
  counters are the packet counters of the guard's rules tagged with a counter's
  name in `iptables-save -c -t filter` and `ip6tables-save -c -t filter` (rules
  only, no set elements); element counts and `maxelem` from `ipset list -t`
  (terse: headers with "Number of entries", no elements).

The names (docs/guard-sets.md, COUNTERS of plugins/module_utils/guard_nftables.py,
chain and set names of guard_iptables.py and guard_ufw.py) are checked against
the collection by tests/unit/roles/test_metrics.py.

Also, when the firewall role's ORPort DoS rules are loaded (issue 18): their hit
counters and how many sources each per-source set holds. nftables (table `inet
torexit_inbound`): counted over netlink like the guard's (never decoded);
iptables/ufw (chains `TOREXIT-DOS*` / `TOREXIT-UFW-DOS*`, ipsets `torexit_in_*`):
the packet counters of the rules tagged `torexit.hardening inbound_dos NAME` and
`ipset list -t` of the block sets.

The file is written to a temporary name in the same directory and renamed, so
the collector never reads half a file.

Privacy: only counters and element counts are written. Set elements (banned
prefixes, opt-outs, recently contacted hosts) are destinations of relayed
traffic; they are counted and never decoded, written or logged.

Python 3 standard library only; run by torexit-guard-metrics.service.
"""

import argparse
import errno
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time

TABLE = ("inet", "torexit_guard")
# the detectors of issue 15 (repeated login, prefix sweep, wide-scan gate) come
# after seen_full in the guard's counter list (guard_common.COUNTERS)
LATER_DETECTORS = ("login", "psweep", "wide")
DETECTORS = ("flood", "hscan", "vscan") + LATER_DETECTORS
BLOCK_REASONS = ("deny", "optout") + DETECTORS
COUNTER_NAMES = ("guarded_new", "allowed") + tuple("blocked_" + r for r in BLOCK_REASONS[:-3]) + \
    tuple("detect_" + d for d in DETECTORS[:-3]) + ("seen_full",) + \
    tuple("blocked_" + d for d in LATER_DETECTORS) + tuple("detect_" + d for d in LATER_DETECTORS) + \
    ("psweep_failed",)
SET_NAME_RE = re.compile(r"^[a-z0-9_]+$")
BACKENDS = ("nftables", "iptables", "ufw")

# iptables and ufw backends (plugins/module_utils/guard_iptables.py, guard_ufw.py)
CHAIN_PREFIXES = {"iptables": "TOREXIT-", "ufw": "TOREXIT-UFW-"}
CHAINS = ("GUARD", "DETECT", "SCAN", "HS-STRICT", "HS-WEB", "HS-DEFAULT", "VSHIT", "FLHIT", "FLOOD",
          "LGHIT", "WIDE", "WIDEHIT", "PSWEEP", "PSFAIL-OUT", "REPLY", "PSFAIL-IN")
IPSET_PREFIX = "torexit_"
DIGEST_TAG = "torexit.hardening egress_guard sha256:"
SAVE_COMMANDS = ("iptables-save", "ip6tables-save")

# The firewall role's ORPort DoS rules (roles/firewall/templates/inbound.nft.j2)
INBOUND_TABLE = "torexit_inbound"
INBOUND_HITS = {"dos_blocked_hits": "blocked", "dos_concurrency_hits": "concurrency", "dos_rate_hits": "rate",
                "dos_net_rate_hits": "network_rate"}
INBOUND_SETS = ("dos_blocked_v4", "dos_blocked_v6", "dos_conn_v4", "dos_conn_v6", "dos_rate_v4", "dos_rate_v6",
                "dos_net_v4", "dos_net_v6")
# the same rules on iptables/ufw (roles/firewall/templates/dos.rules.j2, inbound-dos.ipset.j2)
INBOUND_XT_RULE = re.compile(r'^\[(\d+):\d+\] -A \S+ .*--comment "?torexit\.hardening inbound_dos (\w+)')
INBOUND_XT_SET_PREFIX = "in_"

HELP = {
    "torexit_guard_up": "1 when the egress guard is loaded (any backend), else 0.",
    "torexit_guard_backend_info": "The backend whose guard was read (label backend); always 1.",
    "torexit_guard_policy_info": "Policy digest of the loaded guard (label digest); always 1.",
    "torexit_guard_new_connections_total": "New outbound TCP connections of the guarded user.",
    "torexit_guard_allowed_total": "Of those, to allow-listed addresses or known Tor relays.",
    "torexit_guard_blocked_total": "Connections matching a ban, deny or opt-out: refused in enforce mode, "
                                   "only counted in monitor and exitpolicy mode.",
    "torexit_guard_detections_total": "Detections by the guard (each one starts a ban; detector wide: first "
                                      "contacts on a strict port above the global rate, no ban).",
    "torexit_guard_seen_full_total": "First contacts not recorded because the seen set was full.",
    "torexit_guard_psweep_failed_total": "Failed first contacts (refused or unanswered) the prefix-sweep "
                                         "detector counted.",
    "torexit_guard_bans": "Active bans (elements) in a ban set.",
    "torexit_guard_optouts": "Active opt-outs (elements) in an opt-out set.",
    "torexit_guard_set_fill_ratio": "Elements of a bounded kernel set divided by its maximum size; at 1 the set "
                                    "takes no new elements.",
    "torexit_inbound_dos_hits_total": "New ORPort/DirPort connections that hit a DoS limit (label limit: "
                                      "concurrency, rate, network_rate - the per-network rate, or blocked - from a blocked source); dropped in "
                                      "enforce mode, only counted in monitor mode.",
    "torexit_inbound_dos_blocked_sources": "Sources (IPv4 addresses, IPv6 /64s) blocked on the ORPorts/DirPorts now.",
    "torexit_inbound_dos_set_fill_ratio": "Elements of a per-source DoS set divided by its maximum size.",
    "torexit_guard_last_run_timestamp_seconds": "When the exporter last read the guard (Unix time).",
    "torexit_guard_exporter_duration_seconds": "How long the exporter took to read the guard.",
}
TYPES = {name: ("counter" if name.endswith("_total") else "gauge") for name in HELP}


class ReadError(RuntimeError):
    """A backend's state could not be read; the old file is kept."""


# --- nftables: full JSON listing (fallback) --------------------------------------

def parse(doc):
    """Counters, digest and per-set (elements, size) from `nft -j list table` output.

    Only the number of elements is kept, never their values."""
    counters, sets, digest = {}, {}, None
    for obj in doc.get("nftables", []):
        if "counter" in obj:
            c = obj["counter"]
            if c.get("name") == "policy_id":
                digest = _digest(c.get("comment", ""))
            else:
                counters[c.get("name")] = int(c.get("packets", 0))
        elif "set" in obj:
            s = obj["set"]
            name = s.get("name", "")
            if SET_NAME_RE.match(name):
                sets[name] = (len(s.get("elem", []) or []), s.get("size"))
    return {"backend": "nftables", "counters": counters, "sets": sets, "digest": digest}


def _digest(comment):
    return comment[len("sha256:"):] if comment.startswith("sha256:") else None


# --- nftables: netlink ----------------------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO_INET = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_FLAGS = 3
NFT_SET_ELEM_INTERVAL_END = 0x1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA, NFTA_OBJ_USERDATA = 1, 2, 3, 4, 8
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTNL_UDATA_OBJ_COMMENT = 0


_U16 = struct.Struct("=H")


def _attr(kind, data):
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _attrs(buf, start, end):
    """(type, value start, value end) of the netlink attributes in buf[start:end]."""
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, start)
        if length < 4:
            raise ReadError("netlink: malformed attribute")
        yield kind & 0x7fff, start + 4, start + length
        start += (length + 3) & ~3


class Netlink:
    """Dumps of nf_tables objects over a NETLINK_NETFILTER socket. `sock` (for
    tests) is anything with send() and recv() returning the kernel's bytes."""

    def __init__(self, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
        self.sock = sock
        self.seq = int(time.time()) & 0xffff

    def close(self):
        self.sock.close()

    def dump(self, msg, attrs):
        """The messages of one dump request, as (buffer, payload start, payload end);
        payload = the attributes after nfgenmsg. A missing table or set raises
        FileNotFoundError, any other kernel error OSError."""
        self.seq += 1
        body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + b"".join(_attr(k, v) for k, v in attrs)
        self.sock.send(struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg,
                                   NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body)
        while True:
            buf = self.sock.recv(1 << 18)
            if not buf:
                raise ReadError("netlink: the kernel closed the dump")
            off = 0
            while off + 16 <= len(buf):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if length < 16:
                    raise ReadError("netlink: malformed message")
                if seq == self.seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", buf, off + 16)[0]
                        if err == 0:
                            return
                        if err == errno.ENOENT:
                            raise FileNotFoundError(err, os.strerror(err))
                        raise OSError(err, os.strerror(err))
                    yield buf, off + 20, off + length
                off += (length + 3) & ~3

    def count_elements(self, table, name, interval=False):
        """Elements of a set; for interval sets the end markers are not counted, so
        a prefix counts once, as `nft list set` shows it."""
        count = 0
        attrs = [(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0"), (NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")]
        for buf, start, end in self.dump(NFT_MSG_GETSETELEM, attrs):
            for kind, vstart, vend in _attrs(buf, start, end):
                if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
                    continue
                if interval:
                    count += sum(1 for _e, estart, eend in _attrs(buf, vstart, vend)
                                 if not _is_interval_end(buf, estart, eend))
                else:
                    count += _count_attrs(buf, vstart, vend)
        return count

    def counters(self, table):
        """({name: packets}, digest) of the table's named counters."""
        counters, digest = {}, None
        attrs = [(NFTA_OBJ_TABLE, table.encode() + b"\0"), (NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER))]
        for buf, start, end in self.dump(NFT_MSG_GETOBJ, attrs):
            name, packets, comment = None, 0, ""
            for kind, vstart, vend in _attrs(buf, start, end):
                if kind == NFTA_OBJ_NAME:
                    name = buf[vstart:vend].rstrip(b"\0").decode("ascii", "replace")
                elif kind == NFTA_OBJ_DATA:
                    for ckind, cstart, _cend in _attrs(buf, vstart, vend):
                        if ckind == NFTA_COUNTER_PACKETS:
                            packets = struct.unpack_from("!Q", buf, cstart)[0]
                elif kind == NFTA_OBJ_USERDATA:
                    comment = _udata_comment(buf[vstart:vend])
            if name == "policy_id":
                digest = _digest(comment)
            elif name:
                counters[name] = packets
        return counters, digest


def _count_attrs(buf, start, end):
    """How many attributes buf[start:end] holds (the tight loop for large sets)."""
    count = 0
    unpack = _U16.unpack_from
    while start + 4 <= end:
        length = unpack(buf, start)[0]
        if length < 4:
            raise ReadError("netlink: malformed attribute")
        count += 1
        start += (length + 3) & ~3
    return count


def _is_interval_end(buf, start, end):
    for kind, vstart, _vend in _attrs(buf, start, end):
        if kind == NFTA_SET_ELEM_FLAGS:
            return bool(struct.unpack_from("!I", buf, vstart)[0] & NFT_SET_ELEM_INTERVAL_END)
    return False


def _udata_comment(data):
    """The comment in libnftnl's user data (type, length, value records)."""
    off = 0
    while off + 2 <= len(data):
        kind, length = data[off], data[off + 1]
        if kind == NFTNL_UDATA_OBJ_COMMENT:
            return data[off + 2:off + 2 + length].rstrip(b"\0").decode("ascii", "replace")
        off += 2 + length
    return ""


# --- commands ----------------------------------------------------------------------

def run_command(args):
    """(rc, stdout, stderr); a missing program is rc 127."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return 127, "", "%s: command not found" % args[0]
    return proc.returncode, proc.stdout, proc.stderr


def _missing_table(rc, err):
    return rc == 127 or "No such file or directory" in err or "does not exist" in err


def table_sets(doc, table):
    """The set objects of `nft -j -t list sets table inet TABLE` that belong to that
    table: nft 1.0.6 (Debian 12) ignores the table there and lists the sets of every
    table, e.g. the firewall role's inbound table beside the guard's."""
    return [obj["set"] for obj in doc.get("nftables", [])
            if "set" in obj and obj["set"].get("table") == table and obj["set"].get("family") == TABLE[0]]


def read_nft(run=run_command, netlink=Netlink, nft="nft"):
    """The nftables guard's state, or None when the table is not loaded (or no nft)."""
    family, table = TABLE
    rc, out, err = run([nft, "-j", "-t", "list", "sets", "table", family, table])
    if rc != 0:
        if _missing_table(rc, err):
            return None
        raise ReadError("nft failed (exit %d): %s" % (rc, err.strip()[:200]))
    listed = table_sets(json.loads(out), table)
    try:
        link = netlink()
        try:
            counters, digest = link.counters(table)
            sets = {}
            for s in listed:
                name = s.get("name", "")
                if SET_NAME_RE.match(name) and (s.get("size") or name.startswith(("ban_", "optout_"))):
                    interval = "interval" in (s.get("flags") or [])
                    sets[name] = (link.count_elements(table, name, interval), s.get("size"))
        finally:
            link.close()
    except FileNotFoundError:
        return None  # the table went away meanwhile
    except OSError as exc:
        print("torexit_guard_metrics: netlink not usable (%s); reading the whole table" % exc, file=sys.stderr)
        return read_nft_full(run, nft)
    return {"backend": "nftables", "counters": counters, "sets": sets, "digest": digest}


def read_nft_full(run=run_command, nft="nft"):
    rc, out, err = run([nft, "-j", "list", "table", TABLE[0], TABLE[1]])
    if rc != 0:
        if _missing_table(rc, err):
            return None
        raise ReadError("nft failed (exit %d): %s" % (rc, err.strip()[:200]))
    return parse(json.loads(out))


def our_chains(saved, prefix):
    """The guard's chains declared in iptables-save text (only names of
    guard_iptables.chains(), so TOREXIT-UFW-* or the firewall role's
    TOREXIT-INPUT are never taken for the iptables backend's)."""
    pattern = re.compile(r"^:(%s(?:%s|[HP]SHIT-\d+)) " % (re.escape(prefix), "|".join(re.escape(c) for c in CHAINS)))
    return [m.group(1) for m in map(pattern.match, saved.splitlines()) if m]


def parse_iptables(saved_texts, prefix):
    """({counter: packets}, digest) from `iptables-save -c` texts of both families."""
    counters = dict((name, 0) for name in COUNTER_NAMES)
    digest = None
    rule = re.compile(r"^\[(\d+):\d+\] -A (%s\S+) (.*)$" % re.escape(prefix))
    for saved in saved_texts:
        chains = set(our_chains(saved, prefix))
        for line in saved.splitlines():
            m = rule.match(line)
            if not m or m.group(2) not in chains:
                continue
            c = re.search(r'--comment "?([^" ]+)"?', m.group(3))
            if not c:
                continue
            if c.group(1) in counters:
                counters[c.group(1)] += int(m.group(1))
            elif m.group(2) == prefix + "GUARD" and digest is None:
                d = re.search(r'--comment "?%s([0-9a-f]{64})"?' % re.escape(DIGEST_TAG), m.group(3))
                digest = d.group(1) if d else None
    return counters, digest


def parse_ipsets(text):
    """{name without torexit_: (elements, maxelem or None)} from `ipset list -t`."""
    sets, name = {}, None
    for line in text.splitlines():
        if line.startswith("Name: "):
            full = line[6:].strip()
            short = full[len(IPSET_PREFIX):] if full.startswith(IPSET_PREFIX) else ""
            # the firewall role's inbound sets (torexit_in_*) are read by read_inbound_xt
            name = short if SET_NAME_RE.match(short) and not short.startswith(INBOUND_XT_SET_PREFIX) else None
            if name:
                sets[name] = [0, None]
        elif name is None:
            continue
        elif line.startswith("Header: "):
            words = line[8:].split()
            header = dict(zip(words[::2], words[1::2]))
            if header.get("maxelem", "").isdigit():
                sets[name][1] = int(header["maxelem"])
        elif line.startswith("Number of entries: "):
            sets[name][0] = int(line.split(":", 1)[1])
    return dict((n, tuple(v)) for n, v in sets.items())


def read_iptables(run=run_command):
    """The iptables or ufw guard's state, or None when neither has its chains."""
    saved = []
    for cmd in SAVE_COMMANDS:
        rc, out, _err = run([cmd, "-c", "-t", "filter"])
        saved.append(out if rc == 0 else "")
    for backend in ("iptables", "ufw"):
        prefix = CHAIN_PREFIXES[backend]
        if not any(our_chains(text, prefix) for text in saved):
            continue
        counters, digest = parse_iptables(saved, prefix)
        rc, out, err = run(["ipset", "list", "-t"])
        if rc != 0:
            raise ReadError("ipset list -t failed (exit %d): %s" % (rc, err.strip()[:200]))
        return {"backend": backend, "counters": counters, "sets": parse_ipsets(out), "digest": digest}
    return None


def read_inbound(run=run_command, netlink=Netlink, nft="nft"):
    """{"hits": {limit: packets}, "sets": {name: (elements, size)}} of the firewall
    role's DoS rules, or None when they are not loaded or cannot be read (the
    guard's metrics are written anyway)."""
    rc, out, _err = run([nft, "-j", "-t", "list", "sets", "table", "inet", INBOUND_TABLE])
    if rc != 0:
        return None
    try:
        sizes = {s["name"]: s.get("size") for s in table_sets(json.loads(out), INBOUND_TABLE)
                 if s.get("name") in INBOUND_SETS}
    except ValueError:
        return None
    if not sizes:
        return None
    try:
        link = netlink()
        try:
            counters, _digest = link.counters(INBOUND_TABLE)
            sets = {name: (link.count_elements(INBOUND_TABLE, name), size) for name, size in sizes.items()}
        finally:
            link.close()
    except (OSError, ReadError):
        return None
    return {"hits": {limit: counters[name] for name, limit in INBOUND_HITS.items() if name in counters},
            "sets": sets}


def read_inbound_xt(run=run_command):
    """read_inbound()'s result for the iptables/ufw backends, or None when no tagged rule is loaded."""
    hits, found = dict((limit, 0) for limit in INBOUND_HITS.values()), False
    for cmd in SAVE_COMMANDS:
        rc, out, _err = run([cmd, "-c", "-t", "filter"])
        for m in map(INBOUND_XT_RULE.match, out.splitlines() if rc == 0 else []):
            if m and m.group(2) in INBOUND_HITS:
                hits[INBOUND_HITS[m.group(2)]] += int(m.group(1))
                found = True
    if not found:
        return None
    rc, out, _err = run(["ipset", "list", "-t"])
    sets = {}
    for line in (out if rc == 0 else "").split("\n\n"):
        name = re.search(r"^Name: %sin_(blocked_v[46])$" % IPSET_PREFIX, line, re.M)
        count = re.search(r"^Number of entries: (\d+)$", line, re.M)
        size = re.search(r"^Header: .*\bmaxelem (\d+)", line, re.M)
        if name and count:
            sets["dos_" + name.group(1)] = (int(count.group(1)), int(size.group(1)) if size else None)
    return {"hits": hits, "sets": sets}


def read_state(run=run_command, netlink=Netlink, nft="nft"):
    """The first loaded guard, in egress_guard_info's order; None without any."""
    return read_nft(run, netlink, nft) or read_iptables(run)


# --- output -------------------------------------------------------------------------

def _fmt(value):
    if isinstance(value, float):
        return "%.6g" % value
    return str(int(value))


def render(state, now=None, took=None, inbound=None):
    """Prometheus text format; `state` is read_state()'s result, or None without a
    guard; `inbound` read_inbound()'s."""
    samples = {name: [] for name in HELP}
    if inbound is not None:
        for limit in sorted(inbound["hits"]):
            samples["torexit_inbound_dos_hits_total"].append(('{limit="%s"}' % limit, inbound["hits"][limit]))
        for name in sorted(inbound["sets"]):
            elements, size = inbound["sets"][name]
            if name.startswith("dos_blocked_"):
                samples["torexit_inbound_dos_blocked_sources"].append(('{family="%s"}' % name[-2:], elements))
            if size:
                samples["torexit_inbound_dos_set_fill_ratio"].append(('{set="%s"}' % name, float(elements) / size))
    if state is None:
        samples["torexit_guard_up"].append(("", 0))
    else:
        samples["torexit_guard_up"].append(("", 1))
        if state.get("backend") in BACKENDS:
            samples["torexit_guard_backend_info"].append(('{backend="%s"}' % state["backend"], 1))
        if state["digest"] and re.match(r"^[0-9a-f]+$", state["digest"]):
            samples["torexit_guard_policy_info"].append(('{digest="%s"}' % state["digest"], 1))
        counters = state["counters"]
        if "guarded_new" in counters:
            samples["torexit_guard_new_connections_total"].append(("", counters["guarded_new"]))
        if "allowed" in counters:
            samples["torexit_guard_allowed_total"].append(("", counters["allowed"]))
        for reason in BLOCK_REASONS:
            if "blocked_" + reason in counters:
                samples["torexit_guard_blocked_total"].append(
                    ('{detector="%s"}' % reason, counters["blocked_" + reason]))
        for det in DETECTORS:
            if "detect_" + det in counters:
                samples["torexit_guard_detections_total"].append(
                    ('{detector="%s"}' % det, counters["detect_" + det]))
        if "seen_full" in counters:
            samples["torexit_guard_seen_full_total"].append(("", counters["seen_full"]))
        if "psweep_failed" in counters:
            samples["torexit_guard_psweep_failed_total"].append(("", counters["psweep_failed"]))
        for name in sorted(state["sets"]):
            elements, size = state["sets"][name]
            label = '{set="%s"}' % name
            if name.startswith("ban_"):
                samples["torexit_guard_bans"].append((label, elements))
            elif name.startswith("optout_"):
                samples["torexit_guard_optouts"].append((label, elements))
            if size:
                samples["torexit_guard_set_fill_ratio"].append((label, float(elements) / size))
    if now is not None:
        samples["torexit_guard_last_run_timestamp_seconds"].append(("", int(now)))
    if took is not None:
        samples["torexit_guard_exporter_duration_seconds"].append(("", float(took)))
    out = []
    for name in HELP:
        if not samples[name]:
            continue
        out.append("# HELP %s %s" % (name, HELP[name]))
        out.append("# TYPE %s %s" % (name, TYPES[name]))
        out.extend("%s%s %s" % (name, labels, _fmt(value)) for labels, value in samples[name])
    return "\n".join(out) + "\n"


def write_atomic(path, text, mode=0o644):
    """Write `text` to `path` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None, run=run_command, netlink=Netlink):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True,
                        help="the .prom file, e.g. /var/lib/prometheus/node-exporter/torexit_guard.prom")
    parser.add_argument("--nft", default="nft", help="the nft command")
    args = parser.parse_args(argv)
    if not args.output.endswith(".prom"):
        parser.error("--output must end in .prom (node_exporter reads only those): %s" % args.output)
    start = time.monotonic()
    try:
        state = read_state(run, netlink, args.nft)
    except (ReadError, OSError, ValueError) as exc:
        print("torexit_guard_metrics: %s" % exc, file=sys.stderr)
        return 1
    inbound = read_inbound(run, netlink, args.nft) or read_inbound_xt(run)
    write_atomic(args.output, render(state, now=time.time(), took=time.monotonic() - start, inbound=inbound))
    return 0


if __name__ == "__main__":
    sys.exit(main())
