# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exit policy presets and validation of extra entries."""

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import exit_policy as ep

# tor's ReducedExitPolicy as the issue lists it (tor before 0.4.9.4-rc), typed
# out independently of the module so that a typo in either one shows up.
ISSUE_LIST = """20-23, 43, 53, 79-81, 88, 110, 143, 194, 220, 389, 443, 464, 465, 531,
543-544, 554, 563, 587, 636, 706, 749, 873, 902-904, 981, 989-995, 1194, 1220, 1293,
1500, 1533, 1677, 1723, 1755, 1863, 2082-2083, 2086-2087, 2095-2096, 2102-2104, 3128,
3389, 3690, 4321, 4643, 5050, 5190, 5222-5223, 5228, 5900, 6660-6669, 6679, 6697, 8000,
8008, 8074, 8080, 8082, 8087-8088, 8232-8233, 8332-8333, 8443, 8888, 9418, 9999, 10000,
11371, 19294, 19638, 50002, 64738"""
# tor 0.4.9.4-rc added the Monero ports (ticket 41168); Debian 12 and 13 ship 0.4.9.
MONERO = {18080, 18081, 18089}


def ports_of(text):
    ports = set()
    for item in text.replace("\n", " ").split(","):
        low, _sep, high = item.strip().partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def test_reduced_preset_equals_the_issue_list_port_for_port_before_0_4_9_4():
    policy = ep.preset_policy("reduced", (0, 4, 8, 14))
    assert policy[-1] == "reject *:*"
    assert all(e.startswith("accept *:") for e in policy[:-1])
    assert ep.expand_ports(policy) == ports_of(ISSUE_LIST)
    assert len(policy) - 1 == len(ISSUE_LIST.split(","))  # same entries, not only same ports


def test_reduced_preset_on_tor_0_4_9_adds_exactly_the_monero_ports():
    policy = ep.preset_policy("reduced", (0, 4, 9, 11))
    assert ep.expand_ports(policy) == ports_of(ISSUE_LIST) | MONERO
    assert ep.expand_ports(ep.preset_policy("reduced", (0, 4, 9, 4))) == ports_of(ISSUE_LIST) | MONERO
    assert ep.expand_ports(ep.preset_policy("reduced", (0, 4, 9, 3))) == ports_of(ISSUE_LIST)


def test_reduced_entries_are_in_port_order():
    starts = [int(e.split(":")[1].split("-")[0]) for e in ep.preset_policy("reduced")[:-1]]
    assert starts == sorted(starts)


def test_other_presets():
    assert ep.expand_ports(ep.preset_policy("web")) == {80, 443}
    assert ep.preset_policy("none") == ["reject *:*"]
    default = ep.preset_policy("default")
    assert default[-1] == "accept *:*" and "reject *:25" in default
    with pytest.raises(ep.ExitPolicyError, match="'wide'"):
        ep.preset_policy("wide")


@pytest.mark.parametrize("given,expected", [
    ("198.18.0.0/24:25", "198.18.0.0/24:25"),
    ("198.18.0.7/32:1-1024", "198.18.0.7:1-1024"),
    ("198.18.0.7:*", "198.18.0.7:*"),
    ("[2001:db8::]/32:*", "[2001:db8::]/32:*"),
    ("[2001:DB8::1]:443", "[2001:db8::1]:443"),
    ("*:6667", "*:6667"),
    ("*6:25", "*6:25"),
    ("private:*", "private:*"),
    (" 198.18.0.0/15:80-80 ", "198.18.0.0/15:80"),
])
def test_valid_targets_are_normalized(given, expected):
    assert ep.normalize_target(given) == expected


@pytest.mark.parametrize("given,fragment", [
    ("198.18.0.1/24:25", "host bits"),
    ("198.18.0.0/33:25", "198.18.0.0/33"),
    ("198.18.0.0/24:0", "outside"),
    ("198.18.0.0/24:70000", "outside"),
    ("198.18.0.0/24:90-80", "reversed"),
    ("198.18.0.0/24", "PORT"),
    ("2001:db8::/32:25", "brackets"),
    ("[2001:db8::/32:25", "unterminated"),
    ("accept *:25", "without accept/reject"),
    ("*:25,*:80", "commas"),
    ("example.org:80", "example.org"),
    ("", "empty"),
])
def test_invalid_targets_name_the_entry(given, fragment):
    with pytest.raises(ep.ExitPolicyError) as err:
        ep.normalize_target(given)
    assert fragment in str(err.value)


def test_build_reduced_with_option_writes_the_option_and_extras_first():
    options, effective = ep.build("reduced", accept=["198.18.9.0/24:8443"], reject=["198.18.1.0/24:22"],
                                  tor_version=(0, 4, 9, 11), reduced_option=True)
    opts = dict(options)
    assert opts["ReducedExitPolicy"] == ["1"]
    assert opts["ExitPolicy"] == ["reject 198.18.1.0/24:22", "accept 198.18.9.0/24:8443"]
    assert opts["IPv6Exit"] == ["1"] and opts["ExitRelay"] == ["1"]
    assert opts["ExitPolicyRejectPrivate"] == ["1"] and opts["ExitPolicyRejectLocalInterfaces"] == ["1"]
    assert effective[:3] == ["reject private:*", "reject 198.18.1.0/24:22", "accept 198.18.9.0/24:8443"]
    assert effective[3:] == ep.preset_policy("reduced", (0, 4, 9, 11))


def test_build_reduced_without_option_writes_explicit_lines():
    options, effective = ep.build("reduced", tor_version=(0, 3, 2, 10), reduced_option=False)
    opts = dict(options)
    assert opts["ReducedExitPolicy"] == []
    assert opts["ExitPolicy"] == ep.preset_policy("reduced", (0, 3, 2, 10))
    assert effective == ["reject private:*"] + opts["ExitPolicy"]


def test_build_default_and_none():
    opts, effective = ep.build("default", reject=["*:25"], ipv6_exit=False)
    opts = dict(opts)
    assert opts["ExitPolicy"] == ["reject *:25"] and opts["IPv6Exit"] == ["0"]
    assert effective[-1] == "accept *:*"
    opts, effective = ep.build("none", reduced_option=True)
    opts = dict(opts)
    assert opts["ExitRelay"] == ["0"] and opts["ExitPolicy"] == ["reject *:*"] and opts["IPv6Exit"] == ["0"]
    assert opts["ReducedExitPolicy"] == [] and effective == ["reject *:*"]
    with pytest.raises(ep.ExitPolicyError, match="accept"):
        ep.build("none", accept=["*:80"])


def test_parse_tor_version():
    assert ep.parse_tor_version("Tor version 0.4.9.11.\nThis build ...") == (0, 4, 9, 11)
    assert ep.parse_tor_version("Tor version 0.4.9.4-rc (git-abc).") == (0, 4, 9, 4)
    assert ep.parse_tor_version("nothing") is None
