# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files that hold prefixes (bans, opt-outs, allow and deny lists) are 0640 or
tighter: the guard sync's ExitPolicy rejects file, and the ufw rules files the
egress guard splices its block into. (The tor_exit molecule scenario checks the
deployed modes and that both tor users can read the rejects file.)"""
import grp
import os
import stat
import types

import pytest
from role_files import load_role_file

from ansible_collections.torexit.hardening.plugins.module_utils import guard_apply


def load_sync():
    return load_role_file("tor_exit", "torexit_exitpolicy_sync.py", "exitpolicy_sync_modes")


def test_the_sync_writes_its_rejects_file_0640(tmp_path):
    out = tmp_path / "10-torexit-guard.conf"
    out.write_text("old\n")
    os.chmod(out, 0o644)
    load_sync().write_atomic(str(out), "ExitPolicy reject 198.18.7.0/24:22\n")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert out.read_text() == "ExitPolicy reject 198.18.7.0/24:22\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_in_a_setgid_directory_the_rejects_file_gets_the_directorys_group(tmp_path):
    """The tor_exit role makes the include directory setgid debian-tor, so tor can read the file."""
    group = grp.getgrnam("nogroup").gr_gid
    directory = tmp_path / "torrc.d"
    directory.mkdir()
    os.chown(directory, 0, group)
    os.chmod(directory, 0o2755)
    out = directory / "10-torexit-guard.conf"
    load_sync().write_atomic(str(out), "ExitPolicy reject 198.18.7.0/24:22\n")
    st = os.stat(out)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, group)


class FakeModule:
    @staticmethod
    def atomic_move(src, dest):
        os.rename(src, dest)


@pytest.mark.parametrize("before, after", [(0o644, 0o640), (0o640, 0o640), (0o600, 0o600), (0o664, 0o640)])
def test_ufw_rules_files_holding_our_block_are_never_world_readable(tmp_path, before, after):
    rules = tmp_path / "before.rules"
    rules.write_text("*filter\nCOMMIT\n")
    os.chmod(rules, before)
    plan = types.SimpleNamespace(edited={str(rules): ("*filter\nCOMMIT\n", "*filter\n# ours\nCOMMIT\n")},
                                 write=(), remove=(), desired=types.SimpleNamespace(files={}))
    undo = []
    guard_apply._write_files(FakeModule(), types.SimpleNamespace(systemd=False), plan, undo)
    assert stat.S_IMODE(os.stat(rules).st_mode) == after
    assert rules.read_text() == "*filter\n# ours\nCOMMIT\n"
