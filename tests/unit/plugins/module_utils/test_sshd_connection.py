# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_connection: SSH_CONNECTION discovery."""

from __future__ import annotations

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_connection


def test_ssh_connection_from_an_ancestor_when_sudo_dropped_it():
    parents = {500: 400, 400: 300, 300: 1}
    environs = {400: {"SUDO_USER": "op"}, 300: {"SSH_CONNECTION": "198.18.0.5 50000 198.18.0.1 2222"}}
    value = sshd_connection.find_ssh_connection({}, lambda pid: environs.get(pid, {}), parents.get, 500)
    assert sshd_connection.parse_ssh_connection(value) == ("198.18.0.5", 2222)
    assert sshd_connection.find_ssh_connection({}, lambda pid: {}, lambda pid: pid + 1, 2, limit=5) is None
    assert sshd_connection.parse_ssh_connection(None) == (None, None)


def test_server_address_is_the_third_field():
    assert sshd_connection.server_address_of("2001:db8::5 50000 2001:db8::1 22") == "2001:db8::1"
    assert sshd_connection.server_address_of("garbage") is None
    assert sshd_connection.server_address_of(None) is None
