# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of sshd_render: the managed file, the block, the candidate main file."""

from __future__ import annotations

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_render


def test_render_joins_lists_per_keyword():
    text = sshd_render.render({"Port": [22, 2222], "Ciphers": ["a", "b"], "AllowUsers": ["op", "ops"],
                               "PasswordAuthentication": False, "X11Forwarding": None}, comment="hi")
    assert text.splitlines() == [sshd_render.HEADER, "# hi", "Port 22", "Port 2222", "Ciphers a,b",
                                 "AllowUsers op ops", "PasswordAuthentication no"]


@pytest.mark.parametrize("settings", [{"Match": "User x"}, {"Bad Key": "1"}, {"Banner": "a\nPort 1"}])
def test_render_rejects_bad_input_naming_it(settings):
    with pytest.raises(sshd_render.SshdConfigError, match="settings"):
        sshd_render.render(settings)


def test_block_replaces_previous_block_at_the_top():
    once = sshd_render.with_block("Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n", "Port 22\n")
    twice = sshd_render.with_block(once, "Port 2222\n")
    assert twice.splitlines() == [sshd_render.BLOCK_BEGIN, "Port 2222", sshd_render.BLOCK_END,
                                  "Include /etc/ssh/sshd_config.d/*.conf", "UsePAM yes"]


def test_candidate_main_puts_candidate_where_the_dropin_sorts():
    main = "  Include sshd_config.d/*.conf\nUsePAM yes\n"
    path = "/etc/ssh/sshd_config.d/00-x.conf"
    existing = ["/etc/ssh/sshd_config.d/50-cloud.conf", path]
    out = sshd_render.candidate_main(main, "/etc/ssh", path, "/tmp/c/00-x.conf", globber=lambda p: list(existing))
    assert out.splitlines()[0] == "  Include /tmp/c/00-x.conf /etc/ssh/sshd_config.d/50-cloud.conf"
    # A drop-in that does not exist yet still takes its place.
    out = sshd_render.candidate_main(main, "/etc/ssh", path, "/tmp/c/00-x.conf", globber=lambda p: [])
    assert out.splitlines()[0] == "  Include /tmp/c/00-x.conf"
    assert sshd_render.covered_by_include(main, "/etc/ssh", path)
    assert not sshd_render.covered_by_include("UsePAM yes\n", "/etc/ssh", path)
