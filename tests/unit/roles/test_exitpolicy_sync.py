# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/tor_exit/files/torexit_exitpolicy_sync.py: parsing nft JSON, rendering, syncing."""

import importlib.machinery
import importlib.util
import json
import os
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "tor_exit", "files",
                      "torexit_exitpolicy_sync.py")


def load():
    loader = importlib.machinery.SourceFileLoader("exitpolicy_sync", SCRIPT)
    spec = importlib.util.spec_from_loader("exitpolicy_sync", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


sync = load()


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
