"""What the backends share: the rate conversion and the decision order, which every
backend's golden ruleset must follow rule by rule."""
import os
import re

import pytest
from golden_files import GOLDEN

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as gc
from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp


@pytest.mark.parametrize("count,window,expected", [
    (16, 600, "96/hour"), (48, 600, "288/hour"), (60, 60, "1/second"), (90, 60, "90/minute"), (10, 1, "10/second"), (7, 700, "36/hour"),
    (5, 7000, "62/day"),
])
def test_rate_keeps_integer_numerators(count, window, expected):
    assert gc.rate(count, window) == expected


# How each step's rules look in each backend's output; written here, independently
# of the renderers, so a renderer that reorders or adds rules fails this test.
NFT_MARKS = {
    "protocol": "meta l4proto != tcp return", "ct_new": "ct state != new", "owner": "meta skuid",
    "loopback": 'oif "lo"', "guarded": "counter name guarded_new", "allow": "@allow_",
    "relays": "@relays_", "deny": "@deny_v", "deny_port": "@deny_port_", "optout": "@optout_",
    "bans": " goto bans_", "detect": "goto detect_",
}
XT_MARKS = {
    "protocol": "! -p tcp -j RETURN", "ct_new": "--ctstate NEW", "owner": "--uid-owner",
    "loopback": "-o lo ", "guarded": 'comment "guarded_new"', "allow": "torexit_allow_",
    "relays": "torexit_relays_", "deny": "torexit_deny_v", "deny_port": "torexit_deny_port_",
    "optout": "torexit_optout_", "bans": "torexit_ban_", "detect": "-DETECT",
}
ORDER = [step.name for step in gc.DECISION_ORDER]


def steps_of(rules, marks):
    """The step of each rule; every rule belongs to exactly one step."""
    out = []
    for rule in rules:
        steps = [name for name, mark in marks.items() if mark in rule]
        assert len(steps) == 1, "rule %r matches steps %s" % (rule, steps)
        out.append(steps[0])
    return out


def assert_follows_order(steps, owner=True, absent=()):
    """In the decision order, and every step there but those allowed to be absent
    (`owner` for owner=any; in nftables the rules of static lists that are empty)."""
    indices = [ORDER.index(s) for s in steps]
    assert indices == sorted(indices), steps
    expected = [s for s in ORDER if (owner or s != "owner") and s not in absent]
    assert sorted(set(steps), key=ORDER.index) == expected


def chain(text, name):
    return [r.strip() for r in text.split("\tchain %s {\n" % name, 1)[1].split("\n\t}", 1)[0].splitlines()]


# nftables: the static lists (allow, deny, deny_port) of a family without entries
# have no rule (their sets stay empty); the goldens' policies
NFT_EMPTY = {
    "default": {"v4": ("allow", "deny", "deny_port"), "v6": ("allow", "deny", "deny_port")},
    "large-drop": {"v4": ("allow", "deny", "deny_port"), "v6": ("allow", "deny", "deny_port")},
    # allow 198.51.100.0/28, deny 203.0.113.0/24:22 and [2001:db8:dead::/48]
    "monitor-any-lists": {"v4": ("deny",), "v6": ("allow", "deny_port")},
}


@pytest.mark.parametrize("name", ["default", "monitor-any-lists", "large-drop"])
def test_nftables_output_chain_follows_the_decision_order(name):
    """The output chain holds the shared steps and hands each family, with one
    verdict-map lookup, to its own chain, which holds the rest of the order."""
    with open(os.path.join(GOLDEN, name + ".nft")) as f:
        text = f.read()
    output = chain(text, "output")[1:]
    assert output[-1] == "meta nfproto vmap { ipv4 : goto guard_v4, ipv6 : goto guard_v6 }"
    for fam in ("v4", "v6"):
        mine = chain(text, "guard_" + fam)
        other = "ip daddr" if fam == "v6" else "ip6 daddr"
        assert not [r for r in mine if other in r]
        assert_follows_order(steps_of(output[:-1] + mine, NFT_MARKS), owner=name != "monitor-any-lists",
                             absent=NFT_EMPTY[name][fam])
    # established and related packets (almost all of them) leave at the first rule
    assert output[0] == "ct state != new return"


@pytest.mark.parametrize("path", sorted(p for p in os.listdir(GOLDEN) if p.endswith((".iptables", ".ufw"))))
def test_iptables_and_ufw_entry_chains_follow_the_decision_order(path):
    with open(os.path.join(GOLDEN, path)) as f:
        lines = f.read().splitlines()
    rules = [line for line in lines if re.match(r"-A TOREXIT-(UFW-)?GUARD ", line) and "sha256:" not in line]
    assert_follows_order(steps_of(rules, XT_MARKS), owner="monitor-any-lists" not in path)


def test_walk_writes_a_stage_family_by_family():
    seen = gc.walk(lambda step, fam: ["%s/%s" % (step.name, fam.name if fam else "-")])
    assert seen[:5] == ["ct_new/-", "protocol/-", "owner/-", "loopback/-", "guarded/-"]
    assert seen[5:9] == ["allow/v4", "relays/v4", "allow/v6", "relays/v6"]
    assert seen[9:15] == ["deny/v4", "deny_port/v4", "optout/v4", "deny/v6", "deny_port/v6", "optout/v6"]
    assert seen[15:] == ["bans/v4", "bans/v6", "detect/-"]
    assert gc.walk(lambda step, fam: [step.name], families=False) == ORDER


def test_split_walk_writes_the_shared_steps_once_and_the_rest_per_family():
    shared, per_family = gc.split_walk(lambda step, fam: ["%s/%s" % (step.name, fam.name if fam else "-")])
    assert shared == ["ct_new/-", "protocol/-", "owner/-", "loopback/-", "guarded/-"]
    for fam in ("v4", "v6"):
        assert per_family[fam] == ["%s/%s" % (name, fam) for name in ORDER[5:]]
    # the same steps in the same order as walk()
    assert [x.split("/")[0] for x in shared + per_family["v4"]] == ORDER


def test_the_prefix_sweep_covers_only_levels_it_stops_sooner():
    """A horizontal-scan level is skipped in unconfirmed prefixes only where the
    prefix sweep's meter is as wide or wider, with no larger burst, no faster rate
    and no shorter ban (defaults: the /16 of the web and default tiers)."""
    p = gp.build_policy({}, user_exists=lambda name: True)
    v4, v6 = gc.FAMILIES
    hs = p["horizontal_scan"]
    covered = dict(((tier, length), gc.psweep_covers(p, v4, length, hosts))
                   for tier in ("strict", "default", "web")
                   for length, hosts in zip(hs["prefixes_v4"], hs["hosts_" + tier]) if hosts)
    assert covered == {("strict", 24): False, ("strict", 16): False, ("default", 24): False,
                       ("default", 16): True, ("web", 16): True}
    assert gc.psweep_covers(p, v6, 32, 256) and not gc.psweep_covers(p, v6, 48, 32)
    assert not gc.psweep_covers(p, v4, 16, 95)             # burst 96 is larger
    assert not gc.psweep_covers(p, v4, 8, 256)             # the sweep's /16 is narrower than a /8
    slow = gp.build_policy({"horizontal_scan": {"hosts_default": [32, 100]}}, user_exists=lambda name: True)
    assert not gc.psweep_covers(slow, v4, 16, 100)         # 12/minute over 600 s is 120 > 100
    short = gp.build_policy({"prefix_sweep": {"ban_time": 60}}, user_exists=lambda name: True)
    assert not gc.psweep_covers(short, v4, 16, 256)
    off = gp.build_policy({"prefix_sweep": {"burst": [0, 0]}}, user_exists=lambda name: True)
    assert not gc.psweep_covers(off, v4, 16, 256)
