"""The nftables renderer: golden rulesets and the rules that decide a packet's fate."""

import pytest
from golden_files import golden

from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as gn
from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp


def render(**params):
    p = gp.build_policy(params, user_exists=lambda name: True)
    return p, gn.render(p, gp.policy_digest(p))


@pytest.mark.parametrize("name,params", [
    ("default", {}),
    ("monitor-any-lists", {"mode": "monitor", "owner": "any", "allow": ["198.51.100.0/28"],
                           "deny": ["203.0.113.0/24:22", "[2001:db8:dead::/48]"]}),
    ("large-drop", {"profile": "large", "reject_with": "drop"}),
])
def test_golden(name, params):
    """The rendered file equals the reviewed golden copy. Regenerate with
    TOREXIT_REGEN_GOLDEN=1 after an intended change, and review the diff."""
    _p, text = render(**params)
    assert text == golden(name + ".nft", text)


def test_enforce_rejects_and_monitor_only_counts():
    _p, enforce = render()
    _p, monitor = render(mode="monitor")
    assert "counter name blocked_hscan reject with tcp reset" in enforce
    assert "reject" not in monitor.split("chain output", 1)[1]
    assert "counter name blocked_hscan return" in monitor


def test_owner_and_loopback_are_excluded_first():
    _p, text = render()
    chain = text.split("chain output {", 1)[1].split("}", 1)[0].strip().splitlines()
    rules = [r.strip() for r in chain]
    assert rules[1:5] == ["meta l4proto != tcp return", "ct state != new return",
                          'meta skuid != "debian-tor" return', 'oifname "lo" return']
    _p, anyone = render(owner="any")
    assert "skuid" not in anyone


def test_every_ban_set_is_checked_before_detection():
    p, text = render()
    output = text.split("chain output {", 1)[1].split("chain detect", 1)[0]
    for name, _typ, key, det, _ban in gn.ban_sets(p):
        assert "%s @%s counter name blocked_%s reject with tcp reset" % (key, name, det) in output
    assert output.index("@allow_v4") < output.index("@deny_v4") < output.index("@ban_") < output.index("jump detect")


def test_ban_set_names_follow_the_contract():
    p, _text = render(horizontal_scan={"prefixes_v4": [22, 12], "prefixes_v6": [56, 40]})
    names = [b[0] for b in gn.ban_sets(p)]
    assert names == ["ban_flood_v4_32", "ban_vscan_v4_32", "ban_hscan_v4_22", "ban_hscan_v4_12",
                     "ban_flood_v6_128", "ban_vscan_v6_128", "ban_hscan_v6_56", "ban_hscan_v6_40"]


def test_zero_disables_a_level_and_a_detector():
    _p, text = render(horizontal_scan={"hosts_web": [0, 0]}, vertical_scan={"ports": 0})
    assert "update @hscan_web_" not in text
    assert "update @vscan_" not in text
    assert "update @hscan_strict_v4_24" in text


def test_set_elements_reads_nft_json():
    nftset = {"elem": [
        {"elem": {"val": {"concat": ["198.18.1.0", 22]}, "timeout": 600, "expires": 580}},
        {"elem": {"val": {"prefix": {"addr": "198.18.5.0", "len": 24}}, "timeout": 86400, "expires": 86399}},
        "198.18.9.9",
    ]}
    assert gn.set_elements(nftset) == [("198.18.1.0 . 22", 580), ("198.18.5.0/24", 86399), ("198.18.9.9", None)]


def test_first_contacts_feed_scans_and_repeats_feed_the_flood_detector():
    """A host and port seen before cannot be a scan's first contact, and a first
    contact cannot be a flood: each new connection pays for one detector only."""
    _p, text = render()
    detect = text.split("chain detect {", 1)[1].split("\n\t}", 1)[0]
    assert "ip daddr . tcp dport @seen_v4 goto flood_v4" in detect
    assert "add @seen_v4 { ip daddr . tcp dport } goto scan_v4" in detect
    assert detect.index("@seen_v4 goto flood_v4") < detect.index("add @seen_v4")
    # a full seen set still counts strict ports as scans and everything as floods
    assert detect.index("counter name seen_full") < detect.index("@strict_ports goto scan_v4") \
        < detect.index("meta nfproto ipv4 goto flood_v4")
    flood = text.split("chain flood_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "add @flood_conc_v4 { ip daddr ct count over 24 }" in flood
    scans = text.split("chain scan_v4 {", 1)[1]
    assert "flood_conc" not in scans.split("chain flood_hit_v4", 1)[0]
