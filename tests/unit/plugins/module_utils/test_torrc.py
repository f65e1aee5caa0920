# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""torrc parsing and option-by-option edits."""

import shutil
import subprocess

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import torrc

SAMPLE = """## comment at the top
Nickname  oldname   # trailing comment
ORPort 9001
# ExitPolicy accept *:80   (commented out, must stay)
ExitPolicy accept *:443
SocksPort 0
exitpolicy reject *:*
MyFamily $AAAA,\\
 $BBBB
"""


def text_after(lines):
    return torrc.render(lines)


def test_parse_reads_keys_values_comments_and_continuations():
    lines = torrc.parse(SAMPLE)
    assert [line.key for line in lines] == [
        None, "Nickname", "ORPort", None, "ExitPolicy", "SocksPort", "exitpolicy", "MyFamily"]
    assert torrc.get_values(lines, "nickname") == ["oldname"]
    assert torrc.get_values(lines, "ExitPolicy") == ["accept *:443", "reject *:*"]
    assert torrc.get_values(lines, "MyFamily") == ["$AAAA, $BBBB"]
    assert torrc.render(lines) == SAMPLE  # unchanged round trip, byte for byte


def test_set_same_values_changes_nothing():
    lines = torrc.parse(SAMPLE)
    assert text_after(torrc.set_option(lines, "EXITPOLICY", ["accept *:443", "reject *:*"])) == SAMPLE


def test_set_repeated_option_replaces_all_lines_at_the_first_place():
    lines = torrc.set_option(torrc.parse(SAMPLE), "ExitPolicy",
                             ["reject 198.18.0.0/24:25", "accept *:443", "reject *:*"])
    out = text_after(lines).splitlines()
    assert out[4:7] == ["ExitPolicy reject 198.18.0.0/24:25", "ExitPolicy accept *:443", "ExitPolicy reject *:*"]
    assert "exitpolicy reject *:*" not in out
    assert "# ExitPolicy accept *:80   (commented out, must stay)" in out
    assert out[7] == "SocksPort 0"


def test_new_option_is_appended_and_include_goes_before_the_first_option():
    lines = torrc.set_option(torrc.parse(SAMPLE), "ContactInfo", ["email:ops[]example.org ciissversion:2"])
    lines = torrc.set_option(lines, "%include", ["/etc/tor/torrc.d/"])
    out = text_after(lines).splitlines()
    assert out[0] == "## comment at the top"
    assert out[1] == "%include /etc/tor/torrc.d/"
    assert out[-1] == "ContactInfo email:ops[]example.org ciissversion:2"


def test_remove_all_or_some_values():
    lines = torrc.parse(SAMPLE)
    assert torrc.get_values(torrc.remove_values(lines, "exitpolicy"), "ExitPolicy") == []
    some = torrc.remove_values(lines, "ExitPolicy", ["reject  *:*"])
    assert torrc.get_values(some, "ExitPolicy") == ["accept *:443"]
    assert torrc.set_option(lines, "SocksPort", []) and \
        torrc.get_values(torrc.set_option(lines, "SocksPort", []), "SocksPort") == []


def test_purge_keeps_comments_and_named_options_only():
    out = text_after(torrc.purge(torrc.parse(SAMPLE), ["ORPort", "exitpolicy"])).splitlines()
    assert out == ["## comment at the top", "ORPort 9001", "# ExitPolicy accept *:80   (commented out, must stay)",
                   "ExitPolicy accept *:443", "exitpolicy reject *:*"]


@pytest.mark.parametrize("option,value,fragment", [
    ("Nickname", "a\nb", "several lines"),
    ("ContactInfo", "me #not a comment", "comment"),
])
def test_bad_values_are_refused_naming_option_and_value(option, value, fragment):
    with pytest.raises(torrc.TorrcError) as err:
        torrc.set_option([], option, [value])
    assert option in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("option", ["", "Exit Policy", "9Port", "Nick-name"])
def test_bad_option_names_are_refused(option):
    with pytest.raises(torrc.TorrcError, match="not a torrc keyword"):
        torrc.check_option(option)


def test_verify_reports_tor_warnings_without_timestamps():
    def fake_run(cmd, **kwargs):
        assert cmd == ["tor", "--defaults-torrc", "/d", "--verify-config", "-f", "/x"]
        out = ("Nov 23 12:47:45.448 [notice] Read configuration file \"/x\".\n"
               "Nov 23 12:47:45.448 [warn] Failed to parse/validate config: Unknown option 'Bogus'.  Failing.\n"
               "Nov 23 12:47:45.448 [err] Reading config failed--see warnings above.\n")
        return subprocess.CompletedProcess(cmd, 1, stdout=out)
    ok, msg = torrc.verify("/x", "tor", "/d", run=fake_run)
    assert not ok
    assert msg == ("Failed to parse/validate config: Unknown option 'Bogus'.  Failing.; "
                   "Reading config failed--see warnings above.")


@pytest.mark.skipif(not shutil.which("tor"), reason="tor is not installed here")
def test_verify_with_the_real_tor(tmp_path):
    good = tmp_path / "good"
    good.write_text(text_after(torrc.set_option([], "ExitPolicy", ["reject 198.18.0.0/24:22", "accept *:443"])))
    assert torrc.verify(str(good))[0] is True
    bad = tmp_path / "bad"
    bad.write_text("ExitPolicy rejekt *:22\n")
    ok, msg = torrc.verify(str(bad))
    assert not ok and "rejekt" in msg
