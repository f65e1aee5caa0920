# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the bench compares: (name, apply, remove, state) entries.

A variant is applied in the relay namespace before its scenarios run and
removed afterwards; the lab then flushes iptables and conntrack anyway.
`state` reports the kernel state the variant keeps (entries, caps, bytes).
To add a variant, append a Variant to VARIANTS (the guard's backends are
guard("nftables"), guard("iptables") and guard("ufw")).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Callable

import ufwlab

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
GUARD_MODULE = os.path.join(TOP, "plugins", "modules", "egress_guard.py")
GUARD_TABLE = ("inet", "torexit_guard")


@dataclass
class Variant:
    name: str
    apply: Callable
    remove: Callable
    state: Callable = field(default=lambda lab, count=True: {})
    is_guard: bool = False   # targets apply to guard variants only
    fill: bool = False       # run the 200,000-destination state scenario
    # toggles(lab) -> (on, off): cheap ways to switch the applied variant off and
    # back on, so the CPU scenario can interleave with/without measurements
    toggles: Callable = None


# --- none ------------------------------------------------------------------------
def _nothing(lab):
    return None


# --- seeds (iptables-nft inside the relay namespace) ------------------------------
def _restore(path):
    def apply(lab):
        with open(path) as f:
            lab.ns(lab.relay, "iptables-restore", inp=f.read())
    return apply


def _proc_lines(lab, pattern_dir, names=None):
    r = lab.ns(lab.relay, "sh", "-c", "cd %s 2>/dev/null && wc -l -- *" % pattern_dir, check=False)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] != "total":
            out[parts[1]] = int(parts[0])
    return out


def _restore_toggles(path):
    def toggles(lab):
        return _restore(path), lambda lab: lab.reset_relay()
    return toggles


def _hashlimit_state(lab, count=True):
    entries = _proc_lines(lab, "/proc/net/ipt_hashlimit")
    # hashlimit's default htable-max is 8 x htable-size; size is set from RAM, at most 8192.
    return {"kind": "hashlimit", "sets": {k: {"elements": v, "cap": 8 * 8192} for k, v in entries.items()},
            "elements": sum(entries.values()), "bytes_est": sum(entries.values()) * 128}


def _recent_state(lab, count=True):
    entries = _proc_lines(lab, "/proc/net/xt_recent")
    # xt_recent keeps at most ip_list_tot (default 100) addresses per list and
    # ip_pkt_list_tot (default 20) time stamps per address.
    return {"kind": "xt_recent", "sets": {k: {"elements": v, "cap": 100} for k, v in entries.items()},
            "elements": sum(entries.values()), "bytes_est": sum(entries.values()) * (64 + 20 * 8)}


# --- the collection's guard ---------------------------------------------------------
def _ansible(lab, args, ufw=None):
    """Run the guard module in the relay namespace; with ufw=(tmp, etc) inside the
    private mount namespace that holds the lab's copies of ufw's files."""
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
               ANSIBLE_NOCOLOR="1")
    cmd = [os.path.join(TOP, ".venv", "bin", "ansible"), "localhost", "-c", "local",
           "-m", "torexit.hardening.egress_guard", "-a", args]
    if ufw:
        r = ufwlab.inside(lab.relay, *ufw, shlex.join(cmd), env=env)
    else:
        r = subprocess.run(["ip", "netns", "exec", lab.relay] + cmd, capture_output=True, text=True, env=env,
                           timeout=180, check=False)
    if r.returncode != 0:
        raise RuntimeError("egress_guard %s failed (rc %d): %s" % (args, r.returncode, (r.stdout + r.stderr)[-1500:]))
    return r.stdout


def elem_bytes(set_obj):
    """Estimated kernel bytes per element of an nftables set: key (4-byte
    registers), extension header, timeout/expiration, stateful expressions,
    rhash linkage; rounded up to the kmalloc size class it lands in."""
    keys = set_obj.get("type")
    keys = keys if isinstance(keys, list) else [keys]
    key = sum({"ipv4_addr": 4, "ipv6_addr": 16, "inet_service": 4}.get(k, 16) for k in keys)
    size = 32 + key + (16 if "timeout" in set_obj.get("flags", []) or set_obj.get("timeout") else 0)
    size += 48 * len(set_obj.get("stmt", []))
    for cls in (32, 64, 96, 128, 192, 256, 512, 1024):
        if size <= cls:
            return cls
    return size


def count_elements(listing):
    """{set name: element count} from the text of `nft list table` (the JSON
    output of hundreds of thousands of elements takes minutes to produce)."""
    counts, name, inside, n = {}, None, False, 0
    for line in listing.splitlines():
        t = line.strip()
        if t.startswith("set ") and t.endswith("{"):
            name, inside, n = t.split()[1], False, 0
            counts[name] = 0
            continue
        if name is None:
            continue
        if t.startswith("elements = {"):
            inside = True
            t = t[len("elements = {"):]
        if inside:
            body = t.rstrip("}").strip() if t.endswith("}") else t
            if body:
                n += body.count(",") + (0 if body.endswith(",") else 1)
            if t.endswith("}"):
                counts[name], inside = n, False
        if t == "}" and not inside:
            name = None
    return counts


def _guard_state(lab, count=True):
    fam, table = GUARD_TABLE
    # terse (-t): definitions and counters without set elements, fast at any size
    r = lab.ns(lab.relay, "nft", "-t", "-j", "list", "table", fam, table, check=False)
    if r.returncode != 0:
        return {"kind": "nftables", "error": "table %s %s missing" % GUARD_TABLE}
    objs = json.loads(r.stdout)["nftables"]
    # counting elements means listing them: over a minute with 600,000 elements
    counts = count_elements(lab.ns(lab.relay, "nft", "list", "table", fam, table, timeout=300).stdout) \
        if count else {}
    sets, total, total_cap, uncapped = {}, 0, 0, []
    for item in objs:
        s = item.get("set")
        if not s:
            continue
        per = elem_bytes(s)
        dynamic = "dynamic" in s.get("flags", []) or "timeout" in s.get("flags", [])
        cap = s.get("size")
        if dynamic and not cap:
            uncapped.append(s["name"])
        n = counts.get(s["name"], 0)
        sets[s["name"]] = {"elements": n if count else None, "cap": cap, "bytes_per_elem": per, "dynamic": dynamic}
        total += n * per
        if dynamic:
            total_cap += (cap or 0) * per
    counters = {i["counter"]["name"]: i["counter"]["packets"] for i in objs if "counter" in i}
    return {"kind": "nftables", "sets": sets, "counters": counters,
            "elements": sum(counts.values()) if count else None,
            "dynamic_sets": sum(1 for v in sets.values() if v["dynamic"]),
            "bytes_est": total, "cap_bytes_est": total_cap, "uncapped_dynamic_sets": uncapped}


def _ipset_state(lab, count=True):
    """ipset reports entries, maxelem and memory itself (`ipset list -t`)."""
    r = lab.ns(lab.relay, "ipset", "list", "-t", check=False)
    sets, name = {}, None
    for line in r.stdout.splitlines():
        key, _sep, val = line.partition(":")
        val = val.strip()
        if key == "Name":
            name = val
            sets[name] = {"elements": 0, "cap": None, "bytes": 0}
        elif name and key == "Header" and "maxelem" in val:
            words = val.split()
            sets[name]["cap"] = int(words[words.index("maxelem") + 1])
            sets[name]["dynamic"] = "timeout" in val
            if "hashsize" in words and "bucketsize" in words:
                # the kernel never grows a hash set on adds from the packet path
                # (iptables' SET target): there it holds at most hashsize x bucketsize
                sets[name]["kernel_add_limit"] = (int(words[words.index("hashsize") + 1])
                                                  * int(words[words.index("bucketsize") + 1]))
        elif name and key == "Header" and "range" in val:
            # bitmap:port: one bit per port of the range, a fixed size (static here)
            lo, _sep, hi = val.split("range")[1].split()[0].partition("-")
            sets[name]["cap"] = int(hi or lo) - int(lo) + 1
            sets[name]["dynamic"] = "timeout" in val
        elif name and key == "Size in memory":
            sets[name]["bytes"] = int(val)
        elif name and key == "Number of entries":
            sets[name]["elements"] = int(val)
    at_limit = sorted(k for k, v in sets.items() if v.get("kernel_add_limit") and v["elements"] >= v["kernel_add_limit"]
                      and v["kernel_add_limit"] < (v["cap"] or 0))
    return {"kind": "ipset", "sets": sets, "elements": sum(v["elements"] for v in sets.values()),
            "at_kernel_add_limit": at_limit,
            "bytes": sum(v["bytes"] for v in sets.values()),
            "dynamic_sets": sum(1 for v in sets.values() if v.get("dynamic")),
            "uncapped_dynamic_sets": [k for k, v in sets.items() if not v["cap"]]}


def _iptables_state(lab, count=True):
    """The iptables and ufw backends: ipsets plus the entries of their hashlimit tables."""
    st = _ipset_state(lab)
    hl = _proc_lines(lab, "/proc/net/ipt_hashlimit")
    hl.update({k + " (v6)": v for k, v in _proc_lines(lab, "/proc/net/ip6t_hashlimit").items()})
    st["hashlimit_entries"] = sum(hl.values())
    # packet counters of the rules the module tags with a counter name (e.g. seen_full)
    counters = {}
    for tool in ("iptables-save", "ip6tables-save"):
        for line in lab.ns(lab.relay, tool, "-c", "-t", "filter", check=False).stdout.splitlines():
            m = re.match(r'\[(\d+):\d+\] .* --comment (?:"([^"]*)"|(\S+))', line)
            if m and " " not in (m.group(2) or m.group(3)):
                name = m.group(2) or m.group(3)
                counters[name] = counters.get(name, 0) + int(m.group(1))
    st["counters"] = counters
    return st


def _filter_tables(lab, snapshot):
    """Make the relay namespace's iptables/ip6tables filter tables exactly `snapshot`
    ({"iptables": text, "ip6tables": text} from *-save -t filter); an empty text
    means an empty table."""
    for tool, text in snapshot.items():
        lab.ns(lab.relay, tool, "-t", "filter", "-F", check=False)
        lab.ns(lab.relay, tool, "-t", "filter", "-X", check=False)
        if text.strip():
            lab.ns(lab.relay, tool + "-restore", inp=text)


def _filter_snapshot(lab):
    return {tool: lab.ns(lab.relay, tool + "-save", "-t", "filter").stdout for tool in ("iptables", "ip6tables")}


def guard(backend="nftables", extra=""):
    # persist=false: the namespace shares the host's file system, and the lab must
    # never install boot-time units or rulesets on the host running the bench (the
    # ufw backend would also write /etc/torexit and a systemd unit with persist=true).
    args = "state=present backend=%s mode=enforce owner=any persist=false %s" % (backend, extra)
    # ufw: (tmp, etc) of the lab copies of ufw's files while the variant is applied;
    # before: the filter tables without the guard (ufw's own rules for ufw, else empty)
    ctx = {"ufw": None, "before": None}

    def apply(lab):
        if not os.path.exists(GUARD_MODULE):
            raise RuntimeError("the guard module %s does not exist (yet): cannot apply variant"
                               % os.path.relpath(GUARD_MODULE, TOP))
        if backend == "ufw":
            # ufw keeps its rules in /etc/ufw, which a network namespace shares with
            # the host: ufw and the module run in a private mount namespace over
            # lab copies of its files (tests/bench/ufwlab.py); ufw is enabled in the
            # relay namespace only.
            if not ufwlab.available():
                raise RuntimeError("ufw is not installed on this machine")
            ctx["ufw"] = ufwlab.copies(prefix=lab.prefix + "ufw-")
            r = ufwlab.inside(lab.relay, *ctx["ufw"], "ufw --force enable")
            if r.returncode != 0:
                raise RuntimeError("ufw --force enable in %s failed: %s" % (lab.relay, (r.stdout + r.stderr)[-800:]))
        if backend != "nftables":
            ctx["before"] = _filter_snapshot(lab)
        _ansible(lab, args.strip(), ufw=ctx["ufw"])
        if backend == "ufw":
            hook = "-A ufw-before-output -j TOREXIT-UFW-GUARD"
            if hook not in lab.ns(lab.relay, "iptables-save", "-t", "filter").stdout:
                raise RuntimeError("the guard is not hooked into the running ufw (%r missing)" % hook)

    def remove(lab):
        try:
            if os.path.exists(GUARD_MODULE) and (backend != "ufw" or ctx["ufw"]):
                _ansible(lab, "state=absent backend=%s persist=false" % backend, ufw=ctx["ufw"])
        finally:
            if ctx["ufw"]:
                ufwlab.inside(lab.relay, *ctx["ufw"], "ufw disable")
                ufwlab.remove(ctx["ufw"][0])
                ctx["ufw"] = None

    def toggles(lab):
        """on: the rules exactly as the module loaded them, without state; off: the
        same namespace without the guard (for ufw: ufw still enabled)."""
        if backend == "nftables":
            fam, table = GUARD_TABLE
            snap = lab.ns(lab.relay, "nft", "-s", "list", "table", fam, table).stdout

            def on(lab):
                lab.ns(lab.relay, "nft", "-f", "-", inp=snap)

            def off(lab):
                lab.ns(lab.relay, "nft", "delete", "table", fam, table)
            return on, off
        after = _filter_snapshot(lab)
        # sets whose entries are state (first contacts, bans): emptied at each
        # switch-on, as the nftables table is reloaded without its elements
        dynamic = [line.split()[1] for line in lab.ns(lab.relay, "ipset", "save").stdout.splitlines()
                   if line.startswith("create torexit_") and " timeout " in line]

        def on(lab):
            _filter_tables(lab, after)
            for name in dynamic:
                lab.ns(lab.relay, "ipset", "flush", name)

        def off(lab):
            _filter_tables(lab, ctx["before"])
        return on, off

    name = "guard" if backend == "nftables" else "guard-" + backend
    state = _guard_state if backend == "nftables" else _iptables_state
    return Variant(name, apply, remove, state, is_guard=True, fill=True, toggles=toggles)


SEED_HASHLIMIT = os.path.join(HERE, "seeds", "seed-hashlimit.rules")
SEED_RECENT = os.path.join(HERE, "seeds", "seed-recent.rules")
NONE = Variant("none", _nothing, _nothing, fill=True)
VARIANTS = [
    NONE,
    Variant("seed-hashlimit", _restore(SEED_HASHLIMIT), _nothing, _hashlimit_state,
            toggles=_restore_toggles(SEED_HASHLIMIT)),
    Variant("seed-recent", _restore(SEED_RECENT), _nothing, _recent_state, toggles=_restore_toggles(SEED_RECENT)),
    guard("nftables"),
    guard("iptables"),
    guard("ufw"),
]
QUICK_VARIANTS = [NONE, VARIANTS[3]]
EXTRA_VARIANTS = []
