# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_firewall: ports in nftables, ufw and legacy iptables."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_firewall

NFT = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "inet", "name": "f", "handle": 1}},
    {"chain": {"family": "inet", "table": "f", "name": "input", "hook": "input", "type": "filter", "policy": "drop"}},
    {"chain": {"family": "inet", "table": "f", "name": "ssh", "handle": 4}},
    {"set": {"family": "inet", "table": "f", "name": "sshports", "type": "inet_service", "elem": [2200]}},
    {"rule": {"family": "inet", "table": "f", "chain": "input", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
        {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [{"range": [3000, 3010]}, 4000]}}},
        {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "@sshports"}},
        {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 5000}},
        {"drop": None}]}},
]}


@pytest.mark.parametrize("port, is_open", [(22, True), (3005, True), (4000, True), (2200, True),
                                           (2222, False), (5000, False)])
def test_nft_open_decides_from_accepting_dport_rules(port, is_open):
    result, blocking = sshd_firewall.nft_open(json.dumps(NFT), port)
    assert result is is_open
    assert blocking == ([] if is_open else ["inet f"])


def test_nft_policy_accept_is_open_unless_input_ends_in_a_drop():
    ruleset = {"nftables": [
        {"chain": {"family": "ip", "table": "t", "name": "in", "hook": "input", "policy": "accept"}}]}
    assert sshd_firewall.nft_open(json.dumps(ruleset), 2222)[0] is True
    ruleset["nftables"].append({"rule": {"family": "ip", "table": "t", "chain": "in",
                                         "expr": [{"counter": None}, {"drop": None}]}})
    assert sshd_firewall.nft_open(json.dumps(ruleset), 2222)[0] is False
    assert sshd_firewall.nft_open("", 2222) == (True, [])


UFW = """Status: active

To                         Action      From
--                         ------      ----
OpenSSH                    ALLOW       Anywhere
2222/tcp                   LIMIT       Anywhere
3000:3100/tcp              ALLOW       198.18.0.0/15
4000                       DENY        Anywhere
4000                       ALLOW       Anywhere
5000/udp                   ALLOW       Anywhere
2222/tcp (v6)              LIMIT       Anywhere (v6)
"""


@pytest.mark.parametrize("port, is_open", [(22, True), (2222, True), (3050, True), (4000, False),
                                           (5000, False), (6000, False)])
def test_ufw_first_matching_rule_decides(port, is_open):
    # 3000:3100 is allowed from 198.18.0.0/15 only: the controller's address decides.
    assert sshd_firewall.ufw_open(UFW, port, source="198.18.0.5") is is_open


def test_ufw_inactive_is_not_consulted():
    assert sshd_firewall.ufw_open("Status: inactive\n", 2222) is None


IPT = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 2200:2300,4000 -j ACCEPT
COMMIT
"""


def test_iptables_legacy_rules():
    assert sshd_firewall.iptables_open(IPT, 22) and sshd_firewall.iptables_open(IPT, 2250) and sshd_firewall.iptables_open(IPT, 4000)
    assert not sshd_firewall.iptables_open(IPT, 2400)
    assert sshd_firewall.iptables_open(IPT.replace(":INPUT DROP", ":INPUT ACCEPT"), 2400)
    assert not sshd_firewall.iptables_open(IPT.replace(":INPUT DROP", ":INPUT ACCEPT") .replace("COMMIT", "-A INPUT -j DROP\nCOMMIT"),
                                           2400)


# `nft -j list ruleset` of golden/sshd/conditions.nft, loaded in a scratch network
# namespace (unshare -n) with nftables 1.0.6: accept rules with source and interface
# conditions.
with open(os.path.join(os.path.dirname(__file__), "golden", "sshd", "conditions.json")) as _f:
    CONDITIONS = _f.read()


@pytest.mark.parametrize("port, source, interface, is_open", [
    (2222, "192.0.2.9", "eth0", True),      # ip saddr 192.0.2.9
    (2222, "198.18.0.5", "eth0", False),
    (2222, None, "eth0", False),            # address unknown: the rule cannot be shown to match
    (2223, "198.18.0.5", "eth1", True),     # iifname "eth1"
    (2223, "198.18.0.5", "eth0", False),
    (2223, "198.18.0.5", None, False),
    (2224, "198.18.0.5", "lo", True),       # ip saddr 198.18.0.0/15 iif "lo"
    (2224, "198.18.0.5", "eth0", False),
    (2224, "192.0.2.9", "lo", False),
    (2225, "2001:db8::5", "eth0", True),    # ip6 saddr 2001:db8::/32
    (2225, "198.18.0.5", "eth0", False),
    (2222, "2001:db8::5", "eth0", False),   # an ip saddr rule never matches IPv6
    (2226, "198.18.0.5", "eth0", True),     # ip saddr != 192.0.2.9
    (2226, "192.0.2.9", "eth0", False),
    (2227, "198.18.0.5", "eth0", True),     # ip saddr @admins
    (2227, "198.18.0.6", "eth0", False),
    (2228, "192.0.2.20", "eth0", True),     # ip saddr { 192.0.2.1-192.0.2.20, 198.18.0.0/16 }
    (2228, "198.18.200.1", "eth0", True),
    (2228, "192.0.2.21", "eth0", False),
    (2228, "198.19.0.1", "eth0", False),
    (2229, "198.18.0.5", "eth3", True),     # iifname { "eth*", "wg0" }
    (2229, "198.18.0.5", "wg0", True),
    (2229, "198.18.0.5", "lo", False),
    (2230, "198.18.0.5", "eth0", True),     # iifname != "eth1"
    (2230, "198.18.0.5", "eth1", False),
])
def test_nft_open_honours_source_and_interface_of_accept_rules(port, source, interface, is_open):
    result, blocking = sshd_firewall.nft_open(CONDITIONS, port, source=source, interface=interface)
    assert result is is_open
    assert blocking == ([] if is_open else ["inet f"])


class FakeModule:
    """get_bin_path/run_command of AnsibleModule: only ip and nft exist."""

    def __init__(self, dev):
        self.dev, self.commands = dev, []

    def get_bin_path(self, name, opt_dirs=None):
        return "/usr/sbin/" + name if name in ("ip", "nft") else None

    def run_command(self, cmd):
        self.commands.append(cmd)
        if cmd[0].endswith("/ip"):
            return 0, json.dumps([{"dst": cmd[-1], "dev": self.dev}]), ""
        return 0, CONDITIONS, ""


@pytest.mark.parametrize("dev, reason", [("eth1", None), ("eth0", "tcp dport 2223 from 198.18.0.5 on eth0")])
def test_firewall_checker_uses_the_interface_the_controller_is_routed_through(dev, reason):
    module = FakeModule(dev)
    result = sshd_firewall.firewall_checker(module, "198.18.0.5")(2223)
    assert module.commands[0] == ["/usr/sbin/ip", "-j", "route", "get", "198.18.0.5"]
    assert result is None if reason is None else reason in result


def test_firewall_checker_without_an_address_names_the_option():
    module = FakeModule("eth1")
    result = sshd_firewall.firewall_checker(module, None)(2222)
    assert "set connecting_address" in result and all(not c[0].endswith("/ip") for c in module.commands)


UFW_CONDITIONS = """Status: active

To                         Action      From
--                         ------      ----
2222/tcp                   ALLOW       192.0.2.9
2223/tcp on eth1           ALLOW       Anywhere
2224/tcp                   DENY        192.0.2.0/24
2224/tcp                   ALLOW       Anywhere
2225/tcp (v6)              ALLOW       Anywhere (v6)
2226/tcp                   ALLOW       2001:db8::/32
"""


@pytest.mark.parametrize("port, source, interface, is_open", [
    (2222, "192.0.2.9", "eth0", True), (2222, "198.18.0.5", "eth0", False), (2222, None, "eth0", False),
    (2223, "198.18.0.5", "eth1", True), (2223, "198.18.0.5", "eth0", False), (2223, "198.18.0.5", None, False),
    (2224, "198.18.0.5", "eth0", True), (2224, "192.0.2.7", "eth0", False), (2224, None, None, False),
    (2225, "2001:db8::5", "eth0", True), (2225, "198.18.0.5", "eth0", False),
    (2226, "2001:db8::5", "eth0", True), (2226, "198.18.0.5", "eth0", False),
])
def test_ufw_open_honours_from_column_family_and_interface(port, source, interface, is_open):
    assert sshd_firewall.ufw_open(UFW_CONDITIONS, port, source=source, interface=interface) is is_open


# iptables-legacy-save output of three rules added in a scratch namespace (iptables 1.8.9).
IPT_CONDITIONS = """*filter
:INPUT DROP [0:0]
-A INPUT -s 192.0.2.9/32 -p tcp -m tcp --dport 2222 -j ACCEPT
-A INPUT ! -s 192.0.2.9/32 -i eth+ -p tcp -m tcp --dport 2223 -j ACCEPT
-A INPUT ! -i eth1 -p tcp -m multiport --dports 2224 -j ACCEPT
COMMIT
"""


@pytest.mark.parametrize("port, source, interface, is_open", [
    (2222, "192.0.2.9", "eth0", True), (2222, "198.18.0.5", "eth0", False), (2222, None, "eth0", False),
    (2223, "198.18.0.5", "eth3", True), (2223, "192.0.2.9", "eth3", False), (2223, "198.18.0.5", "wg0", False),
    (2224, "198.18.0.5", "eth0", True), (2224, "198.18.0.5", "eth1", False), (2224, "198.18.0.5", None, False),
])
def test_iptables_open_honours_source_and_interface(port, source, interface, is_open):
    assert sshd_firewall.iptables_open(IPT_CONDITIONS, port, source=source, interface=interface) is is_open
