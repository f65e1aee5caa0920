"""egress_guard with backend ufw in a namespace, with the real ufw: the namespace
runs the module in a private mount namespace where /etc/ufw and /etc/default/ufw
are bind-mounted copies, so ufw's files and rules are the lab's, never the host's.
Apply, idempotence, check mode, validation, ufw reload/disable/enable, sweep
stopped while uploads pass, persist=false loading, absent removing only ours."""
import json
import os
import sys

import pytest
from conftest import TOP
from test_egress_guard import (
    assert_sweep_stopped_and_uploads_pass,
    check_web_sweep_is_cut_and_a_cdn_passes,
    listen,
    probe,
)

sys.path.insert(0, os.path.join(TOP, "tests", "bench"))
import ufwlab as ufw_files  # noqa: E402  (shared with the bench's guard-ufw variant)

GUARD = "torexit.hardening.egress_guard"
BASE = {"owner": "any", "backend": "ufw"}


@pytest.fixture
def ufwlab(lab):
    if not ufw_files.available():
        pytest.skip("needs ufw installed on the test machine")
    lab.tmp, lab.etc = ufw_files.copies()
    try:
        yield lab
    finally:
        ufw_files.remove(lab.tmp)


def inside(lab, command, **kw):
    """Run a shell command in the relay namespace with the lab's ufw files."""
    return ufw_files.inside(lab.relay, lab.tmp, lab.etc, command, **kw)


def module(lab, args, check=False, diff=False, name=GUARD):
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    cmd = "%s localhost -c local -m %s -a '%s'%s%s" % (
        os.path.join(TOP, ".venv", "bin", "ansible"), name, json.dumps(args),
        " --check" if check else "", " --diff" if diff else "")
    proc = inside(lab, cmd, env=env)
    return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def saved(lab, cmd="iptables"):
    return [line for line in lab.ns(lab.relay, "%s-save" % cmd, "-t", "filter").stdout.splitlines()
            if not line.startswith("#")]


def rules_file(lab, name="before.rules"):
    with open(os.path.join(lab.etc, name)) as f:
        return f.read()


def test_ufw_block_reload_idempotence_and_absent(ufwlab):
    lab = ufwlab
    assert inside(lab, "ufw --force enable").returncode == 0
    original = {n: rules_file(lab, n) for n in ("before.rules", "before6.rules")}
    ufw_rules = saved(lab)

    check = module(lab, BASE, check=True, diff=True)
    assert check["changed"] is True and check["ufw_active"] is True, check
    assert rules_file(lab) == original["before.rules"]
    first = module(lab, BASE)
    assert first["changed"] is True, {k: first.get(k) for k in ("msg", "exception", "module_stderr", "module_stdout")}
    text = rules_file(lab)
    assert "# BEGIN torexit.hardening egress_guard" in text
    assert text.index("# END torexit.hardening egress_guard") < text.rindex("COMMIT")
    assert "-A ufw-before-output -j TOREXIT-UFW-GUARD" in saved(lab)
    assert "-A ufw6-before-output -j TOREXIT-UFW-GUARD" in saved(lab, "ip6tables")
    assert module(lab, BASE)["changed"] is False
    assert module(lab, BASE, check=True)["changed"] is False

    # ufw users' commands keep working: disable drops the hook, enable brings it back
    assert inside(lab, "ufw disable").returncode == 0
    assert "-A ufw-before-output -j TOREXIT-UFW-GUARD" not in saved(lab)
    assert inside(lab, "ufw --force enable").returncode == 0
    assert "-A ufw-before-output -j TOREXIT-UFW-GUARD" in saved(lab)
    assert module(lab, BASE)["changed"] is False

    absent = module(lab, {"state": "absent", "backend": "ufw"})
    assert absent["changed"] is True, absent
    assert {n: rules_file(lab, n) for n in original} == original
    assert not [r for r in saved(lab) + saved(lab, "ip6tables") if "TOREXIT" in r]
    assert saved(lab) == ufw_rules
    assert lab.ns(lab.relay, "ipset", "list", "-n").stdout.strip() == ""
    assert module(lab, {"state": "absent", "backend": "ufw"})["changed"] is False


def test_ufw_guard_stops_a_sweep_and_lets_uploads_pass(ufwlab):
    lab = ufwlab
    assert inside(lab, "ufw --force enable").returncode == 0
    listen(lab, 22)
    listen(lab, 443)
    assert module(lab, BASE)["changed"] is True
    assert_sweep_stopped_and_uploads_pass(lab, hosts=2000, other_hosts=False)
    info = module(lab, {"backend": "ufw"}, name="torexit.hardening.egress_guard_info")
    assert info["installed"] is True and info["backend"] == "ufw"
    assert info["counters"]["blocked_hscan"]["packets"] >= 1900
    # the ban survives a ufw reload (the ipsets are not ufw's)
    assert inside(lab, "ufw reload").returncode == 0
    assert probe(lab, [["198.18.200.1", 22]])["refused"] == 1


def test_persist_false_loads_into_running_ufw_without_files(ufwlab):
    lab = ufwlab
    args = dict(BASE, persist=False)
    result = module(lab, args)
    assert result.get("failed") is True and "ufw-before-output" in result["msg"], result
    assert inside(lab, "ufw --force enable").returncode == 0
    original = rules_file(lab)
    assert module(lab, args)["changed"] is True
    assert module(lab, args)["changed"] is False
    assert rules_file(lab) == original
    assert "-A ufw-before-output -j TOREXIT-UFW-GUARD" in saved(lab)
    assert module(lab, {"state": "absent", "backend": "ufw", "persist": False})["changed"] is True
    assert not [r for r in saved(lab) if "TOREXIT" in r]


def test_a_block_without_end_marker_is_refused(ufwlab):
    lab = ufwlab
    path = os.path.join(lab.etc, "before.rules")
    with open(path, "a") as f:
        f.write("# BEGIN torexit.hardening egress_guard\n")
    result = module(lab, BASE)
    assert result.get("failed") is True and "before.rules" in result["msg"] and "END" in result["msg"], result


def test_ufw_web_sweep_is_cut_and_a_cdn_passes(ufwlab):
    """With persist: false (as the bench loads it) the module changes only ufw's running
    chains, so it runs without the lab's ufw files: the reply hook goes first in
    ufw-before-input, before ufw accepts established traffic; absent removes it."""
    lab = ufwlab
    assert inside(lab, "ufw --force enable").returncode == 0
    before = saved(lab)
    check_web_sweep_is_cut_and_a_cdn_passes(lab, dict(BASE, persist=False), {"backend": "ufw"})
    rules = saved(lab)
    first_input = [r for r in rules if r.startswith("-A ufw-before-input ")][0]
    assert first_input == "-A ufw-before-input -p tcp -m connmark --mark 0x40000000/0x50000000 -j TOREXIT-UFW-REPLY"
    assert module(lab, {"state": "absent", "backend": "ufw", "persist": False})["changed"] is True
    assert saved(lab) == before
