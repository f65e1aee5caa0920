# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/metrics/files/torexit_guard_metrics.py: parsing nft JSON, rendering, atomic writes."""

import importlib.machinery
import importlib.util
import json
import os
import re
import stat

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "metrics", "files",
                      "torexit_guard_metrics.py")


def load():
    loader = importlib.machinery.SourceFileLoader("guard_metrics", SCRIPT)
    spec = importlib.util.spec_from_loader("guard_metrics", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


metrics = load()

DIGEST = "066596159ede6f4443d1fbff08784b11372e6cfad045f2108b41e204a4ee51f9"


def counter(name, packets, comment="x"):
    return {"counter": {"family": "inet", "name": name, "table": "torexit_guard", "handle": 1,
                        "comment": comment, "packets": packets, "bytes": packets * 60}}


# Objects as `nft -j list table inet torexit_guard` printed them (nftables 1.0.6) for a
# guard rendered with set_size 1024, after a few elements were added.
REAL = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "torexit_guard", "handle": 7}},
    counter("policy_id", 0, "sha256:" + DIGEST),
    counter("guarded_new", 1200),
    counter("allowed", 7),
    counter("blocked_deny", 3),
    counter("blocked_optout", 0),
    counter("blocked_flood", 41),
    counter("blocked_hscan", 250),
    counter("blocked_vscan", 0),
    counter("detect_flood", 1),
    counter("detect_hscan", 2),
    counter("detect_vscan", 0),
    counter("seen_full", 0),
    {"set": {"family": "inet", "name": "strict_ports", "table": "torexit_guard", "type": "inet_service",
             "handle": 31, "elem": [21, 22, 23, 135]}},
    {"set": {"family": "inet", "name": "optout_v4", "table": "torexit_guard", "type": "ipv4_addr",
             "handle": 37, "size": 65536, "flags": ["interval", "timeout"],
             "elem": [{"elem": {"val": {"prefix": {"addr": "198.18.5.0", "len": 24}}, "timeout": 3600,
                                "expires": 3599}}]}},
    {"set": {"family": "inet", "name": "seen_v4", "table": "torexit_guard",
             "type": ["ipv4_addr", "inet_service"], "handle": 43, "size": 1024, "flags": ["timeout"],
             "timeout": 600, "elem": [{"elem": {"val": {"concat": ["198.18.9.9", 80]}, "expires": 599}},
                                      {"elem": {"val": {"concat": ["198.18.9.10", 80]}, "expires": 598}},
                                      {"elem": {"val": {"concat": ["198.18.9.11", 80]}, "expires": 597}},
                                      {"elem": {"val": {"concat": ["198.18.9.12", 80]}, "expires": 597}}]}},
    {"set": {"family": "inet", "name": "flood_conc_v4", "table": "torexit_guard", "type": "ipv4_addr",
             "handle": 51, "size": 1024}},
    {"set": {"family": "inet", "name": "ban_hscan_v4_24", "table": "torexit_guard",
             "type": ["ipv4_addr", "inet_service"], "handle": 65, "size": 1024, "flags": ["timeout"],
             "timeout": 600,
             "elem": [{"elem": {"val": {"concat": ["198.18.7.0", 22]}, "timeout": 90, "expires": 89}},
                      {"elem": {"val": {"concat": ["198.18.8.0", 443]}, "expires": 599}}]}},
    {"set": {"family": "inet", "name": "ban_vscan_v6_128", "table": "torexit_guard", "type": "ipv6_addr",
             "handle": 66, "size": 1024, "flags": ["timeout"], "timeout": 600,
             "elem": [{"elem": {"val": "2001:db8::5", "expires": 10}}]}},
    {"set": {"family": "inet", "name": "ban_flood_v4_32", "table": "torexit_guard",
             "type": ["ipv4_addr", "inet_service"], "handle": 67, "size": 1024, "flags": ["timeout"],
             "timeout": 300}},
    {"chain": {"family": "inet", "table": "torexit_guard", "name": "output", "handle": 80}},
    {"rule": {"family": "inet", "table": "torexit_guard", "chain": "output", "handle": 81,
              "expr": [{"counter": {"packets": 5, "bytes": 300}}]}},
]}


def samples(text):
    """{(name, labels): value} of the non-comment lines, checking the line syntax."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(\{[a-z_]+="[^"]*"\})? (\S+)$', line)
        assert m, "not a Prometheus sample line: %r" % line
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def test_counters_become_labelled_totals():
    s = samples(metrics.render(metrics.parse(REAL)))
    assert s[("torexit_guard_up", "")] == 1
    assert s[("torexit_guard_new_connections_total", "")] == 1200
    assert s[("torexit_guard_allowed_total", "")] == 7
    assert s[("torexit_guard_blocked_total", '{detector="hscan"}')] == 250
    assert s[("torexit_guard_blocked_total", '{detector="flood"}')] == 41
    assert s[("torexit_guard_blocked_total", '{detector="deny"}')] == 3
    assert s[("torexit_guard_blocked_total", '{detector="vscan"}')] == 0
    assert s[("torexit_guard_detections_total", '{detector="hscan"}')] == 2
    assert s[("torexit_guard_detections_total", '{detector="flood"}')] == 1
    assert s[("torexit_guard_seen_full_total", "")] == 0
    assert s[("torexit_guard_policy_info", '{digest="%s"}' % DIGEST)] == 1
    # policy_id is the digest holder, not a counter of connections
    assert not any("policy_id" in name for name, _labels in s)


def test_bans_are_element_counts_and_fill_is_relative_to_size():
    s = samples(metrics.render(metrics.parse(REAL)))
    assert s[("torexit_guard_bans", '{set="ban_hscan_v4_24"}')] == 2
    assert s[("torexit_guard_bans", '{set="ban_vscan_v6_128"}')] == 1
    assert s[("torexit_guard_bans", '{set="ban_flood_v4_32"}')] == 0
    assert s[("torexit_guard_optouts", '{set="optout_v4"}')] == 1
    assert s[("torexit_guard_set_fill_ratio", '{set="seen_v4"}')] == pytest.approx(4 / 1024, rel=1e-5)
    assert s[("torexit_guard_set_fill_ratio", '{set="ban_hscan_v4_24"}')] == pytest.approx(2 / 1024, rel=1e-5)
    assert s[("torexit_guard_set_fill_ratio", '{set="flood_conc_v4"}')] == 0
    # a static set without a size has no fill ratio, and is not a ban
    assert ("torexit_guard_set_fill_ratio", '{set="strict_ports"}') not in s
    assert not any(labels == '{set="strict_ports"}' for _name, labels in s)


def test_no_destination_ever_reaches_the_file():
    text = metrics.render(metrics.parse(REAL))
    for addr in ("198.18.5.0", "198.18.9.9", "198.18.7.0", "198.18.8.0", "2001:db8::5"):
        assert addr not in text
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", text)


def test_every_sample_has_help_and_type_once():
    text = metrics.render(metrics.parse(REAL))
    names = {name for name, _labels in samples(text)}
    for name in names:
        assert text.count("# HELP %s " % name) == 1
        kind = "counter" if name.endswith("_total") else "gauge"
        assert text.count("# TYPE %s %s\n" % (name, kind)) == 1
    assert text.endswith("\n")


def test_missing_table_reports_guard_down_only():
    s = samples(metrics.render(None))
    assert s == {("torexit_guard_up", ""): 0}


def test_empty_ban_set_in_a_full_set_reports_ratio_one():
    doc = {"nftables": [{"set": {"name": "seen_v6", "size": 2, "elem": [
        {"elem": {"val": {"concat": ["2001:db8::1", 80]}}}, {"elem": {"val": {"concat": ["2001:db8::2", 80]}}}]}}]}
    s = samples(metrics.render(metrics.parse(doc)))
    assert s[("torexit_guard_set_fill_ratio", '{set="seen_v6"}')] == 1


def fake_nft(tmp_path, stdout="", stderr="", rc=0):
    path = tmp_path / "nft"
    (tmp_path / "out.json").write_text(stdout)
    path.write_text("#!/bin/sh\ncat %s\nprintf '%%s\\n' '%s' >&2\nexit %d\n"
                    % (tmp_path / "out.json", stderr, rc))
    path.chmod(0o755)
    return str(path)


def test_main_writes_the_file_atomically_with_mode_0644(tmp_path):
    out = tmp_path / "prom" / "torexit_guard.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    rc = metrics.main(["--output", str(out), "--nft", fake_nft(tmp_path, json.dumps(REAL))])
    assert rc == 0
    assert samples(out.read_text())[("torexit_guard_blocked_total", '{detector="hscan"}')] == 250
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert os.listdir(out.parent) == ["torexit_guard.prom"]  # no temporary file left behind


def test_main_without_table_writes_up_zero(tmp_path):
    out = tmp_path / "torexit_guard.prom"
    nft = fake_nft(tmp_path, "", "Error: No such file or directory", 1)
    assert metrics.main(["--output", str(out), "--nft", nft]) == 0
    assert samples(out.read_text()) == {("torexit_guard_up", ""): 0}


def test_main_keeps_the_old_file_when_nft_fails_otherwise(tmp_path, capsys):
    out = tmp_path / "torexit_guard.prom"
    out.write_text("torexit_guard_up 1\n")
    nft = fake_nft(tmp_path, "", "Error: Operation not permitted", 1)
    assert metrics.main(["--output", str(out), "--nft", nft]) == 1
    assert out.read_text() == "torexit_guard_up 1\n"
    assert "Operation not permitted" in capsys.readouterr().err


def test_main_refuses_a_file_node_exporter_would_not_read(tmp_path):
    with pytest.raises(SystemExit):
        metrics.main(["--output", str(tmp_path / "guard.txt"), "--nft", fake_nft(tmp_path, "{}")])
