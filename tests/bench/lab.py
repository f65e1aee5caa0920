# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The abuse lab: two network namespaces, the address plan, and the counters.

`<prefix>relay` plays the exit relay; `<prefix>net` plays the internet and
answers for whole reserved ranges through local routes. All traffic stays in
these two namespaces (198.18.0.0/15, 240.0.0.0/30, 2001:db8::/32).

Only the arrival counters in the internet namespace decide what "reached" a
target: the relay side cannot lie about what the guard let through.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# --- address plan (everything inside 198.18.0.0/15 and 2001:db8::/33) -------
RELAY_V4, NET_V4 = "240.0.0.1", "240.0.0.2"          # veth, /30
RELAY_V6, NET_V6 = "2001:db8:ffff::1", "2001:db8:ffff::2"  # veth, /126, outside the /33
LOCAL_V4 = "198.18.0.0/15"      # every address here is a host of the internet namespace
LOCAL_V4_E = "244.0.0.0/6"      # class E, also local there: room to spread web sites
LOCAL_V6 = "2001:db8::/33"
# more class E, local there too (240.0.0.0/8 holds the veth /30 and stays routed)
LOCAL_V4_MORE = ("241.0.0.0/8", "242.0.0.0/7", "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8")

SWEEP_NET = "198.18.0.0/16"     # horizontal scans (port 22, later port 3389)
TORRENT_V4 = "198.19.0.0/20"
WEB_SITES = LOCAL_V4_E        # 3,000 sites over ~1,000 /16s, as on the web
FILL_V4 = "198.19.128.0/18"     # state-exhaustion fill and CPU workload
CDN_NET = "198.19.240.0/24"
VSCAN_HOST = "198.19.250.1"
FLOOD_HOST = "198.19.251.1"
FLOOD_PROBE = "198.19.252.0/24"
UPLOAD_HOST = "198.19.253.10"
LEGIT_NET = "198.19.254.0/24"
# issue 15: password guessing, web-port sweeps, internet-wide sweeps, busy-exit mix
LOGIN_NET = "198.19.200.0/24"   # victims of password guessing (one host per run)
SSH_USERS = "198.19.201.0/24"   # git-over-SSH and interactive SSH servers
KNOWN_NET = "198.19.202.0/24"   # SSH servers contacted before the internet-wide sweep
MAIL_NET = "198.19.203.0/24"    # mail submission/IMAP providers of the busy mix
FRESH_NET = "198.19.204.0/22"   # SSH servers first contacted during the internet-wide sweep
CDN22_NET = "198.19.236.0/22"   # the CDN-safe web mix: hundreds of hosts in one /22
BUSY_CDN = "198.19.232.0/22"    # the busy mix's CDN /22
WS_ANSWER = "241.1.0.0/16"      # web-port sweeps: hosts answer,
WS_RANDOM = "241.4.0.0/16"      # answer (random order),
WS_REFUSE = "241.2.0.0/16"      # refuse with RST (nft reject in the internet namespace),
WS_DARK = "241.3.0.0/16"        # stay dark (SYNs dropped there, no answer)
# internet-wide sweep: random addresses over 2,304 /16s (all local in the internet namespace)
WIDE_NETS = ("242.0.0.0/7", "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8")
FILL_V6 = "2001:db8::/34"       # one host in each of 16,384 /48s
TORRENT_V6 = "2001:db8:4000::/34"

# Counters in the internet namespace: SYNs arriving per range.
RANGES = {
    "sweep": SWEEP_NET, "torrent4": TORRENT_V4, "web": WEB_SITES, "fill4": FILL_V4,
    "cdn": CDN_NET, "vscan": VSCAN_HOST, "flood": FLOOD_HOST, "flood_probe": FLOOD_PROBE,
    "upload": UPLOAD_HOST, "legit": LEGIT_NET, "fill6": FILL_V6, "torrent6": TORRENT_V6,
    "login": LOGIN_NET, "ssh_users": SSH_USERS, "known": KNOWN_NET, "fresh": FRESH_NET, "mail": MAIL_NET,
    "cdn22": CDN22_NET, "busy_cdn": BUSY_CDN, "ws_answer": WS_ANSWER, "ws_random": WS_RANDOM,
    "ws_refuse": WS_REFUSE, "ws_dark": WS_DARK, "wide": WIDE_NETS,
}
# Ranges whose distinct hosts that saw a SYN are recorded (max per /22, leak by hosts)
HOST_SETS = {"sweep": SWEEP_NET, "ws_answer": WS_ANSWER, "ws_random": WS_RANDOM,
             "ws_refuse": WS_REFUSE, "ws_dark": WS_DARK}

FIXED_PORTS = (22, 80, 443, 587, 993, 3389)
FLOOD_PORT = 80


# Every column's relay has the stateful inbound firewall that the firewall role
# puts on every host (it accepts everything here): conntrack runs in all of them,
# so `none` is a hardened exit without the egress guard, and the guard is not
# billed for connection tracking, which the host pays for anyway.
INBOUND_BASELINE = ("table inet txbench_inbound {\n"
                    "\tchain input {\n"
                    "\t\ttype filter hook input priority filter; policy accept;\n"
                    "\t\tct state established,related accept\n"
                    "\t}\n"
                    "}\n")


def torrent_ports(n=200):
    """Deterministic "random high ports" shared by the servers and the clients."""
    return sorted(random.Random(4242).sample(range(20000, 60000), n))


def all_server_ports():
    return sorted(set(FIXED_PORTS) | set(torrent_ports()))


def hosts_of(net, n, seed):
    """n distinct host addresses of net (deterministic, never .0/.255 in IPv4)."""
    net = ipaddress.ip_network(net)
    rnd = random.Random(seed)
    out, seen = [], set()
    size = net.num_addresses
    while len(out) < n and len(seen) < size:
        a = net.network_address + rnd.randrange(1, size - 1)
        if a in seen or (a.version == 4 and int(a) & 0xFF in (0, 255)):
            seen.add(a)
            continue
        seen.add(a)
        out.append(str(a))
    return out


def v6_one_per_48(net, n, seed):
    """n IPv6 hosts of net, each in a different /48 while they last, random interface ids."""
    net = ipaddress.ip_network(net)
    rnd = random.Random(seed)
    n48 = 2 ** (48 - net.prefixlen)
    out = []
    for i in range(n):
        p48 = (i * 7919) % n48  # walks all /48s before repeating one
        host = (p48 << 80) | rnd.getrandbits(64) | (i // n48) << 64
        out.append(str(net.network_address + host))
    return out


# --- shell helpers -----------------------------------------------------------
def stop_process(proc, wait=5):
    """Stop a child process: SIGTERM, then SIGKILL after `wait` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(wait)


def sh(*cmd, check=True, capture=True, timeout=120, inp=None):
    r = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, input=inp, check=False)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (rc %d): %s" % (" ".join(cmd), r.returncode,
                                                      (r.stderr or r.stdout or "").strip()[-800:]))
    return r


class Lab:
    """Namespaces, veth, local routes, arrival counters and the server process."""

    def __init__(self, prefix="tx-bench-"):
        self.prefix = prefix
        self.relay = prefix + "relay"
        self.net = prefix + "net"
        self.veth_r = prefix + "r0"
        self.veth_n = prefix + "n0"
        self.server = None
        self.procs = []
        self.delay_mode = "server"

    def ns(self, which, *cmd, **kw):
        return sh("ip", "netns", "exec", which, *cmd, **kw)

    # -- lifecycle --
    def setup(self):
        self.teardown()  # leftovers of an interrupted run
        sh("ip", "netns", "add", self.relay)
        sh("ip", "netns", "add", self.net)
        sh("ip", "link", "add", self.veth_r, "netns", self.relay, "type", "veth",
           "peer", "name", self.veth_n, "netns", self.net)
        for ns, dev, a4, a6 in ((self.relay, self.veth_r, RELAY_V4, RELAY_V6),
                                (self.net, self.veth_n, NET_V4, NET_V6)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", a4 + "/30", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", a6 + "/126", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            self.ns(ns, "sysctl", "-q", "-w", "net.core.somaxconn=16384",
                    "net.ipv4.tcp_max_syn_backlog=16384", "net.ipv4.tcp_tw_reuse=1")
        sh("ip", "-n", self.relay, "route", "add", "default", "via", NET_V4)
        sh("ip", "-n", self.relay, "-6", "route", "add", "default", "via", NET_V6)
        sh("ip", "-n", self.net, "route", "add", "local", LOCAL_V4, "dev", "lo")
        sh("ip", "-n", self.net, "route", "add", "local", LOCAL_V4_E, "dev", "lo")
        for net in LOCAL_V4_MORE:
            sh("ip", "-n", self.net, "route", "add", "local", net, "dev", "lo")
        sh("ip", "-n", self.net, "-6", "route", "add", "local", LOCAL_V6, "dev", "lo")
        # 10 ms each way where the kernel has netem; otherwise the servers emulate
        # the path delay in their replies (see docs/bench.md).
        ok = all(sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem",
                    "delay", "10ms", "limit", "100000", check=False).returncode == 0
                 for ns, dev in ((self.relay, self.veth_r), (self.net, self.veth_n)))
        self.delay_mode = "netem" if ok else "server"
        self.ns(self.net, "nft", "-f", "-", inp=self.counting_ruleset())
        self.ns(self.relay, "nft", "-f", "-", inp=INBOUND_BASELINE)
        self.start_server()

    def teardown(self):
        for proc in self.procs + ([self.server] if self.server else []):
            stop_process(proc)
        self.procs, self.server = [], None
        for ns in (self.relay, self.net):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)

    def restart_server(self):
        """A fresh server process: each one stops by itself after server.py's
        --max-seconds (30 min), and a full bench with six variants runs about 40 min
        (bench.py starts one for each variant)."""
        if self.server:
            stop_process(self.server)
            self.server = None
        self.start_server()

    def start_server(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.net, sys.executable, os.path.join(HERE, "server.py"),
             "--rtt-ms", "0" if self.delay_mode == "netem" else "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("server in %s did not start: %s %s" % (
                self.net, line, self.server.stderr.read()[-500:]))

    # -- arrival counters in the internet namespace --
    def counting_ruleset(self):
        lines = ["table inet txbench {", "  counter syn_all { }"]
        for name in RANGES:
            lines.append("  counter c_%s { }" % name)
        for name in HOST_SETS:
            lines.append("  set h_%s { type ipv4_addr; size 131072; flags dynamic; }" % name)
        lines += ["  chain pre {",
                  "    type filter hook prerouting priority -300; policy accept;",
                  '    iifname "%s" tcp flags & (fin | syn | rst | ack) == syn jump syn' % self.veth_n,
                  "  }", "  chain syn {", "    counter name syn_all"]
        for name, net in RANGES.items():
            nets = net if isinstance(net, tuple) else (net,)
            fam = "ip6" if ":" in nets[0] else "ip"
            lines.append("    %s daddr %s counter name c_%s" % (
                fam, "{ %s }" % ", ".join(nets) if len(nets) > 1 else nets[0], name))
        for name, net in HOST_SETS.items():
            lines.append("    ip daddr %s add @h_%s { ip daddr }" % (net, name))
        # web-port sweep targets: one /16 refuses (RST), one stays dark (no answer)
        lines += ["  }", "  chain input {", "    type filter hook input priority 0; policy accept;",
                  "    ip daddr %s tcp flags syn reject with tcp reset" % WS_REFUSE,
                  "    ip daddr %s drop" % WS_DARK, "  }", "}"]
        return "\n".join(lines) + "\n"

    def counters(self):
        out = json.loads(self.ns(self.net, "nft", "-j", "list", "counters", "table",
                                 "inet", "txbench").stdout)
        res = {}
        for item in out["nftables"]:
            c = item.get("counter")
            if c:
                res[c["name"].removeprefix("c_")] = c["packets"]
        return res

    def flush_sweep_hosts(self, name="sweep"):
        self.ns(self.net, "nft", "flush", "set", "inet", "txbench", "h_" + name)

    def sweep_host_stats(self, name="sweep"):
        """Distinct hosts of a recorded range that saw a SYN, and the most in any /22."""
        out = json.loads(self.ns(self.net, "nft", "-j", "list", "set", "inet", "txbench",
                                 "h_" + name, timeout=60).stdout)
        elems = []
        for item in out["nftables"]:
            if "set" in item:
                elems = item["set"].get("elem", [])
        per22 = {}
        for e in elems:
            a = e if isinstance(e, str) else e.get("elem", {}).get("val", "")
            key = int(ipaddress.ip_address(a)) >> 10
            per22[key] = per22.get(key, 0) + 1
        return {"distinct_hosts": len(elems), "max_per_22": max(per22.values(), default=0)}

    # -- relay side --
    def reset_relay(self):
        """Flush everything a variant may have left in the relay namespace."""
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle", "raw"):
                self.ns(self.relay, tool, "-t", table, "-F", check=False)
                self.ns(self.relay, tool, "-t", table, "-X", check=False)
        self.ns(self.relay, "conntrack", "-F", check=False)
        left = self.ns(self.relay, "nft", "list", "ruleset").stdout
        return left.replace(INBOUND_BASELINE, "")   # nft lists it exactly so

    def loadgen(self, scenario, params, timeout):
        """Run one load-generator process in the relay namespace; returns its JSON."""
        return json.loads(self.loadgen_start(scenario, params).communicate(timeout=timeout)[0])

    def loadgen_worker(self, scenario):
        """A load generator that stays up for many measurements (Worker)."""
        return Worker(self, scenario)

    def loadgen_start(self, scenario, params):
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.relay, sys.executable, os.path.join(HERE, "loadgen.py"),
             scenario, json.dumps(params)],
            stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc


class Worker:
    """A load generator that stays up (`loadgen.py --serve`): one spec in, one
    result out, the same warm process for every measurement."""

    def __init__(self, lab, scenario):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.relay, sys.executable, os.path.join(HERE, "loadgen.py"), "--serve", scenario],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        lab.procs.append(self.proc)

    def run(self, params, timeout):
        self.proc.stdin.write(json.dumps(params) + "\n")
        self.proc.stdin.flush()
        ready, _w, _x = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError("load generator gave no result within %d s (rc %s)" % (timeout, self.proc.poll()))
        return json.loads(line)

    def close(self):
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        stop_process(self.proc)


def wait_all(procs, timeout):
    """Collect JSON from several loadgen processes started together."""
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        left = max(1.0, deadline - time.monotonic())
        try:
            out.append(json.loads(p.communicate(timeout=left)[0]))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append({"error": "load generator overran its time limit"})
        except ValueError:
            out.append({"error": "load generator failed (rc %s)" % p.returncode})
    return out
