# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/firewall/files/torexit_firewall_rollback.py: what the rollback saves (definitions,
never the guard's dynamic elements) and what a restore touches (only our chains)."""

import json

import pytest
from role_files import load_role_file

rb = load_role_file("firewall", "torexit_firewall_rollback.py", "firewall_rollback")

DEST = "198.18.77.77"


@pytest.fixture
def rbdir(tmp_path, monkeypatch):
    """The script's state directory and markers in tmp_path."""
    monkeypatch.setattr(rb, "DIR", str(tmp_path))
    monkeypatch.setattr(rb, "PENDING", str(tmp_path / "pending"))
    monkeypatch.setattr(rb, "FAILED", str(tmp_path / "failed"))
    return tmp_path


@pytest.fixture
def logged(monkeypatch):
    """What the script logs, kept instead of printed and sent to the journal."""
    out = []
    monkeypatch.setattr(rb, "log", lambda msg, prio="info": out.append(msg))
    return out


def ipt_fake(now, sent):
    """A `run` that answers iptables-save with NOW and keeps what iptables-restore is sent."""
    def run(args, data=None):
        if args == ["iptables-save", "-t", "filter"]:
            return 0, now, ""
        if args == ["iptables-restore", "--noflush"]:
            sent.append(data)
        return 0, "", ""
    return run


# `nft list table` of a guard-like table (nftables 1.0.6), with elements in every set.
NFT_TABLE = """table inet torexit_guard {
\tset allow_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 192.0.2.0/28 }
\t}

\tset relays_v4 {
\t\ttype ipv4_addr
\t\tsize 65536
\t\telements = { 192.0.2.33 }
\t}

\tset optout_v4 {
\t\ttype ipv4_addr
\t\tsize 65536
\t\tflags interval,timeout
\t\telements = { 198.18.77.77 }
\t}

\tset seen_v4 {
\t\ttype ipv4_addr . inet_service
\t\tsize 100
\t\tflags dynamic,timeout
\t\ttimeout 1m
\t\telements = { 198.18.77.78 . 22 expires 1m59s996ms,
\t\t\t     198.18.77.77 . 443 expires 59m59s976ms }
\t}

\tset ban_vscan_v4_32 {
\t\ttype ipv4_addr
\t\tsize 100
\t\tflags dynamic,timeout
\t\ttimeout 1h
\t\telements = { 198.18.77.77 expires 59m58s }
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr @ban_vscan_v4_32 reject
\t}
}"""


def test_nft_definitions_drop_dynamic_elements_and_keep_static_ones():
    out = rb.nft_definitions(NFT_TABLE)
    assert "198.18.77" not in out
    assert "192.0.2.33" not in out          # relays: refreshed from the consensus, kept in the kernel
    assert "elements = { 192.0.2.0/28 }" in out
    for name in ("allow_v4", "relays_v4", "optout_v4", "seen_v4", "ban_vscan_v4_32"):
        assert "\tset %s {" % name in out
    assert "flags dynamic,timeout" in out and "ip daddr @ban_vscan_v4_32 reject" in out


def test_nft_elements_of_dynamic_sets_are_read_whole():
    blocks = {name: b for b, name in [(b, b[1]) for b in rb.nft_set_blocks(NFT_TABLE)] if name}
    assert not rb.nft_dynamic(blocks["allow_v4"])
    assert all(rb.nft_dynamic(blocks[n]) for n in ("relays_v4", "optout_v4", "seen_v4", "ban_vscan_v4_32"))
    _lines, elems = rb.nft_split_elements(blocks["seen_v4"][0])
    assert elems == "198.18.77.78 . 22 expires 1m59s996ms, 198.18.77.77 . 443 expires 59m59s976ms"


IPSET_SAVE = """create torexit_allow_v4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add torexit_allow_v4 192.0.2.0/28
create torexit_relays_v4 hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2
add torexit_relays_v4 192.0.2.33
create torexit_seen_v4 hash:ip,port family inet hashsize 1024 maxelem 1024 timeout 600 bucketsize 12 initval 0x3
add torexit_seen_v4 198.18.77.77,tcp:443 timeout 590
create torexit_ban_vscan_v4_32 hash:ip family inet hashsize 1024 maxelem 1024 timeout 600 bucketsize 12 initval 0x4
add torexit_ban_vscan_v4_32 198.18.77.77 timeout 590
create f2b-sshd hash:ip family inet hashsize 1024 maxelem 65536 timeout 600 bucketsize 12 initval 0x5
add f2b-sshd 192.0.2.66 timeout 500
"""


def test_ipset_save_keeps_our_definitions_and_static_elements_only(rbdir, monkeypatch):
    monkeypatch.setattr(rb, "have", lambda cmd: True)
    monkeypatch.setattr(rb, "run", lambda args, data=None: (0, IPSET_SAVE, "") if args == ["ipset", "save"] else (1, "", ""))
    rb.ipset_save()
    saved = (rbdir / "ipset").read_text()
    assert DEST not in saved and "192.0.2.33" not in saved
    assert "f2b-sshd" not in saved and "192.0.2.66" not in saved      # not ours: never saved
    assert "add torexit_allow_v4 192.0.2.0/28" in saved
    assert [line.split()[1] for line in saved.splitlines() if line.startswith("create")] == [
        "torexit_allow_v4", "torexit_relays_v4", "torexit_seen_v4", "torexit_ban_vscan_v4_32"]


def test_ipset_restore_swaps_static_sets_and_leaves_dynamic_ones(rbdir, monkeypatch):
    (rbdir / "ipset").write_text("create torexit_allow_v4 hash:net family inet maxelem 65536\n"
                                 "add torexit_allow_v4 192.0.2.0/28\n"
                                 "create torexit_ban_vscan_v4_32 hash:ip family inet maxelem 1024 timeout 600\n"
                                 "create torexit_deny_v4 hash:net family inet maxelem 65536\n")
    calls = []

    def run(args, data=None):
        calls.append((args, data))
        if args == ["ipset", "list", "-n"]:
            return 0, "torexit_allow_v4\ntorexit_ban_vscan_v4_32\nf2b-sshd\n", ""
        return 0, "", ""

    monkeypatch.setattr(rb, "run", run)
    monkeypatch.setattr(rb, "have", lambda cmd: True)
    assert rb.ipset_restore()
    batches = [d for a, d in calls if a == ["ipset", "restore"]]
    assert batches == [
        "create torexit_rb_tmp hash:net family inet maxelem 65536\nadd torexit_rb_tmp 192.0.2.0/28\n"
        "swap torexit_rb_tmp torexit_allow_v4\ndestroy torexit_rb_tmp\n",
        "create torexit_deny_v4 hash:net family inet maxelem 65536\n"]
    assert not any("ban_vscan" in (d or "") or "f2b" in (d or "") for _a, d in calls)


IPT_BEFORE = """# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:TOREXIT-GUARD - [0:0]
:TOREXIT-INPUT - [0:0]
-A INPUT -j TOREXIT-INPUT
-A INPUT -s 192.0.2.9/32 -j ACCEPT
-A INPUT -j TOREXIT-GUARD
-A FORWARD -j DOCKER-USER
-A OUTPUT -j TOREXIT-GUARD
-A DOCKER-USER -j RETURN
-A TOREXIT-GUARD -m set --match-set torexit_ban_vscan_v4_32 dst -j REJECT
-A TOREXIT-INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A TOREXIT-INPUT -j DROP
COMMIT
"""


def test_ipt_ours_takes_our_chains_hooks_and_policies_only():
    ours = rb.ipt_ours(IPT_BEFORE)
    assert ours["chains"] == ["TOREXIT-GUARD", "TOREXIT-INPUT"]
    assert ours["policies"] == {"INPUT": "ACCEPT", "FORWARD": "DROP", "OUTPUT": "ACCEPT"}
    assert ours["hooks"] == [["INPUT", "-j TOREXIT-INPUT", True], ["INPUT", "-j TOREXIT-GUARD", False],
                             ["OUTPUT", "-j TOREXIT-GUARD", True]]
    assert all(c.startswith("TOREXIT-") for c, _r in ours["rules"])
    assert "DOCKER" not in json.dumps(ours) and "192.0.2.9" not in json.dumps(ours)


def test_ipt_restore_rewrites_only_our_chains(rbdir, logged, monkeypatch):
    """A later run changed TOREXIT-INPUT, added a chain, set INPUT to DROP and FORWARD to
    ACCEPT (ufw can); fail2ban added a chain meanwhile. The restore sends
    iptables-restore --noflush only our chains, the hooks and the policies."""
    (rbdir / "iptables.json").write_text(json.dumps(rb.ipt_ours(IPT_BEFORE)))
    now = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:F2B-sshd - [0:0]
:TOREXIT-GUARD - [0:0]
:TOREXIT-INPUT - [0:0]
:TOREXIT-NEW - [0:0]
-A INPUT -j F2B-sshd
-A INPUT -j TOREXIT-INPUT
-A OUTPUT -j TOREXIT-GUARD
-A OUTPUT -j TOREXIT-NEW
-A F2B-sshd -s 192.0.2.66/32 -j REJECT
-A TOREXIT-INPUT -p tcp -m tcp --dport 2222 -j ACCEPT
-A TOREXIT-INPUT -j DROP
COMMIT
"""
    sent = []
    monkeypatch.setattr(rb, "run", ipt_fake(now, sent))
    assert rb.ipt_restore()
    assert sent[0].splitlines() == [
        "*filter",
        ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]",
        ":TOREXIT-GUARD - [0:0]", ":TOREXIT-INPUT - [0:0]", ":TOREXIT-NEW - [0:0]",
        "-D INPUT -j TOREXIT-INPUT", "-D OUTPUT -j TOREXIT-GUARD", "-D OUTPUT -j TOREXIT-NEW",
        "-A TOREXIT-GUARD -m set --match-set torexit_ban_vscan_v4_32 dst -j REJECT",
        "-A TOREXIT-INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A TOREXIT-INPUT -j DROP",
        "-I INPUT 1 -j TOREXIT-INPUT", "-A INPUT -j TOREXIT-GUARD", "-I OUTPUT 1 -j TOREXIT-GUARD",
        "-X TOREXIT-NEW",
        "COMMIT"]


@pytest.mark.parametrize("pending,timer,expect_rc", [(False, "inactive", 0), (True, "active", 3), (True, "inactive", 3),
                                                     (False, "active", 3)])
def test_status_refuses_while_a_rollback_is_pending(rbdir, monkeypatch, capsys, pending, timer, expect_rc):
    if pending:
        (rbdir / "pending").write_text("1\n")
    monkeypatch.setattr(rb, "run", lambda args, data=None: (0, timer if args[-1].endswith(".timer") else "inactive", ""))
    try:
        rb.status()
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr().out
    assert rc == expect_rc
    if expect_rc:
        assert "torexit-firewall-rollback restore" in out and "torexit-firewall-rollback confirm" in out
        assert ("wait until it has restored" in out) == (timer == "active")
    else:
        assert out.strip() == "none"


def test_ipt_restore_never_loosens_forward(rbdir, logged, monkeypatch):
    """Docker sets FORWARD to DROP; a restore to the saved ACCEPT would open it."""
    (rbdir / "iptables.json").write_text(json.dumps(rb.ipt_ours(IPT_BEFORE.replace(":FORWARD DROP", ":FORWARD ACCEPT"))))
    sent = []
    monkeypatch.setattr(rb, "run", ipt_fake(IPT_BEFORE, sent))
    assert rb.ipt_restore()
    assert not any(line.startswith(":FORWARD") for line in sent[0].splitlines())


def test_ipt_restore_does_not_create_a_table_for_nothing(rbdir, logged, monkeypatch):
    (rbdir / "iptables.json").write_text(json.dumps(rb.ipt_ours("")))
    sent = []
    monkeypatch.setattr(rb, "run", ipt_fake("", sent))
    assert rb.ipt_restore()
    assert sent == []


def _nft_fake(calls, fail_with_elements=False):
    def run(args, data=None):
        calls.append((args, data))
        if args == ["nft", "list", "table", "inet", "torexit_guard"]:
            return 0, NFT_TABLE, ""
        if args[:2] == ["nft", "-f"] and fail_with_elements and "add element" in data:
            return 1, "", "Error: Could not process rule: %s" % data   # nft echoes the line
        return (1, "", "Error: No such file or directory") if args[1] == "delete" else (0, "", "")
    return run


@pytest.fixture
def nft_saved(rbdir, monkeypatch):
    """A save of NFT_TABLE's definitions, its rule file absent."""
    monkeypatch.setattr(rb, "TABLES", {"torexit_guard": str(rbdir / "absent.nft")})
    (rbdir / "nft-torexit_guard").write_text(rb.nft_definitions(NFT_TABLE))
    return rbdir


def test_nft_restore_carries_the_bans_into_the_restored_table(nft_saved, logged, monkeypatch):
    calls = []
    monkeypatch.setattr(rb, "run", _nft_fake(calls))
    assert rb.nft_restore()
    loads = [d for a, d in calls if a == ["nft", "-f", "-"]]
    assert len(loads) == 1      # one transaction: definitions and the carried elements
    assert loads[0].startswith("table inet torexit_guard {}\ndelete table inet torexit_guard\n")
    assert "add element inet torexit_guard ban_vscan_v4_32 { 198.18.77.77 expires 59m58s }" in loads[0]
    assert "add element inet torexit_guard optout_v4 { 198.18.77.77 }" in loads[0]
    assert "add element inet torexit_guard allow_v4" not in loads[0]   # static: from the definitions
    assert not any(DEST in m for m in logged)


def test_nft_restore_failing_elements_name_sets_not_addresses(nft_saved, logged, monkeypatch):
    calls = []
    monkeypatch.setattr(rb, "run", _nft_fake(calls, fail_with_elements=True))
    assert rb.nft_restore()      # the table itself came back
    assert any("could not be carried over" in m and "ban_vscan_v4_32" in m for m in logged)
    assert not any("198.18.77" in m for m in logged)


def test_a_save_of_the_earlier_version_is_cut_down_before_its_restore(rbdir):
    """The earlier shell version saved whole `nft -s list table` texts, a full `ipset save`
    and full iptables-save dumps, marked `saved`: a restore keeps only what this version keeps."""
    tmp_path = rbdir
    (tmp_path / "saved").write_text("")
    (tmp_path / "torexit_guard.nft").write_text(NFT_TABLE)
    (tmp_path / "ipset").write_text(IPSET_SAVE)
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT DROP [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n"
    (tmp_path / "iptables").write_text(nat + IPT_BEFORE)
    rb.upgrade_legacy()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ipset", "iptables.json", "nft-torexit_guard", "pending", "saved"]
    for p in tmp_path.iterdir():
        assert "198.18.77" not in p.read_text() and "192.0.2.66" not in p.read_text()
    assert json.loads((tmp_path / "iptables.json").read_text()) == rb.ipt_ours(IPT_BEFORE)
    assert rb.ipt_ours(nat + IPT_BEFORE)["policies"]["INPUT"] == "ACCEPT"   # the filter table's, not nat's


def test_save_writes_no_destination_and_confirm_deletes_it(tmp_path, monkeypatch):
    """save() as the role's arming runs it, against a kernel whose guard sets, ipsets
    and a foreign iptables chain hold a destination: no saved file names it, and
    `confirm` removes the whole save."""
    state = tmp_path / "firewall-rollback"
    monkeypatch.setattr(rb, "DIR", str(state))
    monkeypatch.setattr(rb, "PENDING", str(state / "pending"))
    monkeypatch.setattr(rb, "TABLES", {"torexit_guard": str(tmp_path / "absent.nft")})
    monkeypatch.setattr(rb, "have", lambda cmd: True)
    answers = {("nft", "-s", "list", "table", "inet", "torexit_guard"): NFT_TABLE,
               ("ipset", "save"): IPSET_SAVE,
               ("iptables-save", "-t", "filter"): IPT_BEFORE.replace("COMMIT", "-A DOCKER-USER -d %s/32 -j DROP\nCOMMIT" % DEST)}
    monkeypatch.setattr(rb, "run", lambda args, data=None: (0, answers.get(tuple(args), ""), ""))
    rb.save()
    saved = sorted(p.name for p in state.iterdir())
    assert saved == ["ip6tables.json", "ipset", "iptables.json", "nft-torexit_guard", "pending"]
    assert "set ban_vscan_v4_32 {" in (state / "nft-torexit_guard").read_text()
    for p in state.iterdir():
        assert "198.18.77" not in p.read_text(), p.name
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    monkeypatch.setattr(rb.sys, "argv", ["torexit-firewall-rollback", "confirm"])
    monkeypatch.setattr(rb.os, "umask", lambda mask: 0o022)   # main() sets it for the whole process
    rb.main()
    assert not state.exists()


@pytest.mark.parametrize("pending", [True, False])
def test_boot_puts_the_saved_files_back_only_when_a_change_was_never_confirmed(rbdir, logged, monkeypatch, pending):
    """The boot unit runs `boot` before the firewall units: with the marker it unpacks
    the saved files and forgets the save; without it, it touches nothing."""
    if pending:
        (rbdir / "pending").write_text("1\n")
    calls = []
    monkeypatch.setattr(rb, "run", lambda args, data=None: (calls.append(args), (0, "", ""))[1])
    monkeypatch.setattr(rb, "FILES", [])
    rb.boot()
    if pending:
        assert calls == [["tar", "-C", "/", "-xpf", str(rbdir / "files.tar")]]
        assert not rbdir.exists() and "before the firewall units started" in logged[0]
    else:
        assert calls == [] and rbdir.exists() and logged == []
