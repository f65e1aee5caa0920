# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Token, address and request logic of the exit notice's opt-out service."""
from __future__ import annotations

import io
import ipaddress
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest
from role_files import load_role_file

optout = load_role_file("exit_notice", "exit_notice_optout.py", "exit_notice_optout")

SECRET = b"k" * 32
NONCE = "n" * 32
NOW = 1_700_000_123.0
# The tests use the lab's reserved ranges, which the service refuses unless allowed
LAB = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]


# --- addresses ---------------------------------------------------------------

@pytest.mark.parametrize("addr, v4, v6, expected", [
    ("198.18.77.1", 32, 128, "198.18.77.1/32"),
    ("198.18.77.1", 24, 128, "198.18.77.0/24"),
    (" 198.18.113.9 ", 24, 64, "198.18.113.0/24"),
    ("2001:db8:1:2:3:4:5:6", 32, 128, "2001:db8:1:2:3:4:5:6/128"),
    ("2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"),
])
def test_visitor_network(addr, v4, v6, expected):
    assert optout.visitor_network(addr, v4, v6, lab=LAB) == ipaddress.ip_network(expected)


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
                                  "169.254.1.1", "fe80::1", "", "not-an-address", "198.18.0.0/24",
                                  "::ffff:127.0.0.1", "::ffff:198.18.77.1"])
def test_visitor_network_refuses(addr):
    with pytest.raises(ValueError):
        optout.visitor_network(addr, 24, 64, lab=LAB)


# Strings only: no traffic goes anywhere in these tests.
@pytest.mark.parametrize("addr, reason", [
    ("10.1.2.3", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("100.64.1.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("192.0.0.9", "IETF"), ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("198.18.77.1", "benchmarking"), ("192.88.99.1", "6to4"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "broadcast"), ("0.1.2.3", "this-network"),
    ("127.0.0.1", "loopback"), ("169.254.0.1", "link-local"), ("239.1.2.3", "multicast"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("ff05::2", "multicast"),
    ("fd12:3456::1", "ULA"), ("fc00::1", "ULA"), ("fec0::1", "site-local"),
    ("::ffff:9.9.9.9", "IPv4-mapped"), ("::ffff:127.0.0.1", "IPv4-mapped"), ("::9.9.9.9", "IPv4-compatible"),
    ("::ffff:0:909:909", "IPv4-translated"),
    ("64:ff9b::7f00:1", "NAT64"), ("64:ff9b::a00:1", "NAT64"), ("64:ff9b::909:909", "NAT64"),
    ("64:ff9b:1::1", "NAT64"),
    ("2002:7f00:1::1", "6to4"), ("2001::1", "IETF"), ("2001:2::1", "IETF"), ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"), ("100::1", "reserved"), ("4000::1", "not global unicast"),
])
def test_non_global_addresses_are_refused_with_the_reason(addr, reason):
    with pytest.raises(ValueError, match=reason):
        optout.visitor_network(addr, 32, 128)


@pytest.mark.parametrize("addr", ["fe80::1%eth0", "fe80::1%2", "2a00:1450::1%eth0"])
def test_scoped_addresses_are_refused(addr):
    with pytest.raises(ValueError, match="scoped"):
        optout.visitor_network(addr, 32, 128, lab=[ipaddress.ip_network("::/0")])


def test_global_addresses_are_accepted_without_a_lab_list():
    assert str(optout.visitor_network("9.9.9.9", 24, 64)) == "9.9.9.0/24"
    assert str(optout.visitor_network("2a00:1450:4001::5", 32, 64)) == "2a00:1450:4001::/64"


def test_the_lab_list_lifts_special_ranges_but_never_the_hard_ones():
    lab = [ipaddress.ip_network(n) for n in ("198.18.0.0/15", "127.0.0.0/8", "::/0", "0.0.0.0/0")]
    assert str(optout.visitor_network("198.18.77.1", 32, 128, lab=lab)) == "198.18.77.1/32"
    assert str(optout.visitor_network("fd00::1", 32, 64, lab=lab)) == "fd00::/64"
    for addr, reason in (("127.0.0.1", "loopback"), ("::ffff:198.18.77.1", "IPv4-mapped"),
                         ("64:ff9b::c612:4d01", "NAT64"), ("169.254.9.9", "link-local")):
        with pytest.raises(ValueError, match=reason):
            optout.visitor_network(addr, 32, 128, lab=lab)
    with pytest.raises(ValueError, match="benchmarking"):  # only inside the lab list
        optout.visitor_network("198.18.77.1", 32, 128, lab=[ipaddress.ip_network("198.19.0.0/16")])


def test_visitor_network_refuses_odd_prefix():
    with pytest.raises(ValueError, match="prefix length 16"):
        optout.visitor_network("198.18.77.1", 16, 128, lab=LAB)


def test_visitor_network_honours_never_list():
    never = [ipaddress.ip_network("198.18.77.128/25"), ipaddress.ip_network("2001:db8::/32")]
    assert str(optout.visitor_network("198.18.77.1", 32, 128, never, LAB)) == "198.18.77.1/32"
    with pytest.raises(ValueError, match="protected"):
        optout.visitor_network("198.18.77.1", 24, 128, never, LAB)  # the /24 covers the /25
    with pytest.raises(ValueError, match="protected"):
        optout.visitor_network("2001:db8::5", 32, 128, never, LAB)


# --- tokens --------------------------------------------------------------------

def test_token_round_trip_and_windows():
    token = optout.make_token(SECRET, NONCE, NOW)
    assert optout.check_token(SECRET, NONCE, token, NOW)
    assert optout.check_token(SECRET, NONCE, token, NOW + optout.WINDOW)  # next window still fine
    assert not optout.check_token(SECRET, NONCE, token, NOW + 2 * optout.WINDOW)  # expired
    assert not optout.check_token(SECRET, NONCE, token, NOW - optout.WINDOW)  # from the future


def test_token_bound_to_secret_and_nonce():
    token = optout.make_token(SECRET, NONCE, NOW)
    assert not optout.check_token(b"x" * 32, NONCE, token, NOW)
    assert not optout.check_token(SECRET, "m" * 32, token, NOW)
    assert not optout.check_token(SECRET, None, token, NOW)
    assert not optout.check_token(SECRET, "short", optout.make_token(SECRET, "short", NOW), NOW)


@pytest.mark.parametrize("mangle", [
    lambda t: "", lambda t: t[:-1], lambda t: t + "0", lambda t: t.upper(),
    lambda t: f"{int(t.split('.')[0]) + 1}.{t.split('.')[1]}",  # window moved, same mac
    lambda t: t.replace(".", ":"),
])
def test_token_tampering(mangle):
    token = optout.make_token(SECRET, NONCE, NOW)
    assert not optout.check_token(SECRET, NONCE, mangle(token), NOW)


def test_origin_check():
    expected = {"HTTP_X_NOTICE_ORIGIN": "https://exit.example"}
    assert optout.origin_allowed(dict(expected, HTTP_ORIGIN="https://exit.example"))
    assert not optout.origin_allowed(dict(expected, HTTP_ORIGIN="http://exit.example"))
    assert not optout.origin_allowed(dict(expected, HTTP_ORIGIN="https://evil.example"))
    assert not optout.origin_allowed(dict(expected, HTTP_ORIGIN="null"))
    assert not optout.origin_allowed({"HTTP_ORIGIN": "https://exit.example"})  # nginx gave no origin
    assert not optout.origin_allowed(dict(expected, HTTP_SEC_FETCH_SITE="cross-site"))
    assert optout.origin_allowed(dict(expected))  # not a browser: token and cookie decide


@pytest.mark.parametrize("seconds, lang, text", [
    (86400, "en", "24 hours"), (20, "en", "20 seconds"), (60, "en", "1 minute"),
    (3600, "de", "1 Stunde"), (7 * 86400, "de", "7 Tage"), (90, "en", "90 seconds"),
])
def test_duration(seconds, lang, text):
    assert optout.duration(seconds, lang) == text


# --- the WSGI application, with a fake nft ----------------------------------

class FakeNft:
    """Stands in for subprocess.run: keeps the sets in a dict, records each call."""

    def __init__(self, sets=("optout_v4", "optout_v6")):
        self.sets = {name: {} for name in sets}
        self.calls = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        if cmd[0] == "/usr/sbin/ipset":  # the iptables/ufw backends' sets: none here
            return subprocess.CompletedProcess(cmd, 1, "", "The set with the given name does not exist")
        verb, _obj, family, table, name = cmd[1:6]
        ok = family == "inet" and table == "torexit_guard" and name in self.sets
        if ok and verb == "add":
            elem, _ignored, timeout = cmd[6].strip("{} ").partition(" timeout ")
            self.sets[name][elem] = timeout
        elif ok and verb == "get":
            ok = cmd[6].strip("{} ") in self.sets[name]
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, "", "" if ok else "No such file")


def make_app(nft=None, **kwargs):
    nft = nft or FakeNft()
    kwargs.setdefault("clock", lambda: NOW)
    kwargs.setdefault("lab", LAB)
    app = optout.OptOutApp(optout.Guard(run=nft), SECRET, **kwargs)
    return app, nft


def call(app, method="GET", path="/optout/", body=b"", **headers):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), "HTTP_X_NOTICE_ORIGIN": "http://exit.example"}
    environ.update(headers)
    seen = {}

    def start_response(status, response_headers):
        seen["status"], seen["headers"] = status, response_headers

    text = b"".join(app(environ, start_response)).decode()
    return seen["status"], dict(seen["headers"]), text


def get_form(app, addr="198.18.77.1", lang="en"):
    status, headers, text = call(app, HTTP_X_REAL_IP=addr, HTTP_X_NOTICE_LANG=lang)
    assert status == "200 OK", text
    cookie = headers["Set-Cookie"].split(";")[0]
    token = text.split('name="token" value="')[1].split('"')[0]
    return cookie, token, text


def post(app, cookie, token, addr="198.18.77.1", **headers):
    body = urlencode({"token": token}).encode()
    return call(app, "POST", body=body, HTTP_X_REAL_IP=addr, HTTP_COOKIE=cookie, **headers)


def test_form_then_post_adds_own_prefix():
    app, nft = make_app(prefix_v4=24, timeout=20)
    cookie, token, text = get_form(app)
    assert "198.18.77.0/24" in text and "20 seconds" in text
    status, _ignored, text = post(app, cookie, token, HTTP_ORIGIN="http://exit.example")
    assert status == "200 OK", text
    assert nft.sets["optout_v4"] == {"198.18.77.0/24": "20s"}
    assert "198.18.77.0/24" in text


def test_cookie_is_strict_and_secure_over_https():
    app, _ignored = make_app()
    _ignored, headers, _ignored = call(app, HTTP_X_REAL_IP="198.18.77.1", HTTP_X_FORWARDED_PROTO="https")
    cookie = headers["Set-Cookie"]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie and "Secure" in cookie
    _ignored, headers, _ignored = call(app, HTTP_X_REAL_IP="198.18.77.1")
    assert "Secure" not in headers["Set-Cookie"]


def test_german_form():
    app, _ignored = make_app()
    _ignored, _ignored, text = get_form(app, lang="de")
    assert 'lang="de"' in text and "24 Stunden" in text


def test_post_blocks_only_the_sender_address():
    """The token is not tied to an address: what counts is X-Real-IP, never the form."""
    app, nft = make_app()
    cookie, token, _ignored = get_form(app, addr="198.18.77.1")
    body = urlencode({"token": token, "addr": "203.0.113.5", "net": "0.0.0.0/0"}).encode()
    status, _ignored, _ignored = call(app, "POST", body=body, HTTP_X_REAL_IP="198.18.77.1", HTTP_COOKIE=cookie)
    assert status == "200 OK"
    assert list(nft.sets["optout_v4"]) == ["198.18.77.1/32"]


@pytest.mark.parametrize("change", [
    {"HTTP_ORIGIN": "https://evil.example"},
    {"HTTP_ORIGIN": "null"},
    {"HTTP_SEC_FETCH_SITE": "cross-site"},
    {"HTTP_COOKIE": "exit_notice_optout=" + "z" * 32},  # someone else's cookie
    {"HTTP_COOKIE": ""},
])
def test_post_refused_without_matching_origin_token_and_cookie(change):
    app, nft = make_app()
    cookie, token, _ignored = get_form(app)
    headers = {"HTTP_COOKIE": cookie}
    headers.update(change)
    body = urlencode({"token": token}).encode()
    status, _ignored, text = call(app, "POST", body=body, HTTP_X_REAL_IP="198.18.77.1", **headers)
    assert status == "403 Forbidden"
    assert "expired" in text
    assert nft.sets["optout_v4"] == {}


def test_post_with_old_token_refused():
    app, nft = make_app()
    cookie, token, _ignored = get_form(app)
    app.clock = lambda: NOW + 2 * optout.WINDOW
    status, _ignored, _ignored = post(app, cookie, token)
    assert status == "403 Forbidden"
    assert nft.sets["optout_v4"] == {}


def test_missing_guard_gives_503():
    app, nft = make_app(FakeNft(sets=()))
    status, _ignored, text = call(app, HTTP_X_REAL_IP="198.18.77.1")
    assert status == "503 Service Unavailable"
    assert "egress guard" in text
    status, _ignored, _ignored = post(app, "exit_notice_optout=" + NONCE, optout.make_token(SECRET, NONCE, NOW))
    assert status == "503 Service Unavailable"
    assert not any("add" in cmd for cmd in nft.calls)


def test_loopback_visitor_refused():
    app, nft = make_app()
    status, _ignored, _ignored = call(app, HTTP_X_REAL_IP="127.0.0.1")
    assert status == "400 Bad Request"
    token = optout.make_token(SECRET, NONCE, NOW)
    status, _ignored, _ignored = post(app, "exit_notice_optout=" + NONCE, token, addr="127.0.0.1")
    assert status == "400 Bad Request"
    assert nft.calls == []


def test_visitor_address_is_escaped():
    app, _ignored = make_app()
    status, _ignored, text = call(app, HTTP_X_REAL_IP="<script>")
    assert status == "400 Bad Request"
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_global_rate_limit():
    app, nft = make_app(max_per_hour=2)
    results = []
    for last in (1, 2, 3):
        addr = f"198.18.77.{last}"
        cookie, token, _ignored = get_form(app, addr=addr)
        results.append(post(app, cookie, token, addr=addr)[0])
    assert results == ["200 OK", "200 OK", "429 Too Many Requests"]
    assert len(nft.sets["optout_v4"]) == 2


def test_repeat_is_reported_as_present():
    app, nft = make_app()
    nft.sets["optout_v4"]["198.18.77.1/32"] = "86400s"
    original = nft.__call__

    def refuse_duplicate(cmd, **kwargs):
        if cmd[1] == "add" and cmd[0] == "/usr/sbin/nft":
            nft.calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 1, "", "File exists")
        return original(cmd, **kwargs)

    app.guard.run = refuse_duplicate
    cookie, token, _ignored = get_form(app)
    status, _ignored, text = post(app, cookie, token)
    assert status == "200 OK" and "already in effect" in text


def test_ban_visitor_endpoint_only_when_enabled():
    app, nft = make_app()
    assert call(app, path="/ban-visitor", HTTP_X_REAL_IP="198.18.77.1")[0] == "404 Not Found"
    assert nft.sets["optout_v4"] == {}
    app, nft = make_app(ban_visitors=True)
    assert call(app, path="/ban-visitor", HTTP_X_REAL_IP="198.18.77.1")[0] == "204 No Content"
    assert list(nft.sets["optout_v4"]) == ["198.18.77.1/32"]


def test_other_methods_and_paths():
    app, _ignored = make_app()
    assert call(app, "PUT", HTTP_X_REAL_IP="198.18.77.1")[0] == "405 Method Not Allowed"
    assert call(app, path="/etc/passwd")[0] == "404 Not Found"


def test_arguments_refuse_non_loopback_listen():
    with pytest.raises(SystemExit):
        optout.parse_args(["--listen", "0.0.0.0:8099"])
    args = optout.parse_args(["--listen", "127.0.0.1:8123", "--prefix-v4", "24", "--never", "198.18.0.0/15"])
    assert (args.host, args.port, args.prefix_v4) == ("127.0.0.1", 8123, 24)
    assert args.never == [ipaddress.ip_network("198.18.0.0/15")]


def test_server_never_logs(capsys):
    handler = optout.QuietHandler.__new__(optout.QuietHandler)
    handler.log_message("%s", "198.18.77.1")
    assert capsys.readouterr().err == ""


# --- the iptables and ufw backends' ipsets ------------------------------------

class FakeIpset:
    """Stands in for subprocess.run with the ipset program: sets in a dict, every argv recorded."""

    def __init__(self, sets=("torexit_optout_v4", "torexit_optout_v6"), nft_sets=()):
        self.sets = {name: {} for name in sets}
        self.nft = FakeNft(sets=nft_sets)
        self.calls = []

    def __call__(self, cmd, **kwargs):
        assert kwargs["timeout"] == 10 and kwargs["check"] is False
        self.calls.append(cmd)
        if cmd[0] == "/usr/sbin/nft":
            return self.nft(cmd, **kwargs)
        args = cmd[1:]
        exist = args[0] == "-exist"
        if exist:
            args = args[1:]
        name = args[2] if args[:2] == ["list", "-n"] else args[1]
        if name not in self.sets:
            return subprocess.CompletedProcess(cmd, 1, "", "The set with the given name does not exist")
        if args[0] == "add":
            if args[2] in self.sets[name] and not exist:
                return subprocess.CompletedProcess(cmd, 1, "", "it's already added")
            assert args[3] == "timeout"
            self.sets[name][args[2]] = int(args[4])
        elif args[0] == "test":
            return subprocess.CompletedProcess(cmd, 0 if args[2] in self.sets[name] else 1, "", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.mark.parametrize("net, element, set_name", [
    ("198.18.77.1/32", "198.18.77.1", "torexit_optout_v4"),
    ("198.18.77.0/24", "198.18.77.0/24", "torexit_optout_v4"),
    ("2001:db8:1:2::5/128", "2001:db8:1:2::5", "torexit_optout_v6"),
    ("2001:db8:1:2::/64", "2001:db8:1:2::/64", "torexit_optout_v6"),
])
def test_ipset_backend_argv(net, element, set_name):
    run = FakeIpset()
    guard = optout.Guard(run=run)
    assert guard.add(ipaddress.ip_network(net), 3600) == "added"
    short = set_name[len("torexit_"):]
    assert run.calls == [
        ["/usr/sbin/nft", "list", "set", "inet", "torexit_guard", short],
        ["/usr/sbin/ipset", "list", "-n", set_name],
        ["/usr/sbin/ipset", "-exist", "add", set_name, element, "timeout", "3600"],
    ]
    assert run.sets[set_name] == {element: 3600}


def test_ipset_backend_through_the_form_and_again_refreshes_the_timeout():
    run = FakeIpset()
    app, _ignored = make_app(run, prefix_v6=64, timeout=7200)
    for _round in (1, 2):
        cookie, token, text = get_form(app, addr="2001:db8:1:2:3:4:5:6")
        assert "2001:db8:1:2::/64" in text
        status, _ignored, text = post(app, cookie, token, addr="2001:db8:1:2:3:4:5:6")
        assert status == "200 OK" and "2001:db8:1:2::/64" in text and "already" not in text
    assert run.sets == {"torexit_optout_v4": {}, "torexit_optout_v6": {"2001:db8:1:2::/64": 7200}}
    adds = [cmd for cmd in run.calls if "add" in cmd]
    assert adds == [["/usr/sbin/ipset", "-exist", "add", "torexit_optout_v6", "2001:db8:1:2::/64",
                     "timeout", "7200"]] * 2


def test_ipset_refused_add_of_a_present_element_is_reported_as_present():
    run = FakeIpset()
    run.sets["torexit_optout_v4"]["198.18.77.1"] = 100
    original = run.__call__

    def full_set(cmd, **kwargs):
        if "add" in cmd:
            run.calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 1, "", "Hash is full, cannot add more elements")
        return original(cmd, **kwargs)

    guard = optout.Guard(run=full_set)
    assert guard.add(ipaddress.ip_network("198.18.77.1/32"), 60) == "present"
    assert run.calls[-1] == ["/usr/sbin/ipset", "test", "torexit_optout_v4", "198.18.77.1"]
    with pytest.raises(optout.OptOutError) as err:
        guard.add(ipaddress.ip_network("198.18.77.2/32"), 60)
    assert err.value.key == "failed"


def test_both_backends_present_get_the_opt_out():
    run = FakeIpset(nft_sets=("optout_v4", "optout_v6"))
    guard = optout.Guard(run=run)
    assert guard.backends(ipaddress.ip_network("198.18.77.1/32")) == ["nftables", "ipset"]
    assert guard.add(ipaddress.ip_network("198.18.77.1/32"), 60) == "added"
    assert run.nft.sets["optout_v4"] == {"198.18.77.1/32": "60s"}
    assert run.sets["torexit_optout_v4"] == {"198.18.77.1": 60}


def test_no_set_and_no_programs_gives_503():
    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    app = optout.OptOutApp(optout.Guard(run=missing), SECRET, clock=lambda: NOW, lab=LAB)
    status, _ignored, text = call(app, HTTP_X_REAL_IP="198.18.77.1")
    assert status == "503 Service Unavailable" and "egress guard" in text
    only_v6 = FakeIpset(sets=("torexit_optout_v6",))
    app, _ignored = make_app(only_v6)
    assert call(app, HTTP_X_REAL_IP="198.18.77.1")[0] == "503 Service Unavailable"
    assert call(app, HTTP_X_REAL_IP="2001:db8::7")[0] == "200 OK"


def test_timeout_beyond_ipsets_limit_refused():
    with pytest.raises(SystemExit):
        optout.parse_args(["--timeout", str(optout.IPSET_MAX_TIMEOUT + 1)])
    assert optout.parse_args(["--timeout", str(optout.IPSET_MAX_TIMEOUT), "--ipset", "/sbin/ipset"]).ipset == "/sbin/ipset"


# --- limits: one client cannot shut the opt-out off for everybody ---------------

def post_fresh(app, addr, **headers):
    cookie, token, _ignored = get_form(app, addr=addr)
    return post(app, cookie, token, addr=addr, **headers)


def test_one_address_repeating_uses_up_only_its_own_attempts():
    """The reported attack: one address posting again and again (a few hundred an hour
    pass nginx) used to count against the global cap and closed the opt-out for all."""
    app, nft = make_app(max_per_hour=2, per_address=5)
    statuses = [post_fresh(app, "198.18.77.1")[0] for _round in range(40)]
    assert statuses[:5] == ["200 OK"] * 5 and set(statuses[5:]) == {"429 Too Many Requests"}
    status, _ignored, text = post_fresh(app, "198.18.77.1")
    assert "Too many attempts from your address" in text
    adds = [cmd for cmd in nft.calls if cmd[1] == "add"]
    assert len(adds) == 5  # the refused ones never reached nft
    assert post_fresh(app, "198.18.78.1")[0] == "200 OK"  # somebody else: still possible
    assert sorted(nft.sets["optout_v4"]) == ["198.18.77.1/32", "198.18.78.1/32"]


def test_rotating_ipv6_addresses_of_one_64_share_its_allowance():
    app, nft = make_app(max_per_hour=1000, per_address=5, per_network=10)
    statuses = [post_fresh(app, f"2001:db8:1:2::{n:x}")[0] for n in range(1, 41)]
    assert statuses[:10] == ["200 OK"] * 10 and set(statuses[10:]) == {"429 Too Many Requests"}
    assert len(nft.sets["optout_v6"]) == 10
    assert post_fresh(app, "2001:db8:1:3::1")[0] == "200 OK"  # the next /64 is somebody else


def test_the_global_cap_counts_new_opt_outs_only():
    app, nft = make_app(max_per_hour=2, per_address=50)
    for _round in range(10):  # repeats of an opt-out in force: not new
        assert post_fresh(app, "198.18.77.1")[0] == "200 OK"
    assert post_fresh(app, "198.18.78.1")[0] == "200 OK"   # the second new one
    status, _ignored, text = post_fresh(app, "198.18.79.1")  # the third new one in the hour
    assert status == "429 Too Many Requests" and "Too many opt-outs in the last hour" in text
    assert sorted(nft.sets["optout_v4"]) == ["198.18.77.1/32", "198.18.78.1/32"]


def test_failed_opt_outs_do_not_count_towards_the_global_cap():
    nft = FakeNft()
    original = nft.__call__

    def broken(cmd, **kwargs):
        if cmd[1] == "add":
            return subprocess.CompletedProcess(cmd, 1, "", "set is full")
        return original(cmd, **kwargs)

    app, _ignored = make_app(nft, max_per_hour=1)
    app.guard.run = broken
    assert [post_fresh(app, f"198.18.77.{n}")[0] for n in (1, 2, 3)] == ["500 Internal Server Error"] * 3
    app.guard.run = nft
    assert post_fresh(app, "198.18.77.4")[0] == "200 OK"
    assert post_fresh(app, "198.18.77.5")[0] == "429 Too Many Requests"


def test_forged_posts_do_not_use_up_the_victims_attempts():
    """A cross-site page can make the victim's browser post without the cookie; that
    must not lock the victim out of the opt-out."""
    app, _ignored = make_app(per_address=2)
    for _round in range(20):
        status, _ignored, _ignored = post(app, "", "1.x", addr="198.18.77.1", HTTP_ORIGIN="https://evil.example")
        assert status == "403 Forbidden"
    assert post_fresh(app, "198.18.77.1")[0] == "200 OK"


def test_an_hour_later_the_allowances_are_back():
    clock = [1000.0]
    limits = optout.Limits(global_limit=1, per_address=1, clock=lambda: clock[0])
    app, _ignored = make_app(limits=limits)
    assert post_fresh(app, "198.18.77.1")[0] == "200 OK"
    assert post_fresh(app, "198.18.77.1")[0] == "429 Too Many Requests"   # its own attempt
    assert post_fresh(app, "198.18.77.2")[0] == "429 Too Many Requests"   # the global cap
    clock[0] += 3600
    assert post_fresh(app, "198.18.77.2")[0] == "200 OK"


def test_limits_keep_a_bounded_number_of_hashed_keys_only():
    limits = optout.Limits(global_limit=10, per_address=1, max_keys=8)
    for n in range(1, 50):
        assert limits.attempt(ipaddress.ip_address(f"2001:db8:{n:x}::1"))
    assert len(limits.visitors) <= 8
    held = b"".join(limits.visitors)
    for n in range(1, 50):
        addr = ipaddress.ip_address(f"2001:db8:{n:x}::1")
        assert addr.packed not in held and addr.packed[:8] not in held
    assert all(len(key) == 16 for key in limits.visitors)


def test_ban_visitor_path_has_the_same_address_checks_and_limits():
    app, nft = make_app(ban_visitors=True, max_per_hour=2, per_address=3)

    def ban(addr):
        return call(app, path="/ban-visitor", HTTP_X_REAL_IP=addr)[0]

    for addr in ("127.0.0.1", "10.0.0.1", "100.64.0.1", "::ffff:198.18.77.1", "64:ff9b::7f00:1", "fe80::1%eth0"):
        assert ban(addr) == "400 Bad Request"
    assert [ban("198.18.77.1") for _round in range(6)] == ["204 No Content"] * 3 + ["429 Too Many Requests"] * 3
    assert ban("198.18.78.1") == "204 No Content"
    assert ban("198.18.79.1") == "429 Too Many Requests"  # a third new one in the hour
    assert sorted(nft.sets["optout_v4"]) == ["198.18.77.1/32", "198.18.78.1/32"]
    adds = [cmd for cmd in nft.calls if cmd[1] == "add"]
    assert len(adds) == 4


def test_new_arguments():
    args = optout.parse_args(["--per-address", "3", "--per-network", "7", "--lab-network", "198.18.0.0/15",
                              "--socket-timeout", "2.5", "--max-threads", "8"])
    assert (args.per_address, args.per_network, args.socket_timeout, args.max_threads) == (3, 7, 2.5, 8)
    assert args.lab_network == [ipaddress.ip_network("198.18.0.0/15")]
    for bad in (["--per-address", "0"], ["--per-network", "-1"], ["--max-threads", "0"], ["--socket-timeout", "0"]):
        with pytest.raises(SystemExit):
            optout.parse_args(bad)


# --- the server: slow clients do not hold threads (loopback only) --------------

def test_slow_clients_are_dropped_and_threads_are_capped():
    app, _ignored = make_app()
    server = optout.make_server("127.0.0.1", 0, app, socket_timeout=1.0, max_threads=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _n in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        assert extra.recv(1) == b""                     # over the cap: closed at once
        assert time.monotonic() - started < 0.9
        for conn in idle:                                # silent clients: dropped after the timeout
            assert conn.recv(1) == b""
        assert time.monotonic() - started < 4
        for conn in idle + [extra]:
            conn.close()
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing-here", timeout=5) as _resp:
            pass
    except urllib.error.HTTPError as exc:               # the slots are free again: a real answer
        assert exc.code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
