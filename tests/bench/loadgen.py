# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load generator, run inside the relay namespace: `loadgen.py SCENARIO JSON`, or
`loadgen.py --serve SCENARIO` with one JSON spec a line on stdin (see serve()).

JSON = {"jobs": [{"name": ..., "kind": ..., ...}, ...]}; the jobs run together
in one event loop and the result (one JSON object, aggregate counts only, never
a destination) goes to stdout. Every loop is bounded in count and in time.

kinds:  connect  paced connect-and-reset attempts (scans, fills)
        request  paced request/response connections (legitimate use)
        pool     a fixed number of requests, k at a time (uploader)
        workers  k workers reconnecting to one target until time is up (flood)
        cpu      a fixed workload of connections, with CPU time spent on it
"""
from __future__ import annotations

import asyncio
import bisect
import errno
import gc
import ipaddress
import json
import os
import random
import resource
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

HDR = struct.Struct("!IIH")
LINGER_RST = struct.pack("ii", 1, 0)


# --- targets -------------------------------------------------------------------
def targets(spec, seed=1):
    """An iterator of (host, port) for a target spec."""
    rnd = random.Random(seed)
    t = spec["t"]
    if t == "sweep":
        net = ipaddress.ip_network(spec["net"])
        base = int(net.network_address)
        idx = [i for i in range(1, net.num_addresses - 1) if (i & 0xFF) not in (0, 255)]
        if spec.get("order", "random") == "random":
            rnd.shuffle(idx)
        return ((str(ipaddress.ip_address(base + i)), spec["port"]) for i in idx)
    if t == "vscan":
        ports = list(range(1, 65536))
        rnd.shuffle(ports)
        return ((spec["host"], p) for p in ports)
    if t == "one":
        return iter(lambda: (spec["host"], spec["port"]), None)
    if t == "pairs":
        pairs = spec["pairs"]
        return iter(lambda: tuple(rnd.choice(pairs)), None)
    if t == "cycle":  # the pairs in order, again and again (each host visited in turn)
        pairs = [tuple(x) for x in spec["pairs"]]
        return (pairs[i % len(pairs)] for i in range(10 ** 9))
    if t == "list":
        hosts, ports = spec["hosts"], spec["ports"]
        return iter(lambda: (rnd.choice(hosts), rnd.choice(ports)), None)
    if t == "web":
        sites = lab.hosts_of(lab.WEB_SITES, spec.get("sites", 3000), 11)
        site_pick = zipf(sites, spec.get("zipf_s", 1.0), rnd)
        # the CDN: by default 16 hosts of one /24, uniform; with cdn_net, cdn_hosts
        # distinct addresses of that prefix with Zipf-distributed repeat visits
        if spec.get("cdn_net"):
            cdn_pick = zipf(lab.hosts_of(spec["cdn_net"], spec["cdn_hosts"], 13), spec.get("cdn_zipf_s", 1.0), rnd)
        else:
            cdn = lab.hosts_of(lab.CDN_NET, 16, 12)

            def cdn_pick():
                return rnd.choice(cdn)

        def pick():
            host = cdn_pick() if rnd.random() < spec.get("cdn_share", 0.3) else site_pick()
            return host, 443 if rnd.random() < 0.85 else 80
        return iter(pick, None)
    if t == "wide":  # internet-wide: random addresses over many /16s, one port
        nets = [ipaddress.ip_network(n) for n in spec["nets"]]
        weights = [n.num_addresses for n in nets]

        def pick_wide():
            net = rnd.choices(nets, weights)[0]
            while True:
                a = int(net.network_address) + rnd.randrange(net.num_addresses)
                if a & 0xFF not in (0, 255):
                    return str(ipaddress.ip_address(a)), spec["port"]
        return iter(pick_wide, None)
    if t == "torrent":
        ports = lab.torrent_ports()
        peers = lab.hosts_of(lab.TORRENT_V4, 150, 21) + lab.hosts_of(lab.TORRENT_V6, 50, 22)
        rnd.shuffle(peers)
        return iter(list(zip(peers, ports)))
    if t == "fill":
        dests = lab.hosts_of(lab.FILL_V4, spec["n4"], 31) + lab.v6_one_per_48(lab.FILL_V6, spec["n6"], 32)
        rnd.shuffle(dests)
        return ((d, rnd.randrange(1024, 65536)) for d in dests)
    if t == "distinct":  # CPU workload: distinct hosts, listening high ports
        ports = lab.torrent_ports()
        skip = spec.get("skip", 0)  # the first `skip` hosts of the list belong to another batch
        hosts = lab.hosts_of(lab.FILL_V4, skip + spec["n"], seed)[skip:]
        return ((h, rnd.choice(ports)) for h in hosts)
    raise ValueError("unknown target spec %r" % t)


def zipf(items, s, rnd):
    """A picker of items with Zipf-distributed popularity (rank k weighs 1/k^s)."""
    cum, acc = [], 0.0
    for k in range(1, len(items) + 1):
        acc += 1.0 / k ** s
        cum.append(acc)
    return lambda: items[min(len(items) - 1, bisect.bisect_left(cum, rnd.random() * acc))]


# --- one connection ------------------------------------------------------------
def classify(exc):
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                  errno.EACCES, errno.EPERM):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return "no_local_port"
    return "error"


def new_sock(host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


async def connect_only(host, port, timeout, **_):
    loop = asyncio.get_running_loop()
    s = new_sock(host)
    try:
        await asyncio.wait_for(loop.sock_connect(s, (host, port)), timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
        return classify(exc)
    finally:
        s.close()


async def request(host, port, timeout, up=256, down=1024, rtts=2, rst=False, hold=0.0, **_):
    """Connect, upload `up` bytes, read `down` bytes of reply; then keep the session
    open for `hold` seconds (a login session, an interactive shell) and close."""
    loop = asyncio.get_running_loop()
    s = new_sock(host)

    async def talk():
        await loop.sock_connect(s, (host, port))
        await loop.sock_sendall(s, HDR.pack(up, down, rtts) + bytes(up))
        got = 0
        while got < down:
            chunk = await loop.sock_recv(s, 65536)
            if not chunk:
                raise ConnectionResetError("closed after %d of %d bytes" % (got, down))
            got += len(chunk)
    try:
        await asyncio.wait_for(talk(), timeout)
        if hold:
            await asyncio.sleep(hold)
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return classify(exc)
    finally:
        s.close()


# --- statistics ------------------------------------------------------------------
class Stats:
    def __init__(self, planned=0):
        self.planned = planned
        self.outcomes = {}
        self.attempts = 0
        self.first_fail_s = None
        self.t0 = None
        self.t_end = None

    def add(self, outcome, started):
        self.attempts += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome not in ("ok", "sent") and (self.first_fail_s is None or started < self.first_fail_s):
            self.first_fail_s = started

    def result(self):
        ok = self.outcomes.get("ok", 0)
        elapsed = (self.t_end or time.monotonic()) - (self.t0 or time.monotonic())
        # attempts the job meant to make but had no time for count as failures
        tried = max(self.attempts, self.planned)
        return {"attempts": self.attempts, "planned": self.planned, "ok": ok, "outcomes": self.outcomes,
                "success": ok / tried if tried else None,
                "first_fail_s": self.first_fail_s, "elapsed_s": round(elapsed, 3),
                "rate_per_s": round(self.attempts / elapsed, 1) if elapsed > 0 else None}


# --- job kinds -------------------------------------------------------------------
def attempt_fn(job):
    fn = connect_only if job["kind"] in ("connect", "cpu") else request
    kw = {k: job[k] for k in ("up", "down", "rtts", "rst", "hold") if k in job}
    if job.get("down_range"):
        lo, hi = job["down_range"]
        rnd = random.Random(5)
        return lambda h, p, t: fn(h, p, t, **dict(kw, down=rnd.randrange(lo, hi)))
    return lambda h, p, t: fn(h, p, t, **kw)


async def paced(job, st):
    """Start attempts at job['rate'] per second, at most job['concurrency'] at once,
    until job['n'] attempts or job['duration'] seconds, whichever comes first."""
    it, fn = targets(job["targets"], job.get("seed", 1)), attempt_fn(job)
    n, rate, dur = job["n"], float(job["rate"]), float(job["duration"])
    sem = asyncio.Semaphore(job.get("concurrency", 256))
    pending = set()
    st.t0 = t0 = time.monotonic()

    async def one(host, port, started):
        try:
            st.add(await fn(host, port, job["timeout"]), started)
        finally:
            sem.release()
    i = 0
    while i < n and time.monotonic() - t0 < dur:
        # a stalled loop does not catch up in a burst: it falls behind instead
        due = min(n, int((time.monotonic() - t0) * rate) + 1, i + max(1, int(rate * 0.02)))
        while i < due:
            await sem.acquire()
            now = time.monotonic() - t0
            tgt = next(it, None) if now < dur else None
            if tgt is None:
                sem.release()
                n = i
                break
            task = asyncio.ensure_future(one(tgt[0], tgt[1], now))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.sleep(0.004)
    if pending:
        await asyncio.gather(*pending)
    st.t_end = time.monotonic()


async def pool(job, st):
    it, fn = targets(job["targets"], job.get("seed", 1)), attempt_fn(job)
    left = [job["n"]]
    deadline = time.monotonic() + job["duration"]
    st.t0 = time.monotonic()

    async def worker():
        while left[0] > 0 and time.monotonic() < deadline:
            left[0] -= 1
            host, port = next(it)
            started = time.monotonic() - st.t0
            st.add(await fn(host, port, job["timeout"]), started)
    await asyncio.gather(*(worker() for _worker in range(job["concurrency"])))
    st.t_end = time.monotonic()


async def workers(job, st):
    """k workers reconnecting to one target until time is up; with `interval`
    [lo, hi] each waits a uniform random time in between (a person, a git client)."""
    fn = attempt_fn(job)
    host, port = job["targets"]["host"], job["targets"]["port"]
    st.t0 = time.monotonic()
    deadline = st.t0 + job["duration"]
    rnd = random.Random(job.get("seed", 1))

    async def worker():
        for _try in range(job["max_per_worker"]):
            if time.monotonic() >= deadline:
                break
            started = time.monotonic() - st.t0
            outcome = await fn(host, port, job["timeout"])
            st.add(outcome, started)
            if job.get("interval"):
                await asyncio.sleep(rnd.uniform(*job["interval"]))
            elif outcome != "ok":
                await asyncio.sleep(job.get("backoff", 0.005))
    await asyncio.gather(*(worker() for _worker in range(job["workers"])))
    st.t_end = time.monotonic()


def proc_stat():
    """Machine-wide CPU seconds from /proc/stat: busy (user nice system irq softirq
    steal), softirq, steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = sum(v[:3]) + sum(v[5:8])  # user nice system irq softirq steal
    return busy / hz, v[6] / hz, v[7] / hz


async def cpu(job, st):
    """The same fixed workload `reps` times, after `warmup` connections that are
    not timed (a fresh interpreter's first connections cost more: imports, memory
    pools, socket caches); for each repetition the CPU time of this process (user
    and kernel, the kernel part including the softirq work that ran while this
    process was on the CPU), the machine's busy, softirq and steal time (other
    jobs of a shared machine included) and the involuntary context switches
    (how often another task took the CPU: a measure of interference)."""
    if job.get("warmup"):
        # hosts of the list after the measured ones: every measured one stays a first contact
        warm = dict(job, kind="cpu", seed=100, rate=1e9, duration=job["duration"],
                    targets={"t": "distinct", "n": job["warmup"], "skip": job["n"]})
        await paced(warm, Stats())
    reps = []
    for r in range(job.get("reps", 3)):
        sub = dict(job, kind="cpu", seed=100 + r, rate=1e9, duration=job["duration"],
                   targets={"t": "distinct", "n": job["n"]})
        # the interpreter's cycle collector runs when allocations add up, at a moment
        # that differs from batch to batch: not during the timed batch
        gc.collect()
        gc.disable()
        ru0, (busy0, sirq0, steal0), w0 = resource.getrusage(resource.RUSAGE_SELF), proc_stat(), time.monotonic()
        s = Stats()
        try:
            await paced(sub, s)
        finally:
            ru1, (busy1, sirq1, steal1), w1 = resource.getrusage(resource.RUSAGE_SELF), proc_stat(), time.monotonic()
            gc.enable()
        n = s.attempts or 1
        reps.append({"n": s.attempts, "ok": s.outcomes.get("ok", 0),
                     "proc_us": round(1e6 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / n, 1),
                     "sys_us": round(1e6 * (ru1.ru_stime - ru0.ru_stime) / n, 1),
                     "machine_us": round(1e6 * (busy1 - busy0) / n, 1),
                     "softirq_us": round(1e6 * (sirq1 - sirq0) / n, 1),
                     "steal_us": round(1e6 * (steal1 - steal0) / n, 1),
                     "nivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
                     "wall_s": round(w1 - w0, 3)})
        for k, v in s.outcomes.items():
            st.outcomes[k] = st.outcomes.get(k, 0) + v
        st.attempts += s.attempts
    st.reps = reps


async def syn(job, st):
    """Fire-and-forget connects: connect() sends the SYN through the normal TCP
    path (conntrack, OUTPUT hooks: what the guard sees), close() right away.
    Many times cheaper than waiting for each handshake, like a SYN scanner."""
    it = targets(job["targets"], job.get("seed", 1))
    n, rate, dur = job["n"], float(job["rate"]), float(job["duration"])
    st.t0 = t0 = time.monotonic()
    i = 0
    while i < n and time.monotonic() - t0 < dur:
        now = time.monotonic() - t0
        due = min(n, int(now * rate) + 1)
        while i < due:
            tgt = next(it, None)
            if tgt is None:
                n = i
                break
            s = socket.socket(socket.AF_INET6 if ":" in tgt[0] else socket.AF_INET,
                              socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            err = s.connect_ex(tgt)
            s.close()
            st.add("sent" if err in (0, errno.EINPROGRESS) else classify(OSError(err, "")), now)
            i += 1
        await asyncio.sleep(0.002)
    st.t_end = time.monotonic()


KINDS = {"syn": syn, "connect": paced, "request": paced, "pool": pool, "workers": workers, "cpu": cpu}


async def run_job(job):
    if job.get("start_after"):
        await asyncio.sleep(job["start_after"])
    # a pool that runs out of time (its connections hang) failed the rest of its
    # work; a paced job that falls behind only shows the machine was busy
    st = Stats(job["n"] if job["kind"] == "pool" else 0)
    await KINDS[job["kind"]](job, st)
    res = st.result()
    if hasattr(st, "reps"):
        res["reps"] = st.reps
    return job["name"], res


async def main(spec):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    t0 = time.monotonic()
    done = await asyncio.gather(*(run_job(j) for j in spec["jobs"]))
    return {"jobs": dict(done), "wall_s": round(time.monotonic() - t0, 3)}


def serve(scenario):
    """One spec a line on stdin, one result a line on stdout, until stdin closes:
    a warm process for many short measurements (the CPU rounds), whose caller
    changes the relay's rules between them."""
    for line in sys.stdin:
        out = asyncio.run(main(json.loads(line)))
        out["scenario"] = scenario
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
        sys.exit(0)
    scenario, spec = sys.argv[1], json.loads(sys.argv[2])
    out = asyncio.run(main(spec))
    out["scenario"] = scenario
    print(json.dumps(out))
