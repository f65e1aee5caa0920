"""Connection prober run inside the relay namespace: `probe.py JSON_SPEC`.

The spec lists destinations ([address, port] pairs) and a concurrency. Each
destination gets one TCP connect with a short timeout; the result counts
`ok`, `refused` and `timeout`. With `"hold": SECONDS` a client keeps each
connection that long, as an upload sends its data, then waits for the server to
close first, as an upload waits for the server's answer. Bounded: at most
300,000 destinations and 120 s.
"""
import asyncio
import json
import sys
import time

MAX_DEST, MAX_SECONDS = 300000, 120


async def one(addr, port, timeout, counts, hold=None):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
        counts["ok"] += 1
        if hold is not None:
            await asyncio.sleep(hold)
            await asyncio.wait_for(r.read(), timeout)
        w.close()
    except ConnectionRefusedError:
        counts["refused"] += 1
    except (asyncio.TimeoutError, OSError):
        counts["timeout"] += 1


async def main(spec):
    dests = spec["dests"][:MAX_DEST]
    conc = spec.get("concurrency", 50)
    timeout = spec.get("timeout", 1.0)
    counts = {"ok": 0, "refused": 0, "timeout": 0}
    deadline = time.monotonic() + min(spec.get("seconds", MAX_SECONDS), MAX_SECONDS)
    sem = asyncio.Semaphore(conc)

    async def guarded(addr, port):
        async with sem:
            if time.monotonic() < deadline:
                await one(addr, port, timeout, counts, spec.get("hold"))

    await asyncio.gather(*(guarded(a, p) for a, p in dests))
    print(json.dumps(counts))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1] if sys.argv[1] != "-" else sys.stdin.read())))
