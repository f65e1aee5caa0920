# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the bench compares: (name, apply, remove, state) entries.

A variant is applied in the relay namespace before its scenarios run and
removed afterwards; the lab then flushes iptables and conntrack anyway.
`state` reports the kernel state the variant keeps (entries, caps, bytes).
To add a variant, append a Variant to VARIANTS (or call guard(...) with
another backend, e.g. guard("iptables") once the module supports it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

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
def _ansible(lab, args):
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
               ANSIBLE_NOCOLOR="1")
    cmd = ["ip", "netns", "exec", lab.relay, os.path.join(TOP, ".venv", "bin", "ansible"),
           "localhost", "-c", "local", "-m", "torexit.hardening.egress_guard", "-a", args]
    import subprocess
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, check=False)
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
            sets[name]["cap"] = int(val.split("maxelem")[1].split()[0])
        elif name and key == "Size in memory":
            sets[name]["bytes"] = int(val)
        elif name and key == "Number of entries":
            sets[name]["elements"] = int(val)
    return {"kind": "ipset", "sets": sets, "elements": sum(v["elements"] for v in sets.values()),
            "bytes": sum(v["bytes"] for v in sets.values()), "dynamic_sets": len(sets),
            "uncapped_dynamic_sets": [k for k, v in sets.items() if not v["cap"]]}


def guard(backend="nftables", extra=""):
    # persist=false: the namespace shares the host's file system, and the lab must
    # never install boot-time units or rulesets on the host running the bench.
    args = "state=present backend=%s mode=enforce owner=any persist=false %s" % (backend, extra)

    def apply(lab):
        if not os.path.exists(GUARD_MODULE):
            raise RuntimeError("the guard module %s does not exist (yet): cannot apply variant"
                               % os.path.relpath(GUARD_MODULE, TOP))
        if backend == "ufw":
            # ufw keeps its rules in /etc/ufw, which a network namespace shares with
            # the host: applying it here would rewrite the host's own firewall files.
            raise RuntimeError("backend=ufw needs a private /etc (container or mount namespace); "
                               "the bench refuses to touch the host's /etc/ufw")
        _ansible(lab, args.strip())

    def remove(lab):
        if os.path.exists(GUARD_MODULE) and backend != "ufw":
            _ansible(lab, "state=absent backend=%s" % backend)

    def toggles(lab):
        """The table exactly as the module loaded it, without state."""
        fam, table = GUARD_TABLE
        snap = lab.ns(lab.relay, "nft", "-s", "list", "table", fam, table).stdout

        def on(lab):
            lab.ns(lab.relay, "nft", "-f", "-", inp=snap)

        def off(lab):
            lab.ns(lab.relay, "nft", "delete", "table", fam, table)
        return on, off

    name = "guard" if backend == "nftables" else "guard-" + backend
    state = {"nftables": _guard_state, "iptables": _ipset_state}.get(backend, lambda lab, count=True: {})
    return Variant(name, apply, remove, state,
                   is_guard=True, fill=True, toggles=toggles if backend == "nftables" else None)


SEED_HASHLIMIT = os.path.join(HERE, "seeds", "seed-hashlimit.rules")
SEED_RECENT = os.path.join(HERE, "seeds", "seed-recent.rules")
NONE = Variant("none", _nothing, _nothing, fill=True)
VARIANTS = [
    NONE,
    Variant("seed-hashlimit", _restore(SEED_HASHLIMIT), _nothing, _hashlimit_state,
            toggles=_restore_toggles(SEED_HASHLIMIT)),
    Variant("seed-recent", _restore(SEED_RECENT), _nothing, _recent_state, toggles=_restore_toggles(SEED_RECENT)),
    guard("nftables"),
]
QUICK_VARIANTS = [NONE, guard("nftables")]
# not in the default run (time budget); select with --variant guard-iptables
EXTRA_VARIANTS = [guard("iptables"), guard("ufw")]
