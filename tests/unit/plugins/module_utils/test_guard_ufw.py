"""The ufw renderer: the marked block, where it goes in before.rules, and its removal."""

import pytest
from golden_files import golden

from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp
from ansible_collections.torexit.hardening.plugins.module_utils import guard_ufw as gu
from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables as gi

BEFORE = """# ufw before.rules (abridged)
*nat
:POSTROUTING ACCEPT [0:0]
COMMIT
*filter
:ufw-before-input - [0:0]
:ufw-before-output - [0:0]
-A ufw-before-output -o lo -j ACCEPT
-A ufw-before-output -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
# don't delete the 'COMMIT' line or these rules won't be processed
COMMIT
"""


def policy(**params):
    p = gp.build_policy(params, user_exists=lambda name: True)
    return p, gp.policy_digest(p)


@pytest.mark.parametrize("fam", ["v4", "v6"])
def test_golden_block(fam):
    p, digest = policy()
    text = gu.block(p, digest, fam) + "\n"
    assert text == golden("default.%s.ufw" % fam, text)


def test_block_goes_before_the_filter_commit_after_ufws_own_rules():
    p, digest = policy()
    text = gu.splice(BEFORE, gu.block(p, digest, "v4"))
    lines = text.splitlines()
    begin, end = lines.index(gu.BEGIN), lines.index(gu.END)
    assert lines.index("-A ufw-before-output -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT") < begin
    assert lines[end + 1] == "COMMIT" and lines.index("*filter") < begin
    assert lines[end - 1] == "-A ufw-before-output -j TOREXIT-UFW-GUARD"
    assert lines[begin:end].count(":TOREXIT-UFW-GUARD - [0:0]") == 1
    assert not [line for line in lines[begin:end] if line.startswith("-A TOREXIT-GUARD")]
    # re-splicing replaces the block, removing restores the original byte for byte
    assert gu.splice(text, gu.block(p, digest, "v4")) == text
    assert gu.splice(text, None) == BEFORE
    pm, digest_m = policy(mode="monitor")
    assert gu.splice(gu.splice(text, gu.block(pm, digest_m, "v4")), None) == BEFORE


def test_v6_hooks_into_ufw6_chain():
    p, digest = policy()
    assert gu.block(p, digest, "v6").splitlines()[-2] == "-A ufw6-before-output -j TOREXIT-UFW-GUARD"


def test_broken_files_are_refused():
    p, digest = policy()
    with pytest.raises(gu.UfwError, match="no '\\*filter'"):
        gu.splice("*nat\nCOMMIT\n", gu.block(p, digest, "v4"))
    with pytest.raises(gu.UfwError, match="no COMMIT"):
        gu.splice("*filter\n-A x\n", gu.block(p, digest, "v4"))
    with pytest.raises(gu.UfwError, match="END"):
        gu.splice(BEFORE + gu.BEGIN + "\n", None)


def test_validate_refuses_a_file_without_ufws_chain():
    calls = []

    def run(args, data=None):
        calls.append(args)
        return 0, "", ""
    with pytest.raises(gu.UfwError, match="ufw6-before-output"):
        gu.validate_file(run, "v6", BEFORE)
    gu.validate_file(run, "v4", BEFORE)
    assert calls == [["iptables-restore", "--test"]]


def test_ufw_and_iptables_backends_use_separate_chains():
    p, _d = policy()
    assert not set(gi.chains(p)) & set(gi.chains(p, gu.CHAIN_PREFIX))
    assert all(len(c) <= 28 for c in gi.chains(p, gu.CHAIN_PREFIX))
