# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_firewall: ports in nftables, ufw and legacy iptables."""

from __future__ import annotations

import json

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
    assert sshd_firewall.ufw_open(UFW, port) is is_open


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
