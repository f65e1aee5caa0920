# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_match: sshd's match_pattern, addr_match_list, match_host_and_ip."""

from __future__ import annotations

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_match


@pytest.mark.parametrize("text, pattern, hit", [
    ("op", "o?", True), ("op", "*", True), ("op", "o[p]", False), ("o[p]", "o[p]", True), ("a.b", "a?b", True),
    ("ops", "o?", False), ("", "*", True),
])
def test_match_pattern_has_only_star_and_question_mark(text, pattern, hit):
    assert sshd_match.match_pattern(text, pattern) is hit


@pytest.mark.parametrize("patterns, result", [
    ("198.18.0.0/15", 1), ("192.0.2.0/24", 0), ("!198.18.0.5", -1), ("198.18.0.0/15,!198.18.0.0/24", -1),
    ("198.18.0.5/15", -2), ("198.18.0.0/33", -2), ("198.18.0.0/x", 0), ("198.*", 1), ("a,,b", -2),
    ("::/0", 0), ("0.0.0.0/0", 1),
])
def test_addr_match_list(patterns, result):
    assert sshd_match.addr_match_list("198.18.0.5", patterns) == result


@pytest.mark.parametrize("host, patterns, result", [
    ("laptop.example.org", "*.example.org", 1),
    ("laptop.example.org", "*.example.org,!laptop.*", 0),
    ("LAPTOP.example.org", "laptop.example.org", 1),
    ("laptop.example.org", "198.18.0.0/15", 1),
    ("laptop.example.org", "198.18.0.5/15", -1),
])
def test_match_host_and_ip(host, patterns, result):
    assert sshd_match.match_host_and_ip(host, "198.18.0.5", patterns) == result
