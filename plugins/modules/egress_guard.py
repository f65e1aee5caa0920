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
    Changing options keeps current bans and opt-outs with the time they have left.
  - Privacy - nothing is logged; the kernel keeps counters and short-lived sets of
    destination prefixes only.
  - The Tor Project asks exit operators not to filter. O(mode=monitor) only counts,
    and O(mode=exitpolicy) leaves enforcement to tor's own ExitPolicy (see the
    C(tor_exit) role), which the Tor Project accepts.
author:
  - torexit.hardening contributors
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements:
  - nftables (the C(nft) command) on the managed host
  - netaddr (Debian package C(python3-netaddr)) on the managed host
options:
  state:
    description: Whether the guard is installed.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - Firewall the guard is rendered for. Only C(nftables) is implemented so far.
    type: str
    choices: [nftables]
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
      - The relay's bandwidth in Mbit/s; picks O(profile). Give one of the two.
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
    description: Seconds over which distinct hosts or ports are counted (profile default 600).
    type: int
  ban_time:
    description: Seconds a scan ban lasts (profile default 600).
    type: int
  set_size:
    description: Maximum elements of each kernel set (profile default 262144 for C(medium)).
    type: int
  flood:
    description: Flood of one destination. Unset values come from the profile.
    type: dict
    suboptions:
      concurrent:
        description: Open connections to one address above which new ones are rate limited (medium 24).
        type: int
      rate:
        description: New connections per second to one address and port allowed above that (medium 25).
        type: int
      burst:
        description: Burst above the rate; at least O(flood.rate) (medium 50).
        type: int
      ban_time:
        description: Seconds the address and port stay banned (300).
        type: int
  horizontal_scan:
    description:
      - Distinct hosts of one prefix contacted on one port within O(scan_window).
        Each threshold list has one value per prefix level; 0 disables a level.
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
        description: Threshold (default 48); 0 disables the detector.
        type: int
  persist:
    description:
      - Write the ruleset to C(/etc/torexit/egress-guard.nft) and install the
        systemd units that load it at boot and after every restart or reload of
        C(nftables.service). Without systemd only the kernel is changed.
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
  description: SHA-256 of the effective policy, also stored in the kernel (counter C(policy_id)).
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
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as nft
from ansible_collections.torexit.hardening.plugins.module_utils.guard_policy import PolicyError, build_policy, policy_digest


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _systemctl(module, *args):
    rc, out, err = module.run_command(["systemctl"] + list(args))
    if rc != 0:
        module.fail_json(msg="systemctl %s failed: %s" % (" ".join(args), (err or out).strip()))
    return out


def _unit_active(module, unit):
    rc, _out, _err = module.run_command(["systemctl", "is-active", "--quiet", unit])
    return rc == 0


def _unit_enabled(module, unit):
    rc, _out, _err = module.run_command(["systemctl", "is-enabled", "--quiet", unit])
    return rc == 0


def present(module, run):
    try:
        policy = build_policy(module.params, user_exists=_user_exists)
        if policy["mode"] == "exitpolicy" and module.params["deny"]:
            raise PolicyError("deny: %r is not used in mode exitpolicy; put static rejects into the "
                              "tor_exit role's exit policy" % module.params["deny"])
    except PolicyError as exc:
        module.fail_json(msg=str(exc))
    digest = policy_digest(policy)
    text = nft.render(policy, digest)
    try:
        nft.check(run, text)
    except nft.NftError as exc:
        module.fail_json(msg="the rendered ruleset does not load: %s" % exc, ruleset=text)

    live_ok = nft.live_digest(run) == digest
    persist = module.params["persist"] and host.systemd_running()
    files = host.desired_files(text, policy["relay_allowlist"]) if persist else {}
    stale = [p for p in host.ALL_PATHS if p not in files and host.read(p) is not None] if persist else []
    to_write = host.file_changes(files)
    units = [host.GUARD_UNIT] + ([host.RELAYS_TIMER] if policy["relay_allowlist"] else [])
    to_enable = [u for u in units if persist and not _unit_enabled(module, u)]
    changed = bool(not live_ok or to_write or stale or to_enable)

    result = dict(changed=changed, backend="nftables", policy=policy, digest=digest, ruleset=text,
                  files=to_write + stale)
    if module._diff:
        before = host.read(host.RULESET) if persist else None
        if before is None:
            before = "" if nft.live_digest(run) is None else "# loaded table, policy sha256:%s\n" % nft.live_digest(run)
        result["diff"] = {"before": before if not live_ok or to_write else text, "after": text,
                          "before_header": "%s (current)" % host.RULESET, "after_header": "%s (wanted)" % host.RULESET}
    if module.check_mode or not changed:
        module.exit_json(**result)

    try:
        for path in to_write:
            content, mode = files[path]
            host.write(module, path, content, mode)
        for path in stale:
            os.remove(path)
        if to_write or stale:
            _systemctl(module, "daemon-reload")
        if persist:
            for unit in to_enable:
                _systemctl(module, "enable", unit)
            if not _unit_active(module, host.GUARD_UNIT):
                _systemctl(module, "start", host.GUARD_UNIT)   # loads the file, then the relays
            elif not live_ok:
                nft.apply(run, text, keep_sets=[s[0] for s in nft.ban_sets(policy)] + ["optout_v4", "optout_v6"])
                module.run_command([host.RELAYS_SCRIPT])
            if policy["relay_allowlist"] and not _unit_active(module, host.RELAYS_TIMER):
                _systemctl(module, "start", host.RELAYS_TIMER)
        elif not live_ok:
            nft.apply(run, text, keep_sets=[s[0] for s in nft.ban_sets(policy)] + ["optout_v4", "optout_v6"])
            if policy["relay_allowlist"]:
                module.run_command(["/bin/sh", "-s"], data=host.relays_script())
    except nft.NftError as exc:
        module.fail_json(msg=str(exc), **result)
    if nft.live_digest(run) != digest:
        module.fail_json(msg="the guard's table was not loaded as rendered", **result)
    module.exit_json(**result)


def absent(module, run):
    paths = [p for p in host.ALL_PATHS if host.read(p) is not None]
    loaded = nft.table_exists(run)
    changed = bool(paths or loaded)
    result = dict(changed=changed, backend="nftables", files=paths)
    if module._diff:
        result["diff"] = {"before": host.read(host.RULESET) or ("# loaded table\n" if loaded else ""), "after": ""}
    if module.check_mode or not changed:
        module.exit_json(**result)
    if host.systemd_running():
        for unit in (host.RELAYS_TIMER, host.GUARD_UNIT):
            if host.read(os.path.join(host.UNIT_DIR, unit)) is not None:
                module.run_command(["systemctl", "disable", "--now", unit])
    for path in paths:
        os.remove(path)
    if paths and host.systemd_running():
        _systemctl(module, "daemon-reload")
    try:
        nft.delete(run)
    except nft.NftError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            backend=dict(type="str", default="nftables", choices=["nftables"]),
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
            persist=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("profile", "bandwidth_mbit")],
        supports_check_mode=True,
    )
    if not module.get_bin_path("nft"):
        module.fail_json(msg="backend: nftables needs the nft command, which was not found on this host "
                             "(install the Debian package nftables)")

    def run(args, data=None):
        return module.run_command(args, data=data, binary_data=True)

    if module.params["state"] == "absent":
        absent(module, run)
    present(module, run)


if __name__ == "__main__":
    main()
