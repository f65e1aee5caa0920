# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_effective: reading sshd -T."""

from __future__ import annotations

from sshd_samples import SSHD_T, eff

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_effective


def test_parse_effective_keeps_repeated_keywords_in_order():
    parsed = sshd_effective.parse_effective(SSHD_T)
    assert parsed["listenaddress"] == ["[::]:22", "0.0.0.0:22"]
    assert parsed["acceptenv"] == ["LANG", "LC_*"]
    assert sshd_effective.words(parsed, "authorizedkeysfile") == [".ssh/authorized_keys", ".ssh/authorized_keys2"]


def test_listen_ports_from_listenaddress_then_port():
    assert sshd_effective.listen_ports(eff(listenaddress=["0.0.0.0:22", "[::]:2222"])) == {22, 2222}
    assert sshd_effective.listen_ports({"port": ["22", "2222"]}) == {2222, 22}


def test_effective_diff_lists_only_changed_keys():
    diff = sshd_effective.effective_diff(eff(), eff(passwordauthentication="no"))
    assert diff == {"passwordauthentication": {"before": ["yes"], "after": ["no"]}}
    assert sshd_effective.effective_diff(eff(), eff()) == {}
