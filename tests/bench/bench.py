# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Abuse bench: every variant against every scenario in one run, side by side.

    bench.py            full bench (~11 min): results/bench/bench.{md,json,png}
                        none, seed-hashlimit, seed-recent and the guard's three
                        backends (guard = nftables, guard-iptables, guard-ufw)
    bench.py --quick    short sweep + short upload, none vs guard (< 60 s)
    bench.py --variant none --variant guard-ufw    a subset
    bench.py --scenario tor    only the rows through a private Tor network
                        (tests/bench/torbench.py, ~15 min): results/bench/bench-tor.*
                        The full bench runs them after the namespace rows.
    bench.py --scenario inbound    only the inbound ORPort flood rows (tests/bench/inbound.py,
                        ~2 min; nftables and iptables): results/bench/bench-inbound.*; also part of the full bench.

Exit code: 0 when every guard variant meets every target, 1 otherwise.
All numbers in the outputs come from counters read during this run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpustats  # noqa: E402
import lab as L  # noqa: E402
import variants as V  # noqa: E402
from rows import g, max22  # noqa: E402

TOP = V.TOP
OUT = os.path.join(TOP, "results", "bench")
# CPU per connection: paired rounds (off and on, order alternating), connections
# per timed batch, untimed connections before each batch
CPU_ROUNDS, CPU_ROUNDS_QUICK, CPU_CONNS, CPU_WARMUP = 30, 4, 2000, 200


# --- scenario building blocks --------------------------------------------------------
def sweep_job(port, order, rate, seconds, name="sweep", net=L.SWEEP_NET):
    return {"name": name, "kind": "connect", "targets": {"t": "sweep", "net": net, "port": port,
            "order": order}, "rate": rate, "n": int(rate * seconds), "duration": seconds,
            "concurrency": 3000, "timeout": 1.0}


def web_job(seconds, rate=250, start_after=0):
    return {"name": "web", "kind": "request", "targets": {"t": "web"}, "rate": rate,
            "n": int(rate * seconds), "duration": seconds, "concurrency": 2000, "timeout": 10.0,
            "up": 400, "down_range": [2048, 32768], "rtts": 3, "start_after": start_after}


def upload_job(n, duration=20):
    return {"name": "upload", "kind": "pool", "targets": {"t": "one", "host": L.UPLOAD_HOST, "port": 443},
            "n": n, "concurrency": 6, "duration": duration, "timeout": 3.0, "up": 32768, "down": 64, "rtts": 4}


def delta(c0, c1):
    return {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}


def measured(lab, spec, timeout, sweep_hosts=False):
    """Run load generator processes (one per job group) and the arrival counters around them.
    sweep_hosts: True (the sweep /16) or a name of lab.HOST_SETS: distinct hosts reached."""
    hostset = "sweep" if sweep_hosts is True else sweep_hosts
    if hostset:
        lab.flush_sweep_hosts(hostset)
    c0, t0 = lab.counters(), time.monotonic()
    procs = [lab.loadgen_start(spec.get("name", "x"), {"jobs": group}) for group in spec["groups"]]
    out = L.wait_all(procs, timeout)
    time.sleep(0.3)  # SYNs still in flight
    res = {"arrived": delta(c0, lab.counters()), "procs_s": round(time.monotonic() - t0, 1)}
    for o in out:
        if "error" in o:
            raise RuntimeError(o["error"])
        res.update(o["jobs"])
    if hostset:
        res["sweep_hosts"] = lab.sweep_host_stats(hostset)
    return res


def sc_cpu(lab, v, q):
    """A fixed workload of CPU_CONNS new connections to distinct hosts (every one a
    first contact), measured with the guard off and on in turn, in CPU_ROUNDS
    paired rounds whose order alternates (off, on / on, off), so that the noise of
    a shared machine hits both states alike. One load generator process stays up
    for all rounds (lab.Worker: no cold interpreter in any round) and makes
    CPU_WARMUP untimed connections before each timed batch. For the nftables guard
    a third state per round also drops the relay's stateful inbound table, to
    show what connection tracking alone costs (every column pays it; see
    lab.INBOUND_BASELINE)."""
    job = {"name": "cpu", "kind": "cpu", "n": CPU_CONNS, "reps": 1, "warmup": CPU_WARMUP, "concurrency": 64,
           "timeout": 0.5, "duration": 10}
    on, off = v.toggles(lab)
    bare = v.name == "guard"
    samples = {"on": [], "off": [], "bare": []}
    guard_on = True   # the variant is applied when the scenario starts
    worker = lab.loadgen_worker("cpu")
    try:
        worker.run({"jobs": [job]}, 60)  # not counted: the process's first round
        for rnd in range(CPU_ROUNDS_QUICK if q else CPU_ROUNDS):
            order = ["off", "on"] if rnd % 2 == 0 else ["on", "off"]
            for state in order + (["bare"] if bare else []):
                if guard_on != (state == "on"):
                    (on if state == "on" else off)(lab)
                    guard_on = state == "on"
                if state == "bare":
                    lab.ns(lab.relay, "nft", "delete", "table", "inet", "txbench_inbound")
                try:
                    r = worker.run({"jobs": [job]}, 60)
                finally:
                    if state == "bare":
                        lab.ns(lab.relay, "nft", "-f", "-", inp=L.INBOUND_BASELINE)
                samples[state].append(r["jobs"]["cpu"]["reps"][0])
    finally:
        worker.close()
        if not guard_on:
            on(lab)  # leave the variant applied
    summary = cpustats.summary(samples)
    med = summary["medians"]
    print("  %s cpu: %s" % (v.name, cpustats.describe(summary)), flush=True)
    for state in ("off", "on", "bare"):
        if state in med:
            print("  %s cpu %-4s medians per connection: process %.1f µs (kernel %.1f), machine busy %.1f µs "
                  "(softirq %.1f, steal %.1f; all jobs of the machine), involuntary context switches %d per round"
                  % (v.name, state, med[state]["proc_us"], med[state]["sys_us"], med[state]["machine_us"],
                     med[state]["softirq_us"], med[state]["steal_us"], med[state]["nivcsw"]), flush=True)
    return {"cpu": samples, "cpu_summary": summary}


def sc_sweep(lab, v, q):
    secs = 6 if q else 30
    # an admin's SSH sessions to 5 servers of one /24 and HTTPS to 15 sites
    hosts = L.hosts_of(L.LEGIT_NET, 20, 51)
    pairs = [[h, 22] for h in hosts[:5]] + [[h, 443] for h in hosts[5:]]
    legit = {"name": "legit", "kind": "request", "targets": {"t": "pairs", "pairs": pairs}, "rate": 8, "n": 8 * secs, "duration": secs, "timeout": 3.0,
             "up": 512, "down": 4096, "rtts": 2, "concurrency": 50}
    groups = [[sweep_job(22, "random", 2000, secs)], [legit] + ([upload_job(100)] if q else [])]
    return measured(lab, {"groups": groups}, secs + 70, sweep_hosts=True)


def sc_flood(lab, v, q):
    flood = {"name": "flood", "kind": "workers", "targets": {"t": "one", "host": L.FLOOD_HOST, "port": L.FLOOD_PORT},
             "workers": 48, "duration": 15, "max_per_worker": 5000, "timeout": 2.0, "up": 64, "down": 512,
             "rtts": 2, "rst": True}
    probe = {"name": "probe", "kind": "request", "targets": {"t": "list", "hosts": L.hosts_of(L.FLOOD_PROBE, 10, 61),
             "ports": [443]}, "rate": 5, "n": 75, "duration": 15, "timeout": 3.0, "concurrency": 20}
    vscan = {"name": "vscan", "kind": "syn", "targets": {"t": "vscan", "host": L.VSCAN_HOST}, "rate": 10000,
             "n": 65535, "duration": 12}
    return measured(lab, {"groups": [[flood], [probe], [vscan]]}, 60)


def sc_benign(lab, v, q):
    torrent = {"name": "torrent", "kind": "request", "targets": {"t": "torrent"}, "rate": 10, "n": 200,
               "duration": 25, "timeout": 5.0, "up": 16384, "down": 16384, "rtts": 4, "concurrency": 50}
    return measured(lab, {"groups": [[upload_job(300), torrent], [web_job(20)]]}, 90)


# --- issue 15: password guessing, web-port sweeps, internet-wide sweeps, busy exit -----
GUESS_WAYS = (4, 8, 16, 32)


def ssh_session(name, host, seconds, workers=1, hold=0.8, interval=None, up=48, down=1024, seed=1):
    """Sessions to one host's port 22, reconnecting until time is up: the client
    sends its banner, the server answers (banner + key exchange: data on every
    connection), the session stays open `hold` seconds, then a new one starts."""
    job = {"name": name, "kind": "workers", "targets": {"t": "one", "host": host, "port": 22},
           "workers": workers, "duration": seconds, "max_per_worker": 100000, "timeout": 5.0,
           "up": up, "down": down, "rtts": 1, "hold": hold, "seed": seed}
    if interval:
        job["interval"] = interval
    return job


def sc_guess(lab, v, q):
    """Password guessing: N parallel sessions (N = 4, 8, 16, 32, each against its own
    host) held ~0.8 s each for 30 s; meanwhile, for 90 s, a git-over-SSH user opening
    a short session every 1-2 s to one host, and an interactive user on another host:
    one long session after the other plus a new session every 3-6 s to the same host."""
    secs, legit_secs = (10, 20) if q else (30, 90)
    victims = L.hosts_of(L.LOGIN_NET, len(GUESS_WAYS), 71)
    guess = [ssh_session("guess%d" % n, h, secs, workers=n, seed=n) for n, h in zip(GUESS_WAYS, victims)]
    git_host, shell_host = L.hosts_of(L.SSH_USERS, 2, 72)
    legit = [ssh_session("git", git_host, legit_secs, hold=0.3, interval=[1.0, 2.0], up=2048, down=16384, seed=3),
             ssh_session("shell", shell_host, legit_secs, hold=15.0, up=256, down=4096, seed=4),
             ssh_session("shell_new", shell_host, legit_secs, hold=1.0, interval=[3.0, 6.0], seed=5)]
    return measured(lab, {"groups": [guess, legit]}, legit_secs + 40)


WEB_SWEEPS = (("ws_answer", L.WS_ANSWER, "sequential", "hosts answer, address order"),
              ("ws_random", L.WS_RANDOM, "random", "hosts answer, random order"),
              ("ws_refuse", L.WS_REFUSE, "sequential", "hosts refuse (RST)"),
              ("ws_dark", L.WS_DARK, "sequential", "hosts dark (no answer)"))


def cdn_web_job(name, seconds, rate, net, hosts, share):
    """Web browsing where `share` of the connections go to one CDN: `hosts` distinct
    addresses inside one /22, Zipf-distributed repeat visits, data on every connection."""
    return dict(web_job(seconds, rate), name=name, targets={"t": "web", "cdn_net": net, "cdn_hosts": hosts,
                                                            "cdn_share": share})


def sc_websweep(lab, v, q):
    """Sweeps of port 443 over a /16 at 2,000/s (hosts that answer, in address and
    in random order; hosts that refuse; dark hosts), one after the other, each on
    its own /16; then the CDN-safe web mix."""
    secs = 5 if q else 25
    res = {}
    for name, net, order, _label in WEB_SWEEPS:
        res[name] = measured(lab, {"groups": [[sweep_job(443, order, 2000, secs, name="sweep", net=net)]]},
                             secs + 30, sweep_hosts=name)
    res["cdn"] = measured(lab, {"groups": [[cdn_web_job("cdn", 10 if q else 30, 250, L.CDN22_NET, 700, 0.5)]]}, 90)
    return res


def sc_wide(lab, v, q):
    """Internet-wide sweep of port 22: random addresses over 2,304 /16s at 2,000/s
    for 20 s. Before it, SSH to 8 servers; during it, new sessions to those servers
    (4/s, must all pass) and first SSH sessions to 20 other servers (0.5/s, shown)."""
    secs = 6 if q else 20
    # (the 20 new servers are spread over 4 other /24s: 28 servers of one /24 within
    # 10 minutes would be a horizontal scan of that /24 by the strict tier's measure)
    known = [[h, 22] for h in L.hosts_of(L.KNOWN_NET, 8, 81)]
    fresh = [[h, 22] for h in L.hosts_of(L.FRESH_NET, 20, 82)]
    pre = {"name": "known_before", "kind": "pool", "targets": {"t": "cycle", "pairs": known}, "n": len(known),
           "concurrency": len(known), "duration": 10, "timeout": 3.0, "up": 48, "down": 1024, "rtts": 1}
    res = lab.loadgen("wide-pre", {"jobs": [pre]}, 30)["jobs"]
    sweep = {"name": "wide", "kind": "connect", "targets": {"t": "wide", "nets": list(L.WIDE_NETS), "port": 22},
             "rate": 2000, "n": 2000 * secs, "duration": secs, "concurrency": 3000, "timeout": 1.0}
    during = {"name": "known", "kind": "request", "targets": {"t": "cycle", "pairs": known}, "rate": 4,
              "n": 4 * secs, "duration": secs, "timeout": 3.0, "up": 48, "down": 1024, "rtts": 1,
              "concurrency": 20, "start_after": 1}
    new = {"name": "fresh", "kind": "request", "targets": {"t": "cycle", "pairs": fresh}, "rate": 0.5,
           "n": len(fresh), "duration": secs, "timeout": 3.0, "up": 48, "down": 1024, "rtts": 1,
           "concurrency": 20, "start_after": 1}
    res.update(measured(lab, {"groups": [[sweep], [during, new]]}, secs + 40))
    return res


BUSY_PARTS = ("web", "upload", "shell", "git", "torrent", "mail")


def sc_busy(lab, v, q):
    """A busy exit: many users at once for 40 s - web (150 new conn/s, 40% to one CDN
    /22 with 500 addresses), an uploader, 10 interactive SSH users, 6 git-over-SSH
    users (two of them on one shared forge), torrent peers on high ports, mail
    submission (587) and IMAP (993) to 3 providers."""
    secs = 10 if q else 40
    web = cdn_web_job("web", secs, 150, L.BUSY_CDN, 500, 0.4)
    shells = [[h, 22] for h in L.hosts_of(L.SSH_USERS, 10, 91)]
    shell = {"name": "shell", "kind": "request", "targets": {"t": "cycle", "pairs": shells}, "rate": 1,
             "n": secs, "duration": secs, "timeout": 5.0, "up": 256, "down": 4096, "rtts": 2, "hold": 8.0,
             "concurrency": 50}
    forges = L.hosts_of(L.SSH_USERS, 5, 92)
    git = [ssh_session("git%d" % i, h, secs, workers=2 if i == 0 else 1, hold=0.3, interval=[1.0, 2.0],
                       up=2048, down=16384, seed=30 + i) for i, h in enumerate(forges)]
    torrent = {"name": "torrent", "kind": "request", "targets": {"t": "torrent"}, "rate": 5, "n": 5 * secs,
               "duration": secs, "timeout": 5.0, "up": 16384, "down": 16384, "rtts": 4, "concurrency": 50}
    mail = {"name": "mail", "kind": "request", "targets": {"t": "list", "hosts": L.hosts_of(L.MAIL_NET, 3, 93),
            "ports": [587, 993]}, "rate": 1.5, "n": int(1.5 * secs), "duration": secs, "timeout": 5.0,
            "up": 2048, "down": 4096, "rtts": 3, "hold": 2.0, "concurrency": 20}
    return measured(lab, {"groups": [[web, upload_job(25 * secs // 4, secs + 5)], [shell, torrent, mail] + git]},
                    secs + 60)


def slab_bytes():
    """Bytes in all slab caches of the machine (/proc/slabinfo: active objects x size)."""
    total = 0
    with open("/proc/slabinfo") as f:
        for line in f:
            p = line.split()
            if len(p) > 3 and p[1].isdigit():
                total += int(p[1]) * int(p[3])
    return total


def sc_fill(lab, v, q):
    """200,000 new connections to distinct destinations; meanwhile a sweep and the web mix."""
    fill = {"name": "fill", "kind": "syn", "targets": {"t": "fill", "n4": 16000, "n6": 184000},
            "rate": 6000, "n": 200000, "duration": 45}
    sweep = {"name": "sweep2", "kind": "syn", "targets": {"t": "sweep", "net": L.SWEEP_NET, "port": 3389,
             "order": "sequential"}, "rate": 2000, "n": SWEEP2_PLANNED, "duration": SWEEP2_PLANNED / 2000,
             "start_after": 8}
    # set definitions and caps now: any listing after the fill makes nft fetch all
    # ~600,000 elements from the kernel (45 s, even with -t)
    state = v.state(lab, count=False)
    slab0, t0 = slab_bytes(), time.monotonic()
    res = measured(lab, {"groups": [[fill], [sweep, web_job(20, start_after=5)]]}, 90, sweep_hosts=True)
    res["slab_delta_bytes"] = slab_bytes() - slab0
    res["load_s"] = round(time.monotonic() - t0, 1)
    res["conntrack"] = int(lab.ns(lab.relay, "cat", "/proc/sys/net/netfilter/nf_conntrack_count",
                                  check=False).stdout.strip() or 0)
    # ipsets report their entries without listing them: read them after the fill
    res["state"] = v.state(lab) if v.is_guard and v.name != "guard" else state
    return res


SWEEP2_PLANNED = 20000
FULL = [("cpu", sc_cpu), ("sweep", sc_sweep), ("flood", sc_flood),
        ("benign", sc_benign), ("guess", sc_guess), ("busy", sc_busy), ("websweep", sc_websweep),
        ("wide", sc_wide), ("fill", sc_fill)]
QUICK = [("sweep", sc_sweep)]


# --- rows of the table: (key, label, target, value(res, none) -> (text, number), pass(number)) ---
def pct(a, b):
    return 100.0 * a / b if b else None


def _succ(scn, job):
    def f(r, n):
        j = g(r, scn, job)
        if not j or not j.get("attempts"):
            return "n/a", None
        return "%.2f%% (%d/%d)" % (100 * j["success"], j["ok"], max(j["attempts"], j.get("planned") or 0)), \
            100 * j["success"]
    return f


def _reach_frac(r):
    """SYNs that arrived per attempt made (the load generator's pace varies on a shared machine)."""
    a, att = g(r, "sweep", "arrived", "sweep"), g(r, "sweep", "sweep", "attempts")
    return (a, att, a / att) if a is not None and att else (a, att, None)


def _sweep_reach(r, n):
    a, att, f = _reach_frac(r)
    if f is None:
        return "n/a", None
    fn = _reach_frac(n)[2]
    p = 100.0 * f / fn if fn else None
    return ("%d of %d SYN (%.2f%%)" % (a, att, p) if p is not None else "%d of %d SYN" % (a, att)), p


def _sweep_budget(r, n):
    a = g(r, "sweep", "arrived", "sweep")
    return ("n/a", None) if a is None else ("%d SYN" % a, a)


def _vscan(r, n):
    a, att = g(r, "flood", "arrived", "vscan"), g(r, "flood", "vscan", "attempts")
    if a is None or not att:
        return "n/a", None
    share = 100.0 * a / att  # pct(a, att), which is not None here
    return "%d of %d ports (%.2f%%)" % (a, att, share), share


def _flood(r, n):
    a, b = g(r, "flood", "flood", "ok"), g(n, "flood", "flood", "ok")
    if a is None:
        return "n/a", None
    if not b:  # no percentage without a baseline (pct(a, b) is None)
        return "%d est." % a, None
    p = 100.0 * a / b
    return "%d est. (%.2f%%)" % (a, p), p


def _cpu(r, n):
    """Median of the per-round ratios of process CPU (user + kernel) per connection,
    guard on / guard off, with their spread (tests/bench/cpustats.py)."""
    s = g(r, "cpu", "cpu")
    if not s or not s.get("on") or not s.get("off"):
        return "n/a", None
    summary = g(r, "cpu", "cpu_summary") or cpustats.summary(s)
    return cpustats.describe(summary), summary["ratio"]["median"]


def _state(r, n):
    f = g(r, "fill")
    if not f:
        return "not run", None
    st = f.get("state") or {}
    fill = f.get("fill") or {}
    txt = "%d of %d SYN sent in %.0f s; slab %+.1f MiB, conntrack %d" % (
        fill.get("attempts", 0), fill.get("planned") or 200000, fill.get("elapsed_s", 0), f["slab_delta_bytes"] / 2**20, f.get("conntrack", 0))
    if "error" in st:
        return txt + "; " + st["error"], None
    if not st.get("sets"):
        return txt, None
    unc = st.get("uncapped_dynamic_sets", [])
    if st.get("bytes"):
        txt += "; sets %.1f MiB" % (st["bytes"] / 2**20)
    if st.get("elements") is not None:
        txt += "; %d set entries" % st["elements"]
    if st.get("hashlimit_entries") is not None:
        txt += "; hashlimit entries %d" % st["hashlimit_entries"]
    if (st.get("counters") or {}).get("seen_full"):
        txt += "; seen_full counter %d" % st["counters"]["seen_full"]
    for name in st.get("at_kernel_add_limit", []):
        s = st["sets"][name]
        txt += "; %s full at %d (hashsize × bucketsize: the packet path never grows it; maxelem %d)" % (
            name, s["elements"], s["cap"])
    if unc:
        txt += "; uncapped: %s" % ",".join(unc)
    else:
        txt += "; %d dynamic sets, all capped" % st.get("dynamic_sets", 0)
        if st.get("cap_bytes_est"):
            txt += " (≤ %.0f MiB est. when full)" % (st["cap_bytes_est"] / 2**20)
    return txt, 0.0 if unc else 1.0


def _sweep2(r, n):
    a, att = g(r, "fill", "arrived", "sweep"), g(r, "fill", "sweep2", "attempts")
    if a is None or not att:
        return "not run", None
    # relative to the 20,000 attempts the sweep plans, whatever pace the busy machine allowed
    planned = max(att, SWEEP2_PLANNED)
    return "%d SYN, %d of %d attempts made (%.2f%%)" % (a, att, planned, pct(a, planned)), pct(a, planned)


def _throttle(r, n):
    t = g(r, "sweep", "sweep", "first_fail_s")
    if g(r, "sweep", "sweep") is None:
        return "n/a", None
    return ("never", float("inf")) if t is None else ("%.3f s" % t, t)


def _jobs_succ(scn, *jobs, sub=None):
    """Success over several jobs of a scenario together: ok / tried (planned when larger)."""
    def f(r, n):
        base = g(r, scn, sub) if sub else g(r, scn)
        js = [g(base, j) for j in jobs]
        js = [j for j in js if j and j.get("attempts")]
        if not js:
            return "n/a", None
        ok = sum(j["ok"] for j in js)
        tried = sum(max(j["attempts"], j.get("planned") or 0) for j in js)
        return "%.2f%% (%d/%d)" % (100.0 * ok / tried, ok, tried), 100.0 * ok / tried
    return f


def _guess(ways):
    def f(r, n):
        j, jn = g(r, "guess", "guess%d" % ways), g(n, "guess", "guess%d" % ways)
        if not j:
            return "n/a", None
        if not jn or not jn.get("ok"):
            return "%d sessions of %d tries" % (j["ok"], j["attempts"]), None
        p = 100.0 * j["ok"] / jn["ok"]
        return "%d sessions (%.2f%%; %d tries)" % (j["ok"], p, j["attempts"]), p
    return f


def _hosts_frac(r, name):
    h, att = g(r, "websweep", name, "sweep_hosts", "distinct_hosts"), g(r, "websweep", name, "sweep", "attempts")
    return (h, att, h / att) if h is not None and att else (h, att, None)


def _ws_leak(name):
    """Distinct hosts of the swept /16 that saw a SYN, per attempt, relative to none
    (hosts, not SYNs: dark hosts see the kernel's SYN retransmissions too)."""
    def f(r, n):
        h, att, fr = _hosts_frac(r, name)
        if fr is None:
            return "n/a", None
        fn = _hosts_frac(n, name)[2]
        if not fn:
            return "%d hosts of %d tried" % (h, att), None
        p = 100.0 * fr / fn
        return "%d hosts of %d tried (%.2f%%)" % (h, att, p), p
    return f


def _ws_max22(r, n):
    vals = [g(r, "websweep", name, "sweep_hosts", "max_per_22") for name, _n, _o, _l in WEB_SWEEPS]
    if any(x is None for x in vals):
        return "n/a", None
    return "answer %d, random %d, refuse %d, dark %d" % tuple(vals), max(vals)


def _wide(r, n):
    a, att = g(r, "wide", "arrived", "wide"), g(r, "wide", "wide", "attempts")
    if a is None or not att:
        return "n/a", None
    an, attn = g(n, "wide", "arrived", "wide"), g(n, "wide", "wide", "attempts")
    if not an or not attn:
        return "%d of %d SYN" % (a, att), None
    p = 100.0 * (a / att) / (an / attn)
    return "%d of %d SYN (%.2f%%)" % (a, att, p), p


def _busy(r, n):
    b = g(r, "busy")
    if not b:
        return "n/a", None
    parts, ok, tried = [], 0, 0
    for part in BUSY_PARTS:
        js = [j for k, j in b.items() if isinstance(j, dict) and j.get("attempts") is not None
              and (k == part or (part == "git" and k.startswith("git")))]
        if not js:
            continue
        o = sum(j["ok"] for j in js)
        t = sum(max(j["attempts"], j.get("planned") or 0) for j in js)
        ok, tried = ok + o, tried + t
        parts.append("%s %d/%d" % (part, o, t))
    if not tried:
        return "n/a", None
    return "%.2f%% (%d/%d: %s)" % (100.0 * ok / tried, ok, tried, ", ".join(parts)), 100.0 * ok / tried


ROWS = [
    ("sweep_reach", "sweep :22 over a /16, 2,000/s, 30 s: SYNs reaching the /16 (% of none, per attempt)",
     "≤ 0.5%", _sweep_reach, lambda x: x is not None and x <= 0.5, False),
    ("sweep_budget", "quick sweep :22 over a /16, 2,000/s, 6 s: SYNs reaching the /16 (budget: 0.5% of the "
     "full 30 s sweep)", "≤ 300", _sweep_budget, lambda x: x is not None and x <= 300, True),
    ("sweep_max22", "sweep: most distinct hosts reached in one /22", "≤ 64", max22("sweep"),
     lambda x: x is not None and x <= 64, True),
    ("throttle", "time from sweep start to first refused connection", "≤ 1 s", _throttle,
     lambda x: x is not None and x <= 1.0, True),
    ("legit", "legit SSH/HTTPS to other hosts during the sweep: success", "100%", _succ("sweep", "legit"),
     lambda x: x is not None and x >= 100.0, True),
    ("vscan", "all 65,535 ports of one host (SYNs, 10,000/s, during the flood): reaching it, % of ports tried", "≤ 0.5%", _vscan,
     lambda x: x is not None and x <= 0.5, False),
    ("flood", "48 workers reconnecting to one IP:port, 15 s: established (% of none)", "≤ 2%", _flood,
     lambda x: x is not None and x <= 2.0, False),
    ("flood_probe", "probe to another host during the flood: success", "100%", _succ("flood", "probe"),
     lambda x: x is not None and x >= 100.0, False),
    ("upload", "upload: 300 fresh connections × 32 KiB to one host, 6 at a time: success", "100%",
     _succ("benign", "upload"), lambda x: x is not None and x >= 100.0, False),
    ("upload_quick", "upload (quick: 100 connections, during the sweep): success", "100%",
     _succ("sweep", "upload"), lambda x: x is not None and x >= 100.0, True),
    ("torrent", "torrent: 200 peers on random high ports, 10/s: success", "100%", _succ("benign", "torrent"),
     lambda x: x is not None and x >= 100.0, False),
    ("web", "web mix: 250 new conn/s, Zipf over 3,000 sites, 30% one CDN /24, 20 s: success", "≥ 99.9%",
     _succ("benign", "web"), lambda x: x is not None and x >= 99.9, False),
    ("guess16", "password guessing: 16 parallel sessions to one host:22, each held 0.8 s, 30 s: sessions "
     "through (% of none)", "≤ 5%", _guess(16), lambda x: x is not None and x <= 5.0, False),
    ("guess8", "password guessing, 8 parallel: sessions through (% of none)", "≤ 5%", _guess(8),
     lambda x: x is not None and x <= 5.0, False),
    ("guess32", "password guessing, 32 parallel: sessions through (% of none)", "≤ 5%", _guess(32),
     lambda x: x is not None and x <= 5.0, False),
    ("guess4", "password guessing, 4 parallel: sessions through (% of none)", "shown", _guess(4),
     lambda x: True, False),
    ("git", "git over SSH: a short session every 1-2 s to one host, 90 s: success", "100%",
     _succ("guess", "git"), lambda x: x is not None and x >= 100.0, False),
    ("shell", "interactive SSH: 15 s sessions one after the other + a new session every 3-6 s to the same "
     "host, 90 s: success", "100%", _jobs_succ("guess", "shell", "shell_new"),
     lambda x: x is not None and x >= 100.0, False),
    ("busy", "busy-exit legit mix, 40 s: web 150/s (40% to 500 hosts of one CDN /22), upload, 10 interactive "
     "SSH, 6 git users (2 on one forge), torrent, mail 587/993: success", "≥ 99.9%", _busy,
     lambda x: x is not None and x >= 99.9, False),
] + [("ws_" + name[3:], "web sweep :443 over a /16, 2,000/s, 25 s, %s: hosts reached (%% of none, per attempt)"
      % label, "≤ 0.5%", _ws_leak(name), lambda x: x is not None and x <= 0.5, False)
     for name, _net, _order, label in WEB_SWEEPS] + [
    ("ws_max22", "those web sweeps: most hosts reached in one /22 (within 25 s; target from 150 in 4 min)",
     "≤ 150", _ws_max22, lambda x: x is not None and x <= 150, False),
    ("cdn", "CDN-safe web mix: 250 new conn/s, 30 s, 50% to 700 hosts of one /22 (Zipf repeat visits), data on "
     "every connection: success", "≥ 99.9%", _jobs_succ("websweep", "cdn", sub="cdn"), lambda x: x is not None and x >= 99.9, False),
    ("wide", "internet-wide sweep :22, random hosts over 2,304 /16s, 2,000/s, 20 s: SYNs arriving (% of none, "
     "per attempt)", "≤ 2%", _wide, lambda x: x is not None and x <= 2.0, False),
    ("wide_known", "SSH to 8 hosts contacted before that sweep (once each), then 4/s during it: success", "100%",
     _jobs_succ("wide", "known_before", "known"), lambda x: x is not None and x >= 100.0, False),
    ("wide_fresh", "first SSH to 20 other hosts during that sweep, 0.5/s: success", "shown",
     _jobs_succ("wide", "fresh"), lambda x: True, False),
    ("cpu", "CPU per new connection, guard on vs off, same lab (stateful inbound firewall in both; guard-ufw: "
     "ufw enabled in both), %d paired rounds × %s connections to distinct hosts (order alternating, one warm "
     "load generator), its CPU (user + kernel)" % (CPU_ROUNDS, format(CPU_CONNS, ",")),
     "≤ 1.10×", _cpu,
     lambda x: x is not None and x <= 1.10, False),
    ("state", "200,000 new connections to distinct destinations: kernel memory (slab, whole machine), guard caps",
     "within caps", _state,
     lambda x: x == 1.0, False),
    ("state_sweep", "sweep :3389 (sequential, 20,000 planned) started during the fill: SYNs reaching", "≤ 0.5%", _sweep2,
     lambda x: x is not None and x <= 0.5, False),
    ("state_sweep22", "that sweep: most distinct hosts reached in one /22", "≤ 64", max22("fill"),
     lambda x: x is not None and x <= 64, False),
    ("state_web", "web mix during the fill: success", "≥ 99%", _succ("fill", "web"),
     lambda x: x is not None and x >= 99.0, False),
]


def evaluate(results, quick):
    none = results.get("none", {}).get("scenarios", {})
    rows = []
    for key, label, target, fn, ok, in_quick in ROWS:
        if quick and not in_quick:
            continue
        if not quick and key in ("upload_quick", "sweep_budget"):
            continue
        row = {"key": key, "scenario": label, "target": target, "values": {}, "numbers": {}, "pass": {}}
        for name, vr in results.items():
            scn = vr.get("scenarios", {})
            txt, num = fn(scn, none) if vr.get("status") == "ok" else ("error", None)
            row["values"][name], row["numbers"][name] = txt, num
            if vr.get("is_guard"):
                row["pass"][name] = bool(ok(num))
        rows.append(row)
    return rows


def markdown(rows, results, meta):
    names = list(results)
    guards = [n for n in names if results[n].get("is_guard")]
    head = ["scenario"] + names + ["target"] + ["%s pass" % gname for gname in guards]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"]] + [r["values"][n] for n in names] + [r["target"]]
        cells += ["PASS" if r["pass"].get(gname) else "**FAIL**" for gname in guards]
        out.append("| " + " | ".join(cells) + " |")
    errs = ["- %s: %s" % (n, results[n]["error"]) for n in names if results[n].get("error")]
    notes = ["", "Run %s on %s, %d CPUs, kernel %s; path delay: %s; bench wall time %.0f s." % (
        meta["started"], meta["host"], meta["cpus"], meta["kernel"], meta["delay_mode"], meta["wall_s"])]
    return "\n".join(out + notes + (["", "Errors:"] + errs if errs else [])) + "\n"


def chart(rows, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    rows = [r for r in rows if any(isinstance(r["numbers"].get(n), (int, float)) for n in names)]
    cols = 4
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    colors = ["#888888", "#d9a441", "#c4573a", "#2f7d4f", "#3a6fc4", "#8a4fc4"]
    for ax, r in zip(axes.flat, rows):
        raw = [r["numbers"].get(n) for n in names]
        vals = [v if isinstance(v, (int, float)) and v != float("inf") else 0 for v in raw]
        ax.bar(range(len(names)), vals, color=colors[:len(names)])
        for i, v in enumerate(raw):  # no bar is not zero: say what it is
            if not isinstance(v, (int, float)) or v == float("inf"):
                ax.text(i, 0, "never" if v == float("inf") else "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, fontsize=7)
        ax.set_title(r["scenario"][:60] + ("…" if len(r["scenario"]) > 60 else ""), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.text(0.99, 0.97, "target " + r["target"], transform=ax.transAxes, ha="right", va="top", fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main ------------------------------------------------------------------------------
def run(args):
    started = time.time()
    chosen = V.QUICK_VARIANTS if args.quick else V.VARIANTS
    if args.variant:
        known = {v.name: v for v in V.VARIANTS + V.EXTRA_VARIANTS}
        chosen = [known[n] for n in args.variant]
    scenarios = QUICK if args.quick else [s for s in FULL if not args.scenario or s[0] in args.scenario]
    lab = L.Lab(args.prefix)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    results = {}
    try:
        lab.setup()
        print("lab up: %s + %s, path delay by %s" % (lab.relay, lab.net, lab.delay_mode), flush=True)
        for v in chosen:
            vr = results[v.name] = {"status": "ok", "is_guard": v.is_guard, "scenarios": {}, "timings": {}}
            t = time.monotonic()
            try:
                lab.restart_server()
                v.apply(lab)
                vr["timings"]["apply_s"] = round(time.monotonic() - t, 2)
                for name, fn in scenarios:
                    # CPU: each guard backend on vs off (the time budget); fill: none and guards
                    if (name == "fill" and not v.fill) or (name == "cpu" and not (v.toggles and v.is_guard)):
                        continue
                    t = time.monotonic()
                    vr["scenarios"][name] = fn(lab, v, args.quick)
                    vr["timings"][name] = round(time.monotonic() - t, 1)
                    print("  %-15s %-7s %5.1f s" % (v.name, name, vr["timings"][name]), flush=True)
                if "fill" in vr["scenarios"] and v.is_guard:
                    # the module's state=absent lists the whole table (minutes with
                    # 600,000 elements, see docs/bench.md); empty it first
                    lab.ns(lab.relay, "nft", "delete", "table", *V.GUARD_TABLE, check=False)
                else:
                    vr["state_after"] = v.state(lab)
            except Exception as exc:  # noqa: BLE001 - reported, then the next variant runs
                vr.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
                print("  %s: ERROR %s" % (v.name, vr["error"]), flush=True)
            finally:
                t = time.monotonic()
                try:
                    v.remove(lab)
                    vr["timings"]["remove_s"] = round(time.monotonic() - t, 1)
                except Exception as exc:  # noqa: BLE001
                    vr.setdefault("error", "remove failed: %s" % exc)
                left = lab.reset_relay()
                if left.strip():
                    vr["left_after_reset"] = left[-500:]
    finally:
        delay_mode = lab.delay_mode
        lab.teardown()
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "host": os.uname().nodename,
            "cpus": os.cpu_count(), "kernel": os.uname().release, "delay_mode": delay_mode,
            "wall_s": time.time() - started, "quick": args.quick}
    rows = evaluate(results, args.quick)
    md = markdown(rows, results, meta)
    guards_ok = all(all(r["pass"].values()) for r in rows) and all(
        results[n]["status"] == "ok" for n in results if results[n]["is_guard"])
    guards_ok = guards_ok and any(results[n]["is_guard"] for n in results)
    os.makedirs(args.out, exist_ok=True)
    stem = "bench-quick" if args.quick else "bench"
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "variants": results, "guard_targets_met": guards_ok}, f, indent=1,
                  default=str)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write("# Abuse bench%s\n\n" % (" (quick)" if args.quick else "") + md)
    if not args.quick:
        try:
            chart(rows, results, os.path.join(args.out, "bench.png"))
        except Exception as exc:  # noqa: BLE001 - the table matters more than the picture
            print("chart failed: %s" % exc)
    print()
    print(md)
    print("guard targets: %s" % ("all met" if guards_ok else "MISSED"))
    return 0 if guards_ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short sweep and upload, none vs guard, < 60 s")
    ap.add_argument("--variant", action="append", default=[],
                    help="run only this variant (repeatable): none, seed-hashlimit, seed-recent, guard "
                         "(nftables), guard-iptables, guard-ufw; default: all of them")
    ap.add_argument("--scenario", action="append", default=[],
                    help="run only this scenario (repeatable): cpu, sweep, flood, benign, guess, busy, "
                         "websweep, wide, fill, tor (the rows through a private Tor network) or inbound "
                         "(the ORPort flood against the firewall role's inbound rules, nftables and iptables)")
    ap.add_argument("--prefix", default=None, help="namespace name prefix (default tx-bench- / tx-bench-q-)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    if args.prefix is None:
        args.prefix = "tx-bench-q-" if args.quick else "tx-bench-"
    if not args.prefix.startswith("tx-bench-"):
        ap.error("--prefix must start with tx-bench-")
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    # the tor rows: with --scenario tor, or in the full bench (not --quick, not --variant)
    only_own = bool(args.scenario) and set(args.scenario) <= {"tor", "inbound"}
    tor = not args.quick and not args.variant and (not args.scenario or "tor" in args.scenario)
    # the inbound rows (tests/bench/inbound.py, own lab and variants): with --scenario
    # inbound, or in the full bench
    inbound = not args.quick and ("inbound" in args.scenario or (not args.scenario and not args.variant))
    args.scenario = [s for s in args.scenario if s not in ("tor", "inbound")]
    try:
        rc = 0 if only_own else run(args)
        if inbound:
            import inbound as inbound_rows
            rc = inbound_rows.run(args.out, args.prefix, log=lambda m: print(m, flush=True)) or rc
        if tor:
            import torbench
            why = torbench.available()
            if why:
                print("tor rows skipped: %s" % why)
            else:
                rc = torbench.run(args.out) or rc
        return rc
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
