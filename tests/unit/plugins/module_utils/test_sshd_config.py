# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests for the sshd_config module_utils: parsing, rendering, refusals."""

from __future__ import annotations

import base64
import json
import os
import struct
from types import SimpleNamespace

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_config as sc

# Abridged `sshd -T -C user=op` output of Debian 12's OpenSSH 9.2 with its default config.
SSHD_T = """\
port 22
addressfamily any
listenaddress [::]:22
listenaddress 0.0.0.0:22
usepam yes
pubkeyauthentication yes
passwordauthentication yes
kbdinteractiveauthentication no
permitrootlogin without-password
strictmodes yes
requiredrsasize 1024
authenticationmethods any
authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2
pubkeyacceptedalgorithms ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256
acceptenv LANG
acceptenv LC_*
"""


def eff(**changes):
    """Effective config parsed from SSHD_T with some keywords replaced."""
    base = sc.parse_effective(SSHD_T)
    for key, value in changes.items():
        base[key] = value if isinstance(value, list) else [value]
    return base


def ssh_string(data):
    return struct.pack(">I", len(data)) + data


def rsa_line(bits):
    n = (1 << (bits - 1)) | 1
    blob = ssh_string(b"ssh-rsa") + ssh_string(b"\x01\x00\x01") + ssh_string(b"\x00" + n.to_bytes(bits // 8, "big"))
    return "ssh-rsa " + base64.b64encode(blob).decode() + " op@laptop"


ED25519 = "ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"k" * 32)).decode() + " op@laptop"


def safe_stat(path):
    return SimpleNamespace(st_uid=1000, st_mode=0o40755 if not path.endswith("keys") else 0o100600)


def reader(files):
    return files.get


HOME = "/home/op"
KEYS = HOME + "/.ssh/authorized_keys"


def lockout(before, after, files=None, groups=("op",), address="198.18.0.5", port=22, firewall=None, user="op"):
    return sc.check_lockout(before, after, user, list(groups), HOME, 1000, address, port,
                            reader(files or {}), firewall or (lambda p: None), lstat=safe_stat)


# ------------------------------------------------------------------ parsing, render

def test_parse_effective_keeps_repeated_keywords_in_order():
    parsed = sc.parse_effective(SSHD_T)
    assert parsed["listenaddress"] == ["[::]:22", "0.0.0.0:22"]
    assert parsed["acceptenv"] == ["LANG", "LC_*"]
    assert sc.words(parsed, "authorizedkeysfile") == [".ssh/authorized_keys", ".ssh/authorized_keys2"]


def test_listen_ports_from_listenaddress_then_port():
    assert sc.listen_ports(eff(listenaddress=["0.0.0.0:22", "[::]:2222"])) == {22, 2222}
    assert sc.listen_ports({"port": ["22", "2222"]}) == {2222, 22}


def test_render_joins_lists_per_keyword():
    text = sc.render({"Port": [22, 2222], "Ciphers": ["a", "b"], "AllowUsers": ["op", "ops"],
                      "PasswordAuthentication": False, "X11Forwarding": None}, comment="hi")
    assert text.splitlines() == [sc.HEADER, "# hi", "Port 22", "Port 2222", "Ciphers a,b",
                                 "AllowUsers op ops", "PasswordAuthentication no"]


@pytest.mark.parametrize("settings", [{"Match": "User x"}, {"Bad Key": "1"}, {"Banner": "a\nPort 1"}])
def test_render_rejects_bad_input_naming_it(settings):
    with pytest.raises(sc.SshdConfigError, match="settings"):
        sc.render(settings)


def test_block_replaces_previous_block_at_the_top():
    once = sc.with_block("Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n", "Port 22\n")
    twice = sc.with_block(once, "Port 2222\n")
    assert twice.splitlines() == [sc.BLOCK_BEGIN, "Port 2222", sc.BLOCK_END,
                                  "Include /etc/ssh/sshd_config.d/*.conf", "UsePAM yes"]


def test_candidate_main_puts_candidate_where_the_dropin_sorts():
    main = "  Include sshd_config.d/*.conf\nUsePAM yes\n"
    path = "/etc/ssh/sshd_config.d/00-x.conf"
    existing = ["/etc/ssh/sshd_config.d/50-cloud.conf", path]
    out = sc.candidate_main(main, "/etc/ssh", path, "/tmp/c/00-x.conf", globber=lambda p: list(existing))
    assert out.splitlines()[0] == "  Include /tmp/c/00-x.conf /etc/ssh/sshd_config.d/50-cloud.conf"
    # A drop-in that does not exist yet still takes its place.
    out = sc.candidate_main(main, "/etc/ssh", path, "/tmp/c/00-x.conf", globber=lambda p: [])
    assert out.splitlines()[0] == "  Include /tmp/c/00-x.conf"
    assert sc.covered_by_include(main, "/etc/ssh", path)
    assert not sc.covered_by_include("UsePAM yes\n", "/etc/ssh", path)


def test_effective_diff_lists_only_changed_keys():
    diff = sc.effective_diff(eff(), eff(passwordauthentication="no"))
    assert diff == {"passwordauthentication": {"before": ["yes"], "after": ["no"]}}
    assert sc.effective_diff(eff(), eff()) == {}


def test_ssh_connection_from_an_ancestor_when_sudo_dropped_it():
    parents = {500: 400, 400: 300, 300: 1}
    environs = {400: {"SUDO_USER": "op"}, 300: {"SSH_CONNECTION": "198.18.0.5 50000 198.18.0.1 2222"}}
    value = sc.find_ssh_connection({}, lambda pid: environs.get(pid, {}), parents.get, 500)
    assert sc.parse_ssh_connection(value) == ("198.18.0.5", 2222)
    assert sc.find_ssh_connection({}, lambda pid: {}, lambda pid: pid + 1, 2, limit=5) is None
    assert sc.parse_ssh_connection(None) == (None, None)


# ------------------------------------------------------- refusal 1: password / keys

def test_refuses_disabling_passwords_without_keys():
    with pytest.raises(sc.Refused) as exc:
        lockout(eff(), eff(passwordauthentication="no"))
    assert exc.value.code == "no_usable_key"


def test_allows_disabling_passwords_with_a_key():
    assert lockout(eff(), eff(passwordauthentication="no"), files={KEYS: ED25519 + "\n"}) == ([22], [22])


@pytest.mark.parametrize("after, line", [
    (eff(passwordauthentication="no", pubkeyacceptedalgorithms="rsa-sha2-512"), ED25519),
    (eff(passwordauthentication="no", requiredrsasize="3072"), rsa_line(2048)),
    (eff(passwordauthentication="no", pubkeyauthentication="no"), ED25519),
    (eff(passwordauthentication="no"), 'cert-authority ' + ED25519),
])
def test_keys_sshd_would_not_accept_do_not_count(after, line):
    with pytest.raises(sc.Refused, match="no usable authorized key"):
        lockout(eff(), after, files={KEYS: line + "\n"})


def test_rsa_size_is_read_from_the_key():
    assert sc.rsa_bits(sc.parse_key_line(rsa_line(3072))[2]) == 3072
    assert lockout(eff(), eff(passwordauthentication="no", requiredrsasize="3072"),
                   files={KEYS: rsa_line(4096)}) == ([22], [22])


def test_key_options_are_skipped_when_parsing():
    opts, keytype, _blob = sc.parse_key_line('from="198.18.0.0/15",command="echo a b" ' + ED25519)
    assert keytype == "ssh-ed25519" and opts.startswith("from=")


def test_strict_modes_group_writable_home_makes_keys_unusable():
    def loose(path):
        return SimpleNamespace(st_uid=1000, st_mode=0o40775 if path == HOME else 0o100600)

    with pytest.raises(sc.Refused, match="StrictModes"):
        sc.check_lockout(eff(), eff(passwordauthentication="no"), "op", ["op"], HOME, 1000, None, 22,
                         reader({KEYS: ED25519}), lambda p: None, lstat=loose)


def test_root_needs_keys_and_permit_root_login():
    with pytest.raises(sc.Refused, match="no usable"):
        lockout(eff(permitrootlogin="yes"), eff(permitrootlogin="prohibit-password"), user="root")
    files = {HOME + "/.ssh/authorized_keys": ED25519}
    with pytest.raises(sc.Refused):
        lockout(eff(), eff(permitrootlogin="no"), files=files, user="root")


def test_authentication_methods_requiring_both():
    after = eff(passwordauthentication="no", authenticationmethods="publickey,password")
    with pytest.raises(sc.Refused):
        lockout(eff(), after, files={KEYS: ED25519})


def test_no_refusal_when_login_was_already_impossible():
    before = eff(passwordauthentication="no")
    assert lockout(before, before) == ([22], [22])


# ------------------------------------------------------ refusal 2: Allow/Deny lists

@pytest.mark.parametrize("after", [
    eff(allowusers="alice bob"),
    eff(allowgroups="admins"),
    eff(denyusers="o?"),
    eff(denygroups="op"),
    eff(allowusers="op@10.0.0.0/8"),
])
def test_refuses_lists_that_exclude_the_user(after):
    with pytest.raises(sc.Refused) as exc:
        lockout(eff(), after)
    assert exc.value.code == "user_excluded"


@pytest.mark.parametrize("after", [
    eff(allowusers="alice op"),
    eff(allowusers="o*"),
    eff(allowgroups="admins op"),
    eff(allowusers="op@198.18.0.0/15"),
    eff(denyusers="op@203.0.113.*"),
])
def test_accepts_lists_that_include_the_user(after):
    assert lockout(eff(), after) == ([22], [22])


def test_host_pattern_with_unknown_address_counts_against_the_user():
    with pytest.raises(sc.Refused, match="connecting_address"):
        lockout(eff(), eff(allowusers="op@198.18.0.0/15"), address=None)


# ------------------------------------------------------------- refusal 3: ports

def test_refuses_dropping_the_connected_port():
    with pytest.raises(sc.Refused) as exc:
        lockout(eff(), eff(listenaddress=["0.0.0.0:2222"]))
    assert exc.value.code == "port_dropped"


def test_refuses_a_new_port_the_firewall_blocks_and_asks_only_for_new_ports():
    asked = []

    def firewall(port):
        asked.append(port)
        return "closed" if port == 2222 else None

    with pytest.raises(sc.Refused) as exc:
        lockout(eff(), eff(listenaddress=["0.0.0.0:22", "0.0.0.0:2222"]), firewall=firewall)
    assert exc.value.code == "port_closed" and asked == [2222]


def test_port_move_second_step_is_allowed_once_connected_on_the_new_port():
    before = eff(listenaddress=["0.0.0.0:22", "0.0.0.0:2222"])
    assert lockout(before, eff(listenaddress=["0.0.0.0:2222"]), port=2222) == ([22, 2222], [2222])


NFT = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "inet", "name": "f", "handle": 1}},
    {"chain": {"family": "inet", "table": "f", "name": "input", "hook": "input", "type": "filter", "policy": "drop"}},
    {"chain": {"family": "inet", "table": "f", "name": "ssh", "handle": 4}},
    {"set": {"family": "inet", "table": "f", "name": "sshports", "type": "inet_service", "elem": [2200]}},
    {"rule": {"family": "inet", "table": "f", "chain": "input", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
        {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [{"range": [3000, 3010]}, 4000]}}},
        {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "@sshports"}},
        {"accept": None}]}},
    {"rule": {"family": "inet", "table": "f", "chain": "ssh", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 5000}},
        {"drop": None}]}},
]}


@pytest.mark.parametrize("port, is_open", [(22, True), (3005, True), (4000, True), (2200, True),
                                           (2222, False), (5000, False)])
def test_nft_open_decides_from_accepting_dport_rules(port, is_open):
    result, blocking = sc.nft_open(json.dumps(NFT), port)
    assert result is is_open
    assert blocking == ([] if is_open else ["inet f"])


def test_nft_policy_accept_is_open_unless_input_ends_in_a_drop():
    ruleset = {"nftables": [
        {"chain": {"family": "ip", "table": "t", "name": "in", "hook": "input", "policy": "accept"}}]}
    assert sc.nft_open(json.dumps(ruleset), 2222)[0] is True
    ruleset["nftables"].append({"rule": {"family": "ip", "table": "t", "chain": "in",
                                         "expr": [{"counter": None}, {"drop": None}]}})
    assert sc.nft_open(json.dumps(ruleset), 2222)[0] is False
    assert sc.nft_open("", 2222) == (True, [])


UFW = """Status: active

To                         Action      From
--                         ------      ----
OpenSSH                    ALLOW       Anywhere
2222/tcp                   LIMIT       Anywhere
3000:3100/tcp              ALLOW       198.18.0.0/15
4000                       DENY        Anywhere
4000                       ALLOW       Anywhere
5000/udp                   ALLOW       Anywhere
2222/tcp (v6)              LIMIT       Anywhere (v6)
"""


@pytest.mark.parametrize("port, is_open", [(22, True), (2222, True), (3050, True), (4000, False),
                                           (5000, False), (6000, False)])
def test_ufw_first_matching_rule_decides(port, is_open):
    assert sc.ufw_open(UFW, port) is is_open


def test_ufw_inactive_is_not_consulted():
    assert sc.ufw_open("Status: inactive\n", 2222) is None


IPT = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 2200:2300,4000 -j ACCEPT
COMMIT
"""


def test_iptables_legacy_rules():
    assert sc.iptables_open(IPT, 22) and sc.iptables_open(IPT, 2250) and sc.iptables_open(IPT, 4000)
    assert not sc.iptables_open(IPT, 2400)
    assert sc.iptables_open(IPT.replace(":INPUT DROP", ":INPUT ACCEPT"), 2400)
    assert not sc.iptables_open(IPT.replace(":INPUT DROP", ":INPUT ACCEPT") .replace("COMMIT", "-A INPUT -j DROP\nCOMMIT"),
                                2400)


def test_authorized_keys_file_tokens():
    files = sc.authorized_keys_files(eff(authorizedkeysfile="%h/.ssh/k /etc/keys/%u ~/x"), "op", HOME)
    assert files == [HOME + "/.ssh/k", "/etc/keys/op", os.path.join(HOME, "x")]
