# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load for the bench's inbound rows (tests/bench/inbound.py), run inside a lab namespace.

    inbound_load.py server PORT SECONDS       hold every accepted connection until the
                                              client closes it (or 30 s); exits after SECONDS
    inbound_load.py flood SPEC_JSON|-         paced connects from many source addresses
    inbound_load.py cpu SPEC_JSON|-           connect + close from fresh sources; reports
                                              this process's CPU time per connection
                                              (-: the spec comes on stdin)

Flood spec: {"dst4", "dst6", "port", "timeout", "limit_s", "groups": {name: [[source,
attempts, per_second, hold_s, start_s], ...]}}. Every source makes exactly `attempts`
connects at its own pace whatever their outcome (a blocked source does not slow down,
so both variants make the same attempts); a busy event loop makes a source fall behind
its schedule, never send two SYNs closer together than 1/per_second (the per-source
limits see the pace the spec says); a connect that succeeds is held `hold_s`.
Everything stops after limit_s. Prints {group: {"attempts", "ok", "timeout", "refused",
"error"}}. Only counts per group are kept; no address is written anywhere.
"""
import asyncio
import json
import resource
import socket
import sys
import time

IP_FREEBIND = 15   # lets a socket bind any address of the namespace's local /15 and /48 routes


def raise_nofile():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


async def server(port, seconds):
    async def held(reader, writer):
        try:
            await asyncio.wait_for(reader.read(), 30)
        except (asyncio.TimeoutError, OSError):
            pass
        writer.close()
    s4 = await asyncio.start_server(held, "0.0.0.0", port, backlog=4096)
    s6 = await asyncio.start_server(held, "::", port, backlog=4096, family=socket.AF_INET6)
    await asyncio.sleep(seconds)
    s4.close()
    s6.close()


async def connect(src, dst, port, timeout):
    """A connected non-blocking socket from src, or the name of the failure."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    try:
        s.bind((src, 0))
        await asyncio.wait_for(loop.sock_connect(s, (dst, port)), timeout)
        return s, "ok"
    except asyncio.TimeoutError:
        what = "timeout"
    except ConnectionRefusedError:
        what = "refused"
    except OSError:
        what = "error"
    s.close()
    return None, what


async def flood(spec):
    out = {g: {"attempts": 0, "ok": 0, "timeout": 0, "refused": 0, "error": 0} for g in spec["groups"]}
    t0 = time.monotonic()
    tasks = []

    async def attempt(group, src, hold, sent):
        dst = spec["dst6"] if ":" in src else spec["dst4"]
        sent.set_result(time.monotonic())   # connect() sends the SYN before it first awaits
        s, what = await connect(src, dst, spec["port"], spec["timeout"])
        out[group]["attempts"] += 1
        out[group][what] += 1
        if s is not None:
            await asyncio.sleep(hold)
            s.close()

    async def source(group, src, attempts, per_s, hold, start):
        sent = None
        for i in range(attempts):
            at = t0 + start + i / per_s
            if sent is not None:   # never closer to the previous SYN than the pace
                at = max(at, await sent + 1 / per_s)
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = asyncio.get_running_loop().create_future()
            tasks.append(asyncio.ensure_future(attempt(group, src, hold, sent)))

    sources = [source(g, *row) for g, rows in spec["groups"].items() for row in rows]
    try:
        await asyncio.wait_for(asyncio.gather(*sources), spec["limit_s"])
        await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, spec["limit_s"] - (time.monotonic() - t0)))
    except asyncio.TimeoutError:
        out["_stopped_at_limit"] = True
    for t in tasks:
        t.cancel()
    out["_elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


async def cpu(spec):
    """Connect + close from each source (every one a first contact), `concurrency` at a time."""
    sem = asyncio.Semaphore(spec["concurrency"])
    res = {"ok": 0, "failed": 0}

    async def one(src):
        async with sem:
            s, what = await connect(src, spec["dst6"] if ":" in src else spec["dst4"], spec["port"],
                                    spec["timeout"])
            res["ok" if what == "ok" else "failed"] += 1
            if s is not None:
                s.close()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(s) for s in spec["sources"])), spec["limit_s"])
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = len(spec["sources"])
    user, kern = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    res.update(n=n, wall_s=round(time.monotonic() - t0, 2), proc_us=1e6 * (user + kern) / n,
               sys_us=1e6 * kern / n)
    return res


def main():
    raise_nofile()
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(server(int(sys.argv[2]), float(sys.argv[3])))
        return
    spec = json.loads(sys.stdin.read() if sys.argv[2] == "-" else sys.argv[2])
    print(json.dumps(asyncio.run(flood(spec) if mode == "flood" else cpu(spec))))


if __name__ == "__main__":
    main()
