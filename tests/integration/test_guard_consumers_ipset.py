"""The egress guard's consumers with the ipset-based iptables backend, in a namespace:
the exit notice's opt-out service writes torexit_optout_v4/_v6 with the real ipset
program (and the guard then refuses those addresses), and the tor_exit role's
exitpolicy sync turns a real horizontal-scan ban and the opt-outs into
ExitPolicy reject lines. Only reserved ranges inside the lab's namespaces."""
import importlib.util
import ipaddress
import os
import subprocess
import sys

from conftest import TOP, ansible_module
from test_egress_guard import listen, probe

GUARD = "torexit.hardening.egress_guard"
BASE = {"owner": "any", "persist": False, "backend": "iptables"}
SYNC = os.path.join(TOP, "roles", "tor_exit", "files", "torexit_exitpolicy_sync.py")
OPTOUT = os.path.join(TOP, "roles", "exit_notice", "files", "exit_notice_optout.py")


def load_optout():
    spec = importlib.util.spec_from_file_location("exit_notice_optout_it", OPTOUT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_optout_and_sync_with_the_iptables_backend(lab, tmp_path):
    result = ansible_module(lab.relay, GUARD, BASE)
    assert result["changed"] is True and result["backend"] == "iptables", result
    assert "torexit_guard" not in lab.ns(lab.relay, "nft", "list", "tables").stdout
    listen(lab, 22)
    listen(lab, 443)

    # the opt-out service's Guard, its commands run in the relay namespace
    optout = load_optout()
    calls = []

    def in_relay(argv, **kwargs):
        calls.append(argv)
        assert kwargs.pop("check") is False
        return subprocess.run(["ip", "netns", "exec", lab.relay] + argv, check=False, **kwargs)

    guard = optout.Guard(run=in_relay)
    v4 = ipaddress.ip_network("198.18.77.0/24")
    v6 = ipaddress.ip_network("2001:db8:1:5::/64")
    assert guard.backends(v4) == ["ipset"] and guard.backends(v6) == ["ipset"]
    assert guard.add(v4, 3600) == "added"
    assert guard.add(v6, 3600) == "added"
    assert guard.add(v4, 7200) == "added"  # again: -exist refreshes the timeout
    saved = lab.ns(lab.relay, "ipset", "save", "torexit_optout_v4").stdout
    assert "add torexit_optout_v4 198.18.77.0/24 timeout 7" in saved, saved
    assert "2001:db8:1:5::/64 timeout" in lab.ns(lab.relay, "ipset", "save", "torexit_optout_v6").stdout
    assert ["/usr/sbin/ipset", "-exist", "add", "torexit_optout_v6", "2001:db8:1:5::/64", "timeout",
            "3600"] in calls

    # the guard refuses new connections to the opted-out networks, and only to them
    assert probe(lab, [["198.18.77.9", 443], ["2001:db8:1:5::9", 443]]) == {"ok": 0, "refused": 2, "timeout": 0}
    assert probe(lab, [["198.18.78.9", 443], ["2001:db8:1:6::9", 443]]) == {"ok": 2, "refused": 0, "timeout": 0}

    # a horizontal scan of one /24 on port 22: the kernel adds a ban with the /24 and the port
    scan = probe(lab, [["198.18.3.%d" % i, 22] for i in range(1, 31)], concurrency=1)
    assert scan["refused"] >= 10, scan
    assert "198.18.3.0,tcp:22" in lab.ns(lab.relay, "ipset", "save", "torexit_ban_hscan_v4_24").stdout

    out = tmp_path / "10-torexit-guard.conf"
    proc = lab.ns(lab.relay, sys.executable, SYNC, "--output", str(out), check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["ExitPolicy reject 198.18.3.0/24:22", "ExitPolicy reject 198.18.77.0/24:*",
                     "ExitPolicy reject [2001:db8:1:5::]/64:*"], lines
    assert proc.stdout.startswith("updated, reloaded nothing: 3 reject lines (2 opt-outs, 1 bans")
    assert "198.18" not in proc.stdout + proc.stderr and "2001:db8" not in proc.stdout + proc.stderr

    # nothing changed: the file stays, the sync says so
    again = lab.ns(lab.relay, sys.executable, SYNC, "--output", str(out))
    assert again.stdout.startswith("unchanged: 3 reject lines")

    absent = ansible_module(lab.relay, GUARD, {"state": "absent", "backend": "iptables", "persist": False})
    assert absent["changed"] is True
    assert guard.available(v4) is False
    gone = lab.ns(lab.relay, sys.executable, SYNC, "--output", str(out))
    assert gone.stdout.startswith("updated, reloaded nothing: 0 reject lines")
