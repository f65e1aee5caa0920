#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: egress_guard
short_description: Stop scans and floods from a Tor exit in the kernel, not ordinary use
version_added: 0.1.0
description:
  - Installs an egress guard for new outbound TCP connections of one user (the
    tor daemon's by default). It detects floods of one destination, horizontal
    scans (many hosts of one prefix on one port) and vertical scans (many ports
    of one host), and bans the pattern for a while. Uploads, torrent seeding and
    browsing of sites behind one CDN stay untouched.
  - All state lives in the kernel in the table C(inet torexit_guard) (nftables
    sets and meters with timeouts and a maximum size), loaded atomically with
    C(nft -f). Other tables (ufw, iptables-nft, Docker) are never touched and
    O(state=absent) removes only this table and the files this module wrote.
  - Re-applying unchanged options changes nothing and keeps current bans.
    Changing options keeps current bans and opt-outs with the time they have left;
    a ban or opt-out set whose size and timeout stay is not touched at all, so
    entries added while the new rules load are kept. When O(set_size) drops below
    the number of active bans, those with the most time left are kept (RV(bans_dropped)).
  - Runs of this module on one host take turns (lock C(/run/lock/torexit-egress-guard.lock));
    a run that cannot get the lock within 60 seconds fails and changes nothing.
  - Privacy - nothing is logged; the kernel keeps counters and short-lived sets of
    destination prefixes only.
  - The Tor Project asks exit operators not to filter. O(mode=monitor) only counts,
    and O(mode=exitpolicy) leaves enforcement to tor's own ExitPolicy (see the
    C(tor_exit) role), which the Tor Project accepts.
author:
  - torexit.hardening contributors (@torexit)
attributes:
  check_mode:
    description:
      - Renders and validates (C(nft -c); C(iptables-restore --test) once the ipsets the
        rules name exist) without changing the host.
    support: full
  diff_mode:
    description: Shows the ruleset file before and after.
    support: full
requirements:
  - nftables (the C(nft) command) on the managed host for O(backend=nftables)
  - iptables, ip6tables and ipset for O(backend=iptables); ufw in addition for O(backend=ufw)
  - netaddr (Debian package C(python3-netaddr)) on the managed host
options:
  state:
    description: Whether the guard is installed.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - Firewall the guard is rendered for. All backends render the same policy.
      - C(nftables) - the table C(inet torexit_guard), see the description.
      - C(iptables) - chains C(TOREXIT-*) of the filter table (iptables and
        ip6tables), hooked by one rule at the top of C(OUTPUT) (and, while the
        prefix sweep is on, one at the top of C(INPUT) that passes only the
        replies of the connections it follows, by conntrack mark), loaded with
        C(iptables-restore --noflush) so other rules stay untouched; kernel state
        in ipsets C(torexit_*) (ban sets C(torexit_ban_hscan_v4_24) and so on) and
        hashlimit tables. With O(persist), the unit
        C(torexit-egress-guard-iptables.service) loads them at boot and after
        C(netfilter-persistent) restarts or reloads.
      - C(ufw) - the same rules (chains C(TOREXIT-UFW-*)) as a marked block in
        C(/etc/ufw/before.rules) and C(before6.rules), validated with
        C(iptables-restore --test) and activated with C(ufw reload) (the prefix
        sweep's reply hook goes first in C(ufw-before-input)), so
        C(ufw disable), C(ufw enable) and reboots behave as ufw users expect.
        The unit C(torexit-egress-guard-ufw-ipsets.service) creates the ipsets
        before ufw starts, as ufw cannot load the block without them. While ufw is
        inactive the files are written but nothing is loaded. With
        O(persist=false) no file is touched and the rules are loaded into the
        running ufw chains only (ufw must be active; the next ufw reload drops them).
      - C(auto) - C(nftables) when the C(nft) command exists, else C(iptables).
        The choice is returned as RV(backend).
      - O(state=absent) removes exactly what the chosen backend added.
    type: str
    choices: [nftables, iptables, ufw, auto]
    default: nftables
  mode:
    description:
      - C(enforce) refuses connections that match a ban.
      - C(monitor) detects and counts, refuses nothing.
      - C(exitpolicy) detects and records bans like C(monitor); the C(tor_exit)
        role turns them into C(ExitPolicy reject) lines. O(deny) is refused in
        this mode, put static rejects into tor's exit policy instead.
    type: str
    choices: [enforce, monitor, exitpolicy]
    default: enforce
  owner:
    description:
      - User whose new outbound connections are guarded. C(any) guards every
        locally generated connection (labs and unusual set-ups).
    type: str
    default: debian-tor
  profile:
    description:
      - Size of the relay. Scales the flood thresholds, the web and default scan
        tiers and the set sizes by 0.5 (C(small), up to 20 Mbit/s), 1 (C(medium),
        up to 200 Mbit/s), 4 (C(large), up to 1 Gbit/s) or 10 (C(xlarge)).
      - Defaults to C(medium), or to the profile that fits O(bandwidth_mbit).
    type: str
    choices: [small, medium, large, xlarge]
  bandwidth_mbit:
    description:
      - The relay's bandwidth in Mbit/s (1-1000000); picks O(profile). Give one of the two.
    type: int
  reject_with:
    description: How refused connections end.
    type: str
    choices: [tcp-reset, icmp-admin-prohibited, drop]
    default: tcp-reset
  allow:
    description: Networks (CIDR) never limited, e.g. your monitoring.
    type: list
    elements: str
    default: []
  deny:
    description:
      - Networks always refused, optionally with a port or port range -
        C(198.51.100.0/24), C(198.51.100.7:22), C([2001:db8::/32]:20-23).
    type: list
    elements: str
    default: []
  relay_allowlist:
    description:
      - Never limit connections to known Tor relays. Their addresses are read
        from tor's cached consensus into the sets C(relays_v4) and C(relays_v6)
        when the guard loads and every 30 minutes (C(torexit-guard-relays.timer)).
    type: bool
    default: true
  strict_ports:
    description:
      - Ports scanners favour; horizontal scans on them are detected with the
        strict thresholds. Defaults to 21, 22, 23, 135, 139, 445, 1433, 2222,
        2323, 3306, 3389, 5432, 5900, 5901, 6379, 9200, 11211, 27017.
    type: list
    elements: int
  web_ports:
    description:
      - Ports where one prefix legitimately serves thousands of sites (CDNs);
        horizontal scans on them use the lenient web thresholds. Defaults to
        80, 443, 8080, 8443.
    type: list
    elements: int
  scan_window:
    description: Seconds over which distinct hosts or ports are counted (profile default 600; 1-86400).
    type: int
  ban_time:
    description: Seconds a scan ban lasts (profile default 600; 1-2147483, the longest ipset timeout).
    type: int
  set_size:
    description:
      - Maximum elements of each kernel set (profile default 262144 for C(medium)).
      - 1024-16777216; a smaller set fills within minutes and detection stops.
    type: int
  flood:
    description: Flood of one destination. Unset values come from the profile.
    type: dict
    suboptions:
      concurrent:
        description: Open connections to one address above which new ones are rate limited (medium 24; 1-65535).
        type: int
      rate:
        description: New connections per second to one address and port allowed above that (medium 25; 1-100000).
        type: int
      burst:
        description: Burst above the rate; at least O(flood.rate) (medium 50; at most 1000000).
        type: int
      ban_time:
        description: Seconds the address and port stay banned (300; 1-2147483).
        type: int
  horizontal_scan:
    description:
      - Distinct hosts of one prefix contacted on one port within O(scan_window).
        Each threshold list has one value per prefix level; 0 disables a level,
        1000000 is the largest threshold.
      - A level that O(prefix_sweep) stops sooner (one of its levels as wide or
        wider, with a burst no larger, a rate no faster and a ban no shorter; by
        default the /16 of the web and default tiers) counts only first contacts
        into prefixes that sent reply data lately.
    type: dict
    suboptions:
      prefixes_v4:
        description: IPv4 prefix lengths, narrowest first (default [24, 16]).
        type: list
        elements: int
      prefixes_v6:
        description: IPv6 prefix lengths, one per IPv4 level (default [48, 32]).
        type: list
        elements: int
      hosts_strict:
        description: Thresholds for O(strict_ports) (default [16, 48], not scaled).
        type: list
        elements: int
      hosts_default:
        description: Thresholds for other ports (medium [32, 256]).
        type: list
        elements: int
      hosts_web:
        description: Thresholds for O(web_ports) (medium [0, 2048]; a /24 has only 256 hosts).
        type: list
        elements: int
  vertical_scan:
    description: Distinct ports of one host within O(scan_window).
    type: dict
    suboptions:
      ports:
        description: Threshold (default 48; 0-65535); 0 disables the detector.
        type: int
  login:
    description:
      - Repeated logins (password guessing) - new connections to one host and
        strict port, first contacts and repeats alike. Beyond the burst and rate
        the host and port are banned. Unset values come from the profile
        (large and xlarge scale rate and burst with the square root).
    type: dict
    suboptions:
      rate:
        description: New connections per minute to one host and strict port (medium 120; 0-60000); 0 disables the detector.
        type: int
      burst:
        description: Connections allowed before the rate applies (medium 8; 1-10000).
        type: int
      ban_time:
        description: Seconds the host and port stay banned (600; 1-2147483).
        type: int
  prefix_sweep:
    description:
      - Sweeps of one prefix on one port, on every port tier (web ports included).
        Reply data on any guarded connection into a /22 (IPv6 /48) confirms that
        prefix for O(prefix_sweep.confirm_time); first contacts into unconfirmed
        prefixes and failed first contacts (refused, unanswered) are counted per
        prefix and port at each level whose burst is not 0. Not scaled by profile.
      - The detector uses the bits 0x70000000 of the conntrack mark.
    type: dict
    suboptions:
      prefixes_v4:
        description: IPv4 prefix lengths, narrowest first; the first is the confirmed prefix (default [22, 16]; 8-30).
        type: list
        elements: int
      prefixes_v6:
        description: IPv6 prefix lengths, one per IPv4 level (default [48, 32]; 16-64).
        type: list
        elements: int
      burst:
        description: Counted connections per prefix and port before the rate applies, per level (default [0, 96]; 0-10000); 0 turns a level off.
        type: list
        elements: int
      rate:
        description: Counted connections per minute per prefix and port beyond the burst, per level (default [24, 12]; 1-60000).
        type: list
        elements: int
      confirm_time:
        description: Seconds reply data keeps a prefix confirmed (600; 10-2147483).
        type: int
      ban_time:
        description: Seconds the prefix and port stay banned (600; 1-2147483).
        type: int
  wide_scan:
    description:
      - Internet-wide sweeps of one strict port. First contacts on a strict port,
        all prefixes together, beyond the rate are refused except one in
        O(wide_scan.pass_one_in), at random, and not recorded (a retry may pass).
        Repeat contacts never pass this gate and no port is banned.
    type: dict
    suboptions:
      rate:
        description: First contacts per second on one strict port (medium 2, scaled with the profile; 0-100000); 0 disables the gate.
        type: int
      burst:
        description: First contacts above the rate before the gate closes (medium 100; 1-1000000).
        type: int
      pass_one_in:
        description: One in this many first contacts passes the closed gate at random (128; 1-65536).
        type: int
  persist:
    description:
      - Write the ruleset to C(/etc/torexit/egress-guard.nft) and install the
        systemd units that load it at boot and after every restart or reload of
        C(nftables.service). Without systemd only the kernel is changed.
      - For O(backend=iptables), the files C(/etc/torexit/egress-guard.iptables),
        C(.ip6tables) and C(.ipset) and C(torexit-egress-guard-iptables.service).
        For O(backend=ufw), see O(backend).
    type: bool
    default: true
notes:
  - Only new TCP connections are looked at; established traffic never passes the guard's rules.
  - Connections to loopback are never guarded.
"""

EXAMPLES = r"""
- name: Guard tor's outbound connections with the defaults
  torexit.hardening.egress_guard:

- name: A 1 Gbit/s exit that only measures for now
  torexit.hardening.egress_guard:
    bandwidth_mbit: 1000
    mode: monitor

- name: Never limit the monitoring network, always refuse one abused range
  torexit.hardening.egress_guard:
    allow: [198.51.100.0/28]
    deny: ["203.0.113.0/24:22", "[2001:db8:dead::/48]"]

- name: Fit into a host managed with ufw
  torexit.hardening.egress_guard:
    backend: ufw

- name: Remove the guard
  torexit.hardening.egress_guard:
    state: absent
"""

RETURN = r"""
backend:
  description: The backend that was used.
  returned: always
  type: str
  sample: nftables
policy:
  description: The effective thresholds after profile scaling and overrides.
  returned: when state is present
  type: dict
digest:
  description:
    - SHA-256 of the effective policy and of the rules this version of the collection
      renders from it, also stored with the loaded rules (nftables - the counter
      C(policy_id); iptables and ufw - a rule comment).
    - Rules rendered differently for the same options (after an upgrade of the
      collection) give another digest, so the loaded rules are replaced, not only the files.
  returned: when state is present
  type: str
ruleset:
  description: The rendered ruleset.
  returned: when state is present
  type: str
files:
  description: Files written, or that would be written in check mode.
  returned: always
  type: list
  elements: str
bans_dropped:
  description:
    - Bans that no longer fit after O(set_size) was lowered below the number of active
      bans; those with the most time left are kept (also reported as a warning).
  returned: when bans were dropped
  type: int
ufw_active:
  description: Whether ufw was active, so that its rules were reloaded (backend ufw).
  returned: when backend is ufw
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.torexit.hardening.plugins.module_utils import guard_apply


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            backend=dict(type="str", default="nftables", choices=["nftables", "iptables", "ufw", "auto"]),
            mode=dict(type="str", default="enforce", choices=["enforce", "monitor", "exitpolicy"]),
            owner=dict(type="str", default="debian-tor"),
            profile=dict(type="str", choices=["small", "medium", "large", "xlarge"]),
            bandwidth_mbit=dict(type="int"),
            reject_with=dict(type="str", default="tcp-reset", choices=["tcp-reset", "icmp-admin-prohibited", "drop"]),
            allow=dict(type="list", elements="str", default=[]),
            deny=dict(type="list", elements="str", default=[]),
            relay_allowlist=dict(type="bool", default=True),
            strict_ports=dict(type="list", elements="int"),
            web_ports=dict(type="list", elements="int"),
            scan_window=dict(type="int"),
            ban_time=dict(type="int"),
            set_size=dict(type="int"),
            flood=dict(type="dict", options=dict(
                concurrent=dict(type="int"), rate=dict(type="int"),
                burst=dict(type="int"), ban_time=dict(type="int"))),
            horizontal_scan=dict(type="dict", options=dict(
                prefixes_v4=dict(type="list", elements="int"),
                prefixes_v6=dict(type="list", elements="int"),
                hosts_strict=dict(type="list", elements="int"),
                hosts_default=dict(type="list", elements="int"),
                hosts_web=dict(type="list", elements="int"))),
            vertical_scan=dict(type="dict", options=dict(ports=dict(type="int"))),
            login=dict(type="dict", options=dict(
                rate=dict(type="int"), burst=dict(type="int"), ban_time=dict(type="int"))),
            prefix_sweep=dict(type="dict", options=dict(
                prefixes_v4=dict(type="list", elements="int"),
                prefixes_v6=dict(type="list", elements="int"),
                burst=dict(type="list", elements="int"),
                rate=dict(type="list", elements="int"),
                confirm_time=dict(type="int"), ban_time=dict(type="int"))),
            wide_scan=dict(type="dict", options=dict(
                rate=dict(type="int"), burst=dict(type="int"), pass_one_in=dict(type="int", no_log=False))),
            persist=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("profile", "bandwidth_mbit")],
        supports_check_mode=True,
    )
    guard_apply.run(module)


if __name__ == "__main__":
    main()
