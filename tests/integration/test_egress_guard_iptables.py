"""egress_guard with backend iptables in a namespace: apply, idempotence, check
mode, sweep stopped while uploads pass, info counters, and absent removing only
the guard's chains and sets."""
from conftest import ansible_module
from test_egress_guard import (
    assert_monitor_mode_counts_but_blocks_nothing,
    assert_sweep_stopped_and_uploads_pass,
    check_repeated_logins_ban_host_and_port,
    check_web_sweep_is_cut_and_a_cdn_passes,
    check_wide_scan_gate_spares_known_hosts,
    listen,
    probe,
)

GUARD = "torexit.hardening.egress_guard"
BASE = {"owner": "any", "persist": False, "backend": "iptables"}
OTHERS = "\n".join([
    "*filter", ":ufw-before-output - [0:0]", ":ufw-user-output - [0:0]", ":TOREXIT-INPUT - [0:0]",
    "-A INPUT -j TOREXIT-INPUT", "-A TOREXIT-INPUT -p tcp --dport 22 -j ACCEPT",
    "-A OUTPUT -j ufw-before-output", "-A ufw-before-output -o lo -j ACCEPT",
    "-A ufw-before-output -j ufw-user-output",
    "-A ufw-user-output -p tcp --dport 25 -j REJECT", "COMMIT", ""])


def saved(lab, cmd="iptables"):
    text = lab.ns(lab.relay, "%s-save" % cmd, "-t", "filter").stdout
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_apply_idempotence_check_mode_and_absent_removes_only_ours(lab):
    lab.ns(lab.relay, "iptables-restore", input=OTHERS)
    lab.ns(lab.relay, "ipset", "create", "operator_set", "hash:ip")
    before = saved(lab)
    check = ansible_module(lab.relay, GUARD, BASE, check=True, diff=True)
    assert check["changed"] is True and check["backend"] == "iptables"
    assert saved(lab) == before
    assert "torexit_seen_v4" not in lab.ns(lab.relay, "ipset", "list", "-n").stdout

    first = ansible_module(lab.relay, GUARD, BASE)
    assert first["changed"] is True, first
    rules = saved(lab)
    assert rules[rules.index(":OUTPUT ACCEPT [0:0]") + 1:].count("-A OUTPUT -j TOREXIT-GUARD") == 1
    assert "-A OUTPUT -j TOREXIT-GUARD" in saved(lab, "ip6tables")
    # the prefix sweep's reply hook goes first in INPUT, before the role-like TOREXIT-INPUT; nothing else changes
    assert [r for r in rules if r.startswith("-A INPUT ")][0] == \
        "-A INPUT -p tcp -m connmark --mark 0x40000000/0x50000000 -j TOREXIT-REPLY"
    assert [r for r in rules if ("ufw" in r or "INPUT" in r) and "TOREXIT-REPLY" not in r] == \
        [r for r in before if "ufw" in r or "INPUT" in r]
    second = ansible_module(lab.relay, GUARD, BASE)
    assert second["changed"] is False, second
    assert ansible_module(lab.relay, GUARD, BASE, check=True)["changed"] is False

    # a changed policy replaces our chains without a second hook
    changed = ansible_module(lab.relay, GUARD, dict(BASE, horizontal_scan={"prefixes_v4": [24], "prefixes_v6": [48],
                                                                           "hosts_strict": [16], "hosts_default": [32],
                                                                           "hosts_web": [0]}))
    assert changed["changed"] is True
    rules = saved(lab)
    assert rules.count("-A OUTPUT -j TOREXIT-GUARD") == 1
    assert not [r for r in rules if r.startswith(":TOREXIT-HSHIT-1")]
    assert "torexit_ban_hscan_v4_16" not in lab.ns(lab.relay, "ipset", "list", "-n").stdout
    assert ansible_module(lab.relay, GUARD, dict(BASE, horizontal_scan=changed["policy"]["horizontal_scan"]))[
        "changed"] is False

    absent = ansible_module(lab.relay, GUARD, {"state": "absent", "backend": "iptables", "persist": False})
    assert absent["changed"] is True, absent
    assert saved(lab) == before
    assert lab.ns(lab.relay, "ipset", "list", "-n").stdout.split() == ["operator_set"]
    assert ansible_module(lab.relay, GUARD, {"state": "absent", "backend": "iptables"})["changed"] is False


def test_bad_input_fails_and_applies_nothing(lab):
    result = ansible_module(lab.relay, GUARD, dict(BASE, deny=["198.18.0.0/33"]))
    assert result.get("failed") is True and "deny[0]" in result["msg"], result
    assert not [r for r in saved(lab) if "TOREXIT" in r]
    assert lab.ns(lab.relay, "ipset", "list", "-n").stdout.strip() == ""


def test_sweep_is_stopped_while_uploads_and_other_hosts_pass(lab):
    listen(lab, 22)
    listen(lab, 443)
    ansible_module(lab.relay, GUARD, BASE)
    assert_sweep_stopped_and_uploads_pass(lab)
    v6_sweep = probe(lab, [["2001:db8:1:%x::%x" % (i // 200, i % 200 + 1), 22] for i in range(400)])
    assert v6_sweep["ok"] <= 64 and v6_sweep["refused"] >= 300, v6_sweep

    info = ansible_module(lab.relay, "torexit.hardening.egress_guard_info", {"show_bans": True})
    assert info["installed"] is True and info["backend"] == "iptables"
    assert info["digest"] == ansible_module(lab.relay, GUARD, BASE)["digest"]
    assert info["counters"]["detect_hscan"]["packets"] >= 1
    assert info["counters"]["blocked_hscan"]["packets"] >= 2900
    assert info["counters"]["guarded_new"]["packets"] >= 3700
    assert {"key": "198.18.0.0 . 22"}.items() <= info["bans"]["ban_hscan_v4_16"]["entries"][0].items()
    assert info["bans"]["ban_hscan_v6_48"]["count"] >= 1
    assert "entries" not in ansible_module(lab.relay, "torexit.hardening.egress_guard_info", {})["bans"][
        "ban_hscan_v4_16"]
    # a changed policy keeps current bans
    assert ansible_module(lab.relay, GUARD, dict(BASE, vertical_scan={"ports": 64}))["changed"] is True
    assert "198.18.0.0,tcp:22" in lab.ns(lab.relay, "ipset", "list", "torexit_ban_hscan_v4_16").stdout
    assert probe(lab, [["198.18.200.1", 22]])["refused"] == 1


def test_monitor_mode_counts_but_blocks_nothing(lab):
    assert_monitor_mode_counts_but_blocks_nothing(lab, BASE, {"backend": "iptables"})


def test_the_largest_accepted_values_load(lab):
    from test_egress_guard import LARGEST
    # set_size at its default: ipset allocates a hash set's buckets up front
    result = ansible_module(lab.relay, GUARD, dict(BASE, **dict(LARGEST, set_size=262144)))
    assert result["changed"] is True and not result.get("failed"), result


def test_repeated_logins_ban_host_and_port(lab):
    check_repeated_logins_ban_host_and_port(lab, BASE)


def test_wide_scan_gate_spares_known_hosts(lab):
    check_wide_scan_gate_spares_known_hosts(lab, BASE)


def test_web_sweep_is_cut_and_a_cdn_passes(lab):
    """With a chain like the firewall role's TOREXIT-INPUT (accepts established
    traffic) in INPUT: the reply hook goes in front of it, and back in front when the
    role's hook was inserted before it again; absent removes only the guard's."""
    inbound = "*filter\n:TOREXIT-INPUT - [0:0]\n-A INPUT -j TOREXIT-INPUT\n" \
              "-A TOREXIT-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n"
    lab.ns(lab.relay, "iptables-restore", "--noflush", input=inbound)
    before = saved(lab)
    hook = "-A INPUT -p tcp -m connmark --mark 0x40000000/0x50000000 -j TOREXIT-REPLY"
    assert ansible_module(lab.relay, GUARD, BASE)["changed"] is True
    assert [r for r in saved(lab) if r.startswith("-A INPUT ")] == [hook, "-A INPUT -j TOREXIT-INPUT"]
    lab.ns(lab.relay, "sh", "-c", "iptables -D INPUT -j TOREXIT-INPUT && iptables -I INPUT 1 -j TOREXIT-INPUT")
    assert ansible_module(lab.relay, GUARD, BASE)["changed"] is True
    assert [r for r in saved(lab) if r.startswith("-A INPUT ")] == [hook, "-A INPUT -j TOREXIT-INPUT"]
    check_web_sweep_is_cut_and_a_cdn_passes(lab, BASE, {"backend": "iptables"})
    absent = ansible_module(lab.relay, GUARD, {"state": "absent", "backend": "iptables", "persist": False})
    assert absent["changed"] is True
    assert saved(lab) == before
    assert not [r for r in saved(lab, "ip6tables") if "TOREXIT" in r]
