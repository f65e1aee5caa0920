# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench's inbound rows (issue 18): a connection flood on the ORPort while relays
and ordinary clients connect, against the firewall role's inbound rules as rendered
from its templates with the role's defaults as they are on this checkout, in one
run: "no protection" (nftables, firewall_inbound_dos_mode: absent), "protected
(nftables)" (inbound.nft.j2) and "protected (iptables)" (inbound.iptables.j2 with
dos.rules.j2 and the ipsets of inbound-dos.ipset.j2; the ufw backend loads the same
dos.rules.j2 chains and ipsets from ufw's before.rules, so this column stands for it
too). CPU per new connection on/off for each backend against its own rules without
the DoS chain.

    bench.py --scenario inbound      (run.sh passes it on; about 2 minutes)

Lab: tests/integration/netlab.Lab as PREFIX-in-r (relay: the role's rules, a
listener on ORPort 9001 that holds what it accepts) and PREFIX-in-n (the internet:
owns 198.18.0.0/15, 2001:db8:1::/48 and 2001:db8:2::/48, every source below is an
address there; the flood's IPv6 sources share 2001:db8:1::/48, the ordinary IPv6
clients come from 2001:db8:2::/48).
Counts are made by the connecting side per group; no address is written anywhere.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import inbound_lab as IL  # noqa: E402
from netlab import V4_LINK, V6_LINK, Lab  # noqa: E402

ORPORT = 9001
LOAD = os.path.join(HERE, "inbound_load.py")
# state: (backend, firewall_inbound_dos_mode, label); every one is the role's template rendered with its defaults
STATES = {"off": ("nftables", "absent", "no protection"),
          "on": ("nftables", "enforce", "protected (nftables)"),
          "xt-off": ("iptables", "absent", "no protection (iptables)"),
          "xt-on": ("iptables", "enforce", "protected (iptables)")}
FLOOD_STATES = ("off", "on", "xt-on")     # the table's columns: one flood run each
PROTECTED = (("nftables", "on", "off"), ("iptables", "xt-on", "xt-off"))   # (backend, on state, off state)
FLOOD_S = 20            # pace of every group; the client stops everything after LIMIT_S
LIMIT_S = 40
TIMEOUT_S = 3.0
CPU_ROUNDS, CPU_CONNS = 7, 4000
CLIENTS_V6 = "2001:db8:2::/48"
CPU_V6 = "2001:db8:100::/40"
N_RELAYS = 2000         # relays in the consensus the refresh script loads
FLOOD_GROUPS = ("heavy_v4", "heavy_v6_64", "light_v4", "light_v6")
LABELS = {
    "heavy_v4": "heavy IPv4: 4 sources, 400 connects each at 20/s, held 5 s",
    "heavy_v6_64": "heavy IPv6 /64: 16 addresses of one /64, 50 connects each at 2.5/s (800), held 5 s",
    "light_v4": "light IPv4: 200 sources, 20 connects each at 1/s, held 5 s",
    "light_v6": "light IPv6: 100 sources (one /64 each), 20 connects each at 1/s, held 5 s",
    "clients": "ordinary clients: 300 IPv4 + 100 IPv6 sources, 2 connections each 8 s apart, held 3 s",
    "neighbours": "clients inside the light flood's networks (its IPv4 /24, its IPv6 /48): 20 IPv4 + 10 IPv6 "
                  "sources, 2 connections each 8 s apart, held 3 s",
    "relays": "relays of the consensus: 10 IPv4 + 10 IPv6, 40 connects each at 2/s, held 10 s (~20 open each)",
}


def v4(base, i):
    """i-th address of a block of 198.18.0.0/15 starting at 198.18.BASE.1 (250 per /24)."""
    return "198.18.%d.%d" % (base + i // 250, i % 250 + 1)


def relay_addrs(i):
    return "198.19.%d.%d" % (i // 250, i % 250 + 1), "2001:db8:1:%x::1" % (0xf000 + i)


def consensus():
    lines = ["network-status-version 3 microdesc"]
    for i in range(N_RELAYS):
        a4, a6 = relay_addrs(i)
        lines += ["r relay%d AAAA%d 2026-11-23 12:00:00 %s 9001 0" % (i, i, a4), "a [%s]:9001" % a6]
    return "\n".join(lines) + "\n"


def flood_spec(seed=18):
    rnd = random.Random(seed)

    def start(spread):
        return round(rnd.uniform(0, spread), 3)
    groups = {
        "heavy_v4": [["198.18.10.%d" % i, 400, 20.0, 5.0, start(0.5)] for i in range(1, 5)],
        "heavy_v6_64": [["2001:db8:1:10::%x" % i, 50, 2.5, 5.0, start(0.5)] for i in range(1, 17)],
        "light_v4": [[v4(100, i), 20, 1.0, 5.0, start(1.0)] for i in range(200)],
        "light_v6": [["2001:db8:1:%x::1" % (0x1000 + i), 20, 1.0, 5.0, start(1.0)] for i in range(100)],
        "clients": [[v4(120, i), 2, 0.125, 3.0, start(4.0)] for i in range(300)]
        + [["2001:db8:2:%x::1" % (0x2000 + i), 2, 0.125, 3.0, start(4.0)] for i in range(100)],
        "neighbours": [[v4(100, 220 + i), 2, 0.125, 3.0, start(4.0)] for i in range(20)]
        + [["2001:db8:1:%x::1" % (0x3000 + i), 2, 0.125, 3.0, start(4.0)] for i in range(10)],
        "relays": [[relay_addrs(i)[i % 2], 40, 2.0, 10.0, start(0.5)] for i in range(20)],
    }
    return {"dst4": V4_LINK[0], "dst6": V6_LINK[0], "port": ORPORT, "timeout": TIMEOUT_S, "limit_s": LIMIT_S,
            "groups": groups}


def cpu_sources(n):
    """n sources (half IPv4, half IPv6 /64s), 50 per IPv4 /24 and per IPv6 /48 (under the
    per-network burst of 60, so every connect is accepted in both states). The same
    every round: load() starts every round with empty sets and conntrack, so each one
    is a first contact, for its network too."""
    return ["198.18.%d.%d" % (130 + k // 100, k // 2 % 50 + 1) if k % 2 == 0
            else "2001:db8:%x:%x::1" % (0x100 + k // 100, k // 2 % 50) for k in range(n)]


def wait_closed(lab, tries=150):
    """Wait (at most tries x 0.1 s) until the listener has closed every connection of the
    previous state. Otherwise a late packet of one (the client's ACK of the listener's FIN)
    comes after the conntrack flush below and is picked up as a new connection (ct state
    new): rules that count every new packet, not only SYNs, would count it against its
    source (with a burst of 1 its next connect then blocked it, seen in a CPU round).
    Returns the connections still open (0 when all closed)."""
    left = 0
    for _attempt in range(tries):
        out = lab.ns(lab.relay, "ss", "-tanH", "sport = :%d" % ORPORT, check=False).stdout
        left = sum(1 for ln in out.splitlines() if ln.strip() and ln.split()[0] not in ("LISTEN", "TIME-WAIT"))
        if not left:
            return 0
        time.sleep(0.1)
    return left


def load(lab, files, state, res=None):
    """Load one state in the relay namespace after removing whatever the previous one
    loaded (the nftables table; the iptables chains, ipsets and hashlimit tables): every
    state starts with empty sets and meters. Refill the relay sets, forget the previous
    state's connections once the listener closed them all."""
    backend, mode, _label = STATES[state]
    left = wait_closed(lab)
    if left and res is not None:
        res["unclosed"] = res.get("unclosed", 0) + left
    lab.ns(lab.relay, "nft", "delete", "table", *IL.TABLE, check=False)
    IL.unload_xt(lab)
    # iptables-nft leaves its (now empty) base chains: drop them too, so no state pays for another's hooks
    for family in ("ip", "ip6"):
        lab.ns(lab.relay, "nft", "delete", "table", family, "filter", check=False)
    if backend == "nftables":
        lab.ns(lab.relay, "nft", "-f", files[state])
        if mode != "absent":
            IL.load_relays(lab, files["dir"], consensus())
    else:
        IL.load_xt(lab, files[state])
        if mode != "absent":
            IL.load_relays_xt(lab, files["dir"], consensus())
    lab.ns(lab.relay, "conntrack", "-F", check=False)


def state_info(lab, state):
    """The protected state's counters, block-set and relay-set sizes (counts only)."""
    xt = STATES[state][0] == "iptables"
    size = IL.set_size_xt if xt else IL.set_size
    return {"counters": (IL.counters_xt if xt else IL.counters)(lab),
            "blocked": {"v4": size(lab, "dos_blocked_v4"), "v6": size(lab, "dos_blocked_v6")},
            "relays_loaded": size(lab, "relays_v4") + size(lab, "relays_v6")}


def listen_drops(lab):
    """The relay namespace's TcpExt ListenOverflows + ListenDrops (SYNs the listener's
    full queue dropped: failures that are the busy machine's, not the rules')."""
    lines = [ln.split() for ln in lab.ns(lab.relay, "cat", "/proc/net/netstat").stdout.splitlines()
             if ln.startswith("TcpExt:")]
    if len(lines) < 2:
        return 0
    row = dict(zip(lines[0][1:], lines[1][1:]))
    return int(row.get("ListenOverflows", 0)) + int(row.get("ListenDrops", 0))


def client(lab, mode, spec, timeout):
    proc = lab.ns(lab.net, sys.executable, LOAD, mode, "-", input=json.dumps(spec), timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError("inbound_load.py %s failed (exit %d): %s" % (mode, proc.returncode, proc.stderr[-1500:]))
    return json.loads(proc.stdout)


def measure(lab, files, log):
    res = {"flood": {}, "cpu": {b: {"on": [], "off": []} for b, _on, _off in PROTECTED}, "state": {}}
    for state in FLOOD_STATES:
        load(lab, files, state, res)
        t, d0 = time.monotonic(), listen_drops(lab)
        res["flood"][state] = client(lab, "flood", flood_spec(), LIMIT_S + 30)
        res["flood"][state]["_listen_drops"] = listen_drops(lab) - d0
        if state != "off":
            res["state"][state] = state_info(lab, state)
        log("  inbound flood, %-5s (%s) %5.1f s" % (state, STATES[state][2], time.monotonic() - t))
        time.sleep(1)
    # CPU per connection, for each backend: paired rounds (its off and on state), the order
    # alternating, the backends' order alternating every second round, fresh sets every time
    for rnd in range(CPU_ROUNDS):
        for backend, on, off in (PROTECTED if rnd // 2 % 2 == 0 else PROTECTED[::-1]):
            pair = {}
            for key, state in ((("off", off), ("on", on)) if rnd % 2 == 0 else (("on", on), ("off", off))):
                load(lab, files, state, res)
                spec = {"dst4": V4_LINK[0], "dst6": V6_LINK[0], "port": ORPORT, "timeout": TIMEOUT_S,
                        "limit_s": 60, "concurrency": 64, "sources": cpu_sources(CPU_CONNS)}
                d0 = listen_drops(lab)
                try:
                    pair[key] = dict(client(lab, "cpu", spec, 90), listen_drops=listen_drops(lab) - d0)
                except RuntimeError as exc:    # keep the flood rows; the CPU row says what failed
                    res["cpu_errors"] = res.get("cpu_errors", []) + ["%s round %d %s: %s" % (backend, rnd, key, exc)]
                    log("  inbound cpu, %s round %d %s failed: %s" % (backend, rnd, key, exc))
            if len(pair) == 2:
                for key, value in pair.items():
                    res["cpu"][backend][key].append(value)
    log("  inbound cpu, paired rounds: %s" % ", ".join("%s %d" % (b, len(res["cpu"][b]["on"])) for b, _o, _f in PROTECTED))
    return res


# --- the table -------------------------------------------------------------------------
def pct(a, b):
    return 100.0 * a / b if b else None


def cell(r, g):
    """A group's count in one flood run: ok/attempts (share)."""
    x = r[g]
    p = pct(x["ok"], x["attempts"])
    return "%d/%d (%.2f%%)" % (x["ok"], x["attempts"], p) if p is not None else "n/a"


def cpu_cols(s):
    """CPU row cells of one backend from its paired rounds: (off cell, on cell, ratio, failed, drops) or None."""
    if not (s["on"] and s["off"]):
        return None
    ratio = statistics.median(a["proc_us"] / b["proc_us"] for a, b in zip(s["on"], s["off"]))
    med = {st: "%.0f µs (kernel %.0f µs)" % (statistics.median(x["proc_us"] for x in s[st]),
                                             statistics.median(x["sys_us"] for x in s[st])) for st in ("on", "off")}
    failed = sum(x["failed"] for st in ("on", "off") for x in s[st])
    drops = sum(x.get("listen_drops", 0) for st in ("on", "off") for x in s[st])
    return med["off"], med["on"], ratio, failed, drops


def rows(res):
    """The table: per row the no-protection cell ("off") and, per backend, the protected
    column's cell, the value checked, its pass (None: shown only)."""
    fl = res["flood"]
    off = fl["off"]
    out = []
    cols = [(b, fl[on]) for b, on, _off in PROTECTED if on in fl]

    def row(key, label, off_cell, target, col):
        out.append({"key": key, "label": label, "off": off_cell, "target": target,
                    "cols": {b: dict(zip(("cell", "value", "pass"), col(b, r))) for b, r in cols}})

    for g in FLOOD_GROUPS:
        def share(_b, r, g=g):
            rel = pct(r[g]["ok"], off[g]["ok"])
            return "%s, %s" % (cell(r, g), "%.2f%% of no protection" % rel if rel is not None else "n/a"), rel, None
        row(g, LABELS[g] + ": accepted", cell(off, g), "shown", share)

    def total(r):
        return sum(r[g]["ok"] for g in FLOOD_GROUPS), sum(r[g]["attempts"] for g in FLOOD_GROUPS)

    def flood(_b, r):
        rel = pct(total(r)[0], total(off)[0])
        return ("%d/%d, %s" % (total(r) + ("%.2f%% of no protection" % rel if rel is not None else "n/a",)), rel,
                rel is not None and rel <= 5.0)
    row("flood", "flood total (the four groups above): accepted, protected as % of no protection",
        "%d/%d" % total(off), "≤ 5%", flood)
    for g, target, bound in (("clients", "≥ 99.9%", 99.9), ("relays", "100%", 100.0)):
        def ok(_b, r, g=g, bound=bound):
            p = pct(r[g]["ok"], r[g]["attempts"])
            return cell(r, g), p, p is not None and p >= bound and r[g]["attempts"] > 0
        row(g, LABELS[g] + ": succeeded", cell(off, g), target, ok)
    g = "neighbours"
    if g in off:
        row(g, LABELS[g] + ": succeeded (they share a flooding network)", cell(off, g), "shown",
            lambda _b, r: (cell(r, g), pct(r[g]["ok"], r[g]["attempts"]), None))
    cpu = {b: cpu_cols(res["cpu"][b]) for b, _on, _off in PROTECTED}
    if any(cpu.values()):
        n = {b: len(res["cpu"][b]["on"]) for b in cpu}
        out.append({"key": "cpu", "label": "CPU per new connection (connecting side, user + kernel: the relay's "
                    "input hook runs in its softirq), paired rounds (nftables %d, iptables %d) × %d fresh sources "
                    "(half IPv6), order alternating; no protection = each backend's own rules without the DoS "
                    "chain" % (n["nftables"], n["iptables"], CPU_CONNS),
                    "off": "; ".join("%s %s" % (b, c[0]) for b, c in cpu.items() if c), "target": "reported",
                    "cols": {b: {"cell": "%s, %.2f× on/off (median of per-round ratios); %d connects failed, "
                                 "listener queue drops %d" % (c[1], c[2], c[3], c[4]),
                                 "value": c[2],
                                 "pass": c[3] == 0 and not any(e.startswith(b) for e in res.get("cpu_errors", []))}
                             if c else {"cell": "n/a", "value": None, "pass": False} for b, c in cpu.items()}})
    if res.get("cpu_errors"):
        out.append({"key": "cpu_errors", "label": "CPU rounds that failed (left out above)", "off": "",
                    "target": "none",
                    "cols": {b: {"cell": "; ".join(e.replace("|", "/").replace("\n", " ")[:300]
                                                   for e in res["cpu_errors"] if e.startswith(b)),
                                 "value": sum(e.startswith(b) for e in res["cpu_errors"]),
                                 "pass": not any(e.startswith(b) for e in res["cpu_errors"])}
                             for b, _on, _off in PROTECTED}})
    return out


def markdown(table, res, meta):
    names = [b for b, _on, _off in PROTECTED]
    head = ("| group | no protection | %s | target | %s |\n|---|---|%s---|%s\n"
            % (" | ".join("protected (%s)" % b for b in names), " | ".join("pass (%s)" % b for b in names),
               "---|" * len(names), "---|" * len(names)))

    def verdict(c):
        return "" if c is None else "-" if c["pass"] is None else ("PASS" if c["pass"] else "**FAIL**")
    body = "".join("| %s | %s | %s | %s | %s |\n" % (
        r["label"], r["off"], " | ".join(r["cols"].get(b, {}).get("cell", "") for b in names), r["target"],
        " | ".join(verdict(r["cols"].get(b)) for b in names)) for r in table)
    fl = res.get("flood", {})
    notes = "\n"
    for b, on, _off in PROTECTED:
        st = res.get("state", {}).get(on, {})
        c = st.get("counters", {})
        notes += ("Protected run, %s: %s relay addresses loaded from a %d-relay consensus; counters: blocked %s, "
                  "concurrency %s, rate %s, network rate %s; sources in the block sets: %s IPv4, %s IPv6 /64; "
                  "listener queue drops (TcpExt ListenOverflows + ListenDrops) during the flood: %s.\n" % (
                      b, st.get("relays_loaded"), N_RELAYS, c.get("dos_blocked_hits"), c.get("dos_concurrency_hits"),
                      c.get("dos_rate_hits"), c.get("dos_net_rate_hits", "-"), st.get("blocked", {}).get("v4"),
                      st.get("blocked", {}).get("v6"), fl.get(on, {}).get("_listen_drops")))
    notes += ("No protection: listener queue drops during the flood %s. Connections of a previous state still "
              "open after 15 s when a state was loaded (their late packets may count as new): %d.\nRun %s on %s, %d CPUs, kernel %s; %.0f s.\n"
              % (fl.get("off", {}).get("_listen_drops"), res.get("unclosed", 0), meta["started"], meta["host"], meta["cpus"], meta["kernel"],
                 meta["wall_s"]))
    return head + body + notes


def run(out_dir, prefix, log=print):
    """Build the lab, measure every state, write bench-inbound.{md,json}; 0 when every target is met."""
    started = time.time()
    tmp = tempfile.mkdtemp(prefix=prefix + "in-")
    files = {"dir": tmp}
    for state, (backend, mode, _label) in STATES.items():
        files[state] = IL.render(tmp, mode) if backend == "nftables" else IL.render_xt(tmp, mode)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "host": os.uname().nodename,
            "cpus": os.cpu_count(), "kernel": os.uname().release}
    with Lab(names=(prefix + "in-r", prefix + "in-n")) as lab:
        log("inbound lab up: %s + %s" % (lab.relay, lab.net))
        # a second IPv6 /48 for the ordinary clients (the lab's own range holds the flood)
        lab.ns(lab.relay, "ip", "-6", "route", "add", CLIENTS_V6, "via", V6_LINK[1])
        lab.ns(lab.net, "ip", "-6", "route", "add", "local", CLIENTS_V6, "dev", "lo")
        # and 2001:db8:100::/40 for the CPU rounds' sources (50 per /48)
        lab.ns(lab.relay, "ip", "-6", "route", "add", CPU_V6, "via", V6_LINK[1])
        lab.ns(lab.net, "ip", "-6", "route", "add", "local", CPU_V6, "dev", "lo")
        lab.ns(lab.relay, "nft", "-f", files["off"])
        lab.spawn(lab.relay, sys.executable, LOAD, "server", str(ORPORT), "600")
        IL.static_neighbours(lab)
        if not IL.wait_listening(lab, ORPORT):
            raise RuntimeError("the ORPort listener did not start")
        res = measure(lab, files, log)
    subprocess.run(["rm", "-rf", tmp], check=False)
    meta["wall_s"] = time.time() - started
    table = rows(res)
    ok = all(c["pass"] is not False for r in table for c in r["cols"].values())
    md = markdown(table, res, meta)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench-inbound.json"), "w") as f:
        json.dump({"meta": meta, "rows": table, "raw": res, "targets_met": ok}, f, indent=1)
    with open(os.path.join(out_dir, "bench-inbound.md"), "w") as f:
        f.write("# Abuse bench: inbound flood on the ORPort\n\n" + md)
    log("\n" + md)
    log("inbound targets: %s" % ("all met" if ok else "MISSED"))
    return 0 if ok else 1
