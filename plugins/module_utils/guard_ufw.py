# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ufw backend of the egress guard: the iptables backend's rules, as a marked
block inside ufw's own before.rules and before6.rules.

ufw loads those files with `iptables-restore -n` on every start and reload, so
the guard follows ufw: `ufw disable` stops it, `ufw enable`, `ufw reload` and a
reboot bring it back. The block declares its own chains (prefix `TOREXIT-UFW-`,
so they never collide with the iptables backend's) and hooks them at the end of
`ufw-before-output`, after ufw's loopback and established-connection rules; with
the prefix sweep on, a second hook goes first in `ufw-before-input`, before ufw
accepts established traffic, and sends only the replies of the connections the
sweep detector follows (conntrack mark) to the chain TOREXIT-UFW-REPLY.
The ipsets the rules use must exist before ufw loads the files: a small unit
ordered `Before=ufw.service` creates them at boot. Rules and sets: guard_xtables.

The interface every backend offers to guard_apply: render, desired, live, validate,
apply, installed, remove, and read_state for egress_guard_info.
"""

from __future__ import annotations

import functools

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as common
from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables as xt

NAME = "ufw"
COMMANDS = ["iptables-restore", "ip6tables-restore", "ipset"]
PRESENT_COMMANDS = ["ufw"]

CHAIN_PREFIX = xt.CHAIN_PREFIX + "UFW-"
PARENT = {"v4": "ufw-before-output", "v6": "ufw6-before-output"}
IN_PARENT = {"v4": "ufw-before-input", "v6": "ufw6-before-input"}
BEGIN = xt.UFW_BEGIN
END = "# END torexit.hardening egress_guard"
RULES = {"v4": "before.rules", "v6": "before6.rules"}
RULES_FILES = xt.UFW_FILES      # ufw's files the block goes into

IPSET_FILE = "/etc/torexit/egress-guard-ufw.ipset"
UNIT = xt.UFW_UNIT

UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard (backend ufw)
[Unit]
Description=torexit.hardening egress guard: ipsets used by ufw's before.rules
DefaultDependencies=no
After=local-fs.target
Before=ufw.service network-pre.target
ConditionPathExists={ipset}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ipset -exist restore -file {ipset}
ExecStartPost=-{relays}

[Install]
WantedBy=ufw.service multi-user.target
"""


class UfwError(common.GuardError):
    pass


def block(policy, digest, fam):
    """The marked block for one family's rules file (without a trailing newline)."""
    p = policy
    L = [BEGIN,
         "# Managed by torexit.hardening.egress_guard (backend ufw): changes here are overwritten.",
         "# mode=%s profile=%s owner=%s reject_with=%s" % (p["mode"], p["profile"], p["owner"], p["reject_with"])]
    L += [":%s - [0:0]" % c for c in xt.chains(p, CHAIN_PREFIX)]
    L += xt.rules(p, digest, fam, CHAIN_PREFIX)
    if xt.psweep_on(p):
        # ufw's files declare (flush) this chain: the rule goes in again on every reload
        L.append("-I %s 1 %s" % (IN_PARENT[fam], xt.input_hook(CHAIN_PREFIX)))
    L.append("-A %s -j %sGUARD" % (PARENT[fam], CHAIN_PREFIX))
    L.append(END)
    return "\n".join(L)


def strip_block(text):
    """The file without our block (and without the blank line we add before it)."""
    lines = text.split("\n")
    if BEGIN not in lines:
        return text
    start = lines.index(BEGIN)
    if END not in lines[start:]:
        raise UfwError("the block starting with %r has no %r line; fix the file by hand" % (BEGIN, END))
    end = start + lines[start:].index(END)
    return "\n".join(lines[:start] + lines[end + 1:])


def splice(text, new_block):
    """Put the block just before the COMMIT of the file's *filter section
    (replacing an older block); with new_block None only remove it."""
    text = strip_block(text)
    if new_block is None:
        return text
    lines = text.split("\n")
    try:
        start = lines.index("*filter")
    except ValueError:
        raise UfwError("no '*filter' section found") from None
    for i in range(start + 1, len(lines)):
        if lines[i].strip() == "COMMIT":
            return "\n".join(lines[:i] + new_block.split("\n") + lines[i:])
        if lines[i].startswith("*"):
            break
    raise UfwError("the '*filter' section has no COMMIT line")


def validate_file(run, fam, text):
    """`iptables-restore --test` of the whole file: nothing is loaded. The
    iptables-nft test does not check jump targets, so the hook's chain is checked here."""
    cmd = "iptables" if fam == "v4" else "ip6tables"
    for parent in (PARENT[fam], IN_PARENT[fam]):
        if ":%s " % parent not in text:
            raise UfwError("%s does not declare ufw's chain %s, which the guard hooks into" % (RULES[fam], parent))
    rc, out, err = run(["%s-restore" % cmd, "--test"], data=text)
    if rc != 0:
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        raise UfwError("%s-restore --test rejects the new %s: %s" % (cmd, RULES[fam], (err or out).strip()))


def desired_files(policy):
    files = {
        IPSET_FILE: (xt.ipset_file(policy), 0o600),
        xt.UNIT_DIR + "/" + UNIT: (UNIT_TEXT.format(ipset=IPSET_FILE, relays=xt.RELAYS_SCRIPT), 0o644),
    }
    if policy["relay_allowlist"]:
        files.update(xt.relay_files(UNIT))
    return files


ALL_PATHS = [IPSET_FILE, xt.UNIT_DIR + "/" + UNIT] + xt.RELAY_PATHS


# --- the backend interface ------------------------------------------------------------

def render(policy, digest):
    """Both blocks, as the digest covers them."""
    return block(policy, digest, "v4") + block(policy, digest, "v6")


def _edit(path, new_block, old):
    """The new text of one of ufw's rules files; errors name the file."""
    if old is None:
        raise UfwError("backend: ufw - %s was not found; is ufw installed?" % path)
    try:
        return splice(old, new_block)
    except UfwError as exc:
        raise UfwError("backend: ufw - %s: %s" % (path, exc)) from None


def _ufw_active(run):
    rc, out, _err = run(["ufw", "status"])
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    return rc == 0 and "Status: active" in out


def _ufw_reload(run):
    rc, out, err = run(["ufw", "reload"])
    if rc != 0:
        raise UfwError("ufw reload failed: %s" % (err or out).strip())


def desired(policy, digest, env):
    """With persist, the block goes into ufw's files (loaded by ufw reload) and a unit
    creates the ipsets at boot; without, the rules go into ufw's running chains only."""
    ruleset = "\n".join(block(policy, digest, f) for f in ("v4", "v6")) + "\n"
    edits, files, units, paths = {}, {}, (), ()
    if env.persist:
        edits = dict((RULES_FILES[fam], functools.partial(_edit, RULES_FILES[fam], block(policy, digest, fam)))
                     for fam in ("v4", "v6"))
        if env.systemd:
            files, paths = desired_files(policy), tuple(ALL_PATHS)
            units = (UNIT,) + ((xt.RELAYS_TIMER,) if policy["relay_allowlist"] else ())
    return common.Desired(policy=policy, digest=digest, ruleset=ruleset, view="ufw rules", files=files,
                          edits=edits, units=units, paths=paths, keep=tuple(xt.other_backend_keep(NAME)),
                          rules=None)


def live(env, desired):
    chains = xt.live_state(env.run, CHAIN_PREFIX, PARENT, IN_PARENT)
    if env.persist:
        active = _ufw_active(env.run)
    else:
        missing = [f for f in chains if not chains[f].parent]
        if missing:
            raise UfwError("backend: ufw with persist: false loads the rules into ufw's running chain %s, "
                           "which does not exist here (is ufw active?)" % PARENT[missing[0]])
        active = True
    sets = xt.ipset_script(desired.policy, xt.list_sets(env.run))
    loaded = not active or all(c.digest == desired.digest and c.hooked and not xt.in_hook_change(desired.policy, c)
                               for c in chains.values())
    return common.Live(loaded=loaded, sets=tuple(sets), shown="", extra={"ufw_active": active},
                       state={"chains": chains, "active": active})


def _load_text(plan, fam):
    """persist: false - what goes into ufw's running chains of one family."""
    d, loaded = plan.desired, plan.live.state["chains"][fam]
    stale = [c for c in loaded.names if c not in xt.chains(d.policy, CHAIN_PREFIX)]
    return xt.render(d.policy, d.digest, fam, hook=not loaded.hooked, stale=stale,
                     prefix=CHAIN_PREFIX, parent=PARENT[fam], in_hook=xt.in_hook_change(d.policy, loaded),
                     in_parent=IN_PARENT[fam])


def validate(env, plan):
    """Create or update the sets the rules name, then test ufw's new files (or,
    without persist, what goes into the running chains) without loading them."""
    dropped = xt.apply_sets(env.run, plan.desired.policy) if plan.live.sets else 0
    for fam, cmd in xt.FAMILY_COMMANDS:
        if env.persist:
            _old, new = plan.edited[RULES_FILES[fam]]
            validate_file(env.run, fam, new)
        else:
            xt.check(env.run, cmd, _load_text(plan, fam))
    return {"bans_dropped": dropped} if dropped else None


def apply(env, plan):
    """ufw's files are written (guard_apply did that): reload ufw so it loads them."""
    d, run = plan.desired, env.run
    if not env.persist:
        for fam, cmd in xt.FAMILY_COMMANDS:
            xt.restore(run, cmd, _load_text(plan, fam))
    else:
        active = plan.live.state["active"]
        edited = any(old != new for old, new in plan.edited.values())
        if active and (edited or not plan.live.loaded):
            _ufw_reload(run)
        xt.refresh_relays(run, d.policy)
        # ufw does not delete chains that left its files: drop our unreferenced leftovers
        for fam, cmd in xt.FAMILY_COMMANDS:
            stale = [c for c in plan.live.state["chains"][fam].names if c not in xt.chains(d.policy, CHAIN_PREFIX)]
            if stale and active:
                xt.restore(run, cmd, xt.remove_text(stale, False, CHAIN_PREFIX))
    xt.destroy_sets(run, xt.stale_sets(d.policy, xt.list_sets(run)))
    if not env.persist:
        xt.refresh_relays(run, d.policy)


def installed(env):
    keep = xt.other_backend_keep(NAME)
    edits = {}
    if env.have("ufw") and env.persist:
        edits = dict((path, functools.partial(_edit, path, None)) for path in RULES_FILES.values())
    loaded = any(xt.our_chains(xt.save(env.run, cmd), CHAIN_PREFIX) for _fam, cmd in xt.FAMILY_COMMANDS)
    ipt_installed = host.read(xt.UNIT_DIR + "/" + xt.IPTABLES_UNIT) is not None or any(
        c.names for c in xt.live_state(env.run).values())
    sets = [] if ipt_installed else sorted(xt.list_sets(env.run))
    return common.Installed(
        loaded=loaded or bool(sets), paths=tuple(p for p in ALL_PATHS if p not in keep and host.read(p) is not None),
        edits=edits, units=(UNIT,) + (() if keep else (xt.RELAYS_TIMER,)), dirs=(), shown="",
        state={"sets": sets, "edited": any(BEGIN in (host.read(p) or "") for p in edits)})


def remove(env, installed):
    if installed.state["edited"] and _ufw_active(env.run):
        _ufw_reload(env.run)
    for fam, cmd in xt.FAMILY_COMMANDS:
        saved = xt.save(env.run, cmd)
        names = xt.our_chains(saved, CHAIN_PREFIX)
        if names:
            hooked = xt.hooked(saved, CHAIN_PREFIX, PARENT[fam])
            in_hooked = xt.input_hooked(saved, CHAIN_PREFIX, IN_PARENT[fam])[0]
            xt.restore(env.run, cmd, xt.remove_text(names, hooked, CHAIN_PREFIX, PARENT[fam], in_hooked, IN_PARENT[fam]))
    xt.destroy_sets(env.run, installed.state["sets"])


def read_state(run, show_bans=False):
    return xt.read_state(run, show_bans, CHAIN_PREFIX)
