"""The egress guard's policy model: defaults, scaling and every validation error."""
import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp


def build(**params):
    return gp.build_policy(params, user_exists=lambda name: name in ("debian-tor", "root"))


def test_defaults_are_the_medium_profile():
    p = build()
    assert p["profile"] == "medium"
    assert p["mode"] == "enforce" and p["owner"] == "debian-tor" and p["reject_with"] == "tcp-reset"
    assert p["flood"] == {"concurrent": 24, "rate": 25, "burst": 50, "ban_time": 300}
    assert p["horizontal_scan"]["hosts_strict"] == [16, 48]
    assert p["horizontal_scan"]["prefixes_v4"] == [24, 16]
    assert 22 in p["strict_ports"] and 443 in p["web_ports"]


@pytest.mark.parametrize("mbit,profile", [(10, "small"), (20, "small"), (100, "medium"),
                                          (1000, "large"), (5000, "xlarge")])
def test_bandwidth_picks_profile(mbit, profile):
    assert build(bandwidth_mbit=mbit)["profile"] == profile


def test_large_profile_scales_flood_and_web_but_not_strict():
    medium, large = build(profile="medium"), build(profile="large")
    assert large["flood"]["concurrent"] == 4 * medium["flood"]["concurrent"]
    assert large["flood"]["rate"] == 4 * medium["flood"]["rate"]
    assert large["horizontal_scan"]["hosts_web"][1] == 4 * medium["horizontal_scan"]["hosts_web"][1]
    assert large["horizontal_scan"]["hosts_default"][0] == 2 * medium["horizontal_scan"]["hosts_default"][0]
    assert large["horizontal_scan"]["hosts_strict"] == medium["horizontal_scan"]["hosts_strict"]
    assert large["set_size"] == 4 * medium["set_size"]


def test_explicit_values_override_the_profile():
    p = build(profile="small", flood={"concurrent": 99, "rate": None, "burst": None, "ban_time": None})
    assert p["flood"]["concurrent"] == 99
    assert p["flood"]["rate"] == gp.profile_defaults("small")["flood"]["rate"]


def test_deny_entries_are_parsed_with_ports():
    p = build(deny=["198.51.100.0/24", "198.51.100.7:22", "[2001:db8::/32]:20-23", "2001:db8:1::/48"])
    assert {"net": "198.51.100.0/24", "version": 4, "ports": None} in p["deny"]
    assert {"net": "198.51.100.7/32", "version": 4, "ports": (22, 22)} in p["deny"]
    assert {"net": "2001:db8::/32", "version": 6, "ports": (20, 23)} in p["deny"]
    assert {"net": "2001:db8:1::/48", "version": 6, "ports": None} in p["deny"]


def test_allow_splits_families():
    p = build(allow=["198.51.100.0/28", "2001:db8::/48"])
    assert p["allow_v4"] == ["198.51.100.0/28"] and p["allow_v6"] == ["2001:db8::/48"]


@pytest.mark.parametrize("params,message", [
    ({"allow": ["198.51.100.0/33"]}, "allow[0]: '198.51.100.0/33' has a prefix length out of range 0-32"),
    ({"allow": ["not-an-address"]}, "allow[0]: 'not-an-address' is not a valid address or CIDR network"),
    ({"allow": ["198.51.100.1/24"]}, "allow[0]: '198.51.100.1/24' has host bits set; did you mean 198.51.100.0/24?"),
    ({"deny": ["2001:db8::/129"]}, "deny[0]: '2001:db8::/129' has a prefix length out of range 0-128"),
    ({"deny": ["198.51.100.0/24:0"]}, "deny[0]: '0' is not a port or port range within 1-65535"),
    ({"deny": ["198.51.100.0/24:30-20"]}, "deny[0]: '30-20' is not a port or port range within 1-65535"),
    ({"deny": ["198.51.100.0/24:ssh"]}, "deny[0]: 'ssh' is not a port or port range"),
    ({"deny": ["[2001:db8::/32:22"]}, "deny[0]: '[2001:db8::/32:22' lacks the closing ']'"),
    ({"flood": {"rate": 10, "burst": 5}}, "flood.burst: 5 is below flood.rate (10)"),
    ({"flood": {"concurrent": 0}}, "flood.concurrent: 0 must be a positive integer"),
    ({"owner": "nosuchuser"}, "owner: user 'nosuchuser' does not exist on this host"),
    ({"horizontal_scan": {"prefixes_v4": [24, 40]}}, "horizontal_scan.prefixes_v4: prefix length 40 is out of range 8-32"),
    ({"horizontal_scan": {"prefixes_v6": [48, 4]}}, "horizontal_scan.prefixes_v6: prefix length 4 is out of range 8-128"),
    ({"horizontal_scan": {"prefixes_v4": [16, 24]}}, "must go from the narrowest prefix to the widest"),
    ({"horizontal_scan": {"hosts_web": [1, 2, 3]}}, "horizontal_scan.hosts_web: [1, 2, 3] needs one threshold per prefix level"),
    ({"horizontal_scan": {"hosts_strict": [-1, 5]}}, "horizontal_scan.hosts_strict: -1 must be a non-negative integer"),
    ({"strict_ports": [22, 70000]}, "strict_ports: port 70000 is out of range 1-65535"),
    ({"strict_ports": [22, 443]}, "strict_ports and web_ports: port(s) [443] are in both"),
    ({"profile": "huge"}, "profile: 'huge' is not one of small, medium, large, xlarge"),
    ({"profile": "small", "bandwidth_mbit": 10}, "profile and bandwidth_mbit: give one, not both"),
    ({"bandwidth_mbit": 0}, "bandwidth_mbit: 0 must be a positive integer"),
    ({"mode": "block"}, "mode: 'block' is not one of enforce, monitor, exitpolicy"),
    ({"reject_with": "icmp"}, "reject_with: 'icmp' is not one of tcp-reset, icmp-admin-prohibited, drop"),
    ({"scan_window": 0}, "scan_window: 0 must be a positive integer"),
    # bounds: values beyond what the kernel holds used to wrap around or fail inside nft
    ({"set_size": 99999999999}, "set_size: 99999999999 is out of range 1024-16777216"),
    ({"set_size": 1}, "set_size: 1 is out of range 1024-16777216"),
    ({"flood": {"burst": 4294967296}}, "flood.burst: 4294967296 is out of range 1-1000000"),
    ({"flood": {"rate": 100001, "burst": 200000}}, "flood.rate: 100001 is out of range 1-100000"),
    ({"flood": {"concurrent": 65536}}, "flood.concurrent: 65536 is out of range 1-65535"),
    ({"flood": {"ban_time": 2147484}}, "flood.ban_time: 2147484 is out of range 1-2147483"),
    ({"ban_time": 2000000000}, "ban_time: 2000000000 is out of range 1-2147483"),
    ({"scan_window": 86401}, "scan_window: 86401 is out of range 1-86400"),
    ({"bandwidth_mbit": 1000001}, "bandwidth_mbit: 1000001 is out of range 1-1000000"),
    ({"horizontal_scan": {"hosts_web": [0, 1000001]}}, "horizontal_scan.hosts_web: 1000001 is out of range 0-1000000"),
    ({"vertical_scan": {"ports": 65536}}, "vertical_scan.ports: 65536 is out of range 0-65535"),
    ({"allow": ["198.51.100.0/24"], "deny": ["198.51.100.7"]}, "deny: 198.51.100.7/32 overlaps allow entry 198.51.100.0/24"),
])
def test_bad_input_names_option_and_value(params, message):
    with pytest.raises(gp.PolicyError) as err:
        build(**params)
    assert message in str(err.value)


def test_owner_any_needs_no_user():
    assert build(owner="any")["owner"] == "any"


def test_digest_changes_with_any_threshold():
    a, b = build(), build(flood={"concurrent": 25})
    assert gp.policy_digest(a) == gp.policy_digest(build())
    assert gp.policy_digest(a) != gp.policy_digest(b)


def test_issue15_detector_defaults_and_scaling():
    medium, large, small = build(), build(profile="large"), build(profile="small")
    assert medium["login"] == {"rate": 120, "burst": 8, "ban_time": 600}
    # many users of a big exit share one forge: square root, never below medium
    assert large["login"]["rate"] == 240 and large["login"]["burst"] == 16
    assert small["login"] == medium["login"]
    # the destination's alarm threshold does not grow with the exit
    assert large["prefix_sweep"] == medium["prefix_sweep"]
    assert medium["prefix_sweep"]["prefixes_v4"] == [22, 16]
    # burst + 4 minutes of refill stays within 150 new connections into a /22
    ps = medium["prefix_sweep"]
    assert ps["burst"][0] == 0  # the /22 level is off: the /16 budget bounds every /22 in it
    assert ps["burst"][1] + 4 * ps["rate"][1] <= 150
    assert large["wide_scan"]["rate"] == 4 * medium["wide_scan"]["rate"]
    assert large["wide_scan"]["pass_one_in"] == medium["wide_scan"]["pass_one_in"]
    assert build(login={"rate": 30})["login"] == {"rate": 30, "burst": 8, "ban_time": 600}


@pytest.mark.parametrize("params,message", [
    ({"login": {"rate": -1}}, "login.rate: -1 must be an integer within 0-60000"),
    ({"login": {"burst": 0}}, "login.burst: 0 must be an integer within 1-10000"),
    ({"login": {"ban_time": True}}, "login.ban_time: True must be an integer within 1-2147483"),
    ({"login": {"rates": 5}}, "login: unknown option(s) ['rates']; known: rate, burst, ban_time"),
    ({"login": 5}, "login: 5 must be a dictionary of rate, burst, ban_time"),
    ({"prefix_sweep": {"prefixes_v4": [22, 40]}}, "prefix_sweep.prefixes_v4: 40 must be an integer within 8-30"),
    ({"prefix_sweep": {"prefixes_v4": [16, 22]}}, "prefix_sweep.prefixes_v4: [16, 22] must go from the narrowest"),
    ({"prefix_sweep": {"burst": [48]}}, "prefix_sweep.burst: [48] needs one value per level of prefixes_v4 [22, 16]"),
    ({"prefix_sweep": {"burst": []}}, "prefix_sweep.burst: [] must be a non-empty list"),
    ({"prefix_sweep": {"rate": [0, 5]}}, "prefix_sweep.rate: 0 must be an integer within 1-60000"),
    ({"prefix_sweep": {"confirm_time": 5}}, "prefix_sweep.confirm_time: 5 must be an integer within 10-2147483"),
    ({"wide_scan": {"pass_one_in": 0}}, "wide_scan.pass_one_in: 0 must be an integer within 1-65536"),
    ({"wide_scan": {"rate": 100001}}, "wide_scan.rate: 100001 must be an integer within 0-100000"),
])
def test_issue15_bad_input_names_option_and_value(params, message):
    with pytest.raises(gp.PolicyError) as err:
        build(**params)
    assert message in str(err.value)
