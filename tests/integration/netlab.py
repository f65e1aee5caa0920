"""A two-namespace lab: a relay and an "internet" that owns whole reserved ranges.

The internet namespace answers for 198.18.0.0/15 and 2001:db8:1::/48 through local
routes, so connections from the relay to any address there reach it. Traffic
never leaves the namespaces this lab creates.
"""
import os
import socket
import subprocess
import time
import uuid

V4_LINK = ("240.0.0.1", "240.0.0.2")          # relay, internet
V6_LINK = ("2001:db8:ffff::1", "2001:db8:ffff::2")
V4_RANGE = "198.18.0.0/15"
V6_RANGE = "2001:db8:1::/48"


def sh(*args, **kw):
    return subprocess.run(list(args), check=kw.pop("check", True), capture_output=True, text=True, **kw)


class Lab:
    def __init__(self, prefix="tx-it", names=None):
        """names: (relay, internet) namespace names instead of PREFIX-r-TAG / PREFIX-n-TAG."""
        tag = uuid.uuid4().hex[:6]
        self.relay, self.net = names or ("%s-r-%s" % (prefix, tag), "%s-n-%s" % (prefix, tag))
        self.procs = []

    def __enter__(self):
        try:
            self._build()
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _build(self):
        sh("ip", "netns", "add", self.relay)
        sh("ip", "netns", "add", self.net)
        veth_r, veth_n = "v%sr" % self.relay[-6:], "v%sn" % self.relay[-6:]
        sh("ip", "link", "add", veth_r, "netns", self.relay, "type", "veth", "peer", "name", veth_n, "netns", self.net)
        for ns, dev, v4, v6 in ((self.relay, veth_r, V4_LINK[0], V6_LINK[0]), (self.net, veth_n, V4_LINK[1], V6_LINK[1])):
            self.ns(ns, "ip", "link", "set", "lo", "up")
            self.ns(ns, "ip", "link", "set", dev, "up")
            self.ns(ns, "ip", "addr", "add", v4 + "/30", "dev", dev)
            self.ns(ns, "ip", "-6", "addr", "add", v6 + "/126", "dev", dev, "nodad")
        self.ns(self.relay, "ip", "route", "add", V4_RANGE, "via", V4_LINK[1])
        self.ns(self.relay, "ip", "-6", "route", "add", V6_RANGE, "via", V6_LINK[1])
        self.ns(self.net, "ip", "route", "add", "local", V4_RANGE, "dev", "lo")
        self.ns(self.net, "ip", "-6", "route", "add", "local", V6_RANGE, "dev", "lo")
        # Reply with RST to closed ports quickly; accept on listening ones.
        self.ns(self.net, "sysctl", "-qw", "net.ipv4.tcp_syncookies=0")

    def ns(self, ns, *args, check=True, **kw):
        return sh("ip", "netns", "exec", ns, *args, check=check, **kw)

    def spawn(self, ns, *args):
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + list(args),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in (self.relay, self.net):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def can_use_netns():
    return os.geteuid() == 0 and sh("ip", "netns", "list", check=False).returncode == 0


def wait_port(lab, port, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.ns(lab.net, "ss", "-ltnH", "sport = :%d" % port, check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("listener on port %d did not start" % port)


def socket_family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET
