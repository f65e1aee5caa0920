"""The iptables renderer: golden rulesets, ipsets and the parsing of live state."""

import pytest
from golden_files import golden

from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as gn
from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp
from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables as gi

CASES = [
    ("default", {}),
    ("monitor-any-lists", {"mode": "monitor", "owner": "any", "allow": ["198.51.100.0/28"],
                           "deny": ["203.0.113.0/24:22", "[2001:db8:dead::/48]:20-23", "198.18.0.0/15"]}),
    ("large-drop", {"profile": "large", "reject_with": "drop"}),
]


def policy(**params):
    p = gp.build_policy(params, user_exists=lambda name: True)
    return p, gp.policy_digest(p)


@pytest.mark.parametrize("name,params", CASES)
def test_golden(name, params):
    """Rendered rules and ipsets equal the reviewed golden copies. Regenerate with
    TOREXIT_REGEN_GOLDEN=1 after an intended change, and review the diff."""
    p, digest = policy(**params)
    for fam in ("v4", "v6"):
        text = gi.render(p, digest, fam)
        assert text == golden("%s.%s.iptables" % (name, fam), text)
    text = gi.ipset_file(p)
    assert text == golden("%s.ipset" % name, text)


def test_ban_sets_are_named_and_keyed_like_the_nftables_ones():
    p, _d = policy(horizontal_scan={"prefixes_v4": [22, 12], "prefixes_v6": [56, 40]})
    specs = dict((s["name"], s) for s in gi.ipsets(p))
    for name, typ, _key, det, ban_time in gn.ban_sets(p):
        spec = specs["torexit_" + name]
        assert dict(spec["options"])["timeout"] == ban_time
        assert spec["type"] == ("hash:ip,port" if "inet_service" in typ else "hash:ip")
        if det == "hscan":   # the kernel stores the network address of the banned prefix
            assert dict(spec["options"])["netmask"] == int(name.rsplit("_", 1)[1])


def test_every_ban_is_checked_before_detection_and_only_enforce_rejects():
    p, digest = policy()
    rules = gi.rules(p, digest, "v4")
    guard = [r for r in rules if r.startswith("-A TOREXIT-GUARD ")]
    assert guard[-1] == "-A TOREXIT-GUARD -p tcp -j TOREXIT-DETECT"
    bans = [r for r in guard if "torexit_ban_" in r]
    # flood, vscan, hscan /24 and /16, login, psweep /16
    assert len(bans) == 6 and all(r.endswith("-j REJECT --reject-with tcp-reset") for r in bans)
    first_ban = guard.index(bans[0])
    assert guard.index([r for r in guard if "torexit_allow_v4" in r][0]) < first_ban
    pm, digest_m = policy(mode="monitor")
    assert not [r for r in gi.rules(pm, digest_m, "v4") if "REJECT" in r or "DROP" in r]
    pi, digest_i = policy(reject_with="icmp-admin-prohibited")
    assert any(r.endswith("icmp6-adm-prohibited") for r in gi.rules(pi, digest_i, "v6"))


def test_owner_loopback_and_established_are_excluded_first():
    p, digest = policy()
    guard = [r for r in gi.rules(p, digest, "v4") if r.startswith("-A TOREXIT-GUARD ")]
    assert guard[1:5] == ["-A TOREXIT-GUARD -p tcp -m conntrack ! --ctstate NEW -j RETURN",
                          "-A TOREXIT-GUARD ! -p tcp -j RETURN",
                          "-A TOREXIT-GUARD -p tcp -m owner ! --uid-owner debian-tor -j RETURN",
                          "-A TOREXIT-GUARD -o lo -p tcp -j RETURN"]
    pa, digest_a = policy(owner="any")
    assert not [r for r in gi.rules(pa, digest_a, "v4") if "owner" in r]


def test_thresholds_reach_hashlimit_and_connlimit():
    p, digest = policy(flood={"concurrent": 10, "rate": 7, "burst": 9}, vertical_scan={"ports": 0},
                       horizontal_scan={"hosts_web": [0, 0]})
    rules = gi.rules(p, digest, "v6")
    flood = [r for r in rules if "connlimit" in r][0]
    assert "--connlimit-above 10 --connlimit-mask 128" in flood
    assert "--hashlimit-above 7/second --hashlimit-burst 9" in flood
    assert not [r for r in rules if "-A TOREXIT-HS-WEB " in r]
    assert not [r for r in rules if "vscan_v6 " in r and "hashlimit" in r]
    strict48 = [r for r in rules if "-A TOREXIT-HS-STRICT " in r][0]
    assert "--hashlimit-above 96/hour --hashlimit-burst 16" in strict48 and "--hashlimit-dstmask 48" in strict48
    assert "--hashlimit-htable-expire 600000" in strict48


def test_first_contacts_go_to_scans_and_repeats_to_the_flood_chain():
    p, digest = policy(prefix_sweep={"burst": [0, 0]})
    detect = [r for r in gi.rules(p, digest, "v4") if r.startswith("-A TOREXIT-DETECT ")]
    assert detect[0] == "-A TOREXIT-DETECT -p tcp -m set --match-set torexit_seen_v4 dst,dst -g TOREXIT-FLOOD"
    assert detect[1] == "-A TOREXIT-DETECT -p tcp -j SET --add-set torexit_seen_v4 dst,dst"
    assert detect[2].endswith("-g TOREXIT-SCAN")
    # a full seen set: strict ports still count as scans, the rest as possible floods
    assert detect[-1] == "-A TOREXIT-DETECT -p tcp -g TOREXIT-FLOOD"
    assert not [r for r in detect if "connlimit" in r]
    assert "TOREXIT-FLOOD" in gi.chains(p)
    assert gi.our_chains(":TOREXIT-FLOOD - [0:0]\n:TOREXIT-INPUT - [0:0]\n") == ["TOREXIT-FLOOD"]


def test_hook_and_stale_chains():
    p, digest = policy()
    text = gi.render(p, digest, "v4", hook=True, stale=["TOREXIT-HSHIT-2"])
    lines = text.splitlines()
    assert lines.count("-I OUTPUT 1 -j TOREXIT-GUARD") == 1
    assert lines.index(":TOREXIT-HSHIT-2 - [0:0]") < lines.index("-X TOREXIT-HSHIT-2") < lines.index("COMMIT")
    assert "OUTPUT" not in gi.render(p, digest, "v4")


SAVED = """# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [5:300]
:TOREXIT-GUARD - [0:0]
:TOREXIT-INPUT - [0:0]
:TOREXIT-HSHIT-1 - [0:0]
:TOREXIT-UFW-GUARD - [0:0]
[12:720] -A OUTPUT -j TOREXIT-GUARD
[4:240] -A TOREXIT-GUARD -m comment --comment "torexit.hardening egress_guard sha256:%s"
[3:180] -A TOREXIT-GUARD -p tcp -m comment --comment guarded_new
[2:120] -A TOREXIT-HSHIT-0 -p tcp -m comment --comment "detect_hscan" -j REJECT --reject-with tcp-reset
[5:300] -A TOREXIT-HSHIT-1 -p tcp -m comment --comment "detect_hscan" -j REJECT --reject-with tcp-reset
COMMIT
""" % ("ab" * 32)


def test_live_state_parsing():
    assert gi.digest_of(SAVED) == "ab" * 32
    assert gi.hooked(SAVED) is True
    assert gi.hooked(SAVED, gi.CHAIN_PREFIX + "UFW-", "ufw-before-output") is False
    assert gi.our_chains(SAVED) == ["TOREXIT-GUARD", "TOREXIT-HSHIT-1"]   # not the role's TOREXIT-INPUT
    assert gi.our_chains(SAVED, "TOREXIT-UFW-") == ["TOREXIT-UFW-GUARD"]


def test_read_state_sums_counters_and_translates_ban_keys():
    ipset_list = ("Name: torexit_ban_hscan_v4_16\nType: hash:ip,port\nRevision: 7\n"
                  "Header: family inet hashsize 1024 maxelem 262144 timeout 600 netmask 16\n"
                  "Members:\n198.18.0.0,tcp:22 timeout 580\n\n"
                  "Name: operator\nType: hash:ip\nHeader: family inet\nMembers:\n10.9.9.9\n")

    def run(args, data=None):
        if args[0] == "iptables-save":
            return 0, SAVED, ""
        if args[0] == "ip6tables-save":
            return 0, "*filter\nCOMMIT\n", ""
        return 0, ipset_list, ""
    state = gi.read_state(run, show_bans=True)
    assert state["digest"] == "ab" * 32
    assert state["counters"]["detect_hscan"] == {"packets": 7, "bytes": 420}
    assert state["counters"]["guarded_new"]["packets"] == 3
    assert state["bans"] == {"ban_hscan_v4_16": {"count": 1, "entries": [{"key": "198.18.0.0 . 22", "expires": 580}]}}
    assert state["sets"] == {"ban_hscan_v4_16": {"elements": 1, "size": 262144}}


def test_the_firewall_roles_inbound_sets_are_never_the_guards():
    """torexit_in_* (the ORPort DoS rules) share the prefix: the guard neither lists
    them nor takes them for stale sets to destroy."""
    ipset_list = ("Name: torexit_relays_v4\nType: hash:ip\nHeader: family inet maxelem 65536\nMembers:\n\n"
                  "Name: torexit_in_relays_v4\nType: hash:ip\nHeader: family inet maxelem 65536\nMembers:\n"
                  "198.18.0.1\n\nName: torexit_in_blocked_v6\nType: hash:ip\n"
                  "Header: family inet6 maxelem 65536 netmask 64 timeout 86400\nMembers:\n\n"
                  "Name: torexit_tmp_in_relays_v6\nType: hash:ip\nHeader: family inet6 maxelem 65536\nMembers:\n")
    live = gi.list_sets(lambda args, data=None: (0, ipset_list, ""))
    assert sorted(live) == ["torexit_relays_v4"]
    p, _d = policy()
    assert gi.stale_sets(p, live) == []


def test_ipset_script_creates_swaps_and_carries_bans_over():
    p, _d = policy(allow=["198.51.100.0/28"])
    assert gi.ipset_script(p, {})[0].startswith("create torexit_strict_ports bitmap:port")
    live = {}
    for spec in gi.ipsets(p):
        entries = [(e, None) for e in spec.get("elements") or []]
        live[spec["name"]] = {"type": spec["type"], "entries": entries,
                              "header": dict([("family", spec["family"])] + [(k, str(v)) for k, v in spec["options"]])}
    assert gi.ipset_script(p, live) == []
    assert gi.sets_ok(p, live)
    # a ban set with another timeout is replaced with its bans and their time left
    live["torexit_ban_hscan_v4_24"]["header"]["timeout"] = "60"
    live["torexit_ban_hscan_v4_24"]["entries"] = [("198.18.3.0,tcp:22", 42)]
    live["torexit_allow_v4"]["entries"] = []
    script = gi.ipset_script(p, live)
    assert "add -exist torexit_tmp_ban_hscan_v4_24 198.18.3.0,tcp:22 timeout 42" in script
    assert script[-2:] == ["swap torexit_tmp_ban_hscan_v4_24 torexit_ban_hscan_v4_24",
                           "destroy torexit_tmp_ban_hscan_v4_24"]
    assert "add torexit_tmp_allow_v4 198.51.100.0/28" in script


def test_port_ranges_and_zero_networks_compare_as_ipset_lists_them():
    assert gi._keys(["203.0.113.0/24,tcp:20-22"]) == gi._keys(["203.0.113.0/24,tcp:20", "203.0.113.0/24,tcp:21",
                                                              "203.0.113.0/24,tcp:22"])
    p, _d = policy(deny=["0.0.0.0/0:25"])
    deny_port = [s for s in gi.ipsets(p) if s["name"] == "torexit_deny_port_v4"][0]
    assert deny_port["elements"] == ["0.0.0.0/1,tcp:25", "128.0.0.0/1,tcp:25"]


def test_sets_the_kernel_fills_get_buckets_for_their_maxelem():
    """The SET target cannot grow a hash set: buckets x 12 must reach maxelem."""
    assert gi.kernel_hashsize(262144) == 65536
    assert gi.kernel_hashsize(100) == 64
    assert gi.kernel_hashsize(2621440) == 1048576     # xlarge: a power of two, as ipset lists it
    p, _digest = policy(set_size=100000)
    specs = {s["name"]: dict(s["options"]) for s in gi.ipsets(p)}
    for name in ("torexit_seen_v4", "torexit_ban_hscan_v4_24", "torexit_ban_flood_v6_128"):
        assert specs[name]["maxelem"] == 100000 and specs[name]["hashsize"] == 32768
        assert specs[name]["hashsize"] * 12 >= specs[name]["maxelem"]
    assert "hashsize" not in specs["torexit_optout_v4"]   # filled from user space, which grows it
    header = {"family": "inet", "maxelem": "100000", "hashsize": "1024", "timeout": "600"}
    live = {"type": "hash:ip,port", "header": header}
    seen = [s for s in gi.ipsets(p) if s["name"] == "torexit_seen_v4"][0]
    assert not gi.set_matches(seen, live)                 # an older set is recreated
    live["header"]["hashsize"] = "32768"
    assert gi.set_matches(seen, live)


def test_repeated_logins_and_the_wide_scan_gate():
    """Repeats on strict ports feed a per host:port hashlimit that bans host:port;
    first contacts on a strict port beyond a global per-port rate are refused at
    random and forgotten; monitor only counts; no whole-port ban."""
    p, digest = policy()
    rules = gi.rules(p, digest, "v4")
    flood = [r for r in rules if r.startswith("-A TOREXIT-FLOOD ")]
    assert "--hashlimit-above 120/minute --hashlimit-burst 8 --hashlimit-mode dstip,dstport" in flood[0]
    assert "--match-set torexit_strict_ports dst" in flood[0] and flood[0].endswith("-g TOREXIT-LGHIT")
    assert [r for r in rules if r.startswith("-A TOREXIT-LGHIT ")] == [
        "-A TOREXIT-LGHIT -p tcp -j SET --add-set torexit_ban_login_v4_32 dst,dst",
        '-A TOREXIT-LGHIT -p tcp -m comment --comment "detect_login" -j REJECT --reject-with tcp-reset']
    strict = [r for r in rules if r.startswith("-A TOREXIT-HS-STRICT ")]
    assert "--hashlimit-above 2/second --hashlimit-burst 100 --hashlimit-mode dstport " in strict[-1]
    assert strict[-1].endswith('-m comment --comment "detect_wide" -g TOREXIT-WIDE')
    assert [r for r in rules if r.startswith("-A TOREXIT-WIDE")] == [
        "-A TOREXIT-WIDE -p tcp -m statistic --mode random --probability 0.99218750 -g TOREXIT-WIDEHIT",
        "-A TOREXIT-WIDEHIT -p tcp -j SET --del-set torexit_seen_v4 dst,dst",
        '-A TOREXIT-WIDEHIT -p tcp -m comment --comment "blocked_wide" -j REJECT --reject-with tcp-reset']
    pm, digest_m = policy(mode="monitor")
    widehit = [r for r in gi.rules(pm, digest_m, "v6") if r.startswith("-A TOREXIT-WIDEHIT ")]
    assert widehit == ['-A TOREXIT-WIDEHIT -p tcp -m comment --comment "blocked_wide" -j RETURN']
    po, digest_o = policy(login={"rate": 0}, wide_scan={"rate": 0})
    off = gi.rules(po, digest_o, "v4")
    assert not [r for r in off if "LGHIT" in r or "WIDE" in r or "ban_login" in r]


def test_prefix_sweep_meters_confirmation_and_failed_contacts():
    """First contacts into an unconfirmed /22 feed a hashlimit per /16 and port that
    bans prefix:port; reply data confirms the /22 (ipset netmask 22); a retransmitted
    SYN (in DETECT) or a RST to a first contact (in REPLY) is a failed contact; the
    conntrack mark bits are those of guard_common; monitor only counts."""
    p, digest = policy()
    rules = gi.rules(p, digest, "v4")

    def chain(name, rs=None):
        return [r.split(" ", 2)[2] for r in (rules if rs is None else rs) if r.startswith("-A TOREXIT-%s " % name)]
    assert chain("DETECT")[:3] == [
        "-p tcp -m connmark --mark 0x60000000/0x70000000 -g TOREXIT-PSFAIL-OUT",
        "-p tcp -m connmark --mark 0x40000000/0x40000000 -j RETURN",
        "-p tcp -j CONNMARK --or-mark 0x40000000"]
    assert chain("DETECT")[5:7] == [
        "-p tcp -m set --match-set torexit_seen_v4 dst,dst -j CONNMARK --or-mark 0x20000000",
        "-p tcp -m connmark --mark 0x20000000/0x20000000 -g TOREXIT-SCAN"]
    scan = chain("SCAN")
    assert scan[1] == "-p tcp -m set ! --match-set torexit_confirm_v4 dst -j TOREXIT-PSWEEP"
    assert scan[2].endswith("-g TOREXIT-HS-STRICT")
    assert chain("PSWEEP") == [
        "-p tcp -m hashlimit --hashlimit-above 12/minute --hashlimit-burst 96 --hashlimit-mode dstip,dstport "
        "--hashlimit-dstmask 16 --hashlimit-name tx%s_ps_v4_16 --hashlimit-htable-max 262144 "
        "--hashlimit-htable-expire 540000 -g TOREXIT-PSHIT-0" % digest[:8]]
    assert chain("PSHIT-0") == ["-p tcp -j SET --add-set torexit_ban_psweep_v4_16 dst,dst",
                                '-p tcp -m comment --comment "detect_psweep" -j REJECT --reject-with tcp-reset']
    assert chain("PSFAIL-OUT")[0] == '-p tcp -m comment --comment "psweep_failed" -j CONNMARK --or-mark 0x10000000'
    assert chain("PSFAIL-OUT")[1].endswith('--hashlimit-dstmask 16 --hashlimit-name tx%s_pfd_v4_16 '
                                           '--hashlimit-htable-max 262144 --hashlimit-htable-expire 540000 -m comment '
                                           '--comment "detect_psweep" -j SET --add-set torexit_ban_psweep_v4_16 '
                                           'dst,dst' % digest[:8])
    assert "--hashlimit-mode srcip,srcport --hashlimit-srcmask 16" in chain("PSFAIL-IN")[1]
    assert chain("PSFAIL-IN")[1].endswith("-j SET --add-set torexit_ban_psweep_v4_16 src,src")
    assert chain("REPLY") == [
        "-p tcp --tcp-flags RST RST -m connmark --mark 0x20000000/0x20000000 -g TOREXIT-PSFAIL-IN",
        "-p tcp -m length --length 81:65535 -j SET --add-set torexit_confirm_v4 src --exist",
        "-p tcp -m length --length 81:65535 -j CONNMARK --or-mark 0x10000000"]
    assert (gi.CONTACT, gi.FIRST, gi.SETTLED) == (0x40000000, 0x20000000, 0x10000000)
    v6 = gi.rules(p, digest, "v6")
    assert chain("REPLY", v6)[1] == "-p tcp -m length --length 101:65535 -j SET --add-set torexit_confirm_v6 src --exist"
    assert "--hashlimit-dstmask 32" in chain("PSWEEP", v6)[0]
    confirm = [s for s in gi.ipsets(p) if s["name"].startswith("torexit_confirm_")]
    assert [(s["name"], s["type"], dict(s["options"])["netmask"], dict(s["options"])["timeout"]) for s in confirm] == [
        ("torexit_confirm_v4", "hash:ip", 22, 600), ("torexit_confirm_v6", "hash:ip", 48, 600)]

    # both levels on: one meter, one ban set and one PSHIT chain per level
    p2, digest2 = policy(prefix_sweep={"burst": [48, 96]})
    assert [c for c in gi.chains(p2) if "PSHIT" in c] == ["TOREXIT-PSHIT-0", "TOREXIT-PSHIT-1"]
    assert chain("PSHIT-0", gi.rules(p2, digest2, "v4"))[0].endswith("torexit_ban_psweep_v4_22 dst,dst")
    # monitor: the ban set fills, nothing is refused
    pm, digest_m = policy(mode="monitor")
    assert chain("PSHIT-0", gi.rules(pm, digest_m, "v6"))[1] == '-p tcp -m comment --comment "detect_psweep" -j RETURN'
    # off: no rule reads or writes the mark, no confirmation set, no reply hook
    po, digest_o = policy(prefix_sweep={"burst": [0, 0]})
    off = gi.render(po, digest_o, "v4", hook=True)
    assert "connmark" not in off.lower() and "confirm" not in off and "PSHIT" not in off and "INPUT" not in off
    assert not [s for s in gi.ipsets(po) if "confirm" in s["name"] or "psweep" in s["name"]]


def test_reply_hook_is_added_moved_in_front_of_accepting_rules_and_deleted():
    p, digest = policy()
    po, _digest_o = policy(prefix_sweep={"burst": [0, 0]})
    hook = "-A INPUT " + gi.input_hook()
    assert hook == "-A INPUT -p tcp -m connmark --mark 0x40000000/0x50000000 -j TOREXIT-REPLY"
    assert gi.input_hooked("*filter\n[3:9] %s\n-A INPUT -j TOREXIT-INPUT\n" % hook) == (True, True)
    behind = "*filter\n-A INPUT -j TOREXIT-INPUT\n%s\n" % hook
    assert gi.input_hooked(behind) == (True, False)
    assert gi.input_hooked("*filter\n-A INPUT -j f2b-sshd\n%s\n" % hook) == (True, True)
    assert gi.input_hooked("*filter\n-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT\n") == (False, False)

    def loaded(text):
        return gi.Chains(None, True, [], True, *gi.input_hooked(text))
    assert gi.in_hook_change(p, loaded("")) == "add"
    assert gi.in_hook_change(p, loaded(behind)) == "move"
    assert gi.in_hook_change(p, loaded(hook)) is None
    assert gi.in_hook_change(po, loaded(hook)) == "delete"
    assert gi.in_hook_change(po, loaded("")) is None
    moved = gi.render(p, digest, "v4", in_hook="move").splitlines()
    assert moved.index("-D INPUT " + gi.input_hook()) < moved.index("-I INPUT 1 " + gi.input_hook())
    ufw = gi.render(p, digest, "v6", prefix="TOREXIT-UFW-", parent="ufw6-before-output", in_hook="add",
                    in_parent="ufw6-before-input")
    assert "-I ufw6-before-input 1 -p tcp -m connmark --mark 0x40000000/0x50000000 -j TOREXIT-UFW-REPLY" in ufw
    removed = gi.remove_text(["TOREXIT-REPLY"], True, in_hook=True).splitlines()
    assert removed[1:3] == ["-D OUTPUT -j TOREXIT-GUARD", "-D INPUT " + gi.input_hook()]
    assert gi.our_chains(":TOREXIT-PSHIT-0 - [0:0]\n:TOREXIT-REPLY - [0:0]\n:TOREXIT-INPUT - [0:0]\n") == [
        "TOREXIT-PSHIT-0", "TOREXIT-REPLY"]


def test_iptables_unit_puts_the_reply_hook_first_after_the_inbound_rules():
    from ansible_collections.torexit.hardening.plugins.module_utils import guard_iptables as gipt
    p, _digest = policy()
    text = gipt.unit_text(p)
    assert "After=netfilter-persistent.service torexit-inbound-iptables.service" in text
    for key in ("ExecStart", "ExecReload"):
        for cmd in ("iptables", "ip6tables"):
            assert ("%s=/bin/sh -c '%s -D INPUT %s 2>/dev/null; %s -I INPUT 1 %s'"
                    % (key, cmd, gi.input_hook(), cmd, gi.input_hook())) in text.splitlines()
    assert "ExecStop=-/bin/sh -c 'iptables -D INPUT %s" % gi.input_hook() in text
    off = gipt.unit_text(policy(prefix_sweep={"burst": [0, 0]})[0])
    assert "-I INPUT" not in off and "-D INPUT" in off
