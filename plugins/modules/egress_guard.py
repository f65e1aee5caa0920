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
  - torexit.hardening contributors (@torexit)
attributes:
  check_mode:
    description: Renders and validates (C(nft -c)) without changing the host.
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
        ip6tables), hooked by one rule at the top of C(OUTPUT), loaded with
        C(iptables-restore --noflush) so other rules stay untouched; kernel state
        in ipsets C(torexit_*) (ban sets C(torexit_ban_hscan_v4_24) and so on) and
        hashlimit tables. With O(persist), the unit
        C(torexit-egress-guard-iptables.service) loads them at boot and after
        C(netfilter-persistent) restarts or reloads.
      - C(ufw) - the same rules (chains C(TOREXIT-UFW-*)) as a marked block in
        C(/etc/ufw/before.rules) and C(before6.rules), validated with
        C(iptables-restore --test) and activated with C(ufw reload), so
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
ufw_active:
  description: Whether ufw was active, so that its rules were reloaded (backend ufw).
  returned: when backend is ufw
  type: bool
"""

import hashlib
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils import guard_iptables as ipt
from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as nft
from ansible_collections.torexit.hardening.plugins.module_utils import guard_ufw as ufw
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


# Stands in for the digest while the rules are rendered to compute it.
PLACEHOLDER = "0" * 64


def _render_nftables(policy, digest):
    return nft.render(policy, digest)


def _render_iptables(policy, digest):
    return ipt.render(policy, digest, "v4") + ipt.render(policy, digest, "v6")


def _render_ufw(policy, digest):
    return ufw.block(policy, digest, "v4") + ufw.block(policy, digest, "v6")


def rules_digest(policy, render):
    """The id stored with the loaded rules: SHA-256 of the policy and of the rules
    `render` makes of it. A digest of the policy alone would stay the same when a
    new version of the collection renders other rules for the same options; the
    files would be rewritten while the kernel kept the old rules."""
    blob = "%s\n%s" % (policy_digest(policy), render(policy, PLACEHOLDER))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _policy(module, render):
    try:
        policy = build_policy(module.params, user_exists=_user_exists)
        if policy["mode"] == "exitpolicy" and module.params["deny"]:
            raise PolicyError("deny: %r is not used in mode exitpolicy; put static rejects into the "
                              "tor_exit role's exit policy" % module.params["deny"])
    except PolicyError as exc:
        module.fail_json(msg=str(exc))
    return policy, rules_digest(policy, render)


def present(module, run):
    policy, digest = _policy(module, _render_nftables)
    text = nft.render(policy, digest)
    try:
        nft.check(run, text)
    except nft.NftError as exc:
        module.fail_json(msg="the rendered ruleset does not load: %s" % exc, ruleset=text)

    live = nft.live_digest(run)
    live_ok = live == digest
    keep = [s[0] for s in nft.ban_sets(policy)] + ["optout_v4", "optout_v6"]
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
            before = "" if live is None else "# loaded table, policy sha256:%s\n" % live
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
            # A rewritten unit file may name another target in [Install]: reenable.
            rewritten = [u for u in units if os.path.join(host.UNIT_DIR, u) in to_write]
            for unit in sorted(set(to_enable) | set(rewritten)):
                _systemctl(module, "reenable", unit)
            if not _unit_active(module, host.GUARD_UNIT):
                _systemctl(module, "start", host.GUARD_UNIT)   # loads the file, then the relays
            elif not live_ok:
                nft.apply(run, text, keep_sets=keep)
                module.run_command([host.RELAYS_SCRIPT])
            if policy["relay_allowlist"] and not _unit_active(module, host.RELAYS_TIMER):
                _systemctl(module, "start", host.RELAYS_TIMER)
        elif not live_ok:
            nft.apply(run, text, keep_sets=keep)
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
    dropin_dir = os.path.dirname(host.NFTABLES_DROPIN)
    if host.NFTABLES_DROPIN in paths and os.path.isdir(dropin_dir) and not os.listdir(dropin_dir):
        os.rmdir(dropin_dir)  # we created it for our drop-in
    if paths and host.systemd_running():
        _systemctl(module, "daemon-reload")
    try:
        nft.delete(run)
    except nft.NftError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


# --- iptables and ufw backends -----------------------------------------------------

def _files(files, all_paths, keep=()):
    """(paths to write, stale paths to remove) for a backend's persistence files."""
    stale = [p for p in all_paths if p not in files and p not in keep and host.read(p) is not None]
    return host.file_changes(files), stale


def _write_files(module, files, to_write, stale, units):
    for path in to_write:
        content, mode = files[path]
        host.write(module, path, content, mode)
    for path in stale:
        os.remove(path)
    if not host.systemd_running():
        return
    if to_write or stale:
        _systemctl(module, "daemon-reload")
    for unit in units:
        if not _unit_enabled(module, unit):
            _systemctl(module, "enable", unit)


def _other_backend_paths(mine):
    """Relay refresh files are shared by the iptables and ufw backends: absent of
    one keeps them while the other one is installed."""
    other_unit = ipt.UNIT_DIR + "/" + (ufw.UNIT if mine == "iptables" else ipt.UNIT)
    if host.read(other_unit) is None:
        return []
    return [ipt.RELAYS_SCRIPT, ipt.UNIT_DIR + "/" + ipt.RELAYS_UNIT, ipt.UNIT_DIR + "/" + ipt.RELAYS_TIMER]


def _sets_diff(set_lines):
    """A diff entry naming the ipsets that would be created or replaced with their
    options; never their elements (bans hold destinations)."""
    created = [line.split(" ", 1)[1] for line in set_lines if line.startswith("create ")]
    return {"before": "", "after": "".join("create %s\n" % c for c in created),
            "before_header": "ipsets", "after_header": "ipsets (created or replaced)"}


def _relays(module, policy):
    if policy["relay_allowlist"]:
        module.run_command(["/bin/sh", "-s"], data=ipt.relays_script())


def iptables_present(module, run):
    policy, digest = _policy(module, _render_iptables)
    texts = dict((fam, ipt.render(policy, digest, fam)) for fam in ("v4", "v6"))
    live = ipt.live_state(run)
    sets_live = ipt.list_sets(run)
    set_lines = ipt.ipset_script(policy, sets_live)
    live_ok = not set_lines and all(live[f][0] == digest and live[f][1] for f in live)
    persist = module.params["persist"] and host.systemd_running()
    files = ipt.desired_files(policy, digest) if persist else {}
    to_write, stale = _files(files, ipt.ALL_PATHS if persist else [], keep=_other_backend_paths("iptables"))
    units = ([ipt.UNIT] + ([ipt.RELAYS_TIMER] if policy["relay_allowlist"] else [])) if persist else []
    to_enable = [u for u in units if not _unit_enabled(module, u)]
    changed = bool(not live_ok or to_write or stale or to_enable)
    result = dict(changed=changed, backend="iptables", policy=policy, digest=digest,
                  ruleset=texts["v4"] + texts["v6"], files=to_write + stale)
    if module._diff:
        before = "".join(host.read(ipt.RULES_FILES[f]) or "" for f in ("v4", "v6")) if persist else ""
        if not before and live["v4"][0]:
            before = "# loaded chains, policy sha256:%s\n" % live["v4"][0]
        result["diff"] = [{"before": result["ruleset"] if not changed else before, "after": result["ruleset"]}]
        if set_lines:
            result["diff"].append(_sets_diff(set_lines))
    if module.check_mode or not changed:
        module.exit_json(**result)
    try:
        ipt.apply_sets(run, policy)
        for fam, _family, _host, cmd in ipt.FAMILIES:
            ipt.check(run, cmd, texts[fam])
        for fam, _family, _host, cmd in ipt.FAMILIES:
            _digest, hooked, names, _parent = live[fam]
            stale_chains = [c for c in names if c not in ipt.chains(policy)]
            ipt.restore(run, cmd, ipt.render(policy, digest, fam, hook=not hooked, stale=stale_chains))
        ipt.destroy_sets(run, ipt.stale_sets(policy, ipt.list_sets(run)))
        _relays(module, policy)
    except ipt.IptablesError as exc:
        module.fail_json(msg=str(exc), **result)
    _write_files(module, files, to_write, stale, to_enable)
    if persist and not _unit_active(module, ipt.UNIT):
        _systemctl(module, "start", ipt.UNIT)
    if persist and policy["relay_allowlist"] and not _unit_active(module, ipt.RELAYS_TIMER):
        _systemctl(module, "start", ipt.RELAYS_TIMER)
    if any(state[0] != digest or not state[1] for state in ipt.live_state(run).values()):
        module.fail_json(msg="the guard's chains were not loaded as rendered", **result)
    module.exit_json(**result)


def _remove_units(module, units, paths):
    if host.systemd_running():
        for unit in units:
            if host.read(ipt.UNIT_DIR + "/" + unit) is not None:
                module.run_command(["systemctl", "disable", "--now", unit])
    for path in paths:
        os.remove(path)
    if paths and host.systemd_running():
        _systemctl(module, "daemon-reload")


def iptables_absent(module, run):
    keep = _other_backend_paths("iptables")
    paths = [p for p in ipt.ALL_PATHS if p not in keep and host.read(p) is not None]
    loaded = any(state[2] or state[1] for state in ipt.live_state(run).values())
    sets = [] if ufw_block_present() else sorted(ipt.list_sets(run))
    changed = bool(paths or loaded or sets)
    result = dict(changed=changed, backend="iptables", files=paths)
    if module._diff:
        result["diff"] = {"before": "".join(host.read(ipt.RULES_FILES[f]) or "" for f in ("v4", "v6"))
                          or ("# loaded chains\n" if loaded else ""), "after": ""}
    if module.check_mode or not changed:
        module.exit_json(**result)
    units = [ipt.UNIT] + ([ipt.RELAYS_TIMER] if not keep else [])
    _remove_units(module, units, paths)
    try:
        ipt.delete(run)
    except ipt.IptablesError as exc:
        module.fail_json(msg=str(exc), **result)
    ipt.destroy_sets(run, sets)
    module.exit_json(**result)


def _ufw_paths():
    return dict((fam, os.path.join(ufw.UFW_DIR, name)) for fam, name in ufw.RULES.items())


def ufw_block_present():
    return any(ufw.BEGIN in (host.read(path) or "") for path in _ufw_paths().values())


def _ufw_active(module):
    rc, out, _err = module.run_command(["ufw", "status"])
    return rc == 0 and "Status: active" in out


def _ufw_reload(module):
    rc, out, err = module.run_command(["ufw", "reload"])
    if rc != 0:
        module.fail_json(msg="ufw reload failed: %s" % (err or out).strip())


def _ufw_edit(module, run, new_block):
    """{fam: (path, old text, new text)} of the rules files; fails naming the file."""
    out = {}
    for fam, path in _ufw_paths().items():
        old = host.read(path)
        if old is None:
            module.fail_json(msg="backend: ufw - %s was not found; is ufw installed?" % path)
        try:
            out[fam] = (path, old, ufw.splice(old, new_block(fam)))
        except ufw.UfwError as exc:
            module.fail_json(msg="backend: ufw - %s: %s" % (path, exc))
    return out


def _ufw_write(module, edits):
    for path, old, new in edits.values():
        if new != old:
            # our block holds the allow and deny prefixes: never group-writable or world-readable
            mode = os.stat(path).st_mode & 0o7777 & ~0o027
            host.write(module, path, new, mode)


def ufw_present(module, run):
    if not module.get_bin_path("ufw"):
        module.fail_json(msg="backend: ufw needs the ufw command, which was not found on this host")
    policy, digest = _policy(module, _render_ufw)
    if not module.params["persist"]:
        ufw_load_only(module, run, policy, digest)
    edits = _ufw_edit(module, run, lambda fam: ufw.block(policy, digest, fam))
    edited = [path for path, old, new in edits.values() if new != old]
    set_lines = ipt.ipset_script(policy, ipt.list_sets(run))
    active = _ufw_active(module)
    live = ipt.live_state(run, ufw.CHAIN_PREFIX, ufw.PARENT)
    live_ok = not active or all(live[f][0] == digest and live[f][1] for f in live)
    systemd = host.systemd_running()
    files = ufw.desired_files(policy) if systemd else {}
    to_write, stale = _files(files, ufw.ALL_PATHS if systemd else [], keep=_other_backend_paths("ufw"))
    units = ([ufw.UNIT] + ([ipt.RELAYS_TIMER] if policy["relay_allowlist"] else [])) if systemd else []
    to_enable = [u for u in units if not _unit_enabled(module, u)]
    changed = bool(edited or set_lines or not live_ok or to_write or stale or to_enable)
    result = dict(changed=changed, backend="ufw", policy=policy, digest=digest, ufw_active=active,
                  ruleset="\n".join(ufw.block(policy, digest, f) for f in ("v4", "v6")) + "\n",
                  files=edited + to_write + stale)
    if module._diff:
        result["diff"] = [{"before": old, "after": new, "before_header": path, "after_header": path}
                          for path, old, new in edits.values()]
        if set_lines:
            result["diff"].append(_sets_diff(set_lines))
    if module.check_mode or not changed:
        module.exit_json(**result)
    try:
        ipt.apply_sets(run, policy)
        for fam, (_path, _old, new) in edits.items():
            ufw.validate(run, fam, new)
    except (ipt.IptablesError, ufw.UfwError) as exc:
        module.fail_json(msg=str(exc), **result)
    _ufw_write(module, edits)
    _write_files(module, files, to_write, stale, to_enable)
    if systemd and not _unit_active(module, ufw.UNIT):
        _systemctl(module, "start", ufw.UNIT)
    if systemd and policy["relay_allowlist"] and not _unit_active(module, ipt.RELAYS_TIMER):
        _systemctl(module, "start", ipt.RELAYS_TIMER)
    if active and (edited or not live_ok):
        _ufw_reload(module)
    _relays(module, policy)
    # ufw does not delete chains that left its files: drop our unreferenced leftovers
    try:
        for fam, _family, _host, cmd in ipt.FAMILIES:
            stale_chains = [c for c in live[fam][2] if c not in ipt.chains(policy, ufw.CHAIN_PREFIX)]
            if stale_chains and active:
                ipt.restore(run, cmd, ipt.remove_text(stale_chains, False, ufw.CHAIN_PREFIX))
    except ipt.IptablesError as exc:
        module.fail_json(msg=str(exc), **result)
    ipt.destroy_sets(run, ipt.stale_sets(policy, ipt.list_sets(run)))
    if active and any(s[0] != digest or not s[1] for s in ipt.live_state(run, ufw.CHAIN_PREFIX, ufw.PARENT).values()):
        module.fail_json(msg="ufw reloaded, but the guard's chains are not loaded as rendered", **result)
    module.exit_json(**result)


def ufw_load_only(module, run, policy, digest):
    """persist=false: load the block into the running ufw chains, files untouched
    (gone with the next ufw reload)."""
    live = ipt.live_state(run, ufw.CHAIN_PREFIX, ufw.PARENT)
    missing = [f for f in live if not live[f][3]]
    if missing:
        module.fail_json(msg="backend: ufw with persist: false loads the rules into ufw's running chain %s, "
                             "which does not exist here (is ufw active?)" % ufw.PARENT[missing[0]])
    set_lines = ipt.ipset_script(policy, ipt.list_sets(run))
    changed = bool(set_lines or not all(live[f][0] == digest and live[f][1] for f in live))
    result = dict(changed=changed, backend="ufw", policy=policy, digest=digest, ufw_active=True, files=[],
                  ruleset="\n".join(ufw.block(policy, digest, f) for f in ("v4", "v6")) + "\n")
    if module.check_mode or not changed:
        module.exit_json(**result)
    try:
        ipt.apply_sets(run, policy)
        for fam, _family, _host, cmd in ipt.FAMILIES:
            _digest, hooked, names, _parent = live[fam]
            stale_chains = [c for c in names if c not in ipt.chains(policy, ufw.CHAIN_PREFIX)]
            ipt.restore(run, cmd, ipt.render(policy, digest, fam, hook=not hooked, stale=stale_chains,
                                             prefix=ufw.CHAIN_PREFIX, parent=ufw.PARENT[fam]))
        ipt.destroy_sets(run, ipt.stale_sets(policy, ipt.list_sets(run)))
        _relays(module, policy)
    except ipt.IptablesError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


def ufw_absent(module, run):
    keep = _other_backend_paths("ufw")
    paths = [p for p in ufw.ALL_PATHS if p not in keep and host.read(p) is not None]
    have_ufw = bool(module.get_bin_path("ufw"))
    edits = _ufw_edit(module, run, lambda fam: None) if have_ufw and module.params["persist"] else {}
    edited = [path for path, old, new in edits.values() if new != old]
    chains = dict((cmd, ipt.our_chains(ipt.save(run, cmd), ufw.CHAIN_PREFIX)) for _f, _fa, _h, cmd in ipt.FAMILIES)
    ipt_installed = host.read(ipt.UNIT_DIR + "/" + ipt.UNIT) is not None or any(
        s[2] for s in ipt.live_state(run).values())
    sets = [] if ipt_installed else sorted(ipt.list_sets(run))
    changed = bool(paths or edited or any(chains.values()) or sets)
    result = dict(changed=changed, backend="ufw", files=edited + paths)
    if module._diff:
        result["diff"] = [{"before": old, "after": new, "before_header": path, "after_header": path}
                          for path, old, new in edits.values()]
    if module.check_mode or not changed:
        module.exit_json(**result)
    _ufw_write(module, edits)
    if edited and _ufw_active(module):
        _ufw_reload(module)
    _remove_units(module, [ufw.UNIT] + ([ipt.RELAYS_TIMER] if not keep else []), paths)
    try:
        for fam, _family, _host, cmd in ipt.FAMILIES:
            saved = ipt.save(run, cmd)
            names = ipt.our_chains(saved, ufw.CHAIN_PREFIX)
            hooked = ipt.hooked(saved, ufw.CHAIN_PREFIX, ufw.PARENT[fam])
            if names:
                ipt.restore(run, cmd, ipt.remove_text(names, hooked, ufw.CHAIN_PREFIX, ufw.PARENT[fam]))
    except ipt.IptablesError as exc:
        module.fail_json(msg=str(exc), **result)
    ipt.destroy_sets(run, sets)
    module.exit_json(**result)


BACKENDS = {
    "nftables": (present, absent, ["nft"]),
    "iptables": (iptables_present, iptables_absent, ["iptables-restore", "ip6tables-restore", "ipset"]),
    "ufw": (ufw_present, ufw_absent, ["iptables-restore", "ip6tables-restore", "ipset"]),
}


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
            persist=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("profile", "bandwidth_mbit")],
        supports_check_mode=True,
    )
    backend = module.params["backend"]
    if backend == "auto":
        backend = "nftables" if module.get_bin_path("nft") else "iptables"
    do_present, do_absent, commands = BACKENDS[backend]
    for command in commands:
        if not module.get_bin_path(command):
            module.fail_json(msg="backend: %s needs the %s command, which was not found on this host "
                                 "(install the Debian package %s)"
                                 % (backend, command, "nftables" if command == "nft" else command.split("-")[0]))

    def run(args, data=None):
        return module.run_command(args, data=data, binary_data=True)

    if module.params["state"] == "absent":
        do_absent(module, run)
    do_present(module, run)


if __name__ == "__main__":
    main()
