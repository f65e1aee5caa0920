"""Issue 18: the firewall role's ORPort DoS rules in a namespace lab, on the
nftables backend and on the iptables backend (whose chains and ipsets the ufw
backend loads too, from ufw's files).

The role's own templates are rendered (with its defaults) and loaded in the relay
namespace; a listener on the ORPort holds every connection it accepts. From the
"internet" namespace, which owns 198.18.0.0/15 and 2001:db8:1::/48, come: a flood
from a few heavy IPv4 sources and from many addresses of one IPv6 /64, ordinary
clients, and a relay of tor's consensus (put into the exemption set by the guard's
relay refresh script, as on a real host), and many light sources of one IPv4 /24
and one IPv6 /48. Bounded: a few hundred connects, < 60 s per test.
"""
import json
import sys
import textwrap

import inbound_lab as IL
import pytest
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


CONSENSUS = ("network-status-version 3 microdesc\n"
             "r relay1 AAAA 2026-11-23 12:00:00 198.18.50.1 9001 0\n"
             "a [2001:db8:1:50::1]:9001\n")


class Nftables:
    """Table inet torexit_inbound, relays filled by the guard's nftables relay refresh."""
    counters, set_size = staticmethod(IL.counters), staticmethod(IL.set_size)

    @staticmethod
    def load(lab, tmp_path, mode, net_rate=0):
        lab.ns(lab.relay, "nft", "-f", str(IL.render(tmp_path, mode, net_rate)))
        IL.load_relays(lab, tmp_path, CONSENSUS)

    @staticmethod
    def ruleset(lab):
        return lab.ns(lab.relay, "nft", "list", "table", "inet", "torexit_inbound").stdout


class Iptables:
    """Chains TOREXIT-INPUT/TOREXIT-DOS*, ipsets torexit_in_*, relays by the guard's ipset relay refresh."""
    counters, set_size = staticmethod(IL.counters_xt), staticmethod(IL.set_size_xt)

    @staticmethod
    def load(lab, tmp_path, mode, net_rate=0):
        IL.load_xt(lab, IL.render_xt(tmp_path, mode, net_rate))
        IL.load_relays_xt(lab, tmp_path, CONSENSUS)

    @staticmethod
    def ruleset(lab):
        return "".join(lab.ns(lab.relay, cmd, "-t", "filter").stdout for cmd in ("iptables-save", "ip6tables-save"))


@pytest.fixture(params=[Nftables, Iptables], ids=["nftables", "iptables"])
def backend(request):
    return request.param


def setup_relay(lab, tmp_path, mode, backend, net_rate=0):
    # The relay must answer the internet's 2001:db8:1::/48 and 198.18.0.0/15 (routes exist).
    backend.load(lab, tmp_path, mode, net_rate)
    lab.spawn(lab.relay, sys.executable, "-c", SERVER, str(ORPORT))
    IL.static_neighbours(lab)
    IL.wait_listening(lab, ORPORT)


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


def test_flood_is_limited_relays_and_clients_pass(lab, tmp_path, backend):
    setup_relay(lab, tmp_path, "enforce", backend)
    assert backend.set_size(lab, "relays_v4") == 1 and backend.set_size(lab, "relays_v6") == 1
    out = run_clients(lab, flood_spec())
    hits = backend.counters(lab)
    # A source gets at most max_concurrent (9) connections, then it is blocked.
    assert out["heavy_v4"]["ok"] <= 4 * 9, out
    assert out["heavy_v6_64"]["ok"] <= 9, out        # the /64 counts as one source
    assert out["clients"] == {"ok": 60, "failed": 0}, out
    assert out["relay"] == {"ok": 60, "failed": 0}, out
    assert hits["dos_concurrency_hits"] + hits["dos_rate_hits"] >= 5, hits
    assert hits["dos_blocked_hits"] > 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 4 and backend.set_size(lab, "dos_blocked_v6") == 1
    # Nothing logged: the ruleset has no log statement.
    assert " log" not in backend.ruleset(lab).lower()


def test_light_sources_of_one_network_are_throttled_not_blocked(lab, tmp_path, backend):
    """150 IPv4 sources of one /24 and 150 IPv6 /64s of one /48, one connect each: every
    source is far below its own limits, their network is not (the opt-in per-network rate:
    60/min, burst 60)."""
    setup_relay(lab, tmp_path, "enforce", backend, net_rate=60)
    out = run_clients(lab, {
        "light_v4": [["198.18.30.%d" % i, 1, True] for i in range(1, 151)],
        "light_v6": [["2001:db8:1:%x::1" % (0x1000 + i), 1, True] for i in range(150)],
        "clients": [["198.18.20.%d" % i, 2, False] for i in range(1, 21)],
    })
    hits = backend.counters(lab)
    assert out["light_v4"]["ok"] <= 110 and out["light_v6"]["ok"] <= 110, out
    assert out["clients"] == {"ok": 40, "failed": 0}, out
    assert hits["dos_net_rate_hits"] >= 80, hits
    # the per-network limit blocks nobody
    assert backend.set_size(lab, "dos_blocked_v4") == 0 and backend.set_size(lab, "dos_blocked_v6") == 0


def test_monitor_mode_counts_but_drops_nothing(lab, tmp_path, backend):
    setup_relay(lab, tmp_path, "monitor", backend)
    spec = flood_spec()
    out = run_clients(lab, {"heavy_v4": spec["heavy_v4"], "clients": spec["clients"]})
    hits = backend.counters(lab)
    assert out["heavy_v4"] == {"ok": 160, "failed": 0}, out
    assert out["clients"] == {"ok": 60, "failed": 0}, out
    assert hits["dos_concurrency_hits"] + hits["dos_rate_hits"] > 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 4
