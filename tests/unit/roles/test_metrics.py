# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/metrics/files/torexit_guard_metrics.py: reading all three backends (recorded
outputs), rendering, atomic writes."""

import errno
import json
import os
import re
import stat
import struct
import time

import pytest
from role_files import load_role_file

metrics = load_role_file("metrics", "torexit_guard_metrics.py", "guard_metrics")

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


# --- recorded outputs of a real guard ----------------------------------------------
#
# metrics_fixtures/ holds what the kernel and the tools printed for a guard rendered by
# the collection's module_utils (profile small, set_size 1024, owner any) and loaded into
# a network namespace (nftables 1.0.6, iptables-nft 1.8.9, ipset 7.17, Linux 6.18),
# after 3 new connections to 198.18.9.21-23:80, one refused one to a banned prefix
# (198.18.7.5:22), bans in ban_hscan_v4_24 and ban_vscan_v6_128 and opt-outs added
# by hand:
#   nl-record.json           the netlink requests and the kernel's replies of read_nft()
#   nft-sets.json            nft -j -t list sets table inet torexit_guard
#   nft-full.json            nft -j list table inet torexit_guard, right after
#   ipt-*, ufw-*             iptables-save -c -t filter, ip6tables-save -c -t filter,
#                            ipset list -t (and the full ipset list), backend iptables/ufw
#   tor-0.4.9.11-metricsport.txt  tor's MetricsPort of an exit with OfflineMasterKey

FIXTURES = os.path.join(os.path.dirname(__file__), "metrics_fixtures")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


class ReplaySocket:
    """Answers each netlink request with the kernel's recorded replies for the same
    request (sequence numbers rewritten to the new request's)."""

    def __init__(self, record):
        self.record = record
        self.pending = []
        self.requests = []

    @staticmethod
    def _key(data):
        return data[4:6] + data[16:]    # message type and body; not length-only fields

    def send(self, data):
        self.requests.append(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        for entry in self.record:
            if self._key(bytes.fromhex(entry["request"])) == self._key(data):
                break
        else:
            raise AssertionError("request not in the recording: %s" % data.hex())
        for hexed in entry["replies"]:
            buf = bytearray(bytes.fromhex(hexed))
            off = 0
            while off + 16 <= len(buf):
                length = struct.unpack_from("=I", buf, off)[0]
                struct.pack_into("=I", buf, off + 8, seq)
                off += (length + 3) & ~3
            self.pending.append(bytes(buf))
        return len(data)

    def recv(self, _size):
        return self.pending.pop(0)

    def close(self):
        pass


def replay_netlink():
    record = json.loads(fixture("nl-record.json"))
    return lambda: metrics.Netlink(ReplaySocket(record))


def fake_run(outputs, calls=None):
    """A run_command() answering from {tuple(argv): (rc, stdout, stderr)}; anything
    else is a missing program (rc 127)."""
    def run(args):
        if calls is not None:
            calls.append(list(args))
        return outputs.get(tuple(args), (127, "", "%s: not found" % args[0]))
    return run


def with_(outputs, key, value):
    out = dict(outputs)
    out[key] = value
    return out


NFT_SETS = ("nft", "-j", "-t", "list", "sets", "table", "inet", "torexit_guard")
NFT_FULL = ("nft", "-j", "list", "table", "inet", "torexit_guard")
SAVE4 = ("iptables-save", "-c", "-t", "filter")
SAVE6 = ("ip6tables-save", "-c", "-t", "filter")
IPSET_T = ("ipset", "list", "-t")
NO_TABLE = (1, "", "Error: No such file or directory\nlist sets table inet torexit_guard\n")


def iptables_outputs(prefix):
    return {SAVE4: (0, fixture(prefix + "-iptables-save.txt"), ""),
            SAVE6: (0, fixture(prefix + "-ip6tables-save.txt"), ""),
            IPSET_T: (0, fixture(prefix + "-ipset-list-t.txt"), "")}


def test_nftables_netlink_reading_equals_the_full_json_listing():
    """Counters, digest and every counted set's elements read over netlink are what
    `nft -j list table` showed for the same kernel state."""
    calls = []
    state = metrics.read_nft(fake_run({NFT_SETS: (0, fixture("nft-sets.json"), "")}, calls), replay_netlink())
    full = metrics.parse(json.loads(fixture("nft-full.json")))
    assert state["backend"] == "nftables"
    assert state["digest"] == full["digest"] and re.match(r"^[0-9a-f]{64}$", state["digest"])
    assert state["counters"] == full["counters"]
    assert state["counters"]["guarded_new"] == 4 and state["counters"]["blocked_hscan"] == 1
    bounded = dict((n, v) for n, v in full["sets"].items() if v[1] or n.startswith(("ban_", "optout_")))
    assert state["sets"] == bounded
    # the interval set optout_v4 holds a /24 and a host: two, not the kernel's four
    # start and end elements
    assert state["sets"]["optout_v4"] == (2, 65536)
    assert state["sets"]["ban_hscan_v4_24"] == (2, 1024)
    assert state["sets"]["seen_v4"] == (4, 1024)
    # only the terse set list is asked of nft: no listing with elements
    assert calls == [list(NFT_SETS)]


class KernelReplaySocket(ReplaySocket):
    """ReplaySocket that answers a request outside the recording as the kernel does
    for a table or set it does not hold: an NLMSG_ERROR with ENOENT."""

    def send(self, data):
        try:
            return super().send(data)
        except AssertionError:
            seq = struct.unpack_from("=I", data, 8)[0]
            self.requests.append(data)
            self.pending.append(struct.pack("=IHHIIi", 36, metrics.NLMSG_ERROR, 0, seq, 0, -errno.ENOENT)
                                + data[:16])
            return len(data)


def test_nftables_sets_of_other_tables_in_the_listing_are_ignored():
    """nft 1.0.6 (Debian 12) ignores the table in `list sets table inet torexit_guard`
    and lists the sets of every table: with the firewall role's inbound table loaded,
    its sets came first, their element dumps in torexit_guard failed with ENOENT, and
    the file said torexit_guard_up 0 for a loaded guard (seen in the demo)."""
    guard = json.loads(fixture("nft-sets.json"))
    # as nft 1.0.6 printed it in the demo: the inbound table's sets, then the guard's
    inbound = json.loads(fixture("nft-sets-inbound-table.json"))
    both = {"nftables": guard["nftables"][:1] + inbound["nftables"] + guard["nftables"][1:]}
    record = json.loads(fixture("nl-record.json"))
    sock = KernelReplaySocket(record)
    state = metrics.read_nft(fake_run({NFT_SETS: (0, json.dumps(both), "")}), lambda: metrics.Netlink(sock))
    alone = metrics.read_nft(fake_run({NFT_SETS: (0, fixture("nft-sets.json"), "")}), replay_netlink())
    assert state is not None and state == alone
    # no element dump asked for a set of the inbound table
    assert not any(name in r for r in sock.requests for name in (b"ssh_meter_v4\0", b"dos_conn_v4\0"))
    assert "torexit_guard_up 1" in metrics.render(state)


def test_nftables_netlink_requests_name_only_the_guard_table():
    sock = ReplaySocket(json.loads(fixture("nl-record.json")))
    link = metrics.Netlink(sock)
    assert link.count_elements("torexit_guard", "ban_vscan_v6_128") == 1
    assert b"torexit_guard\0" in sock.requests[0]
    assert b"ban_vscan_v6_128\0" in sock.requests[0]
    with pytest.raises(FileNotFoundError):
        link.count_elements("torexit_guard", "no_such_set")


def test_nftables_falls_back_to_the_full_listing_without_netlink(capsys):
    def no_netlink():
        raise PermissionError(1, "Operation not permitted")
    run = fake_run({NFT_SETS: (0, fixture("nft-sets.json"), ""), NFT_FULL: (0, fixture("nft-full.json"), "")})
    state = metrics.read_nft(run, no_netlink)
    assert state == metrics.parse(json.loads(fixture("nft-full.json")))
    assert "netlink not usable" in capsys.readouterr().err


def test_iptables_backend_from_recorded_outputs():
    state = metrics.read_state(fake_run(with_(iptables_outputs("ipt"), NFT_SETS, NO_TABLE)), replay_netlink())
    assert state["backend"] == "iptables"
    s = samples(metrics.render(state))
    assert s[("torexit_guard_up", "")] == 1
    assert s[("torexit_guard_backend_info", '{backend="iptables"}')] == 1
    assert s[("torexit_guard_new_connections_total", "")] == 4
    assert s[("torexit_guard_blocked_total", '{detector="hscan"}')] == 1
    assert s[("torexit_guard_blocked_total", '{detector="deny"}')] == 0
    assert s[("torexit_guard_detections_total", '{detector="vscan"}')] == 0
    assert s[("torexit_guard_bans", '{set="ban_hscan_v4_24"}')] == 1
    assert s[("torexit_guard_bans", '{set="ban_vscan_v6_128"}')] == 1
    assert s[("torexit_guard_bans", '{set="ban_flood_v4_32"}')] == 0
    assert s[("torexit_guard_optouts", '{set="optout_v4"}')] == 1
    assert s[("torexit_guard_set_fill_ratio", '{set="seen_v4"}')] == pytest.approx(3 / 1024, rel=1e-5)
    assert s[("torexit_guard_set_fill_ratio", '{set="optout_v4"}')] == pytest.approx(1 / 65536, rel=1e-5)
    # bitmap:port sets have no maxelem: no ratio
    assert ("torexit_guard_set_fill_ratio", '{set="strict_ports"}') not in s
    digest = re.search(r"sha256:([0-9a-f]{64})", fixture("ipt-iptables-save.txt")).group(1)
    assert s[("torexit_guard_policy_info", '{digest="%s"}' % digest)] == 1


def test_iptables_reading_agrees_with_egress_guard_info():
    """Same counters and set counts as guard_iptables.read_state (the module's reader,
    which lists whole sets) on the same kernel state."""
    from ansible_collections.torexit.hardening.plugins.module_utils import guard_iptables

    outputs = {("iptables-save", "-t", "filter", "-c"): (0, fixture("ipt-iptables-save.txt"), ""),
               ("ip6tables-save", "-t", "filter", "-c"): (0, fixture("ipt-ip6tables-save.txt"), ""),
               ("ipset", "list"): (0, fixture("ipt-ipset-list.txt"), "")}
    info = guard_iptables.read_state(lambda args, data=None: outputs[tuple(args)])
    state = metrics.read_iptables(fake_run(iptables_outputs("ipt")))
    assert state["counters"] == dict((n, c["packets"]) for n, c in info["counters"].items())
    assert state["digest"] == info["digest"]
    assert state["sets"] == dict((n, (v["elements"], v["size"])) for n, v in info["sets"].items())


def test_ufw_backend_is_told_apart_from_iptables():
    outputs = iptables_outputs("ufw")
    state = metrics.read_state(fake_run(with_(outputs, NFT_SETS, NO_TABLE)), replay_netlink())
    assert state["backend"] == "ufw"
    assert state["counters"]["guarded_new"] == 4 and state["counters"]["blocked_hscan"] == 1
    assert state["sets"]["ban_hscan_v4_24"] == (1, 1024)
    # the iptables backend's prefix TOREXIT- does not take ufw's TOREXIT-UFW-* chains
    assert metrics.our_chains(fixture("ufw-iptables-save.txt"), "TOREXIT-") == []
    assert "TOREXIT-UFW-GUARD" in metrics.our_chains(fixture("ufw-iptables-save.txt"), "TOREXIT-UFW-")


def test_other_rules_with_counter_names_are_not_counted():
    saved = fixture("ipt-iptables-save.txt").replace(
        "COMMIT", "[999:1] -A OUTPUT -p tcp -m comment --comment guarded_new\n"
        "[999:1] -A TOREXIT-INPUT -p tcp -m comment --comment detect_flood\nCOMMIT")
    counters, _digest = metrics.parse_iptables([saved], "TOREXIT-")
    assert counters["guarded_new"] == 4 and counters["detect_flood"] == 0


def test_nftables_is_read_first_when_both_are_loaded():
    outputs = with_(iptables_outputs("ipt"), NFT_SETS, (0, fixture("nft-sets.json"), ""))
    assert metrics.read_state(fake_run(outputs), replay_netlink())["backend"] == "nftables"


def test_no_backend_loaded_or_no_tools_is_guard_down():
    bare = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    run = fake_run({NFT_SETS: NO_TABLE, SAVE4: (0, bare, ""), SAVE6: (0, bare, "")})
    assert metrics.read_state(run, replay_netlink()) is None
    assert metrics.read_state(fake_run({}), replay_netlink()) is None     # no nft, no iptables


def test_ipset_failure_keeps_the_old_file(tmp_path, capsys):
    out = tmp_path / "torexit_guard.prom"
    out.write_text("torexit_guard_up 1\n")
    outputs = with_(with_(iptables_outputs("ipt"), NFT_SETS, NO_TABLE), IPSET_T, (1, "", "ipset v7.17: Kernel error"))
    assert metrics.main(["--output", str(out)], fake_run(outputs), replay_netlink()) == 1
    assert out.read_text() == "torexit_guard_up 1\n"
    assert "ipset list -t failed" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["nftables", "iptables", "ufw"])
def test_no_destination_reaches_the_file_on_any_backend(backend, tmp_path):
    outputs = {"nftables": {NFT_SETS: (0, fixture("nft-sets.json"), "")},
               "iptables": with_(iptables_outputs("ipt"), NFT_SETS, NO_TABLE),
               "ufw": with_(iptables_outputs("ufw"), NFT_SETS, NO_TABLE)}[backend]
    out = tmp_path / "torexit_guard.prom"
    assert metrics.main(["--output", str(out)], fake_run(outputs), replay_netlink()) == 0
    text = out.read_text()
    assert 'torexit_guard_backend_info{backend="%s"} 1' % backend in text
    assert "torexit_guard_up 1" in text.splitlines()
    assert not re.search(r"\d+\.\d+\.\d+\.\d+|2001:db8|198\.18", text)
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.match(r'^[a-z_]+(\{[a-z]+="[a-z0-9_]+"\})? [0-9.e+-]+$', line), line


def test_main_writes_the_file_atomically_with_mode_0644(tmp_path):
    out = tmp_path / "prom" / "torexit_guard.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    run = fake_run({NFT_SETS: (0, fixture("nft-sets.json"), "")})
    assert metrics.main(["--output", str(out)], run, replay_netlink()) == 0
    s = samples(out.read_text())
    assert s[("torexit_guard_blocked_total", '{detector="hscan"}')] == 1
    assert abs(s[("torexit_guard_last_run_timestamp_seconds", "")] - time.time()) < 60
    assert 0 <= s[("torexit_guard_exporter_duration_seconds", "")] < 60
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert os.listdir(out.parent) == ["torexit_guard.prom"]  # no temporary file left behind


def test_main_without_any_guard_writes_up_zero(tmp_path):
    out = tmp_path / "torexit_guard.prom"
    assert metrics.main(["--output", str(out)], fake_run({NFT_SETS: NO_TABLE}), replay_netlink()) == 0
    s = samples(out.read_text())
    assert s[("torexit_guard_up", "")] == 0
    names = set(name for name, _labels in s)
    assert names == {"torexit_guard_up", "torexit_guard_last_run_timestamp_seconds",
                     "torexit_guard_exporter_duration_seconds"}


def test_main_keeps_the_old_file_when_nft_fails_otherwise(tmp_path, capsys):
    out = tmp_path / "torexit_guard.prom"
    out.write_text("torexit_guard_up 1\n")
    run = fake_run({NFT_SETS: (1, "", "Error: Operation not permitted")})
    assert metrics.main(["--output", str(out)], run, replay_netlink()) == 1
    assert out.read_text() == "torexit_guard_up 1\n"
    assert "Operation not permitted" in capsys.readouterr().err


def test_main_refuses_a_file_node_exporter_would_not_read(tmp_path):
    with pytest.raises(SystemExit):
        metrics.main(["--output", str(tmp_path / "guard.txt")], fake_run({}), replay_netlink())


# --- the names the exporter relies on are the collection's ------------------------

def test_names_match_the_guard_backends():
    from ansible_collections.torexit.hardening.plugins.module_utils import guard_common, guard_nftables, guard_ufw, guard_xtables

    assert list(metrics.COUNTER_NAMES) == guard_common.COUNTER_NAMES
    assert metrics.TABLE == (guard_nftables.FAMILY, guard_nftables.TABLE)
    assert metrics.CHAINS == guard_xtables.HEAD_CHAINS + guard_xtables.TAIL_CHAINS
    assert metrics.CHAIN_PREFIXES == {"iptables": guard_xtables.CHAIN_PREFIX, "ufw": guard_ufw.CHAIN_PREFIX}
    assert metrics.IPSET_PREFIX == guard_xtables.SET_PREFIX
    assert metrics.DIGEST_TAG == guard_xtables.DIGEST_TAG
    policy = {"flood": {"ban_time": 300}, "ban_time": 600,
              "horizontal_scan": {"prefixes_v4": [24, 16], "prefixes_v6": [48, 32]},
              "login": {"rate": 120, "ban_time": 600},
              "prefix_sweep": {"prefixes_v4": [22, 16], "prefixes_v6": [48, 32], "burst": [10, 96], "ban_time": 600}}
    assert set(b.detector for b in guard_common.ban_sets(policy)) == set(metrics.DETECTORS) - {"wide"}
    for ban in guard_common.ban_sets(policy):
        assert metrics.SET_NAME_RE.match(ban.name) and ban.name.startswith("ban_") and ban.detector in metrics.DETECTORS


# --- the firewall role's ORPort DoS rules (issue 18) ---------------------------------

NFT_INBOUND_SETS = ("nft", "-j", "-t", "list", "sets", "table", "inet", "torexit_inbound")


class FakeInboundLink:
    """Netlink stand-in for the inbound table: counters and element counts only."""
    calls = []

    def __init__(self, counters, elements):
        self._counters, self._elements = counters, elements

    def counters(self, table):
        FakeInboundLink.calls.append(table)
        return dict(self._counters), None

    def count_elements(self, table, name, interval=False):
        assert table == "torexit_inbound" and not interval
        return self._elements.get(name, 0)

    def close(self):
        pass


def inbound_sets_json(size=65536):
    return json.dumps({"nftables": [{"set": {"family": "inet", "name": n, "table": "torexit_inbound",
                                             "type": "ipv4_addr", "size": size, "flags": ["dynamic"]}}
                                    for n in metrics.INBOUND_SETS + ("relays_v4", "ssh_meter_v4")]})


def test_inbound_dos_counters_and_set_fill_are_exported(tmp_path):
    counters = {"dos_blocked_hits": 120, "dos_concurrency_hits": 4, "dos_rate_hits": 7, "ssh_other": 9}
    elements = {"dos_blocked_v4": 5, "dos_blocked_v6": 1, "dos_conn_v4": 16384}
    run = fake_run({NFT_SETS: NO_TABLE, NFT_INBOUND_SETS: (0, inbound_sets_json(), "")})
    out = tmp_path / "torexit_guard.prom"
    assert metrics.main(["--output", str(out)], run, lambda: FakeInboundLink(counters, elements)) == 0
    text = out.read_text()
    s = samples(text)
    assert s[("torexit_inbound_dos_hits_total", '{limit="blocked"}')] == 120
    assert s[("torexit_inbound_dos_hits_total", '{limit="concurrency"}')] == 4
    assert s[("torexit_inbound_dos_hits_total", '{limit="rate"}')] == 7
    assert s[("torexit_inbound_dos_blocked_sources", '{family="v4"}')] == 5
    assert s[("torexit_inbound_dos_blocked_sources", '{family="v6"}')] == 1
    assert s[("torexit_inbound_dos_set_fill_ratio", '{set="dos_conn_v4"}')] == 0.25
    assert "relays_v4" not in text and "ssh" not in text     # only the DoS sets and counters
    assert s[("torexit_guard_up", "")] == 0                  # the guard's state is reported apart


def test_no_inbound_dos_rules_means_no_inbound_samples(tmp_path):
    out = tmp_path / "torexit_guard.prom"
    no_dos = json.dumps({"nftables": [{"set": {"family": "inet", "name": "ssh_meter_v4", "table": "torexit_inbound",
                                               "type": "ipv4_addr", "size": 65536}}]})
    for inbound in (NO_TABLE, (0, no_dos, "")):
        run = fake_run({NFT_SETS: NO_TABLE, NFT_INBOUND_SETS: inbound})
        assert metrics.main(["--output", str(out)], run, lambda: FakeInboundLink({}, {})) == 0
        assert "torexit_inbound" not in out.read_text()


def test_inbound_dos_on_iptables_and_ufw_from_tagged_rules_and_ipsets(tmp_path):
    tag = ' -m comment --comment "torexit.hardening inbound_dos %s" -j TOREXIT-DOS-VERDICT'
    save4 = "\n".join(["*filter", ":TOREXIT-DOS - [0:0]",
                       "[120:7200] -A TOREXIT-DOS -m set --match-set torexit_in_blocked_v4 src" + tag % "dos_blocked_hits",
                       "[30:1800] -A TOREXIT-DOS -m hashlimit --hashlimit-above 60/min" + tag % "dos_net_rate_hits",
                       "[4:240] -A TOREXIT-DOS -m connlimit --connlimit-above 9" + tag % "dos_concurrency_hits",
                       "[9:9] -A TOREXIT-INPUT -p tcp --dport 22 -j ACCEPT", "COMMIT", ""])
    save6 = save4.replace("TOREXIT-DOS", "TOREXIT-UFW-DOS").replace("[120:", "[3:").replace("[30:", "[2:")
    ipsets = ("Name: torexit_in_blocked_v4\nType: hash:ip\nHeader: family inet hashsize 1024 maxelem 65536 "
              "timeout 86400\nNumber of entries: 5\n\nName: torexit_in_relays_v4\nType: hash:ip\n"
              "Header: family inet maxelem 65536\nNumber of entries: 4000\n")
    run = fake_run({NFT_SETS: NO_TABLE, NFT_INBOUND_SETS: NO_TABLE, SAVE4: (0, save4, ""), SAVE6: (0, save6, ""),
                    IPSET_T: (0, ipsets, "")})
    out = tmp_path / "torexit_guard.prom"
    assert metrics.main(["--output", str(out)], run, lambda: FakeInboundLink({}, {})) == 0
    s = samples(out.read_text())
    assert s[("torexit_inbound_dos_hits_total", '{limit="blocked"}')] == 123
    assert s[("torexit_inbound_dos_hits_total", '{limit="network_rate"}')] == 32
    assert s[("torexit_inbound_dos_hits_total", '{limit="concurrency"}')] == 8
    assert s[("torexit_inbound_dos_hits_total", '{limit="rate"}')] == 0
    assert s[("torexit_inbound_dos_blocked_sources", '{family="v4"}')] == 5
    assert s[("torexit_inbound_dos_set_fill_ratio", '{set="dos_blocked_v4"}')] == pytest.approx(5 / 65536)
    assert s[("torexit_guard_up", "")] == 0
    # the guard's ipset reading leaves the inbound sets alone
    assert metrics.parse_ipsets(ipsets) == {}
