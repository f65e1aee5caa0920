# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo's abuse drill through Tor, run in the client container.

    TORKIT_DIR=DIR python3 tordrill.py --relay NAME=ADDRESS=MODE ... [--users-after NAME]

The client's tor (SocksPort 9050, ControlPort 9051 on 127.0.0.1) is pinned to one
relay at a time (ExitNodes ADDRESS, StrictNodes 1) and sends, through a 3-hop circuit:
an upload burst and CDN-style browsing (ordinary use, must pass) and a sweep of one /24
on port 22 (abuse: `enforce` refuses it in the kernel, `exitpolicy` makes tor refuse it,
`monitor` lets it pass). Every target is inside 198.19.0.0/16, answered only by the
demo's internet container, which first sends the source address the connection came
from: the exit that carried the stream. After the relay given with --users-after (the
exitpolicy one), Tor users who do not pin an exit ask for the /24 it refused: other
exits carry them.

Prints one JSON object per row. Kept: counts, the exits' own addresses and tor's
end reasons; never a target per stream. Bounded: every stream has a timeout, every
scenario a fixed number of streams.
"""

import argparse
import asyncio
import json
import os
import sys
import time

# torkit.py (tests/integration/, shared with the tests' Tor network): mounted into the
# client container, whose directory TORKIT_DIR names
sys.path.insert(0, os.environ.get("TORKIT_DIR") or os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests", "integration"))
import torkit as K  # noqa: E402

SOCKS, CONTROL = 9050, 9051
NET = "198.19."


async def stream(host, port, timeout, send=0, user=None):
    """One stream through Tor: returns (outcome, exit address or None)."""
    outcome, reader, writer = await K.socks_open(SOCKS, host, port, timeout, user)
    if outcome != "ok":
        return outcome, None
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        exit_addr = (line.decode(errors="replace").split() or [None])[0]
        if exit_addr is None:
            return "closed", None
        if send:
            # the internet says how much arrived: the upload went all the way through Tor
            writer.write(b"upload %d\n" % send)
            chunk, left = b"\0" * 65536, send
            while left > 0:
                writer.write(chunk[:left])
                await asyncio.wait_for(writer.drain(), timeout)
                left -= min(left, len(chunk))
            answer = await asyncio.wait_for(reader.readline(), timeout)
            if answer.split() != [b"received", b"%d" % send]:
                return "short", None
        return "ok", exit_addr
    except asyncio.TimeoutError:
        return "timeout", None
    except (OSError, asyncio.IncompleteReadError):
        return "error", None
    finally:
        writer.close()


async def many(pairs, concurrency, timeout, rate=None, send=0, users=None, attempts=1):
    """Streams to (host, port) pairs; counts per outcome and per exit address."""
    sem = asyncio.Semaphore(concurrency)
    counts, exits = {}, {}
    t0 = time.monotonic()

    async def one(host, port, user):
        try:
            for attempt in range(attempts):
                outcome, exit_addr = await stream(host, port, timeout, send,
                                                  "%s-%d" % (user, attempt) if user else None)
                if outcome == "ok":
                    break
            counts[outcome] = counts.get(outcome, 0) + 1
            if exit_addr:
                exits[exit_addr] = exits.get(exit_addr, 0) + 1
        finally:
            sem.release()

    tasks = []
    for i, (host, port) in enumerate(pairs):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await sem.acquire()
        tasks.append(asyncio.ensure_future(one(host, port, users and "%s%d" % (users, i))))
    await asyncio.wait(tasks, timeout=attempts * timeout * 2 + 10)
    return counts, exits, round(time.monotonic() - t0, 2)


def hosts(third, first, last, port):
    return [(NET + "%d.%d" % (third, h), port) for h in range(first, last + 1)]


def row(relay, mode, scenario, what, counts, exits, seconds, reasons, **extra):
    attempts = sum(counts.values())
    out = {"relay": relay, "mode": mode, "scenario": scenario, "what": what, "attempts": attempts,
           "passed": counts.get("ok", 0), "refused": attempts - counts.get("ok", 0), "seconds": seconds,
           "exits": exits, "outcomes": counts, "reasons": reasons}
    out.update(extra)
    print(json.dumps(out), flush=True)
    return out


def wait_for(what, check, timeout):
    t0 = time.monotonic()
    while True:
        got = check()
        if got:
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > timeout:
            raise SystemExit("tordrill: no %s after %.0f s" % (what, timeout))
        time.sleep(1.0)


def exits_in_consensus(ctl):
    """Addresses of the relays with the Exit flag in the client's consensus."""
    out, addr = set(), None
    for line in ctl.getinfo("ns/all").splitlines():
        if line.startswith("r "):
            addr = line.split()[6]
        elif line.startswith("s ") and addr and "Exit" in line.split()[1:]:
            out.add(addr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relay", action="append", required=True, help="NAME=ADDRESS=MODE")
    ap.add_argument("--users-after", default="", help="relay after whose sweep unpinned users ask for its /24")
    ap.add_argument("--ready-timeout", type=float, default=240.0)
    args = ap.parse_args()
    relays = [tuple(r.split("=", 2)) for r in args.relay]
    ctl = K.Control(("127.0.0.1", CONTROL))
    took = wait_for("bootstrapped client", lambda: "PROGRESS=100" in ctl.getinfo("status/bootstrap-phase"),
                    args.ready_timeout)
    want = {addr for _n, addr, _m in relays}
    took_exits = wait_for("consensus with every relay as exit", lambda: want <= exits_in_consensus(ctl),
                          args.ready_timeout)
    print(json.dumps({"ready": True, "bootstrap_wait_s": took, "exits_wait_s": took_exits,
                      "exits": sorted(exits_in_consensus(ctl))}), flush=True)
    events = K.Control(("127.0.0.1", CONTROL))
    events.subscribe("STREAM")

    def reasons():
        """Streams per end reason (tor's REMOTE_REASON, else REASON) of the streams that
        did not succeed; a stream tor retried on other circuits counts once."""
        why = {}
        for _t, line in events.take():
            words = line.split()
            if len(words) < 4 or words[1] != "STREAM" or words[3] not in ("FAILED", "DETACHED", "CLOSED"):
                continue
            kv = dict(w.split("=", 1) for w in words[5:] if "=" in w)
            reason = kv.get("REMOTE_REASON") or kv.get("REASON")
            if reason and reason not in ("DONE", "END"):
                why.setdefault(words[2], reason)
        out = {}
        for reason in why.values():
            out[reason] = out.get(reason, 0) + 1
        return out

    def run(coro):
        return asyncio.run(coro)

    def new_circuits():
        """NEWNYM, and close every circuit: clean circuits built while another exit (or
        none) was pinned would carry the next relay's streams otherwise (seen after the
        unpinned users' step; NEWNYM alone leaves clean circuits, and tor delays it
        within 10 s of the last one)."""
        ctl.new_circuits()

    ok = True
    for index, (name, addr, mode) in enumerate(relays):
        ctl.cmd("SETCONF ExitNodes=%s StrictNodes=1" % addr)
        new_circuits()
        # a first stream through this exit (a new circuit may need a few tries)
        t0 = time.monotonic()
        while True:
            outcome, exit_addr = run(stream(NET + "1.1", 443, 15.0))
            if outcome == "ok" and exit_addr == addr:
                break
            if outcome == "ok":
                outcome = "carried by another exit"
                new_circuits()
            if time.monotonic() - t0 > 90:
                print(json.dumps({"relay": name, "error": "no stream through %s within 90 s (%s)" % (addr, outcome)}),
                      flush=True)
                ok = False
                break
            time.sleep(1.0)
        if outcome != "ok":
            continue
        reasons()
        # ordinary use: 4 x 2 MiB to one host, 100 hosts of a CDN's /24 on 443
        c, e, s = run(many([(NET + "4.20", 443)] * 4, 4, 30.0, send=2 << 20))
        row(name, mode, "upload", "4 x 2 MiB to 198.19.4.20:443", c, e, s, reasons(), ready_s=round(time.monotonic() - t0, 1),
            mbit_s=round(c.get("ok", 0) * (2 << 20) * 8 / max(s, 0.001) / 1e6, 1))
        # (paced as pages load: the guard confirms a /22 that answers, not in the same instant)
        c, e, s = run(many(hosts(5, 1, 100, 443), 20, 15.0, rate=20))
        row(name, mode, "browse", "198.19.5.1-100 port 443, 20/s", c, e, s, reasons())
        # abuse: one /24 per relay on port 22 at 20 new streams a second
        third = 20 + index
        c, e, s = run(many(hosts(third, 1, 100, 22), 50, 8.0, rate=20))
        row(name, mode, "sweep", "198.19.%d.1-100 port 22, 20/s" % third, c, e, s, reasons())
        if name == args.users_after:
            # Tor users who do not pin an exit, one circuit each, ask for the /24 this
            # relay refused; a stream refused by it is retried on a new circuit
            ctl.cmd("RESETCONF ExitNodes StrictNodes")
            new_circuits()
            time.sleep(0.5)
            c, e, s = run(many(hosts(third, 201, 212, 22), 12, 15.0, users="user", attempts=3))
            row("any", "-", "users", "12 Tor users to 198.19.%d.201-212 port 22" % third, c, e, s, reasons(),
                avoid=addr)
    ctl.cmd("RESETCONF ExitNodes StrictNodes")
    events.close()
    ctl.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
