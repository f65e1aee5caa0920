# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""iptables backend of the egress guard: chains `TOREXIT-*` in the filter table of
iptables and ip6tables, hooked by one rule at the top of OUTPUT (and, with the
prefix sweep on, one at the top of INPUT for the replies it follows), and ipsets
`torexit_*` (rules and sets: guard_xtables); with persist, files in /etc/torexit
and a unit that loads them at boot and after netfilter-persistent.

The interface every backend offers to guard_apply: render, desired, live, validate,
apply, installed, remove, and read_state for egress_guard_info.
"""

from __future__ import annotations

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as common
from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables as xt

NAME = "iptables"
COMMANDS = ["iptables-restore", "ip6tables-restore", "ipset"]
PRESENT_COMMANDS = []

IPSET_FILE = "/etc/torexit/egress-guard.ipset"
RULES_FILES = {"v4": "/etc/torexit/egress-guard.iptables", "v6": "/etc/torexit/egress-guard.ip6tables"}
UNIT = xt.IPTABLES_UNIT
UNIT_DIR = xt.UNIT_DIR

# netfilter-persistent (iptables-persistent) restores whole tables; like the
# nftables unit, ours follows it so our chains are loaded again right after.
UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard (backend iptables)
[Unit]
Description=torexit.hardening egress guard (iptables chains TOREXIT-*, ipsets torexit_*)
After=netfilter-persistent.service torexit-inbound-iptables.service
Before=network-pre.target tor.service
Wants=network-pre.target
PartOf=netfilter-persistent.service
ReloadPropagatedFrom=netfilter-persistent.service
ConditionPathExists={v4}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ipset -exist restore -file {ipset}
ExecStart=/usr/sbin/iptables-restore --noflush {v4}
ExecStart=/usr/sbin/ip6tables-restore --noflush {v6}
ExecStart=/bin/sh -c 'iptables -C OUTPUT -j TOREXIT-GUARD 2>/dev/null || iptables -I OUTPUT 1 -j TOREXIT-GUARD'
ExecStart=/bin/sh -c 'ip6tables -C OUTPUT -j TOREXIT-GUARD 2>/dev/null || ip6tables -I OUTPUT 1 -j TOREXIT-GUARD'
{input_start}ExecStartPost=-{relays}
ExecReload=/usr/sbin/ipset -exist restore -file {ipset}
ExecReload=/usr/sbin/iptables-restore --noflush {v4}
ExecReload=/usr/sbin/ip6tables-restore --noflush {v6}
ExecReload=/bin/sh -c 'iptables -C OUTPUT -j TOREXIT-GUARD 2>/dev/null || iptables -I OUTPUT 1 -j TOREXIT-GUARD'
ExecReload=/bin/sh -c 'ip6tables -C OUTPUT -j TOREXIT-GUARD 2>/dev/null || ip6tables -I OUTPUT 1 -j TOREXIT-GUARD'
{input_reload}ExecStop=-/bin/sh -c 'iptables -D OUTPUT -j TOREXIT-GUARD; ip6tables -D OUTPUT -j TOREXIT-GUARD'
ExecStop=-/bin/sh -c 'iptables -D INPUT {input_hook} 2>/dev/null; ip6tables -D INPUT {input_hook} 2>/dev/null; true'

[Install]
WantedBy=multi-user.target
"""


def _input_lines(policy, key):
    """The unit's lines that put the prefix sweep's reply hook first in INPUT, once:
    replies accepted by an earlier rule (the firewall role's TOREXIT-INPUT accepts
    established traffic) would never reach it."""
    if not xt.psweep_on(policy):
        return ""
    hook = xt.input_hook()
    return "".join("%s=/bin/sh -c '%s -D INPUT %s 2>/dev/null; %s -I INPUT 1 %s'\n" % (key, cmd, hook, cmd, hook)
                   for cmd in ("iptables", "ip6tables"))


def unit_text(policy):
    return UNIT_TEXT.format(ipset=IPSET_FILE, v4=RULES_FILES["v4"], v6=RULES_FILES["v6"], relays=xt.RELAYS_SCRIPT,
                            input_start=_input_lines(policy, "ExecStart"),
                            input_reload=_input_lines(policy, "ExecReload"), input_hook=xt.input_hook())


def desired_files(policy, digest):
    """{path: (content, mode)} of everything the iptables backend installs."""
    files = {
        IPSET_FILE: (xt.ipset_file(policy), 0o600),
        RULES_FILES["v4"]: (xt.render(policy, digest, "v4"), 0o600),
        RULES_FILES["v6"]: (xt.render(policy, digest, "v6"), 0o600),
        UNIT_DIR + "/" + UNIT: (unit_text(policy), 0o644),
    }
    if policy["relay_allowlist"]:
        files.update(xt.relay_files(UNIT))
    return files


ALL_PATHS = [IPSET_FILE, RULES_FILES["v4"], RULES_FILES["v6"], UNIT_DIR + "/" + UNIT] + xt.RELAY_PATHS


# --- the backend interface ------------------------------------------------------------

def render(policy, digest):
    """The rules of both families, as the digest covers them."""
    return xt.render(policy, digest, "v4") + xt.render(policy, digest, "v6")


def desired(policy, digest, env):
    persist = env.persist and env.systemd
    units = (UNIT,) + ((xt.RELAYS_TIMER,) if policy["relay_allowlist"] else ())
    return common.Desired(
        policy=policy, digest=digest, ruleset=render(policy, digest), view=RULES_FILES["v4"],
        files=desired_files(policy, digest) if persist else {}, edits={}, units=units if persist else (),
        paths=tuple(ALL_PATHS) if persist else (), keep=tuple(xt.other_backend_keep(NAME)), rules=None)


def live(env, desired):
    chains = xt.live_state(env.run)
    sets = xt.ipset_script(desired.policy, xt.list_sets(env.run))
    shown = "".join(host.read(RULES_FILES[f]) or "" for f in ("v4", "v6")) if desired.files else ""
    if not shown and chains["v4"].digest:
        shown = "# loaded chains, policy sha256:%s\n" % chains["v4"].digest
    loaded = all(c.digest == desired.digest and c.hooked and not xt.in_hook_change(desired.policy, c)
                 for c in chains.values())
    return common.Live(loaded=loaded, sets=tuple(sets), shown=shown, extra={}, state=chains)


def validate(env, plan):
    """Create or update the sets the rules name (iptables-restore checks they
    exist), then test both families' rules without loading them."""
    dropped = xt.apply_sets(env.run, plan.desired.policy) if plan.live.sets else 0
    for fam, cmd in xt.FAMILY_COMMANDS:
        xt.check(env.run, cmd, xt.render(plan.desired.policy, plan.desired.digest, fam))
    return {"bans_dropped": dropped} if dropped else None


def apply(env, plan):
    d = plan.desired
    for fam, cmd in xt.FAMILY_COMMANDS:
        loaded = plan.live.state[fam]
        stale = [c for c in loaded.names if c not in xt.chains(d.policy)]
        xt.restore(env.run, cmd, xt.render(d.policy, d.digest, fam, hook=not loaded.hooked, stale=stale,
                                           in_hook=xt.in_hook_change(d.policy, loaded)))
    xt.destroy_sets(env.run, xt.stale_sets(d.policy, xt.list_sets(env.run)))
    xt.refresh_relays(env.run, d.policy)


def installed(env):
    keep = xt.other_backend_keep(NAME)
    chains = xt.live_state(env.run)
    loaded = any(c.names or c.hooked or c.in_hooked for c in chains.values())
    sets = [] if xt.ufw_block_present() else sorted(xt.list_sets(env.run))
    shown = "".join(host.read(RULES_FILES[f]) or "" for f in ("v4", "v6")) or ("# loaded chains\n" if loaded else "")
    return common.Installed(
        loaded=loaded or bool(sets), paths=tuple(p for p in ALL_PATHS if p not in keep and host.read(p) is not None),
        edits={}, units=(UNIT,) + (() if keep else (xt.RELAYS_TIMER,)), dirs=(), shown=shown, state=sets)


def remove(env, installed):
    xt.delete(env.run)
    xt.destroy_sets(env.run, installed.state)


def read_state(run, show_bans=False):
    return xt.read_state(run, show_bans)
