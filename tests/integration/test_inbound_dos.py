"""Issue 18: the firewall role's ORPort DoS rules (nftables) in a namespace lab.

The role's own template is rendered (with its defaults) and loaded in the relay
namespace; a listener on the ORPort holds every connection it accepts. From the
"internet" namespace, which owns 198.18.0.0/15 and 2001:db8:1::/48, come: a flood
from a few heavy IPv4 sources and from many addresses of one IPv6 /64, ordinary
clients, and a relay of tor's consensus (put into the exemption set by the guard's
relay refresh script, as on a real host). Bounded: a few hundred connects, < 60 s.
"""
import json
import sys
import textwrap

from inbound_lab import counters, load_relays, render, set_size, static_neighbours, wait_listening
from netlab import V4_LINK, V6_LINK

ORPORT = 9001

SERVER = textwrap.dedent("""
    import asyncio, socket, sys
    async def held(r, w):
        try:
            await asyncio.wait_for(r.read(), 60)
        except Exception:
            pass
        w.close()
    async def main():
        s4 = await asyncio.start_server(held, "0.0.0.0", int(sys.argv[1]), backlog=1024)
        s6 = await asyncio.start_server(held, "::", int(sys.argv[1]), backlog=1024, family=socket.AF_INET6)
        await asyncio.sleep(90)
    asyncio.run(main())
""")

# Clients: {"group": [[source, connections, parallel], ...]}. A connection is kept
# open until all of its source's connections are made (parallel) or closed right
# away (sequential, 0.1 s apart). Counts connects that succeeded per group.
CLIENT = textwrap.dedent("""
    import json, socket, sys, threading, time
    spec, dst4, dst6, port = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    out = {g: {"ok": 0, "failed": 0} for g in spec}
    lock = threading.Lock()
    def one(group, src):
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        s = socket.socket(fam); s.settimeout(0.5)
        s.setsockopt(socket.SOL_IP, 15, 1)   # IP_FREEBIND: IPv6 sources of the local /48 route
        try:
            s.bind((src, 0)); s.connect((dst6 if ":" in src else dst4, port)); ok = True
        except OSError:
            ok = False
        with lock:
            out[group]["ok" if ok else "failed"] += 1
        return s
    def source(group, src, n, parallel):
        socks = []
        for _ in range(n):
            s = one(group, src)
            if parallel:
                socks.append(s)
            else:
                s.close(); time.sleep(0.1)
        time.sleep(0.5)
        for s in socks:
            s.close()
    threads = [threading.Thread(target=source, args=(g, src, n, par)) for g, rows in spec.items()
               for src, n, par in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    print(json.dumps(out))
""")


def run_clients(lab, spec):
    proc = lab.ns(lab.net, sys.executable, "-c", CLIENT, json.dumps(spec), V4_LINK[0], V6_LINK[0], str(ORPORT),
                  timeout=60)
    return json.loads(proc.stdout)


def setup_relay(lab, tmp_path, mode):
    lab.ns(lab.relay, "nft", "-f", str(render(tmp_path, mode)))
    # The relay must answer the internet's 2001:db8:1::/48 and 198.18.0.0/15 (routes exist).
    load_relays(lab, tmp_path, "network-status-version 3 microdesc\n"
                "r relay1 AAAA 2026-11-23 12:00:00 198.18.50.1 9001 0\n"
                "a [2001:db8:1:50::1]:9001\n")
    lab.spawn(lab.relay, sys.executable, "-c", SERVER, str(ORPORT))
    static_neighbours(lab)
    wait_listening(lab, ORPORT)


def flood_spec():
    return {
        # 4 heavy IPv4 sources, 40 connections each, all held open
        "heavy_v4": [["198.18.10.%d" % i, 40, True] for i in range(1, 5)],
        # one IPv6 /64, 8 addresses, 10 held connections each: one source for the rules
        "heavy_v6_64": [["2001:db8:1:10::%x" % i, 10, True] for i in range(1, 9)],
        # ordinary clients: 20 IPv4 and 10 IPv6 sources, 2 connections each, one after the other
        "clients": [["198.18.20.%d" % i, 2, False] for i in range(1, 21)]
        + [["2001:db8:1:%x::1" % (0x20 + i), 2, False] for i in range(10)],
        # a relay of the consensus: 30 connections held at once
        "relay": [["198.18.50.1", 30, True], ["2001:db8:1:50::1", 30, True]],
    }


def test_flood_is_limited_relays_and_clients_pass(lab, tmp_path):
    setup_relay(lab, tmp_path, "enforce")
    assert "198.18.50.1" in lab.ns(lab.relay, "nft", "list", "set", "inet", "torexit_inbound", "relays_v4").stdout
    out = run_clients(lab, flood_spec())
    hits = counters(lab)
    # A source gets at most max_concurrent (9) connections, then it is blocked.
    assert out["heavy_v4"]["ok"] <= 4 * 9, out
    assert out["heavy_v6_64"]["ok"] <= 9, out        # the /64 counts as one source
    assert out["clients"] == {"ok": 60, "failed": 0}, out
    assert out["relay"] == {"ok": 60, "failed": 0}, out
    assert hits["dos_concurrency_hits"] + hits["dos_rate_hits"] >= 5, hits
    assert hits["dos_blocked_hits"] > 0, hits
    assert set_size(lab, "dos_blocked_v4") == 4 and set_size(lab, "dos_blocked_v6") == 1
    # Nothing logged: the ruleset has no log statement.
    assert " log" not in lab.ns(lab.relay, "nft", "list", "table", "inet", "torexit_inbound").stdout


def test_monitor_mode_counts_but_drops_nothing(lab, tmp_path):
    setup_relay(lab, tmp_path, "monitor")
    spec = flood_spec()
    out = run_clients(lab, {"heavy_v4": spec["heavy_v4"], "clients": spec["clients"]})
    hits = counters(lab)
    assert out["heavy_v4"] == {"ok": 160, "failed": 0}, out
    assert out["clients"] == {"ok": 60, "failed": 0}, out
    assert hits["dos_concurrency_hits"] + hits["dos_rate_hits"] > 0, hits
    assert set_size(lab, "dos_blocked_v4") == 4
