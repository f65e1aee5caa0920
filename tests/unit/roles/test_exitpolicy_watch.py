# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/tor_exit/files/torexit_exitpolicy_sync.py --watch: the tor control-protocol
exchange (against a fake control socket server), batching, aggregation and the line
budget, the file's mode and readers, netlink set names."""

import grp
import os
import re
import socket
import stat
import struct
import threading

import pytest
from role_files import load_role_file
from test_exitpolicy_sync import doc, lines, nft_set

sync = load_role_file("tor_exit", "torexit_exitpolicy_sync.py", "exitpolicy_sync")


class FakeTor:
    """A control socket that speaks the part of control-spec.txt the service uses,
    keeps the ExitPolicy values it was given and records every command. Like tor,
    it applies a new ExitPolicy to streams (`applied`) only when it rebuilds its
    descriptor, which GETINFO extra-info/digest/<hex> does at once when it is dirty
    (answering 552 for a digest that is not its own)."""

    def __init__(self, path, cookie_file, policy=(), methods="COOKIE,SAFECOOKIE", refuse=None):
        self.path, self.cookie_file, self.methods = str(path), str(cookie_file), methods
        self.cookie = os.urandom(32)
        with open(self.cookie_file, "wb") as f:
            f.write(self.cookie)
        self.policy, self.refuse = list(policy), refuse
        self.applied, self.rebuild = list(policy), True
        self.commands, self.conns, self.on_reload = [], [], None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(4)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _addr = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf, authed = b"", False
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                text = line.decode()
                self.commands.append(text)
                word = text.split(" ", 1)[0]
                if word == "PROTOCOLINFO":
                    conn.sendall(f'250-PROTOCOLINFO 1\r\n250-AUTH METHODS={self.methods} COOKIEFILE="'
                                 f'{self.cookie_file}"\r\n250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n'.encode())
                elif word == "AUTHENTICATE":
                    authed = text == "AUTHENTICATE " + self.cookie.hex() or (
                        "NULL" in self.methods and text == "AUTHENTICATE")
                    conn.sendall(b"250 OK\r\n" if authed else b"515 Authentication failed\r\n")
                elif not authed:
                    conn.sendall(b"514 Authentication required.\r\n")
                    return
                elif word == "GETCONF":
                    if self.policy:
                        out = "".join(f"250{'-' if i < len(self.policy) - 1 else ' '}ExitPolicy={v}\r\n"
                                      for i, v in enumerate(self.policy))
                    else:
                        out = "250 ExitPolicy\r\n"
                    conn.sendall(out.encode())
                elif word == "SETCONF":
                    values = [v.replace('\\"', '"') for v in
                              re.findall(r'ExitPolicy="((?:[^"\\]|\\.)*)"', text)]
                    if self.refuse and any(self.refuse in v for v in values):
                        conn.sendall(b'513 Unacceptable option value: Error in ExitPolicy entry.\r\n')
                    else:
                        self.policy = values
                        conn.sendall(b"250 OK\r\n")
                elif self.rebuild and re.fullmatch(r"GETINFO extra-info/digest/[0-9A-Fa-f]{40}", text):
                    self.applied = list(self.policy)
                    conn.sendall(f'552 Unrecognized key "{text[8:]}"\r\n'.encode())
                elif word == "SETEVENTS":
                    conn.sendall(b"250 OK\r\n")
                elif text == "SIGNAL RELOAD":
                    conn.sendall(b"250 OK\r\n")
                    if self.on_reload:
                        self.on_reload(self)
                    conn.sendall(b"650 SIGNAL RELOAD\r\n")
                else:
                    conn.sendall(b'510 Unrecognized command\r\n')

    def event(self, text):
        for conn in self.conns:
            conn.sendall(f"650 {text}\r\n".encode())

    def close(self):
        self.server.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def tor(tmp_path):
    fakes = []

    def make(**kwargs):
        fake = FakeTor(tmp_path / f"control{len(fakes)}", tmp_path / f"cookie{len(fakes)}", **kwargs)
        fakes.append(fake)
        return fake
    yield make
    for fake in fakes:
        fake.close()


# --- the control-protocol exchange ----------------------------------------------------

def test_cookie_authentication_getconf_and_setconf(tor):
    fake = tor(policy=["accept 198.18.0.0/15:*"])
    conn = sync.Control(fake.path)
    conn.authenticate()
    assert fake.commands[:2] == ["PROTOCOLINFO 1", "AUTHENTICATE " + fake.cookie.hex()]
    assert conn.get_exit_policy() == ["accept 198.18.0.0/15:*"]
    conn.set_exit_policy(["reject 198.18.5.0/24:8080", "accept 198.18.0.0/15:*"])
    assert fake.commands[-1] == 'SETCONF ExitPolicy="reject 198.18.5.0/24:8080" ExitPolicy="accept 198.18.0.0/15:*"'
    assert conn.get_exit_policy() == ["reject 198.18.5.0/24:8080", "accept 198.18.0.0/15:*"]
    conn.set_exit_policy([])
    assert fake.commands[-1] == "SETCONF ExitPolicy" and conn.get_exit_policy() == []
    conn.close()


def test_a_refusal_is_an_error_without_addresses_and_events_are_kept(tor):
    fake = tor(refuse="198.18.66.0")
    conn = sync.Control(fake.path)
    conn.authenticate()
    with pytest.raises(sync.ControlError, match="513 Unacceptable option value") as err:
        conn.set_exit_policy(["reject 198.18.66.0/24:*"])
    assert "198.18" not in str(err.value)
    fake.event("SIGNAL RELOAD")
    assert conn.get_exit_policy() == []  # the event came first: kept aside, the reply still read
    assert conn.poll_events() == ["SIGNAL RELOAD"] and conn.poll_events() == []
    conn.close()


def test_wrong_cookie_and_unsupported_methods(tor, tmp_path):
    fake = tor()
    conn = sync.Control(fake.path)
    with open(fake.cookie_file, "wb") as f:
        f.write(b"\0" * 32)
    with pytest.raises(sync.ControlError, match="515 Authentication failed"):
        conn.authenticate()
    conn.close()
    other = tor(methods="HASHEDPASSWORD")
    conn = sync.Control(other.path)
    with pytest.raises(sync.ControlError, match="no supported authentication method"):
        conn.authenticate()
    conn.close()
    null = tor(methods="NULL")
    conn = sync.Control(null.path)
    conn.authenticate()
    assert null.commands[1] == "AUTHENTICATE"
    conn.close()


# --- batching ---------------------------------------------------------------------------

def test_batcher_first_change_at_once_then_doubling_gaps_then_at_once_again():
    b = sync.Batcher(5, 60)
    assert b.due(0)
    b.done(0)
    assert not b.due(4.9) and b.wait(1) == 4 and b.due(5)
    b.done(5)                   # busy: the gap doubles
    assert not b.due(14.9) and b.due(15)
    b.done(15)
    assert b.gap == 20
    for t in (35, 75, 135):
        assert b.due(t)
        b.done(t)
    assert b.gap == 60          # capped: a storm costs one update a minute
    assert not b.due(194) and b.due(195)
    b.done(195)
    assert b.gap == 60
    b.done(400)                 # after a quiet spell longer than the cap: the short gap again
    assert b.gap == 5 and b.due(405)


# --- aggregation and the line budget -----------------------------------------------------

def entry(kind, net, port=None, age=0):
    return {"kind": kind, "net": sync._network(net), "port": port, "age": age}


def test_aggregation_widens_merges_ports_and_drops_covered_lines():
    entries = [entry("ban", "198.18.3.3/32", 8080), entry("ban", "198.18.3.7/32", 8081),
               entry("ban", "198.18.3.0/24", 8082, age=9), entry("ban", "198.18.4.1/32", 22),
               entry("optout", "198.18.9.0/24"), entry("ban", "198.18.9.0/25", 443),
               entry("ban", "2001:db8::5/128"), entry("ban", "2001:db8:0:1::/64", 25)]
    as_is = sync.aggregate(entries)
    assert lines(sync.render(sync.select(as_is, 100))) == [
        "ExitPolicy reject 198.18.3.0/24:8082", "ExitPolicy reject 198.18.3.3:8080",
        "ExitPolicy reject 198.18.3.7:8081", "ExitPolicy reject 198.18.4.1:22",
        "ExitPolicy reject 198.18.9.0/24:*",  # the /25:443 ban inside it is dropped
        "ExitPolicy reject [2001:db8::5]:*", "ExitPolicy reject [2001:db8:0:1::]/64:25"]
    coarse = sync.aggregate(entries, prefix_v4=24, prefix_v6=48)
    assert lines(sync.render(sync.select(coarse, 100))) == [
        "ExitPolicy reject 198.18.3.0/24:8080-8082", "ExitPolicy reject 198.18.4.0/24:22",
        "ExitPolicy reject 198.18.9.0/24:*", "ExitPolicy reject [2001:db8::]/48:*"]
    merged = [e for e in coarse if e["port"] == (8080, 8082)][0]
    assert merged["kind"] == "ban" and merged["age"] == 0  # as young as its youngest part
    # the opt-out keeps its kind when a ban merges into it
    assert [e["kind"] for e in coarse if e["port"] is None and e["net"].version == 4] == ["optout"]


def test_line_budget_holds_after_aggregation_and_prefers_opt_outs_then_young_bans():
    bans = [entry("ban", f"198.18.{i}.0/24", 22, age=i) for i in range(50)]
    optouts = [entry("optout", f"198.19.{i}.0/24", age=1000 + i) for i in range(3)]
    chosen = sync.select(sync.aggregate(bans + optouts), 5)
    assert len(chosen) == 5
    assert sorted(str(e["net"]) for e in chosen) == [
        "198.18.0.0/24", "198.18.1.0/24", "198.19.0.0/24", "198.19.1.0/24", "198.19.2.0/24"]
    # widened to /16 the 50 bans are one line, the three opt-outs another
    assert len(sync.select(sync.aggregate(bans + optouts, prefix_v4=16), 5)) == 2


def test_descriptor_byte_budget_counts_ipv4_lines_only():
    bans = [entry("ban", f"198.18.{i}.0/24", 20000 + i, age=i) for i in range(100)]
    v6 = [entry("ban", "2001:db8:%x::/48" % i, 443, age=i) for i in range(20)]
    line = "reject 198.18.10.0/24:20010\n"
    assert sync.descriptor_bytes(bans[10]) == len(line) and sync.descriptor_bytes(v6[0]) == 0
    chosen = sync.select(bans + v6, 500, max_bytes=10 * len(line))
    v4 = [e for e in chosen if e["net"].version == 4]
    assert len(v4) == 10 and sum(map(sync.descriptor_bytes, v4)) <= 10 * len(line)
    assert sorted(e["age"] for e in v4) == list(range(10))      # the youngest bans
    assert len(chosen) == 30                                      # IPv6 lines cost no descriptor bytes
    # the role's defaults: 500 lines, 10,000 bytes (a /24 line with a 5-digit port is 26-30 bytes)
    assert len(sync.select(bans * 1, 500, 10000)) == 100
    many = [entry("ban", f"198.{16 + i // 256}.{i % 256}.0/24", 20000, age=i) for i in range(600)]
    chosen = sync.select(many, 500, 10000)
    assert 10000 - 30 < sum(map(sync.descriptor_bytes, chosen)) <= 10000 and len(chosen) < 500


def test_nft_elements_with_the_sets_default_timeout_get_an_age():
    document = doc(nft_set("ban_hscan_v4_24", [
        {"elem": {"val": {"concat": ["198.18.1.0", 22]}, "expires": 590}},
        {"elem": {"val": {"concat": ["198.18.2.0", 22]}, "expires": 100}}]))
    document["nftables"][2]["set"]["timeout"] = 600
    entries, _skipped = sync.entries_from_nft(document)
    assert sorted(e["age"] for e in entries) == [10, 500]
    assert [str(e["net"]) for e in sync.select(entries, 1)] == ["198.18.1.0/24"]  # the younger


def test_option_defaults_and_instances():
    args = sync.parse_args(["--watch", "--control", "/run/tor/control", "--reload", "tor@default.service"])
    assert args.poll == 0.2 and args.batch_min == 5 and args.batch_max == 60
    assert [(i.path, i.unit) for i in sync.instances_of(args)] == [("/run/tor/control", "tor@default.service")]


def test_option_errors_name_the_option_and_value(capsys):
    for argv, message in ((["--prefix-v4", "33"], "--prefix-v4 must be 8 to 32, not 33"),
                          (["--max-bytes", "50000"], "--max-bytes must be 100 to 18000, not 50000"),
                          (["--batch-min", "9", "--batch-max", "3"], "--batch-min (9.0) must be between 0 "
                                                                     "and --batch-max (3.0)"),
                          (["--control", "/run/tor/control"], "one --control per --reload unit (1 for 0)")):
        with pytest.raises(SystemExit):
            sync.parse_args(argv)
        assert message in capsys.readouterr().err


# --- the file ----------------------------------------------------------------------------

def test_file_is_0640_keeps_its_group_and_gives_readers_an_acl(tmp_path):
    path = str(tmp_path / "10-torexit-guard.conf")
    assert sync.write_atomic(path, "# one\n") is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    group = grp.getgrgid(os.getgid()).gr_name
    sync.write_atomic(path, "# two\n", group=group)
    assert os.stat(path).st_gid == os.getgid()
    warning = sync.write_atomic(path, "# three\n", readers=[group])
    if warning is None:  # the file system keeps POSIX ACLs
        blob = os.getxattr(path, sync.ACL_XATTR)
        assert blob == sync.acl_blob(0o640, [os.getgid()])
        tags = [struct.unpack_from("<HHI", blob, 4 + 8 * i) for i in range((len(blob) - 4) // 8)]
        assert (0x08, 4, os.getgid()) in tags and (0x20, 0, 0xFFFFFFFF) in tags
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with pytest.raises(sync.SyncError, match="group 'no-such-group-x' .* does not exist"):
        sync.write_atomic(path, "# four\n", group="no-such-group-x")
    assert open(path).read() == "# three\n"


# --- netlink set names --------------------------------------------------------------------

def nlmsg(kind, body, flags=2):
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body


def nlattr(kind, data):
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def newset(table, name, key_len=8, flags=0x10, timeout_ms=None):
    attrs = (nlattr(1, table + b"\0") + nlattr(2, name + b"\0") + nlattr(3, struct.pack(">I", flags))
             + nlattr(5, struct.pack(">I", key_len)))
    if timeout_ms is not None:
        attrs += nlattr(11, struct.pack(">Q", timeout_ms))
    return nlmsg((10 << 8) | 11, struct.pack("=BBH", 1, 0, 0) + attrs)


def element(key, flags=0, timeout_ms=None, expires_ms=None, key_end=None):
    attrs = nlattr(1, nlattr(1, key))
    if key_end is not None:
        attrs += nlattr(10, nlattr(1, key_end))
    if flags:
        attrs += nlattr(3, struct.pack(">I", flags))
    if timeout_ms is not None:
        attrs += nlattr(4, struct.pack(">Q", timeout_ms))
    if expires_ms is not None:
        attrs += nlattr(5, struct.pack(">Q", expires_ms))
    return nlattr(1, attrs)


def newsetelem(table, name, *elements):
    body = nlattr(1, table + b"\0") + nlattr(2, name + b"\0") + nlattr(3, b"".join(elements))
    return nlmsg((10 << 8) | 12, struct.pack("=BBH", 1, 0, 0) + body)


def v4(text):
    return socket.inet_pton(socket.AF_INET, text)


def v6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def test_set_declarations_from_a_netlink_dump():
    first = (newset(b"torexit_guard", b"ban_hscan_v4_24", timeout_ms=600000) + newset(b"other", b"x")
             + newset(b"torexit_guard", b"__map0", flags=0x1 | 0x8))  # anonymous verdict map: not listed
    second = newset(b"torexit_guard", b"optout_v4", key_len=4, flags=0x14) + nlmsg(3, struct.pack("=i", 0))
    messages, done = sync.nl_messages([first])
    assert not done and sync.parse_sets(messages) == {
        "ban_hscan_v4_24": {"flags": 0x10, "key_len": 8, "timeout": 600}}
    messages, done = sync.nl_messages([second])
    assert done and sync.parse_sets(messages)["optout_v4"]["flags"] & sync.NFT_SET_INTERVAL
    with pytest.raises(OSError) as err:
        sync.nl_messages([nlmsg(2, struct.pack("=i", -1) + b"\0" * 16)])
    assert err.value.errno == 1


def test_netlink_elements_become_what_nft_prints():
    """Keys as the kernel stores them: concatenations pad each field to 4 bytes,
    interval sets hold start and end (first address after) elements."""
    port22 = struct.pack(">H", 22) + b"\0\0"
    hscan = sync.parse_elements(sync.nl_messages([newsetelem(
        b"torexit_guard", b"ban_hscan_v4_24",
        element(v4("198.18.7.0") + port22, expires_ms=590500),
        element(v4("198.18.8.0") + struct.pack(">H", 443) + b"\0\0", timeout_ms=100000, expires_ms=99000))])[0])
    document = {"nftables": [sync.nft_set_json("ban_hscan_v4_24", {"flags": 0x10, "key_len": 8, "timeout": 600},
                                               hscan)]}
    entries, skipped = sync.entries_from_nft(document)
    assert skipped == 0
    assert sorted((str(e["net"]), e["port"], e["age"]) for e in entries) == [
        ("198.18.7.0/24", 22, 10), ("198.18.8.0/24", 443, 1)]

    v6set = sync.parse_elements(sync.nl_messages([newsetelem(
        b"torexit_guard", b"ban_hscan_v6_48", element(v6("2001:db8:1::") + port22, expires_ms=1000))])[0])
    entries, _skipped = sync.entries_from_nft({"nftables": [sync.nft_set_json(
        "ban_hscan_v6_48", {"flags": 0x10, "key_len": 20, "timeout": 600}, v6set)]})
    assert [(str(e["net"]), e["port"]) for e in entries] == [("2001:db8:1::/48", 22)]

    # an interval set, elements in the kernel's (descending) order: a /24, one host,
    # a range, and a range open to the end of the address space (no end element)
    end = sync.NFT_SET_ELEM_INTERVAL_END
    optout = sync.parse_elements(sync.nl_messages([newsetelem(
        b"torexit_guard", b"optout_v4",
        element(v4("255.255.255.0"), timeout_ms=3600000, expires_ms=3500000),
        element(v4("198.18.10.6"), flags=end), element(v4("198.18.10.0"), timeout_ms=3600000, expires_ms=3599000),
        element(v4("198.18.9.2"), flags=end), element(v4("198.18.9.1"), timeout_ms=7200000, expires_ms=7199000),
        element(v4("198.18.6.0"), flags=end), element(v4("198.18.5.0"), timeout_ms=3600000, expires_ms=3599000))])[0])
    entries, _skipped = sync.entries_from_nft({"nftables": [sync.nft_set_json(
        "optout_v4", {"flags": 0x14, "key_len": 4, "timeout": None}, optout)]})
    assert [str(e["net"]) for e in entries] == [
        "198.18.5.0/24", "198.18.9.1/32", "198.18.10.0/30", "198.18.10.4/31", "255.255.255.0/24"]
    assert {e["age"] for e in entries} == {1, 100}
    # ranges that touch (an end equals the next start) and nft's 0.0.0.0 end element
    touching = sync.parse_elements(sync.nl_messages([newsetelem(
        b"torexit_guard", b"optout_v4",
        element(v4("244.1.2.0"), flags=end), element(v4("244.1.1.0"), timeout_ms=3600000, expires_ms=3600000),
        element(v4("244.1.1.0"), flags=end), element(v4("244.1.0.0"), timeout_ms=3600000, expires_ms=3600000),
        element(v4("0.0.0.0"), flags=end))])[0])
    entries, skipped = sync.entries_from_nft({"nftables": [sync.nft_set_json(
        "optout_v4", {"flags": 0x14, "key_len": 4, "timeout": None}, touching)]})
    assert skipped == 0 and [str(e["net"]) for e in entries] == ["244.1.0.0/24", "244.1.1.0/24"]
    # a set type the key layout does not fit: nothing, not a wrong address
    assert sync.nft_set_json("ban_x_v4_32", {"flags": 0, "key_len": 12, "timeout": None},
                             [{"key": b"\0" * 12, "key_end": None, "flags": 0, "timeout": None,
                               "expires": None}])["set"]["elem"] == []


def test_read_nft_netlink_reads_only_guard_sets_and_an_absent_table_is_empty():
    asked = []

    def dump(msg, attrs):
        asked.append((msg, [v for _k, v in attrs]))
        if msg == sync.NFT_MSG_GETSET:
            sets = newset(b"torexit_guard", b"seen_v4") + newset(b"torexit_guard", b"ban_vscan_v4_32", key_len=4)
            return sync.nl_messages([sets])[0]
        return sync.nl_messages([newsetelem(b"torexit_guard", b"ban_vscan_v4_32", element(v4("198.18.9.9")))])[0]
    document = sync.read_nft_netlink(dump=dump)
    assert [v for _m, v in asked] == [[b"torexit_guard\0"], [b"torexit_guard\0", b"ban_vscan_v4_32\0"]]
    assert document["nftables"][0]["set"]["elem"] == [{"elem": {"val": "198.18.9.9"}}]

    def absent(msg, attrs):
        raise FileNotFoundError(2, "No such file or directory")
    assert sync.read_nft_netlink(dump=absent) == {"nftables": []}


def test_nft_reader_falls_back_to_nft_when_netlink_is_refused(monkeypatch, capsys):
    asked = []
    now = [0.0]

    def names():
        asked.append(now[0])
        return ["seen_v4", "ban_hscan_v4_24", "optout_v4", "hscan_strict_v4_24"]
    listed = []

    def run(cmd, **kwargs):
        listed.append(cmd[-1])
        if cmd[-1] == "optout_v4":
            return sync.subprocess.CompletedProcess(cmd, 1, "", "Error: No such file or directory\n")
        return sync.subprocess.CompletedProcess(
            cmd, 0, '{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "table": "torexit_guard", '
                    '"name": "%s", "elem": []}}]}' % cmd[-1], "")
    monkeypatch.setattr(sync.subprocess, "run", run)

    def refused():
        raise PermissionError(1, "Operation not permitted")
    reader = sync.NftSets(refresh=5, clock=lambda: now[0], names=names, netlink=refused)
    document = reader()
    assert "netlink not usable" in capsys.readouterr().err
    assert listed == ["ban_hscan_v4_24", "optout_v4"]  # never the detectors' seen sets
    assert [item["set"]["name"] for item in document["nftables"]] == ["ban_hscan_v4_24"]
    now[0] = 1
    reader()
    assert asked == [0, 1]  # a set had gone: the names are read again at once


def test_ipset_reader_uses_one_process_and_falls_back_after_an_error(monkeypatch):
    calls = []
    state = {"fail": False}

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs.get("input")))
        if cmd[1:] == ["list", "-n"]:
            return sync.subprocess.CompletedProcess(cmd, 0, "torexit_seen_v4\ntorexit_ban_vscan_v4_32\n"
                                                            "torexit_optout_v4\n", "")
        if cmd[1:] == ["-"]:
            if state["fail"]:
                return sync.subprocess.CompletedProcess(cmd, 0, "ipset> ", "ipset v7.17: The set with the given "
                                                                           "name does not exist\n")
            return sync.subprocess.CompletedProcess(cmd, 0, (
                "ipset> create torexit_ban_vscan_v4_32 hash:ip family inet timeout 600\n"
                "add torexit_ban_vscan_v4_32 198.18.9.9 timeout 500\n"
                "ipset> create torexit_optout_v4 hash:net family inet timeout 86400\nipset> "), "")
        if cmd[1] == "save":
            return sync.subprocess.CompletedProcess(cmd, 0, f"create {cmd[2]} hash:ip family inet timeout 600\n", "")
        raise AssertionError(cmd)
    monkeypatch.setattr(sync.subprocess, "run", run)
    reader = sync.IpsetSets(clock=lambda: 0.0)
    text = reader()
    assert [c for c, _i in calls] == [["ipset", "list", "-n"], ["ipset", "-"]]
    assert calls[1][1] == "save torexit_ban_vscan_v4_32\nsave torexit_optout_v4\n"
    entries, skipped = sync.entries_from_ipset(text)
    assert skipped == 0 and [(str(e["net"]), e["age"]) for e in entries] == [("198.18.9.9/32", 100)]
    calls.clear()
    state["fail"] = True
    reader()
    assert [c[1] for c, _i in calls] == ["-", "list", "save", "save"]  # fell back to one save per set
    assert reader.names is None


# --- the watch loop, one step at a time -------------------------------------------------

def ban_doc(*nets):
    return doc(nft_set("ban_hscan_v4_24", [{"elem": {"val": {"concat": [n, 8080]}, "timeout": 600,
                                                     "expires": 600}} for n in nets]))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def watcher(tmp_path, fakes, state, clock, *extra):
    argv = ["--watch", "--output", str(tmp_path / "10-torexit-guard.conf"), "--ipset", "/nonexistent/ipset",
            "--tor", "/nonexistent/tor", *extra]
    for i, fake in enumerate(fakes):
        argv += ["--control", fake.path if fake else str(tmp_path / f"absent{i}"),
                 "--reload", f"tor@i{i}.service", "--torrc", f"/etc/tor/i{i}/torrc"]
    args = sync.parse_args(argv)
    return sync.Watcher(args, sync.instances_of(args), nft_reader=lambda: state["doc"], clock=clock)


def test_watch_sets_rejects_before_the_instances_own_lines_and_batches(tor, tmp_path):
    fake = tor(policy=["accept 198.18.0.0/15:*", "reject *:*"])
    state, clock = {"doc": ban_doc()}, Clock()
    w = watcher(tmp_path, [fake], state, clock)
    assert w.step() is False  # connected, learnt the base; nothing to change
    assert w.instances[0].base == ["accept 198.18.0.0/15:*", "reject *:*"]

    state["doc"] = ban_doc("198.18.5.0")
    assert w.step() is True   # the first change: at once
    assert fake.policy == ["reject 198.18.5.0/24:8080", "accept 198.18.0.0/15:*", "reject *:*"]
    assert lines(open(w.args.output).read()) == ["ExitPolicy reject 198.18.5.0/24:8080"]
    assert stat.S_IMODE(os.stat(w.args.output).st_mode) == 0o640
    # tor rebuilt its descriptor right after the SETCONF: streams meet the rejects now
    assert fake.commands[-2].startswith("SETCONF ") and fake.commands[-1] == sync.REBUILD_DESCRIPTOR
    assert fake.applied == fake.policy

    state["doc"] = ban_doc("198.18.5.0", "198.18.6.0")
    clock.now += 1
    assert w.step() is False  # within the 5 s gap: held back
    clock.now += 2
    state["doc"] = ban_doc("198.18.5.0", "198.18.6.0", "198.18.7.0")
    assert w.step() is False
    clock.now += 2
    assert w.step() is True   # one update carries both changes
    assert fake.policy[:3] == ["reject 198.18.5.0/24:8080", "reject 198.18.6.0/24:8080",
                               "reject 198.18.7.0/24:8080"]
    setconfs = [c for c in fake.commands if c.startswith("SETCONF")]
    assert len(setconfs) == 2 and w.updates == 2

    state["doc"] = ban_doc()  # the bans expire: the lines go, the instance's own stay
    clock.now += 10
    assert w.step() is True
    assert fake.policy == ["accept 198.18.0.0/15:*", "reject *:*"]
    assert lines(open(w.args.output).read()) == []


def test_watch_relearns_the_base_after_a_reload_and_reloads_a_stale_tor_once(tor, tmp_path):
    out = tmp_path / "10-torexit-guard.conf"
    out.write_text(sync.HEADER + "ExitPolicy reject 198.18.5.0/24:8080\n")
    fake = tor(policy=["reject 198.18.1.0/24:*", "accept *:443"])  # read before the file changed

    def reread_files(fake):
        fake.policy = ["reject 198.18.5.0/24:8080", "accept *:443"]
    fake.on_reload = reread_files
    state, clock = {"doc": ban_doc("198.18.5.0")}, Clock()
    w = watcher(tmp_path, [fake], state, clock)
    assert w.step() is False
    assert "SIGNAL RELOAD" in fake.commands and w.instances[0].base == ["accept *:443"]

    # the operator changes the torrc and reloads tor: the base follows, ours stay first
    fake.policy = ["reject 198.18.5.0/24:8080", "accept *:80", "accept *:443"]
    fake.event("SIGNAL RELOAD")
    clock.now += 1
    for _attempt in range(50):
        w.step()
        if w.instances[0].base == ["accept *:80", "accept *:443"]:
            break
    assert w.instances[0].base == ["accept *:80", "accept *:443"]
    state["doc"] = ban_doc("198.18.5.0", "198.18.6.0")
    clock.now += 10
    assert w.step() is True
    assert fake.policy == ["reject 198.18.5.0/24:8080", "reject 198.18.6.0/24:8080", "accept *:80", "accept *:443"]


def test_watch_rolls_back_the_file_when_tor_refuses(tor, tmp_path, capsys):
    fake = tor(refuse="198.18.66.0")
    other = tor()
    state, clock = {"doc": ban_doc("198.18.5.0")}, Clock()
    w = watcher(tmp_path, [other, fake], state, clock)
    assert w.step() is True
    before = open(w.args.output).read()
    state["doc"] = ban_doc("198.18.5.0", "198.18.66.0")
    clock.now += 10
    w.step()
    assert open(w.args.output).read() == before
    assert other.policy == fake.policy == ["reject 198.18.5.0/24:8080"]  # the first instance went back too
    err = capsys.readouterr().err
    assert "tor refused the new ExitPolicy (513 Unacceptable option value" in err and "198.18" not in err


def test_watch_falls_back_to_verify_and_reload_without_a_control_socket(tmp_path, monkeypatch, capsys):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return sync.subprocess.CompletedProcess(cmd, 0, "Configuration was valid\n", "")
    monkeypatch.setattr(sync.subprocess, "run", run)
    state, clock = {"doc": ban_doc("198.18.5.0")}, Clock()
    w = watcher(tmp_path, [None], state, clock)
    assert w.step() is True
    calls = [c for c in calls if c[0] != "/nonexistent/ipset"]
    assert calls == [["/nonexistent/tor", "--verify-config", "-f", "/etc/tor/i0/torrc"],
                     ["systemctl", "try-reload-or-restart", "tor@i0.service"]]
    err = capsys.readouterr().err
    assert "updating tor by reload until the control socket answers" in err
    assert "updated (0 by control socket, 1 by reload): 1 reject lines (0 opt-outs, 1 bans" in err
    assert "198.18" not in err
    clock.now += 3
    assert w.step() is False  # tried again, quietly
    assert "control socket" not in capsys.readouterr().err


def test_watch_update_stands_when_tor_does_not_rebuild_at_once(tor, tmp_path, capsys):
    fake = tor(policy=["accept *:*"])
    fake.rebuild = False   # a tor without that GETINFO key: 510, the rebuild comes ~1 s later
    state, clock = {"doc": ban_doc()}, Clock()
    w = watcher(tmp_path, [fake], state, clock)
    w.step()
    state["doc"] = ban_doc("198.18.5.0")
    assert w.step() is True and w.updates == 1
    assert fake.policy == ["reject 198.18.5.0/24:8080", "accept *:*"] and fake.applied == ["accept *:*"]
    err = capsys.readouterr().err
    assert "descriptor not rebuilt at once: 510" in err and "198.18" not in err


# --- waking up on the guard's detection counters (nftables) ----------------------------

def newobj(table, name, packets, kind=1):
    data = nlattr(1, struct.pack(">Q", packets * 60)) + nlattr(2, struct.pack(">Q", packets))
    attrs = (nlattr(1, table + b"\0") + nlattr(2, name + b"\0") + nlattr(3, struct.pack(">I", kind))
             + nlattr(4 | 0x8000, data))
    return nlmsg((10 << 8) | 18, struct.pack("=BBH", 1, 0, 0) + attrs)


def test_detections_sum_the_ban_counters_of_the_guard_table_only():
    asked = []

    def dump(msg, attrs):
        asked.append((msg, attrs))
        guard = b"torexit_guard"
        return sync.nl_messages([newobj(guard, b"detect_hscan", 3) + newobj(guard, b"detect_wide", 500)
                                 + newobj(guard, b"blocked_hscan", 70) + newobj(guard, b"detect_psweep", 2)
                                 + newobj(b"other", b"detect_flood", 9) + newobj(guard, b"detect_login", 4, kind=2)
                                 + nlmsg(3, struct.pack("=i", 0))])[0]
    # detect_wide rejects at random and bans nothing; a quota object is not a counter
    assert sync.read_detections(dump=dump) == 5
    assert asked == [(sync.NFT_MSG_GETOBJ, [(1, b"torexit_guard\0"), (3, struct.pack(">I", 1))])]

    def absent(msg, attrs):
        raise FileNotFoundError(2, "No such file or directory")
    assert sync.read_detections(dump=absent) == 0


def test_detections_report_a_change_after_the_first_look_and_give_up_a_failing_reader(capsys):
    values = iter([0, 0, 1, 1, 3])
    d = sync.Detections(lambda: next(values))
    assert [d.changed() for _i in range(5)] == [False, False, True, False, True]

    def refused():
        raise PermissionError(1, "Operation not permitted")
    d = sync.Detections(refused)
    assert d.changed() is False and d.reader is None
    assert "reading the sets every --poll only" in capsys.readouterr().err
    assert d.changed() is False and sync.Detections(None).changed() is False


class Looks:
    """Detections stand-in: answers from a list, then stops the watcher."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def changed(self):
        self.calls += 1
        return self.answers.pop(0) if self.answers else False

    def stop(self):
        return not self.answers


def test_watch_reads_the_sets_at_once_when_a_detection_counter_moves(tmp_path):
    reads = []

    def reader():
        reads.append(1)
        return ban_doc()
    argv = ["--watch", "--output", str(tmp_path / "g.conf"), "--ipset", "/nonexistent/ipset", "--tor",
            "/nonexistent/tor", "--poll", "60", "--detect-poll", "0.01"]
    looks = Looks([False, False, True, False, True, False])
    args = sync.parse_args(argv)
    w = sync.Watcher(args, [], nft_reader=reader, ipset_reader=lambda: "", detections=looks)
    w.run(looks.stop)
    # the first pass reads at once (due); then only the two moves of the counters do,
    # long before the 60 s poll
    assert len(reads) == 3 and looks.calls == 6


def test_detect_poll_option():
    base = ["--watch", "--output", "/nonexistent/g.conf"]
    assert sync.parse_args(base).detect_poll == 0.02
    assert sync.parse_args(base + ["--detect-poll", "0"]).detect_poll == 0
    w = sync.Watcher(sync.parse_args(base + ["--detect-poll", "0"]), [], nft_reader=dict, ipset_reader=str)
    assert w.detections.reader is None
    for bad in ("0.001", "0.5"):
        with pytest.raises(SystemExit):
            sync.parse_args(base + ["--detect-poll", bad])
