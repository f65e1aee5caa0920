"""The exitpolicy sync's watch mode against a real tor and the real guard, in a lab
namespace: tor (DisableNetwork 1, so it talks to no one) with a ControlSocket and
cookie authentication; the guard in `mode: exitpolicy` with the nftables and the
iptables (ipset) backend; a real horizontal scan of reserved addresses. The service
must put the ban into tor's ExitPolicy through SETCONF (GETCONF shows it, before
the instance's own lines), keep the torrc.d file (0640) in step, survive a SIGHUP of
tor and never print an address. Only reserved ranges inside the lab's namespaces."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import TOP, ansible_module
from test_egress_guard import listen, probe

GUARD = "torexit.hardening.egress_guard"
SYNC = os.path.join(TOP, "roles", "tor_exit", "files", "torexit_exitpolicy_sync.py")

sys.path.insert(0, os.path.join(TOP, "tests", "unit", "roles"))
from role_files import load_role_file  # noqa: E402

sync = load_role_file("tor_exit", "torexit_exitpolicy_sync.py", "exitpolicy_sync_watch_tor")


def wait_for(what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


class Tor:
    """tor in the relay namespace, as an exit that reaches no one."""

    def __init__(self, lab, tmp_path):
        self.dir = tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir(mode=0o700)
        (tmp_path / "torrc.d").mkdir()
        self.torrc = tmp_path / "torrc"
        self.torrc.write_text(
            f"%include {tmp_path}/torrc.d/\n"
            f"DataDirectory {self.data}\nControlSocket {self.data}/control\nCookieAuthentication 1\n"
            "DisableNetwork 1\nSocksPort 0\nORPort 127.0.0.1:19001\nAssumeReachable 1\nExitRelay 1\n"
            "ExitPolicy accept 198.18.0.0/15:*\nReducedExitPolicy 1\nLog notice stdout\n")
        self.proc = lab.spawn(lab.relay, shutil.which("tor"), "-f", str(self.torrc))
        wait_for(lambda: os.path.exists(self.control), 30)
        self.conn = wait_for(self._connect, 30)

    @property
    def control(self):
        return str(self.data / "control")

    def _connect(self):
        try:
            conn = sync.Control(self.control)
            conn.authenticate()
            return conn
        except (OSError, sync.ControlError):
            return None

    def exit_policy(self):
        return self.conn.get_exit_policy()


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_watch_drives_a_real_tor_through_its_control_socket(lab, tmp_path, backend):
    if not shutil.which("tor"):
        pytest.skip("needs tor")
    base = {"owner": "any", "persist": False, "mode": "exitpolicy", "backend": backend}
    result = ansible_module(lab.relay, GUARD, base)
    assert result["changed"] is True, result
    listen(lab, 22)
    tor = Tor(lab, tmp_path)
    assert tor.exit_policy() == ["accept 198.18.0.0/15:*"]

    out = tmp_path / "torrc.d" / "10-torexit-guard.conf"
    log = open(tmp_path / "sync.log", "w")
    service = subprocess.Popen(
        ["ip", "netns", "exec", lab.relay, sys.executable, SYNC, "--watch", "--output", str(out),
         "--control", tor.control, "--reload", "tor-lab.service", "--torrc", str(tor.torrc),
         "--group", "root", "--batch-min", "2"], stdout=log, stderr=subprocess.STDOUT)
    lab.procs.append(service)
    try:
        time.sleep(1)
        assert service.poll() is None

        # a horizontal scan of one /24 on port 22: in exitpolicy mode the kernel refuses
        # nothing but bans the /24 and the port; the service puts it before tor's own line
        scan = probe(lab, [["198.18.3.%d" % i, 22] for i in range(1, 31)], concurrency=1)
        assert scan["refused"] == 0 and scan["ok"] == 30, scan
        wanted = ["reject 198.18.3.0/24:22", "accept 198.18.0.0/15:*"]
        took = time.monotonic()
        wait_for(lambda: tor.exit_policy() == wanted, 10)
        print(f"{backend}: ban after the scan -> GETCONF shows it: {time.monotonic() - took:.2f} s")
        assert [line for line in out.read_text().splitlines() if not line.startswith("#")] == [
            "ExitPolicy reject 198.18.3.0/24:22"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
        assert tor.conn.command("GETCONF ReducedExitPolicy") == ["ReducedExitPolicy=1"]

        # an opt-out as the exit notice writes it: batched after the first update
        if backend == "nftables":
            lab.ns(lab.relay, "nft", "add", "element", "inet", "torexit_guard", "optout_v4",
                   "{ 198.18.77.0/24 timeout 1h }")
        else:
            lab.ns(lab.relay, "ipset", "-exist", "add", "torexit_optout_v4", "198.18.77.0/24", "timeout", "3600")
        wanted = ["reject 198.18.3.0/24:22", "reject 198.18.77.0/24:*", "accept 198.18.0.0/15:*"]
        wait_for(lambda: tor.exit_policy() == wanted, 10)

        # tor re-reads its files (SIGHUP): the file holds the same lines, the service
        # learns tor's own lines again, nothing is doubled
        os.kill(tor.proc.pid, signal.SIGHUP)  # `ip netns exec` exec()s tor: the same process
        time.sleep(1.5)
        assert tor.exit_policy() == wanted
        assert service.poll() is None

        # the opt-out ends: its line goes, tor's own line stays
        if backend == "nftables":
            lab.ns(lab.relay, "nft", "delete", "element", "inet", "torexit_guard", "optout_v4", "{ 198.18.77.0/24 }")
        else:
            lab.ns(lab.relay, "ipset", "del", "torexit_optout_v4", "198.18.77.0/24")
        wait_for(lambda: tor.exit_policy() == ["reject 198.18.3.0/24:22", "accept 198.18.0.0/15:*"], 10)
    finally:
        service.terminate()
        service.wait(timeout=10)
        log.close()
    printed = (tmp_path / "sync.log").read_text()
    assert "updated (1 by control socket): 1 reject lines (0 opt-outs, 1 bans" in printed, printed
    assert "198.18" not in printed and "2001:db8" not in printed
    ansible_module(lab.relay, GUARD, {"state": "absent", "backend": backend, "persist": False})


def test_netlink_reads_the_sets_as_nft_lists_them(lab):
    """The watch mode reads the nftables sets over netlink (no nft process): the
    same entries as `nft -j list table`, for every key layout and interval shape."""
    ansible_module(lab.relay, GUARD, {"owner": "any", "persist": False, "mode": "exitpolicy"})
    lab.ns(lab.relay, "nft", "-f", "-", input=(
        "add element inet torexit_guard ban_hscan_v4_24 { 198.18.7.0 . 22, 198.18.8.0 . 443 timeout 100s }\n"
        "add element inet torexit_guard ban_hscan_v6_48 { 2001:db8:1:: . 25 }\n"
        "add element inet torexit_guard ban_vscan_v4_32 { 198.18.9.9 }\n"
        "add element inet torexit_guard ban_vscan_v6_128 { 2001:db8::5 timeout 50s }\n"
        "add element inet torexit_guard ban_flood_v4_32 { 198.18.3.3 . 8080 }\n"
        "add element inet torexit_guard optout_v4 { 198.18.5.0/24 timeout 1h, 198.18.9.1 timeout 2h, "
        "198.18.10.0-198.18.10.5 timeout 3h, 255.255.255.0/24 timeout 1h, 198.18.20.0/24 timeout 1h, "
        "198.18.21.0/24 timeout 1h }\n"
        "add element inet torexit_guard optout_v6 { 2001:db8:5::/48 timeout 1h, 2001:db8:6::1 timeout 1h }\n"))
    script = (
        "import json, sys; sys.path.insert(0, %r); from role_files import load_role_file\n"
        "s = load_role_file('tor_exit', 'torexit_exitpolicy_sync.py', 'sync')\n"
        "key = lambda e: (e['kind'], str(e['net']), str(e['port']), e['age'])\n"
        "a = sorted(map(key, s.entries_from_nft(s.read_nft())[0]))\n"
        "b = sorted(map(key, s.entries_from_nft(s.read_nft_netlink())[0]))\n"
        "print(json.dumps([a, b]))\n" % os.path.join(TOP, "tests", "unit", "roles"))
    by_nft, by_netlink = json.loads(lab.ns(lab.relay, sys.executable, "-c", script).stdout)
    assert len(by_nft) == 15  # two touching /24s stay two
    assert [e[:3] for e in by_netlink] == [e[:3] for e in by_nft]
    # ages in whole seconds: the two reads may straddle a second
    assert all(abs(x[3] - y[3]) <= 1 for x, y in zip(by_nft, by_netlink))


def test_netlink_set_names_match_nft(lab):
    ansible_module(lab.relay, GUARD, {"owner": "any", "persist": False, "mode": "exitpolicy"})
    listed = lab.ns(lab.relay, sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r); from role_files import load_role_file; "
        "s = load_role_file('tor_exit', 'torexit_exitpolicy_sync.py', 'sync'); "
        "print(' '.join(sorted(s.nft_set_names())))" % os.path.join(TOP, "tests", "unit", "roles"))).stdout.split()
    table = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "table", "inet", "torexit_guard").stdout)
    assert listed == sorted(item["set"]["name"] for item in table["nftables"] if "set" in item)
    assert "ban_hscan_v4_24" in listed and "optout_v6" in listed


def test_detection_counters_over_netlink_match_nft(lab):
    """The watch mode's wake-up: the sum of the guard's ban-starting detect_* counters,
    read over netlink, is what nft lists, before and after a real scan bans a /24."""
    ansible_module(lab.relay, GUARD, {"owner": "any", "persist": False, "mode": "exitpolicy"})
    listen(lab, 22)
    script = (
        "import sys; sys.path.insert(0, %r); from role_files import load_role_file; "
        "s = load_role_file('tor_exit', 'torexit_exitpolicy_sync.py', 'sync'); "
        "print(s.read_detections())" % os.path.join(TOP, "tests", "unit", "roles"))

    def by_nft():
        listed = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "counters", "table", "inet",
                                   "torexit_guard").stdout)
        return sum(item["counter"]["packets"] for item in listed["nftables"]
                   if "counter" in item and item["counter"]["name"] in sync.BAN_COUNTERS)

    assert int(lab.ns(lab.relay, sys.executable, "-c", script).stdout) == by_nft() == 0
    scan = probe(lab, [["198.18.4.%d" % i, 22] for i in range(1, 31)], concurrency=1)
    assert scan["ok"] == 30, scan
    detections = by_nft()
    assert detections >= 1
    assert int(lab.ns(lab.relay, sys.executable, "-c", script).stdout) == detections
