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
    assert rules[1:5] == ["ct state != new return", "meta l4proto != tcp return",
                          'meta skuid != "debian-tor" return', 'oif "lo" return']
    _p, anyone = render(owner="any")
    assert "skuid" not in anyone


def test_every_ban_set_is_checked_before_detection():
    p, text = render(allow=["198.51.100.0/28"], deny=["203.0.113.0/24"])
    for fam, banned in (("v4", "ip daddr & 255.255.0.0 @banned_v4_16"), ("v6", "ip6 daddr & ffff:ffff:: @banned_v6_32")):
        guard = text.split("chain guard_%s {" % fam, 1)[1].split("\n\t}", 1)[0]
        bans = text.split("chain bans_%s {" % fam, 1)[1].split("\n\t}", 1)[0]
        names = [name for name, _typ, _key, _det, _ban in gn.ban_sets(p) if "_%s_" % fam in name]
        assert len(names) == 6
        for name, _typ, key, det, _ban in gn.ban_sets(p):
            if name in names:
                assert "%s @%s counter name blocked_%s reject with tcp reset" % (key, name, det) in bans
        # reached by goto: a ban's verdict in monitor mode (return) ends the guard as before
        assert [r.strip() for r in bans.strip().splitlines()[len(names):]] == ["goto detect_%s" % fam]
        # one lookup of the destination's /16 (/32) stands for all ban lookups
        assert guard.index("@relays_%s" % fam) < guard.index("@optout_%s" % fam) \
            < guard.index("%s goto bans_%s" % (banned, fam)) < guard.index("goto detect_%s" % fam)
        assert "@ban_" not in guard
    guard = text.split("chain guard_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert guard.index("@allow_v4") < guard.index("@deny_v4") < guard.index("@banned_")


def test_every_ban_refreshes_its_prefix_in_the_prefilter_for_its_longest_ban_time():
    """A ban is looked up only if its destination's /16 (IPv6 /32) is in banned_*;
    each rule that adds a ban puts that prefix there for as long as the longest ban."""
    p, text = render(flood={"ban_time": 900}, prefix_sweep={"ban_time": 60})
    assert "set banned_v4_16 { type ipv4_addr; size 262144; flags dynamic, timeout; timeout 900s; }" in text
    assert "set banned_v6_32 { type ipv6_addr; size 262144; flags dynamic, timeout; timeout 900s; }" in text
    adds = [line.strip() for line in text.splitlines() if " add @ban_" in " " + line.strip()]
    assert len(adds) == len(gn.ban_sets(p)) + 4  # one per hit chain, and failed_out/failed_in per family
    for line in adds:
        fam = "v4" if "_v4_" in line else "v6"
        want = "update @banned_v4_16 { ip %s & 255.255.0.0 }" if fam == "v4" \
            else "update @banned_v6_32 { ip6 %s & ffff:ffff:: }"
        direction = "saddr" if "ip saddr" in line or "ip6 saddr" in line else "daddr"
        assert want % direction in line, line
    for name, _typ, _key, _det, _ban in gn.ban_sets(p):
        assert "add @%s " % name in text
    # with the widest ban a /24 (no /16 levels), the prefilter is the /24
    _p, narrow = render(horizontal_scan={"prefixes_v4": [24], "prefixes_v6": [48], "hosts_strict": [16],
                                         "hosts_default": [32], "hosts_web": [0]},
                        prefix_sweep={"prefixes_v4": [22], "prefixes_v6": [48], "burst": [96], "rate": [12]})
    assert "ip daddr & 255.255.252.0 @banned_v4_22 goto bans_v4" in narrow


def test_each_family_gets_its_own_chain_and_empty_static_lists_no_rule():
    """One verdict-map lookup on the family: an IPv4 connection never walks the
    IPv6 rules. A static list without entries for a family (allow, deny, deny
    ports; relays with the relay allowlist off) keeps its set but costs no lookup."""
    _p, text = render()
    output = text.split("chain output {", 1)[1].split("\n\t}", 1)[0]
    assert output.strip().splitlines()[-1].strip() == "meta nfproto vmap { ipv4 : goto guard_v4, ipv6 : goto guard_v6 }"
    assert "daddr" not in output
    for word in ("@allow_", "@deny_"):
        assert word not in text
    assert "set allow_v4 {" in text and "set deny_port_v6 {" in text
    _p, lists = render(allow=["2001:db8:1::/48"], deny=["203.0.113.0/24:22"], relay_allowlist=False)
    v4 = lists.split("chain guard_v4 {", 1)[1].split("\n\t}", 1)[0]
    v6 = lists.split("chain guard_v6 {", 1)[1].split("\n\t}", 1)[0]
    assert "@deny_port_v4" in v4 and "@allow_v4" not in v4 and "@deny_v4" not in v4
    assert "@allow_v6" in v6 and "@deny_" not in v6
    assert "@relays_" not in lists


def test_one_lookup_sends_a_first_contact_to_its_port_tier():
    _p, text = render(strict_ports=[22, 3389], web_ports=[443])
    scan = text.split("chain scan_v6 {", 1)[1].split("\n\t}", 1)[0].strip().splitlines()
    assert scan[-2].strip() == ("tcp dport vmap { 22 : goto hscan_strict_v6, 3389 : goto hscan_strict_v6, "
                                "443 : goto hscan_web_v6 }")
    assert scan[-1].strip() == "goto hscan_default_v6"
    _p, none = render(strict_ports=[], web_ports=[])
    scan = none.split("chain scan_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "vmap" not in scan and "goto hscan_default_v4" in scan


def test_ban_set_names_follow_the_contract():
    p, _text = render(horizontal_scan={"prefixes_v4": [22, 12], "prefixes_v6": [56, 40]})
    names = [b[0] for b in gn.ban_sets(p)]
    assert names == ["ban_flood_v4_32", "ban_vscan_v4_32", "ban_hscan_v4_22", "ban_hscan_v4_12",
                     "ban_login_v4_32", "ban_psweep_v4_16",
                     "ban_flood_v6_128", "ban_vscan_v6_128", "ban_hscan_v6_56", "ban_hscan_v6_40",
                     "ban_login_v6_128", "ban_psweep_v6_32"]
    p, _text = render(prefix_sweep={"burst": [48, 96]})
    assert [b[0] for b in gn.ban_sets(p) if "psweep_v4" in b[0]] == ["ban_psweep_v4_22", "ban_psweep_v4_16"]
    p, _text = render(login={"rate": 0}, prefix_sweep={"burst": [0, 0]})
    assert not [b for b in gn.ban_sets(p) if "login" in b[0] or "psweep" in b[0]]


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
    detect = text.split("chain detect_v4 {", 1)[1].split("\n\t}", 1)[0]
    # (with the marks the prefix-sweep detector reads on replies: contact, first contact)
    assert "ip daddr . tcp dport @seen_v4 ct mark set ct mark | 0x40000000 goto flood_v4" in detect
    assert "add @seen_v4 { ip daddr . tcp dport } ct mark set ct mark | 0x60000000 goto scan_v4" in detect
    assert detect.index("@seen_v4 ct mark set ct mark | 0x40000000 goto flood_v4") < detect.index("add @seen_v4")
    # a full seen set still counts strict ports as scans and everything as floods
    assert detect.index("counter name seen_full") < detect.index("tcp dport @strict_ports goto scan_v4") \
        < detect.index("\t\tgoto flood_v4")
    assert "v6" not in detect
    flood = text.split("chain flood_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "add @flood_conc_v4 { ip daddr ct count over 24 }" in flood
    scans = text.split("chain scan_v4 {", 1)[1]
    assert "flood_conc" not in scans.split("chain flood_hit_v4", 1)[0]


def test_repeated_logins_are_counted_on_repeats_of_strict_ports_and_ban_host_and_port():
    _p, text = render()
    flood = text.split("chain flood_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert ("tcp dport @strict_ports update @login_v4 { ip daddr . tcp dport limit rate over 120/minute "
            "burst 8 packets } goto login_hit_v4") in flood
    hit = text.split("chain login_hit_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "add @ban_login_v4_32 { ip daddr . tcp dport }" in hit
    assert "counter name detect_login reject with tcp reset" in hit
    # the meter never sees first contacts, so a sweep cannot fill it
    detect = text.split("chain detect_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "login" not in detect
    _p, monitor = render(mode="monitor")
    hit = monitor.split("chain login_hit_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "counter name detect_login return" in hit


def test_prefix_sweep_limits_first_contacts_of_unconfirmed_prefixes_and_counts_failures():
    _p, text = render()
    scan = text.split("chain scan_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "ip daddr & 255.255.252.0 != @confirm_v4 goto psweep_v4" in scan
    psweep = text.split("chain psweep_v4 {", 1)[1].split("\n\t}", 1)[0].strip().splitlines()
    assert psweep[0].strip() == ("update @psweep_v4_16 { ip daddr & 255.255.0.0 . tcp dport limit rate over "
                                 "12/minute burst 96 packets } goto psweep_hit_v4_16")
    # then the port tiers, without the /16 levels of web and default that the sweep's meter covers
    assert "22 : goto hscan_strict_v4," in psweep[1] and "443 : goto hscan_web_v4_unconfirmed" in psweep[1]
    assert psweep[2].strip() == "goto hscan_default_v4_unconfirmed"
    default = text.split("chain hscan_default_v4_unconfirmed {", 1)[1].split("\n\t}", 1)[0]
    assert "@hscan_default_v4_24 " in default and "@hscan_default_v4_16" not in default
    web = text.split("chain hscan_web_v4_unconfirmed {", 1)[1].split("\n\t}", 1)[0]
    assert "update" not in web
    assert "@hscan_default_v4_16 " in text.split("chain hscan_default_v4 {", 1)[1].split("\n\t}", 1)[0]
    # reply data confirms the /22 once per connection; a RST before data is a failure
    inp = text.split("chain input {", 1)[1].split("\n\t}", 1)[0]
    assert "ct mark & 0x50000000 != 0x40000000 return" in inp.splitlines()[2]
    assert "ip length > 80 ct mark set ct mark | 0x10000000 update @confirm_v4 { ip saddr & 255.255.252.0 }" in inp
    assert "tcp flags & rst != 0 ct mark & 0x20000000 != 0 jump failed_in" in inp
    failed_in = text.split("chain failed_in {", 1)[1].split("\n\t}", 1)[0]
    assert "ip saddr & 255.255.0.0 . tcp sport limit rate over 12/minute burst 96" in failed_in
    # a retransmitted SYN of a first contact counts as a failure, after the bans were checked
    # again; the output chain itself stays the decision order's
    detect = text.split("chain detect_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert detect.index("ct mark & 0x40000000 != 0 jump retransmit") < detect.index("@seen_v4")
    retransmit = text.split("chain retransmit {", 1)[1].split("\n\t}", 1)[0]
    assert "ct mark & 0x30000000 == 0x20000000 jump failed_out" in retransmit
    # a /22 level when asked for
    _p, text = render(prefix_sweep={"burst": [48, 96]})
    psweep = text.split("chain psweep_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert psweep.index("@psweep_v4_22 { ip daddr & 255.255.252.0 . tcp dport limit rate over 24/minute "
                        "burst 48 packets }") < psweep.index("@psweep_v4_16")


def test_wide_scan_rejects_first_contacts_at_random_and_forgets_them():
    _p, text = render()
    strict = text.split("chain hscan_strict_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert strict.strip().splitlines()[-1].strip() == (
        "update @wide_rate { tcp dport limit rate over 2/second burst 100 packets } counter name detect_wide goto wide_v4")
    wide = text.split("chain wide_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert ("numgen random mod 128 != 0 delete @seen_v4 { ip daddr . tcp dport } counter name blocked_wide "
            "reject with tcp reset") in wide
    assert "ban_wide" not in text  # never a whole-port ban
    _p, monitor = render(mode="monitor")
    wide = monitor.split("chain wide_v4 {", 1)[1].split("\n\t}", 1)[0]
    assert "numgen random mod 128 != 0 counter name blocked_wide" in wide and "delete" not in wide
    # exitpolicy: counted only (an ExitPolicy line cannot express "some first contacts")
    _p, exitpolicy = render(mode="exitpolicy")
    assert "delete @seen_v4" not in exitpolicy
    _p, large = render(profile="large")
    assert "limit rate over 8/second burst 400 packets } counter name detect_wide" in large


def test_issue15_detectors_can_be_switched_off():
    _p, text = render(login={"rate": 0}, prefix_sweep={"burst": [0, 0]}, wide_scan={"rate": 0})
    for word in ("@login_", "@psweep_", "@confirm_", "wide_rate", "ct mark", "chain input", "numgen"):
        assert word not in text


def test_every_detector_set_is_bounded_and_times_out():
    _p, text = render(prefix_sweep={"burst": [48, 96]})
    sets = [line.strip() for line in text.splitlines() if line.strip().startswith("set ")]
    for line in sets:
        if any(w in line for w in ("login", "psweep", "pfail", "confirm", "wide", "ban_")):
            assert " size " in line and "timeout" in line, line
    assert len([s for s in sets if "psweep" in s or "pfail" in s]) == 12  # 2 levels x meter, failures, ban x 2 families
