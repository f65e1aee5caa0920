"""The apply sequence (guard_apply): the digest kept with the loaded rules covers the
rendered rules, so rules rendered differently for the same options are loaded into
the kernel; check mode, diff and `changed` for every backend, and a failing step."""
import json
import re

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import guard_apply as eg
from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as gc
from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as gn
from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp

PARAMS = {"mode": "enforce", "owner": "any", "persist": False, "relay_allowlist": False,
          "allow": [], "deny": []}


class Done(Exception):
    def __init__(self, result, failed):
        super().__init__(result.get("msg", ""))
        self.result, self.failed = result, failed


class FakeKernel:
    """Just enough of `nft` for present(): the policy_id comment of the loaded table."""

    def __init__(self, digest=None):
        self.digest, self.loads = digest, 0

    def run(self, args, data=None, **_kw):
        if args[:3] == ["nft", "-c", "-f"]:
            return 0, "", ""
        if args[:2] == ["nft", "-f"]:
            self.loads += 1
            self.digest = re.search(r'counter policy_id \{ comment "sha256:([0-9a-f]+)" \}', data).group(1)
            return 0, "", ""
        if args[:4] == ["nft", "-j", "list", "counter"]:
            if self.digest is None:
                return 1, "", "No such file or directory"
            counter = {"name": "policy_id", "comment": "sha256:" + self.digest}
            return 0, json.dumps({"nftables": [{"counter": counter}]}), ""
        if args[:4] == ["nft", "-j", "list", "set"]:
            return 1, "", "No such file or directory"   # no bans to carry over
        raise AssertionError("unexpected command %r" % (args,))


class FakeModule:
    def __init__(self, kernel, check_mode=False):
        self.params, self.check_mode, self._diff, self.kernel = dict(PARAMS), check_mode, False, kernel

    def run_command(self, args, data=None, **kw):
        return self.kernel.run(args, data, **kw)

    def exit_json(self, **result):
        raise Done(result, False)

    def fail_json(self, **result):
        raise Done(result, True)


def present(kernel, check_mode=False):
    module = FakeModule(kernel, check_mode)
    with pytest.raises(Done) as done:
        eg.present(module, gn, gc.Env(run=kernel.run, persist=False, systemd=False, have=lambda c: True))
    assert not done.value.failed, done.value.result["msg"]
    return done.value.result


def policy():
    return gp.build_policy(PARAMS, user_exists=lambda name: True)


def test_digest_follows_the_rendered_rules():
    p = policy()
    first = eg.rules_digest(p, gn.render)
    assert eg.rules_digest(policy(), gn.render) == first
    # same options, other rules (a new version of the renderer): another digest
    assert eg.rules_digest(p, lambda pol, d: gn.render(pol, d) + "# one more line\n") != first
    # other options: another digest
    other = gp.build_policy(dict(PARAMS, mode="monitor"), user_exists=lambda name: True)
    assert eg.rules_digest(other, gn.render) != first


def test_rules_rendered_otherwise_are_reloaded_then_left_alone():
    """The table was loaded by a version whose id covered the policy only (or whose
    renderer differed): the kernel gets the current rules, once."""
    p = policy()
    kernel = FakeKernel(digest=gp.policy_digest(p))

    dry = present(kernel, check_mode=True)
    assert dry["changed"] and kernel.loads == 0

    first = present(kernel)
    assert first["changed"]
    assert kernel.loads == 1 and kernel.digest == first["digest"] == eg.rules_digest(p, gn.render)
    assert 'comment "sha256:%s"' % first["digest"] in first["ruleset"]

    second = present(kernel)
    assert not second["changed"] and kernel.loads == 1


def test_fresh_host_loads_the_table():
    kernel = FakeKernel()
    result = present(kernel)
    assert result["changed"] and kernel.loads == 1 and kernel.digest == result["digest"]


def test_sets_diff_names_sets_and_options_never_elements():
    lines = ["create torexit_tmp_ban_vscan_v4_32 hash:ip family inet maxelem 65536 timeout 3600",
             "add torexit_tmp_ban_vscan_v4_32 198.18.7.9 timeout 1200",
             "swap torexit_tmp_ban_vscan_v4_32 torexit_ban_vscan_v4_32",
             "destroy torexit_tmp_ban_vscan_v4_32"]
    diff = eg._sets_diff(lines)
    assert diff["after"] == "create torexit_tmp_ban_vscan_v4_32 hash:ip family inet maxelem 65536 timeout 3600\n"
    assert "198.18.7.9" not in diff["after"] + diff["before"]
