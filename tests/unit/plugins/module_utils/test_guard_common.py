"""What the backends share: the rate conversion and the decision order, which every
backend's golden ruleset must follow rule by rule."""
import os
import re

import pytest
from golden_files import GOLDEN

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as gc


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
    "loopback": 'oifname "lo"', "guarded": "counter name guarded_new", "allow": "@allow_",
    "relays": "@relays_", "deny": "@deny_v", "deny_port": "@deny_port_", "optout": "@optout_",
    "bans": "@ban_", "detect": "jump detect",
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


def assert_follows_order(steps, owner=True):
    indices = [ORDER.index(s) for s in steps]
    assert indices == sorted(indices), steps
    expected = [s for s in ORDER if owner or s != "owner"]
    assert sorted(set(steps), key=ORDER.index) == expected


@pytest.mark.parametrize("name", ["default", "monitor-any-lists", "large-drop"])
def test_nftables_output_chain_follows_the_decision_order(name):
    with open(os.path.join(GOLDEN, name + ".nft")) as f:
        text = f.read()
    chain = text.split("\tchain output {\n", 1)[1].split("\n\t}", 1)[0].splitlines()[1:]
    rules = [r.strip() for r in chain]

    def family(rule):
        return "v6" if "ip6 daddr" in rule else "v4" if "ip daddr" in rule else None

    for fam in ("v4", "v6"):     # both families share one chain: each with the shared rules
        mine = [r for r in rules if family(r) in (None, fam)]
        assert_follows_order(steps_of(mine, NFT_MARKS), owner=name != "monitor-any-lists")
    # and a stage of both families ends before the next stage begins
    stages = [gc.DECISION_ORDER[ORDER.index(s)].stage for s in steps_of(rules, NFT_MARKS)]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == \
        list(dict.fromkeys(step.stage for step in gc.DECISION_ORDER))


@pytest.mark.parametrize("path", sorted(p for p in os.listdir(GOLDEN) if p.endswith((".iptables", ".ufw"))))
def test_iptables_and_ufw_entry_chains_follow_the_decision_order(path):
    with open(os.path.join(GOLDEN, path)) as f:
        lines = f.read().splitlines()
    rules = [line for line in lines if re.match(r"-A TOREXIT-(UFW-)?GUARD ", line) and "sha256:" not in line]
    assert_follows_order(steps_of(rules, XT_MARKS), owner="monitor-any-lists" not in path)


def test_walk_writes_a_stage_family_by_family():
    seen = gc.walk(lambda step, fam: ["%s/%s" % (step.name, fam.name if fam else "-")])
    assert seen[:5] == ["protocol/-", "ct_new/-", "owner/-", "loopback/-", "guarded/-"]
    assert seen[5:9] == ["allow/v4", "relays/v4", "allow/v6", "relays/v6"]
    assert seen[9:15] == ["deny/v4", "deny_port/v4", "optout/v4", "deny/v6", "deny_port/v6", "optout/v6"]
    assert seen[15:] == ["bans/v4", "bans/v6", "detect/-"]
    assert gc.walk(lambda step, fam: [step.name], families=False) == ORDER
