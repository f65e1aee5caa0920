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
import subprocess
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
        # ordinary clients: 20 IPv4 and 10 IPv6 sources, one connection each
        "clients": [["198.18.20.%d" % i, 1, False] for i in range(1, 21)]
        + [["2001:db8:1:%x::1" % (0x20 + i), 1, False] for i in range(10)],
        # light sources: 20 IPv4 and 10 IPv6 /64s, 2 connects each 0.1 s apart: the
        # burst (1) lets the first through, the second comes before the rate (9/min)
        # refills a token (6.7 s) and blocks the source
        "light": [["198.18.30.%d" % i, 2, False] for i in range(1, 21)]
        + [["2001:db8:1:%x::1" % (0x30 + i), 2, False] for i in range(10)],
        # a relay of the consensus: 30 connections held at once
        "relay": [["198.18.50.1", 30, True], ["2001:db8:1:50::1", 30, True]],
    }


def test_flood_is_limited_relays_and_clients_pass(lab, tmp_path, backend):
    setup_relay(lab, tmp_path, "enforce", backend)
    assert backend.set_size(lab, "relays_v4") == 1 and backend.set_size(lab, "relays_v6") == 1
    out = run_clients(lab, flood_spec())
    hits = backend.counters(lab)
    # A source gets its burst (1 connection), then it is blocked.
    assert out["heavy_v4"]["ok"] <= 4, out
    assert out["heavy_v6_64"]["ok"] <= 1, out        # the /64 counts as one source
    assert out["light"] == {"ok": 30, "failed": 30}, out
    assert out["clients"] == {"ok": 30, "failed": 0}, out
    assert out["relay"] == {"ok": 60, "failed": 0}, out
    assert hits["dos_rate_hits"] >= 5 + 30, hits
    assert hits["dos_blocked_hits"] > 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 4 + 20 and backend.set_size(lab, "dos_blocked_v6") == 1 + 10
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
        "clients": [["198.18.20.%d" % i, 1, False] for i in range(1, 21)],
    })
    hits = backend.counters(lab)
    assert out["light_v4"]["ok"] <= 110 and out["light_v6"]["ok"] <= 110, out
    assert out["clients"] == {"ok": 20, "failed": 0}, out
    assert hits["dos_net_rate_hits"] >= 80, hits
    # the per-network limit blocks nobody
    assert backend.set_size(lab, "dos_blocked_v4") == 0 and backend.set_size(lab, "dos_blocked_v6") == 0


def test_monitor_mode_counts_but_drops_nothing(lab, tmp_path, backend):
    setup_relay(lab, tmp_path, "monitor", backend)
    spec = flood_spec()
    out = run_clients(lab, {"heavy_v4": spec["heavy_v4"], "clients": spec["clients"]})
    hits = backend.counters(lab)
    assert out["heavy_v4"] == {"ok": 160, "failed": 0}, out
    assert out["clients"] == {"ok": 30, "failed": 0}, out
    assert hits["dos_concurrency_hits"] + hits["dos_rate_hits"] > 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 4


# The listener's accept queue holds one connection (backlog 0) and is not served until the
# first SYN of every test source was dropped for it (TcpExt ListenOverflows): the sources'
# SYNs are then retransmitted (after 1 s, 3 s...) and find the queue free.
QUEUE_SERVER = textwrap.dedent("""
    import re, select, socket, sys, time
    def overflows():
        text = open("/proc/net/netstat").read()
        names, values = re.findall(r"^TcpExt: (.*)$", text, re.M)
        return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    s4 = socket.socket(socket.AF_INET); s6 = socket.socket(socket.AF_INET6)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    for s, addr in ((s4, "0.0.0.0"), (s6, "::")):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, int(sys.argv[1]))); s.listen(0)
    print("listening", flush=True)
    sys.stdin.readline()               # the relay filled both queues
    base, deadline = overflows(), time.monotonic() + 40
    print("full", flush=True)
    while overflows() < base + int(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(overflows() - base, flush=True)   # first SYNs dropped for the full queues
    held = []
    while time.monotonic() < deadline:
        for s in select.select([s4, s6], [], [], 0.2)[0]:
            held.append(s.accept()[0])
""")

QUEUE_CLIENT = textwrap.dedent("""
    import json, socket, sys, threading
    dst4, dst6, port, srcs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    out, socks = {}, []
    def one(src, timeout):
        s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET); s.settimeout(timeout)
        s.setsockopt(socket.SOL_IP, 15, 1)
        s.bind((src, 0))
        try:
            s.connect((dst6 if ":" in src else dst4, port)); out[src] = "ok"
        except OSError as e:
            out[src] = type(e).__name__
        socks.append(s)
    sys.stdin.readline()               # the server listens
    for relay in ("198.18.50.1", "2001:db8:1:50::1"):   # exempt: fills the queues
        one(relay, 5)
    print(json.dumps(out), flush=True); sys.stdin.readline()
    threads = [threading.Thread(target=one, args=(src, 20)) for src in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    print(json.dumps({src: out.get(src) for src in srcs}))
""")


def _go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def test_retransmitted_syn_is_not_counted(lab, tmp_path, backend):
    """A source's first SYN passes the limits and is dropped by the listener's full queue;
    its retransmitted SYN is still ct state new, but the conntrack mark says it was counted:
    with the burst of 1 it would otherwise block the source for 24 h."""
    backend.load(lab, tmp_path, "enforce")
    IL.static_neighbours(lab)
    srcs = ["198.18.40.1", "198.18.40.2", "2001:db8:1:40::1"]
    server = subprocess.Popen(["ip", "netns", "exec", lab.relay, sys.executable, "-c", QUEUE_SERVER, str(ORPORT),
                               str(len(srcs))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client = subprocess.Popen(["ip", "netns", "exec", lab.net, sys.executable, "-c", QUEUE_CLIENT, V4_LINK[0],
                               V6_LINK[0], str(ORPORT)] + srcs, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        _go(client)
        assert json.loads(client.stdout.readline()) == {"198.18.50.1": "ok", "2001:db8:1:50::1": "ok"}
        _go(server)
        assert server.stdout.readline().strip() == "full"
        _go(client)
        dropped = int(server.stdout.readline())
        out = json.loads(client.communicate(timeout=40)[0])
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait()
    hits = backend.counters(lab)
    assert dropped >= len(srcs), dropped
    assert out == {src: "ok" for src in srcs}, (out, hits)
    assert hits["dos_rate_hits"] == 0 and hits["dos_blocked_hits"] == 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 0 and backend.set_size(lab, "dos_blocked_v6") == 0


def test_iptables_reload_applies_a_changed_burst(lab, tmp_path):
    """A host that ran the old default (burst 9) gets the new one (1) on reload: xt_hashlimit
    keeps a table's settings while a rule of that name exists, so the name carries their digest
    (iptables and ufw load these chains)."""
    IL.load_xt(lab, IL.render_xt(tmp_path, "enforce", burst=9))
    IL.load_relays_xt(lab, tmp_path, CONSENSUS)
    IL.load_xt(lab, IL.render_xt(tmp_path, "enforce"))
    lab.spawn(lab.relay, sys.executable, "-c", SERVER, str(ORPORT))
    IL.static_neighbours(lab)
    IL.wait_listening(lab, ORPORT)
    out = run_clients(lab, {"light": [["198.18.60.%d" % i, 3, False] for i in range(1, 6)]
                            + [["2001:db8:1:6%x::1" % i, 3, False] for i in range(5)]})
    assert out["light"] == {"ok": 10, "failed": 20}, out
    assert Iptables.set_size(lab, "dos_blocked_v4") == 5 and Iptables.set_size(lab, "dos_blocked_v6") == 5


FORGOTTEN_CLIENT = textwrap.dedent("""
    import socket, sys, time
    src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(); s.setsockopt(socket.SOL_IP, 15, 1); s.settimeout(5)
    s.bind((src, 0)); s.connect((dst, port))
    print("connected", flush=True)
    sys.stdin.readline()               # the relay's conntrack was flushed
    s.send(b"x")
    time.sleep(1)
    print("sent", flush=True)
""")


def test_only_syns_enter_the_limits(lab, tmp_path, backend):
    """A connection conntrack forgot (here: a flush) is ct state new again at its next packet,
    which is no SYN: it must not count as a connection (with the burst of 1 it blocked the
    client, whose first SYN was counted already)."""
    setup_relay(lab, tmp_path, "enforce", backend)
    client = subprocess.Popen(["ip", "netns", "exec", lab.net, sys.executable, "-c", FORGOTTEN_CLIENT, "198.18.70.1",
                               V4_LINK[0], str(ORPORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "connected"
        lab.ns(lab.relay, "conntrack", "-F")
        _go(client)
        assert client.stdout.readline().strip() == "sent"
    finally:
        client.kill()
        client.wait()
    hits = backend.counters(lab)
    assert hits["dos_rate_hits"] == 0 and hits["dos_blocked_hits"] == 0, hits
    assert backend.set_size(lab, "dos_blocked_v4") == 0
