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
