# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_lockout: Allow/Deny lists and ports (refusals 2 and 3)."""

from __future__ import annotations

import pytest
from sshd_samples import eff, lockout

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_lockout

# ------------------------------------------------------ refusal 2: Allow/Deny lists


@pytest.mark.parametrize("after", [
    eff(allowusers="alice bob"),
    eff(allowgroups="admins"),
    eff(denyusers="o?"),
    eff(denygroups="op"),
    eff(allowusers="op@10.0.0.0/8"),
    # sshd: a negated entry that matches wins wherever it stands in the list.
    eff(allowusers="op@198.18.0.0/15,!198.18.0.5"),
    eff(allowusers="op@198.18.0.5/15"),  # host bits set: sshd rejects the list
    eff(allowusers="o[p]"),  # sshd patterns have no character classes
])
def test_refuses_lists_that_exclude_the_user(after):
    with pytest.raises(sshd_lockout.Refused) as exc:
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
    with pytest.raises(sshd_lockout.Refused, match="connecting_address"):
        lockout(eff(), eff(allowusers="op@198.18.0.0/15"), address=None)


# ------------------------------------------------------------- refusal 3: ports

def test_refuses_dropping_the_connected_port():
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(listenaddress=["0.0.0.0:2222"]))
    assert exc.value.code == "port_dropped"


def test_refuses_a_new_port_the_firewall_blocks_and_asks_only_for_new_ports():
    asked = []

    def firewall(port):
        asked.append(port)
        return "closed" if port == 2222 else None

    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(listenaddress=["0.0.0.0:22", "0.0.0.0:2222"]), firewall=firewall)
    assert exc.value.code == "port_closed" and asked == [2222]


def test_port_move_second_step_is_allowed_once_connected_on_the_new_port():
    before = eff(listenaddress=["0.0.0.0:22", "0.0.0.0:2222"])
    assert lockout(before, eff(listenaddress=["0.0.0.0:2222"]), port=2222) == ([22, 2222], [2222])


# ---------------------------------------------------- refusal 4: sessions, commands

def test_refuses_max_sessions_zero():
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(maxsessions="0"))
    assert exc.value.code == "no_sessions" and "MaxSessions 0" in exc.value.msg
    assert lockout(eff(), eff(maxsessions="1")) == ([22], [22])


@pytest.mark.parametrize("command", ["/usr/bin/false", "internal-sftp", "/bin/echo maintenance"])
def test_refuses_a_forced_command_for_the_connecting_user(command):
    # sshd -T -C user=... applies Match blocks, so a ForceCommand inside a Match that
    # matches the user arrives here like a global one.
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(forcecommand=command))
    assert exc.value.code == "forced_command" and f"ForceCommand {command}" in exc.value.msg


def test_forced_command_already_in_place_or_none_is_not_refused():
    wrapper = eff(forcecommand="/usr/local/bin/audit-wrapper")
    assert lockout(wrapper, wrapper) == ([22], [22])
    assert lockout(wrapper, eff()) == ([22], [22])
    assert lockout(eff(), eff(forcecommand="none")) == ([22], [22])


# ---------------------------------------------- refusal 5: listen address and family

@pytest.mark.parametrize("family, listen, address", [
    ("inet", ["0.0.0.0:22"], "2001:db8::5"),
    ("inet6", ["[::]:22"], "198.18.0.5"),
])
def test_refuses_an_address_family_without_the_connections_family(family, listen, address):
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(addressfamily=family, listenaddress=listen), address=address)
    assert exc.value.code == "address_family" and f"AddressFamily {family}" in exc.value.msg
    assert address in exc.value.msg


def test_address_family_of_the_connection_is_kept():
    assert lockout(eff(), eff(addressfamily="inet", listenaddress=["0.0.0.0:22"]), address="198.18.0.5") == ([22], [22])
    assert lockout(eff(), eff(addressfamily="inet6", listenaddress=["[::]:22"]), address="2001:db8::5") == ([22], [22])


@pytest.mark.parametrize("listen, server", [
    (["192.0.2.1:22"], "192.0.2.7"),
    (["192.0.2.7:2222", "192.0.2.1:22"], "192.0.2.7"),
    (["[2001:db8::1]:22"], "2001:db8::2"),
    (["[::]:22"], "192.0.2.7"),
])
def test_refuses_a_listen_address_that_drops_the_connected_address(listen, server):
    with pytest.raises(sshd_lockout.Refused) as exc:
        lockout(eff(), eff(listenaddress=listen), server_address=server)
    assert exc.value.code == "address_dropped"
    assert "ListenAddress " + " ".join(listen) in exc.value.msg and f"{server} port 22" in exc.value.msg


@pytest.mark.parametrize("listen, server", [
    (["192.0.2.7:22"], "192.0.2.7"),
    (["0.0.0.0:22"], "192.0.2.7"),
    (["[2001:db8::1]:22", "192.0.2.1:22"], "2001:db8::1"),
    (["[::]:22"], "2001:db8::1"),
    (["192.0.2.1:22"], None),
])
def test_listen_address_keeping_the_connected_address_is_allowed(listen, server):
    assert lockout(eff(), eff(listenaddress=listen), server_address=server) == ([22], [22])
