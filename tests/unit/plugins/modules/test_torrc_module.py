# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""torrc module end to end (AnsibleModule, real file, real tor where installed):
a value tor would read as more than itself fails, naming option and value, and
the file stays byte for byte as it was."""
import json
import os
import shutil

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.torexit.hardening.plugins.modules import torrc as torrc_module

BEFORE = "# ours\nNickname relay1\nExitPolicy reject *:25\nExitPolicy accept *:80\n"
TOR = shutil.which("tor")


def run(capsys, **args):
    args.setdefault("verify", bool(TOR))
    with patch_module_args(args), pytest.raises(SystemExit):
        torrc_module.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def torrc_file(tmp_path):
    path = tmp_path / "torrc"
    path.write_text(BEFORE)
    os.chmod(path, 0o640)
    return path


@pytest.mark.parametrize("value", ["x \\", "x\\", "a\nExitPolicy accept *:25", "x \\\r", "a\x00b", "a#b",
                                   '"a\\nExitPolicy accept *:25"'])
@pytest.mark.parametrize("check_mode", [False, True])
def test_injecting_values_fail_and_leave_the_file_alone(capsys, torrc_file, value, check_mode):
    stat = os.stat(torrc_file)
    result = run(capsys, path=str(torrc_file), option="ContactInfo", value=value, _ansible_check_mode=check_mode)
    assert result.get("failed") is True and result["changed"] is False
    assert result["msg"].startswith("option ContactInfo: value %r " % value)
    assert torrc_file.read_text() == BEFORE
    assert os.stat(torrc_file).st_mtime_ns == stat.st_mtime_ns


def test_injection_through_the_options_dict_fails_too(capsys, torrc_file):
    result = run(capsys, path=str(torrc_file), options={"ContactInfo": "x \\", "Nickname": "relay2"})
    assert result.get("failed") is True and "option ContactInfo: value 'x \\\\'" in result["msg"]
    assert torrc_file.read_text() == BEFORE


def test_a_file_with_a_nul_byte_is_refused(capsys, torrc_file):
    torrc_file.write_bytes(b"Nickname relay1\nContactInfo a\x00b\nExitPolicy reject *:25\n")
    result = run(capsys, path=str(torrc_file), option="Nickname", value="relay2")
    assert result.get("failed") is True and "NUL byte" in result["msg"]
    assert torrc_file.read_bytes() == b"Nickname relay1\nContactInfo a\x00b\nExitPolicy reject *:25\n"


def test_a_literal_backslash_is_written_and_the_second_run_changes_nothing(capsys, torrc_file):
    first = run(capsys, path=str(torrc_file), option="ContactInfo", value="ops \\ example")
    assert first["changed"] is True and "failed" not in first
    assert torrc_file.read_text() == BEFORE + "ContactInfo ops \\ example\n"
    second = run(capsys, path=str(torrc_file), option="ContactInfo", value="ops \\ example")
    assert second["changed"] is False
