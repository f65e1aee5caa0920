# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_keys: which keys and passwords count (refusal 1 of the lock-out check)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from sshd_samples import ED25519, HOME, KEYS, eff, lockout, reader, rsa_line

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_keys, sshd_lockout

# ------------------------------------------------------- refusal 1: password / keys


def test_refuses_disabling_passwords_without_keys():
    with pytest.raises(sshd_lockout.Refused) as exc:
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
    with pytest.raises(sshd_lockout.Refused, match="no usable authorized key"):
        lockout(eff(), after, files={KEYS: line + "\n"})


def test_rsa_size_is_read_from_the_key():
    assert sshd_keys.rsa_bits(sshd_keys.parse_key_line(rsa_line(3072))[2]) == 3072
    assert lockout(eff(), eff(passwordauthentication="no", requiredrsasize="3072"),
                   files={KEYS: rsa_line(4096)}) == ([22], [22])


def test_key_options_are_skipped_when_parsing():
    opts, keytype, _blob = sshd_keys.parse_key_line('from="198.18.0.0/15",command="echo a b" ' + ED25519)
    assert keytype == "ssh-ed25519" and opts.startswith("from=")


def test_strict_modes_group_writable_home_makes_keys_unusable():
    def loose(path):
        return SimpleNamespace(st_uid=1000, st_mode=0o40775 if path == HOME else 0o100600)

    with pytest.raises(sshd_lockout.Refused, match="StrictModes"):
        sshd_lockout.check_lockout(eff(), eff(passwordauthentication="no"), "op", ["op"], HOME, 1000, None, 22,
                                   reader({KEYS: ED25519}), lambda p: None, lstat=loose)


def test_root_needs_keys_and_permit_root_login():
    with pytest.raises(sshd_lockout.Refused, match="no usable"):
        lockout(eff(permitrootlogin="yes"), eff(permitrootlogin="prohibit-password"), user="root")
    files = {HOME + "/.ssh/authorized_keys": ED25519}
    with pytest.raises(sshd_lockout.Refused):
        lockout(eff(), eff(permitrootlogin="no"), files=files, user="root")


def test_authentication_methods_requiring_both():
    after = eff(passwordauthentication="no", authenticationmethods="publickey,password")
    with pytest.raises(sshd_lockout.Refused):
        lockout(eff(), after, files={KEYS: ED25519})


def test_authentication_methods_needing_a_key_the_user_lacks_name_the_option():
    after = eff(authenticationmethods="publickey,password")
    with pytest.raises(sshd_lockout.Refused, match="AuthenticationMethods publickey,password needs a key"):
        lockout(eff(), after, password_state="set")


def test_no_refusal_when_login_was_already_impossible():
    before = eff(passwordauthentication="no")
    assert lockout(before, before) == ([22], [22])


def test_authorized_keys_file_tokens():
    files = sshd_keys.authorized_keys_files(eff(authorizedkeysfile="%h/.ssh/k /etc/keys/%u ~/x"), "op", HOME)
    assert files == [HOME + "/.ssh/k", "/etc/keys/op", os.path.join(HOME, "x")]


# ------------------------------------------ password login needs a usable password

@pytest.mark.parametrize("state", ["locked", "empty", "unknown"])
def test_dropping_the_key_type_is_refused_when_the_password_is_unusable(state):
    # PasswordAuthentication stays yes, but the user has no password sshd would accept.
    after = eff(pubkeyacceptedalgorithms="rsa-sha2-512,rsa-sha2-256")
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), after, files={KEYS: ED25519 + "\n"}, password_state=state)
    assert exc.value.code == "no_usable_key"
    assert "key type ssh-ed25519 not in PubkeyAcceptedAlgorithms" in exc.value.msg
    assert "password" in exc.value.msg and state in exc.value.msg


def test_dropping_the_key_type_is_allowed_with_a_usable_password():
    after = eff(pubkeyacceptedalgorithms="rsa-sha2-512")
    assert lockout(eff(), after, files={KEYS: ED25519}, password_state="set") == ([22], [22])
    assert lockout(eff(), eff(pubkeyacceptedalgorithms="rsa-sha2-512", permitemptypasswords="yes"),
                   files={KEYS: ED25519}, password_state="empty") == ([22], [22])


SHADOW = """root:*:19700:0:99999:7:::
op:$6$salt$hash:19700:0:99999:7:::
locked:!$6$salt$hash:19700:0:99999:7:::
star:*:19700:0:99999:7:::
bang:!:19700:0:99999:7:::
empty::19700:0:99999:7:::
des:abcdefghijklm:19700:0:99999:7:::
"""


@pytest.mark.parametrize("user, state", [("op", "set"), ("locked", "locked"), ("star", "locked"), ("bang", "locked"),
                                         ("empty", "empty"), ("des", "set"), ("nobody", "unknown")])
def test_password_state_from_the_shadow_entry(user, state):
    assert sshd_keys.password_state(user, SHADOW, "x") == state


def test_password_state_without_shadow_uses_the_passwd_field():
    assert sshd_keys.password_state("op", None, "$6$salt$hash") == "set"
    assert sshd_keys.password_state("op", None, "x") == "unknown"
    assert sshd_keys.password_state("op", None, "*") == "locked"


# ------------------------------------------------------ from= restrictions on keys

@pytest.mark.parametrize("pattern, address, usable", [
    ("198.18.0.0/15", "198.18.0.5", True),
    ("192.0.2.0/24", "198.18.0.5", False),
    ("198.18.*", "198.18.0.5", True),               # wildcards on the address text
    ("198.18.0.?", "198.18.0.5", True),
    ("198.18.0.?", "198.18.0.50", False),
    ("192.0.2.*,198.18.0.5", "198.18.0.5", True),
    ("198.18.0.0/15,!198.18.0.5", "198.18.0.5", False),  # a negated match wins
    ("!198.18.0.5,198.18.0.0/15", "198.18.0.5", False),
    ("!192.0.2.1,198.18.0.0/15", "198.18.0.5", True),
    ("!192.0.2.1", "198.18.0.5", False),            # negations alone admit nobody
    ("198.18.0.5/15", "198.18.0.5", False),         # host bits set: sshd rejects the list
    ("2001:db8::/32", "2001:db8::5", True),
    ("2001:db8::/32", "198.18.0.5", False),
    ("laptop.example.org", "198.18.0.5", False),
    ("*", "198.18.0.5", True),
    ("198.18.0.0/15", None, False),                 # address unknown
])
def test_a_from_restricted_key_counts_only_for_a_matching_address(pattern, address, usable):
    files = {KEYS: f'from="{pattern}",no-agent-forwarding {ED25519}\n'}
    after = eff(passwordauthentication="no")
    if usable:
        assert lockout(eff(), after, files=files, address=address) == ([22], [22])
    else:
        with pytest.raises(sshd_lockout.Refused) as exc:
            lockout(eff(), after, files=files, address=address)
        assert exc.value.code == "no_usable_key" and f'from="{pattern}"' in exc.value.msg


def test_key_options_split_at_commas_outside_quotes():
    text = 'restrict,FROM="198.18.0.0/15,!198.18.0.9",command="echo \\"a,b\\"",no-pty'
    assert sshd_keys.key_options(text) == [("restrict", None), ("from", "198.18.0.0/15,!198.18.0.9"),
                                           ("command", 'echo "a,b"'), ("no-pty", None)]


def test_two_from_options_make_the_key_unusable():
    assert "more than one from=" in sshd_keys.from_problem('from="*",from="*"', "198.18.0.5")
