# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/tor_exit/files/torexit_exitpolicy_sync.py: parsing nft JSON, rendering, syncing."""

import json
import subprocess

import pytest
from role_files import load_role_file

sync = load_role_file("tor_exit", "torexit_exitpolicy_sync.py", "exitpolicy_sync")


def nft_set(name, elems, family="inet", table="torexit_guard"):
    return {"set": {"family": family, "name": name, "table": table, "handle": 1, "elem": elems}}


def doc(*sets):
    return {"nftables": [{"metainfo": {"version": "1.0.6"}},
                         {"table": {"family": "inet", "name": "torexit_guard"}}, *sets]}


# As `nft -j list table inet torexit_guard` printed it in a Debian 12 container.
REAL = doc(
    nft_set("ban_hscan_v4_24", [
        {"elem": {"val": {"concat": ["198.18.7.0", 22]}, "timeout": 90, "expires": 89}},
        {"elem": {"val": {"concat": ["198.18.8.0", 443]}, "timeout": 600, "expires": 500}}]),
    nft_set("ban_vscan_v6_128", [{"elem": {"val": "2001:db8::5", "timeout": 3600, "expires": 3599}}]),
    nft_set("ban_hscan_v6_48", [{"elem": {"val": {"concat": ["2001:db8:1::", 25]}, "timeout": 3600,
                                          "expires": 3000}}]),
    nft_set("optout_v4", [
        {"elem": {"val": {"prefix": {"addr": "198.18.5.0", "len": 24}}, "timeout": 86400, "expires": 86399}},
        {"elem": {"val": "198.18.9.1", "timeout": 3600, "expires": 3599}},
        {"elem": {"val": {"range": ["198.18.10.0", "198.18.10.5"]}, "timeout": 3600, "expires": 3599}}]),
    nft_set("optout_v6", [{"elem": {"val": {"prefix": {"addr": "2001:db8:5::", "len": 48}},
                                    "timeout": 86400, "expires": 86399}}]),
    nft_set("counters_internal", [{"elem": {"val": "198.18.99.1"}}]),
)


def lines(text):
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_real_nft_output_renders_one_reject_per_element():
    entries, skipped = sync.entries_from_nft(REAL)
    assert skipped == 0
    out = lines(sync.render(sync.select(entries, 500)))
    assert out == [
        "ExitPolicy reject 198.18.5.0/24:*",
        "ExitPolicy reject 198.18.7.0/24:22",
        "ExitPolicy reject 198.18.8.0/24:443",
        "ExitPolicy reject 198.18.9.1:*",
        "ExitPolicy reject 198.18.10.0/30:*",
        "ExitPolicy reject 198.18.10.4/31:*",
        "ExitPolicy reject [2001:db8::5]:*",
        "ExitPolicy reject [2001:db8:1::]/48:25",
        "ExitPolicy reject [2001:db8:5::]/48:*",
    ]


def test_prefix_length_comes_from_the_set_name_and_host_bits_are_masked():
    entries, _skipped = sync.entries_from_nft(doc(
        nft_set("ban_hscan_v4_16", [{"elem": {"val": {"concat": ["198.19.44.9", 80]}, "timeout": 60, "expires": 5}}]),
        nft_set("ban_flood_v4_32", [{"elem": {"val": {"concat": ["198.18.3.3", 8080]}, "timeout": 60,
                                              "expires": 5}}]),
        nft_set("ban_hscan_v6_32", [{"elem": {"val": {"concat": ["2001:db8:ffff::1", 443]}}}])))
    assert lines(sync.render(sync.select(entries, 10))) == [
        "ExitPolicy reject 198.18.3.3:8080",
        "ExitPolicy reject 198.19.0.0/16:80",
        "ExitPolicy reject [2001:db8::]/32:443",
    ]


def test_other_tables_families_and_unreadable_elements_are_ignored():
    entries, skipped = sync.entries_from_nft(doc(
        nft_set("ban_hscan_v4_24", [{"elem": {"val": {"concat": ["198.18.1.0", 22]}}}], table="other"),
        nft_set("ban_hscan_v4_24", [{"elem": {"val": {"concat": ["198.18.1.0", 22]}}}], family="ip"),
        nft_set("ban_hscan_v4_24", [{"elem": {"val": {"concat": ["2001:db8::", 22]}}},
                                    {"elem": {"val": {"concat": ["198.18.1.0", 0]}}},
                                    {"elem": {"val": {"concat": ["not-an-address", 22]}}},
                                    {"elem": {"val": {"concat": ["198.18.2.0", 22]}}}])))
    assert skipped == 3
    assert [(str(e["net"]), e["port"]) for e in entries] == [("198.18.2.0/24", 22)]


def test_limit_keeps_opt_outs_then_the_most_recent_bans():
    bans = [{"elem": {"val": {"concat": [f"198.18.{i}.0", 22]}, "timeout": 600, "expires": 600 - i}}
            for i in range(10)]
    entries, _skipped = sync.entries_from_nft(doc(
        nft_set("ban_hscan_v4_24", bans),
        nft_set("optout_v4", [{"elem": {"val": "198.18.200.1", "timeout": 600, "expires": 1}}])))
    out = lines(sync.render(sync.select(entries, 4)))
    # the opt-out, then the three bans added last (smallest timeout - expires)
    assert out == ["ExitPolicy reject 198.18.0.0/24:22", "ExitPolicy reject 198.18.1.0/24:22",
                   "ExitPolicy reject 198.18.2.0/24:22", "ExitPolicy reject 198.18.200.1:*"]


def test_duplicates_are_written_once():
    entries, _skipped = sync.entries_from_nft(doc(
        nft_set("ban_vscan_v4_32", [{"elem": {"val": "198.18.1.1"}}]),
        nft_set("optout_v4", [{"elem": {"val": "198.18.1.1"}}])))
    assert lines(sync.render(sync.select(entries, 500))) == ["ExitPolicy reject 198.18.1.1:*"]


def args_for(tmp_path, **extra):
    argv = ["--output", str(tmp_path / "10-torexit-guard.conf"), "--tor", "tor"]
    for key, values in extra.items():
        for value in values:
            argv += ["--" + key.replace("_", "-"), value]
    return sync.parse_args(argv)


def test_sync_writes_reloads_only_on_change_and_empties_when_the_table_is_gone(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="Configuration was valid\n", stderr="")
    monkeypatch.setattr(sync.subprocess, "run", fake_run)
    args = args_for(tmp_path, torrc=["/etc/tor/torrc"], reload=["tor@default.service"])
    assert sync.sync(args, REAL).startswith("updated")
    assert calls == [["tor", "--verify-config", "-f", "/etc/tor/torrc"],
                     ["systemctl", "try-reload-or-restart", "tor@default.service"]]
    assert "ExitPolicy reject 198.18.7.0/24:22" in (tmp_path / "10-torexit-guard.conf").read_text()

    calls.clear()
    assert sync.sync(args, REAL).startswith("unchanged")
    assert calls == []  # nothing verified, nothing reloaded

    assert sync.sync(args, {"nftables": []}).startswith("updated")
    assert lines((tmp_path / "10-torexit-guard.conf").read_text()) == []
    assert calls[-1] == ["systemctl", "try-reload-or-restart", "tor@default.service"]


def test_rejected_config_is_rolled_back_and_tor_not_reloaded(tmp_path, monkeypatch):
    out = tmp_path / "10-torexit-guard.conf"
    out.write_text("# old\n")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout=(
            "Nov 23 12:00:00.000 [warn] Malformed policy 'reject 198.18.7.0/24:22'.\n"), stderr="")
    monkeypatch.setattr(sync.subprocess, "run", fake_run)
    with pytest.raises(sync.SyncError) as err:
        sync.sync(args_for(tmp_path, torrc=["/etc/tor/torrc"], reload=["tor@default.service"]), REAL)
    assert out.read_text() == "# old\n"
    assert not any(c[0] == "systemctl" for c in calls)
    assert "198.18" not in str(err.value) and "<address>" in str(err.value)


def test_missing_table_reads_as_empty_and_other_nft_errors_stop(monkeypatch):
    def missing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Error: No such file or directory\n")
    monkeypatch.setattr(sync.subprocess, "run", missing)
    assert sync.read_nft() == {"nftables": []}

    def broken(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Error: Operation not permitted\n")
    monkeypatch.setattr(sync.subprocess, "run", broken)
    with pytest.raises(sync.SyncError, match="not permitted"):
        sync.read_nft()


def test_main_reads_a_json_file(tmp_path, capsys):
    src = tmp_path / "nft.json"
    src.write_text(json.dumps(REAL))
    rc = sync.main(["--output", str(tmp_path / "out.conf"), "--nft-json", str(src), "--max-lines", "2"])
    assert rc == 0
    assert len(lines((tmp_path / "out.conf").read_text())) == 2
    printed = capsys.readouterr().out
    assert "2 reject lines (2 opt-outs, 0 bans; 7 over the limit" in printed
    assert "198.18" not in printed  # counts only, never addresses


# --- the iptables and ufw backends' ipsets -------------------------------------

# As `ipset save NAME` printed the sets the iptables backend creates (ipset 7.17,
# Debian 12), after adding 198.18.7.9,tcp:22, 198.18.8.9,tcp:80-82 (ipset stores
# one element per port), a udp element, an IPv6 /48 ban and opt-outs.
IPSET_SAVE = """\
create torexit_ban_hscan_v4_24 hash:ip,port family inet hashsize 1024 maxelem 262144 timeout 600 \
bucketsize 12 initval 0xa094c64d netmask 24
add torexit_ban_hscan_v4_24 198.18.8.0,tcp:80 timeout 599
add torexit_ban_hscan_v4_24 198.18.7.0,tcp:22 timeout 100
add torexit_ban_hscan_v4_24 198.18.8.0,udp:53 timeout 599
add torexit_ban_hscan_v4_24 198.18.8.0,tcp:81 timeout 599
add torexit_ban_hscan_v4_24 198.18.8.0,tcp:82 timeout 599
create torexit_optout_v4 hash:net family inet hashsize 1024 maxelem 65536 timeout 86400 bucketsize 12 \
initval 0x8e541932
add torexit_optout_v4 198.18.5.0/24 timeout 29
add torexit_optout_v4 198.18.9.1 timeout 3599
create torexit_optout_v6 hash:net family inet6 hashsize 1024 maxelem 65536 timeout 86400 bucketsize 12 \
initval 0xefce15fd
add torexit_optout_v6 2001:db8:5::/64 timeout 3599
add torexit_optout_v6 2001:db8:5::1 timeout 3599
create torexit_ban_hscan_v6_48 hash:ip,port family inet6 hashsize 1024 maxelem 262144 timeout 600 \
bucketsize 12 initval 0x612e35b6 netmask 48
add torexit_ban_hscan_v6_48 2001:db8:1::,tcp:443 timeout 599
create torexit_ban_vscan_v6_128 hash:ip family inet6 hashsize 1024 maxelem 262144 timeout 600 bucketsize 12 \
initval 0x8f7d139a
add torexit_ban_vscan_v6_128 2001:db8::5 timeout 599
create torexit_seen_v4 hash:ip,port family inet hashsize 1024 maxelem 262144 timeout 600
add torexit_seen_v4 198.18.99.1,tcp:22 timeout 500
create other_ban_hscan_v4_24 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 600 netmask 24
add other_ban_hscan_v4_24 198.18.98.0,tcp:22 timeout 500
"""


def test_ipset_save_renders_one_reject_per_element():
    entries, skipped = sync.entries_from_ipset(IPSET_SAVE)
    assert skipped == 1  # the udp element: tor exits TCP only
    assert lines(sync.render(sync.select(entries, 500))) == [
        "ExitPolicy reject 198.18.5.0/24:*",
        "ExitPolicy reject 198.18.7.0/24:22",
        "ExitPolicy reject 198.18.8.0/24:80",
        "ExitPolicy reject 198.18.8.0/24:81",
        "ExitPolicy reject 198.18.8.0/24:82",
        "ExitPolicy reject 198.18.9.1:*",
        "ExitPolicy reject [2001:db8::5]:*",
        "ExitPolicy reject [2001:db8:1::]/48:443",
        "ExitPolicy reject [2001:db8:5::]/64:*",
        "ExitPolicy reject [2001:db8:5::1]:*",
    ]
    ages = {(str(e["net"]), e["port"]): e["age"] for e in entries}
    assert ages[("198.18.7.0/24", 22)] == 500 and ages[("198.18.8.0/24", 80)] == 1
    assert ages[("198.18.5.0/24", None)] == 86400 - 29
    assert {e["kind"] for e in entries if e["net"].version == 6 and e["net"].prefixlen in (64, 128)
            and e["port"] is None and str(e["net"]).startswith("2001:db8:5:")} == {"optout"}


def test_ipset_port_ranges_prefix_from_the_name_and_bad_elements():
    entries, skipped = sync.entries_from_ipset("\n".join([
        "create torexit_ban_hscan_v4_16 hash:ip,port family inet maxelem 9 timeout 60 netmask 16",
        "add torexit_ban_hscan_v4_16 198.19.44.9,tcp:8000-8010 timeout 30",
        "add torexit_ban_hscan_v4_16 198.19.44.9,80 timeout 30",     # no protocol: tcp
        "add torexit_ban_hscan_v4_16 198.19.44.9,tcp:0 timeout 30",  # port 0
        "add torexit_ban_hscan_v4_16 198.19.44.9,tcp:90-80",        # reversed range
        "add torexit_ban_hscan_v4_16 2001:db8::1,tcp:22",            # wrong family
        "add torexit_ban_hscan_v4_16 198.19.0.0/16,tcp:22",          # prefix in a hash:ip set
        "create torexit_ban_hscan_v6_32 hash:ip,port family inet6 maxelem 9 timeout 60 netmask 32",
        "add torexit_ban_hscan_v6_32 2001:db8:ffff::1,tcp:1024-2048 timeout 60",
        "create torexit_optout_v4 hash:net family inet maxelem 9 timeout 60",
        "add torexit_optout_v4 198.18.5.0/24,tcp:22",                # opt-outs carry no port
        "create torexit_optout_v6 hash:net family inet maxelem 9 timeout 60",  # wrong family: set ignored
        "add torexit_optout_v6 198.18.6.0/24",
    ]))
    assert skipped == 5
    assert [(str(e["net"]), e["port"], e["age"]) for e in entries] == [
        ("198.19.0.0/16", (8000, 8010), 30), ("198.19.0.0/16", 80, 30), ("2001:db8::/32", (1024, 2048), 0)]
    assert lines(sync.render(sync.select(entries, 500))) == [
        "ExitPolicy reject 198.19.0.0/16:80",
        "ExitPolicy reject 198.19.0.0/16:8000-8010",
        "ExitPolicy reject [2001:db8::]/32:1024-2048",
    ]


def test_nft_port_range_in_a_concatenation():
    entries, skipped = sync.entries_from_nft(doc(nft_set("ban_flood_v6_128", [
        {"elem": {"val": {"concat": ["2001:db8::9", {"range": [6660, 6669]}]}}}])))
    assert skipped == 0
    assert lines(sync.render(entries)) == ["ExitPolicy reject [2001:db8::9]:6660-6669"]


class FakeIpset:
    """subprocess.run for `ipset list -n` and `ipset save NAME`, from the text of IPSET_SAVE."""

    def __init__(self, text=IPSET_SAVE, missing=()):
        self.sets, self.calls, self.missing = {}, [], missing
        for line in text.splitlines():
            self.sets.setdefault(line.split()[1], []).append(line)

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        if cmd[0] == "nft":
            return subprocess.CompletedProcess(cmd, 1, "", "Error: No such file or directory\n")
        if cmd[1:] == ["list", "-n"]:
            return subprocess.CompletedProcess(cmd, 0, "".join(n + "\n" for n in self.sets), "")
        if cmd[1] == "save" and cmd[2] in self.sets and cmd[2] not in self.missing:
            return subprocess.CompletedProcess(cmd, 0, "".join(x + "\n" for x in self.sets[cmd[2]]), "")
        return subprocess.CompletedProcess(cmd, 1, "", "ipset v7.17: The set with the given name does not exist\n")


def test_read_ipsets_saves_only_ban_and_optout_sets(monkeypatch):
    fake = FakeIpset(missing=("torexit_ban_vscan_v6_128",))  # destroyed between list and save
    monkeypatch.setattr(sync.subprocess, "run", fake)
    text = sync.read_ipsets("/usr/sbin/ipset")
    assert fake.calls == [["/usr/sbin/ipset", "list", "-n"]] + [
        ["/usr/sbin/ipset", "save", name] for name in (
            "torexit_ban_hscan_v4_24", "torexit_optout_v4", "torexit_optout_v6", "torexit_ban_hscan_v6_48",
            "torexit_ban_vscan_v6_128")]
    assert "torexit_seen_v4" not in text and "other_ban" not in text and "2001:db8::5" not in text
    assert "add torexit_optout_v6 2001:db8:5::1 timeout 3599" in text


def test_read_ipsets_without_ipset_or_with_errors(monkeypatch):
    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])
    monkeypatch.setattr(sync.subprocess, "run", missing)
    assert sync.read_ipsets() == ""
    assert sync.read_nft() == {"nftables": []}

    def denied(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ipset v7.17: Kernel error received: Operation not permitted\n")
    monkeypatch.setattr(sync.subprocess, "run", denied)
    with pytest.raises(sync.SyncError, match="not permitted"):
        sync.read_ipsets()


def test_sync_reads_the_ipsets_when_there_is_no_nft_table(tmp_path, monkeypatch):
    fake = FakeIpset()
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[0] in ("nft", "ipset"):
            return fake(cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, 0, stdout="Configuration was valid\n", stderr="")
    monkeypatch.setattr(sync.subprocess, "run", fake_run)
    summary = sync.sync(args_for(tmp_path, torrc=["/etc/tor/torrc"], reload=["tor@default.service"]))
    assert calls[0] == ["nft", "-j", "list", "table", "inet", "torexit_guard"]
    assert calls[1] == ["ipset", "list", "-n"]
    # 10 elements: ports 80, 81, 82 of one /24 are one line, [2001:db8:5::1] is inside an opt-out /64
    assert summary.startswith("updated") and "7 reject lines (3 opt-outs, 4 bans" in summary
    assert "1 unreadable" in summary and "198.18" not in summary and "2001:db8" not in summary
    text = (tmp_path / "10-torexit-guard.conf").read_text()
    assert "ExitPolicy reject 198.18.7.0/24:22\n" in text and "ExitPolicy reject 198.18.8.0/24:80-82\n" in text
    assert "ExitPolicy reject [2001:db8:5::]/64:*\n" in text and "[2001:db8:5::1]" not in text


def test_sync_unions_a_leftover_nft_table_and_the_ipsets(tmp_path):
    summary = sync.sync(args_for(tmp_path), REAL, IPSET_SAVE)
    out = lines((tmp_path / "10-torexit-guard.conf").read_text())
    assert "ExitPolicy reject 198.18.10.0/30:*" in out       # only in the nft table
    assert "ExitPolicy reject 198.18.8.0/24:80-82" in out    # only in the ipsets
    assert out.count("ExitPolicy reject 198.18.7.0/24:22") == 1  # in both, written once
    # the table's opt-out [2001:db8:5::]/48 covers the ipsets' /64 and its host
    assert "ExitPolicy reject [2001:db8:5::]/64:*" not in out
    # 9 lines from the table, 7 from the ipsets: 4 of them in both, one inside the /48
    assert len(out) == len(set(out)) == 11
    assert summary.startswith("updated, reloaded nothing: 11 reject lines")


def test_main_reads_an_ipset_save_file(tmp_path, capsys):
    src = tmp_path / "guard.ipset"
    src.write_text(IPSET_SAVE)
    rc = sync.main(["--output", str(tmp_path / "out.conf"), "--ipset-save", str(src), "--max-lines", "3"])
    assert rc == 0
    # the limit keeps opt-outs first: the three left once the /64 covers [2001:db8:5::1]
    assert lines((tmp_path / "out.conf").read_text()) == [
        "ExitPolicy reject 198.18.5.0/24:*", "ExitPolicy reject 198.18.9.1:*",
        "ExitPolicy reject [2001:db8:5::]/64:*"]
    printed = capsys.readouterr().out
    assert "3 reject lines (3 opt-outs, 0 bans; 4 over the limit, 1 unreadable)" in printed
    rc = sync.main(["--output", str(tmp_path / "out.conf"), "--ipset-save", str(src), "--max-lines", "2"])
    # two: the youngest opt-outs (set timeout - seconds left); 198.18.5.0/24 (86400 - 29) is the oldest
    assert lines((tmp_path / "out.conf").read_text()) == [
        "ExitPolicy reject 198.18.9.1:*", "ExitPolicy reject [2001:db8:5::]/64:*"]


def test_an_ipset_error_stops_the_sync_only_without_an_nft_table(tmp_path, monkeypatch, capsys):
    def run(cmd, **kwargs):
        if cmd[0] == "nft":
            return subprocess.CompletedProcess(cmd, 0, json.dumps(REAL), "")
        if cmd[0] == "ipset":
            return subprocess.CompletedProcess(cmd, 1, "", "ipset v7.17: Cannot open session to kernel.\n")
        raise AssertionError(cmd)
    monkeypatch.setattr(sync.subprocess, "run", run)
    out = tmp_path / "10-torexit-guard.conf"
    assert sync.sync(args_for(tmp_path)).startswith("updated, reloaded nothing: 9 reject lines")
    assert "ipsets not read: ipset list failed (1): ipset v7.17: Cannot open session" in capsys.readouterr().err
    before = out.read_text()

    def no_table(cmd, **kwargs):
        if cmd[0] == "nft":
            return subprocess.CompletedProcess(cmd, 1, "", "Error: No such file or directory\n")
        return run(cmd, **kwargs)
    monkeypatch.setattr(sync.subprocess, "run", no_table)
    with pytest.raises(sync.SyncError, match="Cannot open session"):
        sync.sync(args_for(tmp_path))
    assert out.read_text() == before  # nothing written, tor untouched


def test_issue15_ban_sets_become_host_port_and_prefix_port_rejects():
    """The repeated-login and prefix-sweep bans of the nftables guard, as the
    kernel fills them (names from guard_common.ban_sets)."""
    entries, skipped = sync.entries_from_nft(doc(
        nft_set("ban_login_v4_32", [{"elem": {"val": {"concat": ["198.19.200.7", 22]}, "timeout": 600,
                                              "expires": 590}}]),
        nft_set("ban_psweep_v4_22", [{"elem": {"val": {"concat": ["241.1.4.0", 443]}, "timeout": 600,
                                               "expires": 599}}]),
        nft_set("ban_psweep_v4_16", [{"elem": {"val": {"concat": ["241.2.0.0", 443]}, "timeout": 600,
                                               "expires": 599}}]),
        nft_set("ban_psweep_v6_48", [{"elem": {"val": {"concat": ["2001:db8:7::", 80]}}}])))
    assert skipped == 0
    assert lines(sync.render(sync.select(entries, 10))) == [
        "ExitPolicy reject 198.19.200.7:22",
        "ExitPolicy reject 241.1.4.0/22:443",
        "ExitPolicy reject 241.2.0.0/16:443",
        "ExitPolicy reject [2001:db8:7::]/48:80",
    ]


def test_ipset_prefix_sweep_and_login_bans_become_prefix_and_host_port_lines():
    """The iptables/ufw backends' psweep and login ipsets, as `ipset save` prints them;
    the confirmation set (torexit_confirm_v4, not a ban) is not read."""
    entries, skipped = sync.entries_from_ipset("\n".join([
        "create torexit_ban_psweep_v4_16 hash:ip,port family inet hashsize 65536 maxelem 262144 timeout 600 "
        "bucketsize 12 initval 0x1 netmask 16",
        "add torexit_ban_psweep_v4_16 198.18.0.0,tcp:443 timeout 590",
        "create torexit_ban_psweep_v6_32 hash:ip,port family inet6 hashsize 65536 maxelem 262144 timeout 600 "
        "bucketsize 12 initval 0x2 netmask 32",
        "add torexit_ban_psweep_v6_32 2001:db8::,tcp:80 timeout 600",
        "create torexit_ban_login_v4_32 hash:ip,port family inet hashsize 65536 maxelem 262144 timeout 600",
        "add torexit_ban_login_v4_32 198.19.200.7,tcp:22 timeout 300",
        "create torexit_confirm_v4 hash:ip family inet hashsize 65536 maxelem 262144 timeout 600 netmask 22",
        "add torexit_confirm_v4 198.19.236.0 timeout 500",
    ]))
    assert skipped == 0
    assert lines(sync.render(sync.select(entries, 500))) == [
        "ExitPolicy reject 198.18.0.0/16:443",
        "ExitPolicy reject 198.19.200.7:22",
        "ExitPolicy reject [2001:db8::]/32:80",
    ]
