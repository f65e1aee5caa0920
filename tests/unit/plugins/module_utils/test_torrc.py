# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""torrc parsing and option-by-option edits."""

import random
import re
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


# One value per way tor's parser would read an unquoted value as something else.
BAD_VALUES = [
    ("ContactInfo", "x \\", "backslash"),                 # continuation: the next line joins the value
    ("ContactInfo", "x\\", "backslash"),
    ("ContactInfo", "x \\  \t", "backslash"),             # blanks hide it; tor trims them first
    ("Nickname", "a\nb", "newline"),
    ("ContactInfo", "a\nExitPolicy accept *:25", "newline"),
    ("ContactInfo", "x \\\r", "carriage return"),        # tor deletes CRs: becomes a continuation
    ("ContactInfo", "a\rb", "carriage return"),
    ("ContactInfo", "a\x00b", "NUL"),                    # tor stops reading the file there
    ("ContactInfo", "a\x0bb", "U+000B"),
    ("ContactInfo", "a\x0cb", "U+000C"),
    ("ContactInfo", "a\x1bb", "U+001B"),
    ("ContactInfo", "a\x85b", "U+0085"),
    ("ContactInfo", "a\u2028b", "U+2028"),
    ("ContactInfo", "me #not a comment", "comment"),
    ("ContactInfo", "url:https://example.org/#abuse", "comment"),   # '#' needs no blank before it
    ("ContactInfo", "#x", "comment"),
    ("ContactInfo", '"a\\nExitPolicy accept *:25"', "double quote"),  # a C string, escapes decoded
    ("ContactInfo", '  "x"', "double quote"),
    ("ExitPolicy", "reject *:25 \\", "backslash"),
    ("%include", "/etc/tor/torrc.d/ #x", "comment"),
]


@pytest.mark.parametrize("option,value,fragment", BAD_VALUES)
def test_bad_values_are_refused_naming_option_and_value(option, value, fragment):
    lines = torrc.parse(SAMPLE)
    with pytest.raises(torrc.TorrcError) as err:
        torrc.set_option(lines, option, ["ok", value])
    message = str(err.value)
    assert message.startswith(f"option {option}: value {value!r} ") and fragment in message
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert torrc.render(lines) == SAMPLE


@pytest.mark.parametrize("value,written", [
    ("  padded\t", "padded"),
    ("a\\b", "a\\b"),                  # a backslash inside is literal for tor
    ('say "hi"', 'say "hi"'),          # a quote that does not start the value is literal too
    ("a\\nb", "a\\nb"),
    ("Zoë  <ops[]example.org>", "Zoë <ops[]example.org>"),
    ("x \\ y", "x \\ y"),
])
def test_values_tor_reads_literally_are_written_as_given(value, written):
    lines = torrc.set_option([], "ContactInfo", [value])
    assert torrc.render(lines) == f"ContactInfo {written}\n"
    assert torrc.tor_lines(torrc.render(lines)) == [("ContactInfo", written)]


def test_parse_groups_lines_as_tor_does():
    text = ("ContactInfo a\\\n b # c\nExitPolicy reject *:25\nExitPolicy accept *:80\n"
            "Nickname x#y\r\n"
            'MyFamily "$A\\x41"  # quoted\n'
            "ORPort 9001 \\ \n"
            "SocksPort 0\n")
    lines = torrc.parse(text)
    assert torrc.render(lines) == text
    keys = [(line.key, line.tor_value) for line in lines if line.key]
    # inside a continuation a comment swallows its newline: the ExitPolicy line is part of ContactInfo
    assert keys == [("ContactInfo", "a b ExitPolicy reject *:25"), ("ExitPolicy", "accept *:80"),
                    ("Nickname", "x"), ("MyFamily", "$AA"), ("ORPort", "9001 \\"), ("SocksPort", "0")]
    assert keys == torrc.tor_lines(text)


def test_a_nul_byte_in_the_file_is_refused():
    with pytest.raises(torrc.TorrcError, match="line 2 holds a NUL byte"):
        torrc.parse("Nickname a\nContactInfo a\x00b\nExitPolicy reject *:25\n")


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


# --- the real tor reads what this module writes, and what the port says it reads ---

TOR = shutil.which("tor")
needs_tor = pytest.mark.skipif(not TOR, reason="tor is not installed here")
POLICY = ["reject *:25", "accept *:80"]
LOG_LINE = re.compile(r"^[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d\.\d{3} \[")


def tor_reads(tmp_path, text):
    """[(key, value)] of ContactInfo, ExitPolicy and Nickname as the real tor reads `text`
    (tor --dump-config), or None when tor refuses the file."""
    path = tmp_path / "torrc"
    path.write_bytes(text.encode("utf-8"))
    proc = subprocess.run([TOR, "--defaults-torrc", "/dev/null", "-f", str(path), "--dump-config", "short"],
                          capture_output=True, text=True, check=False, timeout=60, cwd="/")
    if proc.returncode != 0:
        return None
    out = []
    for row in proc.stdout.splitlines():
        if LOG_LINE.match(row):
            continue
        key, _sep, value = row.partition(" ")
        if key in ("ContactInfo", "ExitPolicy", "Nickname"):
            if value.startswith('"'):  # tor quotes values it cannot print plainly
                value = torrc.unescape(value, 0)[0].encode("latin-1").decode("utf-8")  # tor escapes bytes
            out.append((key, value))
    return out


def wanted(pairs):
    return [(k, v) for k, v in pairs if k in ("ContactInfo", "ExitPolicy", "Nickname")]


TRICKY_FILES = [
    "ContactInfo x \\\nExitPolicy reject *:25\nExitPolicy accept *:80\n",       # the reported injection
    "ContactInfo x \\\r\nExitPolicy reject *:25\nExitPolicy accept *:80\n",     # CRLF: still a continuation
    "ContactInfo x \\ \nExitPolicy reject *:25\n",                              # blank after it: no continuation
    "ContactInfo a#b\nExitPolicy reject *:25\n",
    "ContactInfo a\\\n b # c\nExitPolicy reject *:25\nExitPolicy accept *:80\n",
    "ContactInfo a\\\n# between\n b\nExitPolicy reject *:25\n",
    'ContactInfo "a\\nb\\x41\\101\\t"  # c\nExitPolicy reject *:25\n',
    'ContactInfo "a" b\nExitPolicy reject *:25\n',                             # excess data: refused
    'ContactInfo "a\\q"\n',                                                     # bad escape: refused
    "ContactInfo a\x00b\nExitPolicy reject *:25\nExitPolicy accept *:80\n",    # NUL ends the file
    "ContactInfo  a\\b  \t\x0c\nExitPolicy  reject *:25 \n",
    "ContactInfo\\\nvalue\nExitPolicy reject *:25\n",
    "  # comment\n\n\t ContactInfo x\nNickname n#c\n",
    "ContactInfo a\rb\nExitPolicy reject *:25\n",
]


@needs_tor
@pytest.mark.parametrize("text", TRICKY_FILES)
def test_the_port_reads_torrc_text_as_the_real_tor_does(tmp_path, text):
    try:
        ported = wanted(torrc.tor_lines(text))
    except torrc.TorrcError:
        ported = None
    assert ported == tor_reads(tmp_path, text)


@needs_tor
@pytest.mark.parametrize("option,value,_fragment",
                         [b for b in BAD_VALUES if b[0] == "ContactInfo" and not b[2].startswith("U+")])
def test_each_refused_value_would_have_been_misread_by_tor(tmp_path, option, value, _fragment):
    """Written unquoted with blanks trimmed, as the module wrote values before, tor
    reads another ContactInfo or other policy lines: the refusal is needed. (Other
    control characters tor would take literally; they are refused as unprintable.)"""
    naive = "ContactInfo " + value.strip(" \t") + "\n" + "".join(f"ExitPolicy {p}\n" for p in POLICY)
    intended = [("ContactInfo", value.strip(" \t"))] + [("ExitPolicy", p) for p in POLICY]
    assert tor_reads(tmp_path, naive) != intended


@needs_tor
@pytest.mark.parametrize("value", ["  padded\t", "a\\b", 'say "hi"', "a\\nb", "Zoë <ops[]example.org>", "x \\ y",
                                   "email:ops[]example.org url:https://example.org ciissversion:2"])
def test_the_module_output_is_read_by_the_real_tor_as_intended(tmp_path, value):
    lines = torrc.parse("# ours\nNickname oldname   # comment\nSocksPort 0\n")
    lines = torrc.set_option(lines, "ContactInfo", [value])
    lines = torrc.set_option(lines, "ExitPolicy", POLICY)
    expected = [("Nickname", "oldname"), ("ContactInfo", torrc.check_value("ContactInfo", value))]
    assert sorted(tor_reads(tmp_path, torrc.render(lines))) == sorted(expected + [("ExitPolicy", p) for p in POLICY])


def effective(pairs):
    """ContactInfo/Nickname (last one wins, empty resets) and ExitPolicy lines, as tor keeps them."""
    single, policy = {}, []
    for key, value in pairs:
        if key == "ExitPolicy" and value:
            policy.append(value)
        elif key in ("ContactInfo", "Nickname"):
            single[key] = value
    return sorted([(k, v) for k, v in single.items() if v] + [("ExitPolicy", p) for p in policy])


@needs_tor
def test_the_port_agrees_with_the_real_tor_on_random_text(tmp_path):
    """300 random files built from the characters tor's parser treats specially
    (seeded, about 2 s): wherever tor accepts the file, the port reads the same
    options, and parse() groups the lines the same way and renders them back."""
    rng = random.Random(17)
    atoms = [" ", "\t", "\n", "\\", "\\\n", "#", '"', "a", "b", "reject *:25", "\r", "\\n", "\\x41", "\\101",
             "\f", "ExitPolicy", "ContactInfo"]
    compared = 0
    for _round in range(300):
        text = "".join(rng.choice(["ContactInfo ", "Nickname ", "ExitPolicy "])
                       + "".join(rng.choice(atoms) for _n in range(rng.randint(0, 6))) + "\n"
                       for _line in range(rng.randint(1, 6)))
        theirs = tor_reads(tmp_path, text)
        if theirs is None:  # tor refused a value (a bad nickname or policy): nothing to compare
            continue
        compared += 1
        assert effective(torrc.tor_lines(text)) == sorted(theirs), repr(text)
        lines = torrc.parse(text)
        assert torrc.render(lines) == text
        assert [(line.key, line.tor_value) for line in lines if line.key] == torrc.tor_lines(text), repr(text)
    assert compared > 30
