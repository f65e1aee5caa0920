# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench rows through Tor: the private network of tests/integration/tornet.py.

    bench.py --scenario tor     only these rows (~7 min): results/bench/bench-tor.{md,json}

The client's streams are pinned to the hardened exit (ExitNodes, StrictNodes),
whose tor runs as debian-tor under the egress guard with its default owner.
Columns: tor-none (no guard), tor-enforce, tor-exitpolicy (the guard records bans
and torexit-exitpolicy-sync.service, the role's sync program in --watch mode with
the unit's options and defaults, turns them into ExitPolicy rejects through the
exit's control socket). Every number is measured in this run: SYN arrivals
at the lab internet's counters, the guard's detection counter polled every 20 ms,
and the client's STREAM events (reasons only, never a target).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import lab as L  # noqa: E402
import loadgen  # noqa: E402
import tornet as T  # noqa: E402

SWEEP_RATE, SWEEP_SECONDS, SWEEP_TIMEOUT = 40, 75, 2.0
# the exit's END reasons for a stream it refused: its exit policy, or the kernel's
# refusal of the connect (the guard's reset or EPERM, which tor reports as MISC)
REFUSED = ("EXITPOLICY", "MISC", "CONNECTREFUSED")


def sweep_pairs(n, seed):
    """n random hosts of the sweep /16 on port 22 (the lab server listens there)."""
    return list(loadgen.targets({"t": "sweep", "net": L.SWEEP_NET, "port": 22, "order": "random"}, seed))[:n]


def web_pairs(n, seed):
    it = loadgen.targets({"t": "web"}, seed)
    return [next(it) for _i in range(n)]


class Poller:
    """Polls the guard's detection counters every 20 ms; first time any is non-zero."""

    def __init__(self, net):
        self.net, self.t_detect, self.stop = net, None, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set() and self.t_detect is None:
            c = self.net.guard_counters()
            if any(c.get(k, 0) for k in ("detect_hscan", "detect_vscan", "detect_flood")):
                self.t_detect = time.monotonic()
                return
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def first_refusal(events, t_start):
    """(time of the first refused sweep stream, counts of refusal reasons)."""
    first, reasons = None, {}
    for t, line in events:
        w = line.split()
        if len(w) < 4 or w[1] != "STREAM" or w[3] not in ("DETACHED", "FAILED"):
            continue
        kv = dict(x.split("=", 1) for x in w[5:] if "=" in x)
        reason = kv.get("REMOTE_REASON") or kv.get("REASON")
        reasons[reason] = reasons.get(reason, 0) + 1
        if kv.get("REMOTE_REASON") in REFUSED and t >= t_start and (first is None or t < first):
            first = t
    return first, reasons


def sc_sweep(net, variant, seed):
    legit_hosts = L.hosts_of(L.LEGIT_NET, 20, 51)
    legit = [(h, 22) for h in legit_hosts[:5]] + [(h, 443) for h in legit_hosts[5:]]
    rnd = random.Random(seed)
    legit = [rnd.choice(legit) for _i in range(2 * SWEEP_SECONDS)]
    ev = net.control()
    ev.subscribe("STREAM")
    c0 = net.lab.counters()
    net.lab.flush_sweep_hosts()
    with Poller(net) as poll:
        t0 = time.monotonic()

        async def both():
            return await asyncio.gather(
                T.socks_many(T.SOCKS_PORT, sweep_pairs(SWEEP_RATE * SWEEP_SECONDS, seed), concurrency=600,
                             rate=SWEEP_RATE, seconds=SWEEP_SECONDS, timeout=SWEEP_TIMEOUT, connect_only=True),
                T.socks_many(T.SOCKS_PORT, legit, concurrency=10, rate=2, seconds=SWEEP_SECONDS, timeout=20.0,
                             users=True, down=4096))
        scan, ok = net.run(both())
        time.sleep(0.5)
    arrived = net.lab.counters()["sweep"] - c0["sweep"]
    t_ref, reasons = first_refusal(ev.take(), t0)
    ev.close()
    res = {"sweep": scan, "legit": ok, "arrived": arrived, "reasons": reasons,
           "sweep_hosts": net.lab.sweep_host_stats(), "guard": net.guard_counters(),
           "detect_s": round(poll.t_detect - t0, 3) if poll.t_detect else None,
           "first_refusal_s": round(t_ref - t0, 3) if t_ref else None}
    if poll.t_detect and t_ref:
        res["detect_to_refusal_s"] = round(t_ref - poll.t_detect, 3)
    return res


def sc_benign(net, variant, seed):
    c0 = net.lab.counters()
    upload = net.run(T.socks_many(T.SOCKS_PORT, [(L.UPLOAD_HOST, 443)] * 150, concurrency=6, seconds=90,
                                  timeout=20.0, up=32768, down=64, rtts=4))
    web = net.run(T.socks_many(T.SOCKS_PORT, web_pairs(300, seed), concurrency=40, rate=10, seconds=40,
                               timeout=20.0, up=400, down=16384, rtts=3))
    c1 = net.lab.counters()
    return {"upload": upload, "web": web, "arrived_upload": c1["upload"] - c0["upload"],
            "arrived_web": c1["web"] + c1["cdn"] - c0["web"] - c0["cdn"]}


VARIANTS = ["tor-none", "tor-enforce", "tor-exitpolicy"]


def apply(net, name):
    net.remove_guard()
    net.clear_exitpolicy()
    info = {}
    if name == "tor-enforce":
        net.apply_guard("enforce")
    elif name == "tor-exitpolicy":
        net.apply_guard("exitpolicy")
        info["service"] = net.start_sync_service()
        deadline = time.monotonic() + 15
        while not any(": connected, " in line for line in net.sync_log_lines()):
            if info["service"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("exitpolicy sync service not connected: %s" % net.sync_log_lines()[-3:])
            time.sleep(0.1)
    net.pin(net.hx)
    return info


def unapply(net, info):
    if info.get("service"):
        net.stop(info.pop("service"))
    net.remove_guard()
    net.clear_exitpolicy()


# --- rows ---------------------------------------------------------------------------
def g(r, *path):
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r


def _reach(r, n):
    att, a = g(r, "sweep", "sweep", "tried"), g(r, "sweep", "arrived")
    natt, na = g(n, "sweep", "sweep", "tried"), g(n, "sweep", "arrived")
    if not att or a is None:
        return "n/a", None
    if not natt or not na:
        return "%d of %d streams" % (a, att), None
    p = 100.0 * (a / att) / (na / natt)
    return "%d of %d streams reached (%.2f%% of tor-none)" % (a, att, p), p


def _budget(r, n):
    a = g(r, "sweep", "arrived")
    return ("n/a", None) if a is None else ("%d connections" % a, a)


def _secs(key):
    def f(r, n):
        v = g(r, "sweep", key)
        return ("never", float("inf")) if v is None else ("%.3f s" % v, v)
    return f


def _succ(scn, job):
    def f(r, n):
        j = g(r, scn, job)
        if not j or not j.get("tried"):
            return "n/a", None
        ok = j["counts"].get("ok", 0)
        return "%.2f%% (%d/%d)" % (100.0 * ok / j["tried"], ok, j["tried"]), 100.0 * ok / j["tried"]
    return f


def _max22(r, n):
    m = g(r, "sweep", "sweep_hosts", "max_per_22")
    return ("n/a", None) if m is None else ("%d hosts" % m, m)


ROWS = [
    ("tor_sweep_reach", "through Tor, pinned to the hardened exit: sweep :22 over a /16, %d streams/s, %d s: "
     "connections reaching the /16 (%% of tor-none, per stream)" % (SWEEP_RATE, SWEEP_SECONDS),
     "exitpolicy ≤ 1%", _reach, {"tor-exitpolicy": lambda x: x is not None and x <= 1.0}),
    ("tor_sweep_budget", "that sweep: connections reaching the /16 (budget of the namespace bench: 0.5% of its "
     "60,000 SYNs; through Tor the sweep is slower, so a percentage would judge the detection threshold)",
     "enforce ≤ 300", _budget, {"tor-enforce": lambda x: x is not None and x <= 300}),
    ("tor_max22", "that sweep: most distinct hosts reached in one /22", "≤ 64", _max22,
     {"tor-enforce": lambda x: x is not None and x <= 64, "tor-exitpolicy": lambda x: x is not None and x <= 64}),
    ("tor_detect", "time from sweep start to the guard's detection (counter, polled every 20 ms)", "info",
     _secs("detect_s"), {}),
    ("tor_refusal", "time from sweep start to the first refused stream (client STREAM event)", "info",
     _secs("first_refusal_s"), {}),
    ("tor_detect_to_refusal", "time from detection to the first refused stream", "≤ 1 s",
     _secs("detect_to_refusal_s"),
     {"tor-enforce": lambda x: x is not None and x <= 1.0, "tor-exitpolicy": lambda x: x is not None and x <= 1.0}),
    ("tor_legit", "legit SSH/HTTPS to 20 other hosts during the sweep, 2/s, each its own circuit: success",
     "100%", _succ("sweep", "legit"),
     {"tor-enforce": lambda x: x is not None and x >= 100.0, "tor-exitpolicy": lambda x: x is not None and x >= 100.0}),
    ("tor_upload", "upload through Tor: 150 fresh connections × 32 KiB to one host, 6 at a time: success", "100%",
     _succ("benign", "upload"),
     {"tor-enforce": lambda x: x is not None and x >= 100.0, "tor-exitpolicy": lambda x: x is not None and x >= 100.0}),
    ("tor_web", "web mix through Tor: 300 requests, 10/s, Zipf over 3,000 sites, 30% one CDN /24: success", "100%",
     _succ("benign", "web"),
     {"tor-enforce": lambda x: x is not None and x >= 100.0, "tor-exitpolicy": lambda x: x is not None and x >= 100.0}),
]


def evaluate(results):
    none = results.get("tor-none", {}).get("scenarios", {})
    rows = []
    for key, label, target, fn, passes in ROWS:
        row = {"key": key, "scenario": label, "target": target, "values": {}, "numbers": {}, "pass": {}}
        for name, vr in results.items():
            txt, num = fn(vr.get("scenarios", {}), none) if vr.get("status") == "ok" else ("error", None)
            row["values"][name], row["numbers"][name] = txt, num
            if name in passes:
                row["pass"][name] = bool(passes[name](num))
        rows.append(row)
    return rows


def markdown(rows, results, meta):
    names = list(results)
    judged = [n for n in names if n != "tor-none"]
    head = ["scenario (through Tor)"] + names + ["target"] + ["%s pass" % n for n in judged]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scenario"]] + [r["values"][n] for n in names] + [r["target"]]
        cells += [("PASS" if r["pass"][n] else "**FAIL**") if n in r["pass"] else "-" for n in judged]
        out.append("| " + " | ".join(cells) + " |")
    notes = ["", "Private Tor network: %d authorities, hardened exit (debian-tor, guard default owner), plain exit, "
             "client; up in %.0f s. exitpolicy: torexit-exitpolicy-sync.service as the role deploys it (--watch, "
             "its default poll and batching, SETCONF over the exit's control socket); "
             "wall time %.0f s." % (T.N_AUTH, meta["ready_s"], meta["wall_s"])]
    errs = ["- %s: %s" % (n, results[n]["error"]) for n in names if results[n].get("error")]
    return "\n".join(out + notes + (["", "Errors:"] + errs if errs else [])) + "\n"


def run(out_dir, variants=None, seed=7):
    started = time.time()
    results = {}
    with T.TorNet() as net:
        print("tor network up in %.1f s (%s, %s)" % (net.timings["ready_s"], net.relay_ns, net.net_ns), flush=True)
        for name in variants or VARIANTS:
            vr = results[name] = {"status": "ok", "scenarios": {}, "timings": {}}
            info = {}
            try:
                info = apply(net, name)
                for scn, fn in (("sweep", sc_sweep), ("benign", sc_benign)):
                    t = time.monotonic()
                    vr["scenarios"][scn] = fn(net, name, seed)
                    vr["timings"][scn] = round(time.monotonic() - t, 1)
                    print("  %-15s %-7s %5.1f s" % (name, scn, vr["timings"][scn]), flush=True)
            except Exception as exc:  # noqa: BLE001 - reported, then the next variant runs
                vr.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
                print("  %s: ERROR %s" % (name, vr["error"]), flush=True)
            finally:
                unapply(net, info)
        ready = net.timings["ready_s"]
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "ready_s": ready,
            "wall_s": time.time() - started, "sweep": {"rate": SWEEP_RATE, "seconds": SWEEP_SECONDS}}
    rows = evaluate(results)
    md = markdown(rows, results, meta)
    ok = all(all(r["pass"].values()) for r in rows) and all(v["status"] == "ok" for v in results.values())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench-tor.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "variants": results, "targets_met": ok}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "bench-tor.md"), "w") as f:
        f.write("# Abuse bench through Tor\n\n" + md)
    print()
    print(md)
    print("tor rows: targets %s" % ("all met" if ok else "MISSED"))
    return 0 if ok else 1


def available():
    """Why the tor rows cannot run here, or None."""
    import shutil
    missing = [p for p in ("tor", "tor-gencert", "nft") if not shutil.which(p)]
    if missing:
        return "missing %s (scripts/bootstrap-host.sh installs tor)" % ", ".join(missing)
    if not T.user_exists(T.TOR_USER):
        return "no %s user" % T.TOR_USER
    return None
