# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ufw backend of the egress guard: the iptables backend's rules, as a marked
block inside ufw's own before.rules and before6.rules.

ufw loads those files with `iptables-restore -n` on every start and reload, so
the guard follows ufw: `ufw disable` stops it, `ufw enable`, `ufw reload` and a
reboot bring it back. The block declares its own chains (prefix `TOREXIT-UFW-`,
so they never collide with the iptables backend's) and hooks them at the end of
`ufw-before-output`, after ufw's loopback and established-connection rules.
The ipsets the rules use must exist before ufw loads the files: a small unit
ordered `Before=ufw.service` creates them at boot.
"""

from __future__ import annotations

from ansible_collections.torexit.hardening.plugins.module_utils import guard_iptables as ipt

CHAIN_PREFIX = ipt.CHAIN_PREFIX + "UFW-"
PARENT = {"v4": "ufw-before-output", "v6": "ufw6-before-output"}
BEGIN = "# BEGIN torexit.hardening egress_guard"
END = "# END torexit.hardening egress_guard"
RULES = {"v4": "before.rules", "v6": "before6.rules"}
UFW_DIR = "/etc/ufw"

IPSET_FILE = "/etc/torexit/egress-guard-ufw.ipset"
UNIT = "torexit-egress-guard-ufw-ipsets.service"

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


class UfwError(RuntimeError):
    pass


def block(policy, digest, fam):
    """The marked block for one family's rules file (without a trailing newline)."""
    p = policy
    L = [BEGIN,
         "# Managed by torexit.hardening.egress_guard (backend ufw): changes here are overwritten.",
         "# mode=%s profile=%s owner=%s reject_with=%s" % (p["mode"], p["profile"], p["owner"], p["reject_with"])]
    L += [":%s - [0:0]" % c for c in ipt.chains(p, CHAIN_PREFIX)]
    L += ipt.rules(p, digest, fam, CHAIN_PREFIX)
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


def validate(run, fam, text):
    """`iptables-restore --test` of the whole file: nothing is loaded. The
    iptables-nft test does not check jump targets, so the hook's chain is checked here."""
    cmd = "iptables" if fam == "v4" else "ip6tables"
    if ":%s " % PARENT[fam] not in text:
        raise UfwError("%s does not declare ufw's chain %s, which the guard hooks into" % (RULES[fam], PARENT[fam]))
    rc, out, err = run(["%s-restore" % cmd, "--test"], data=text)
    if rc != 0:
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        raise UfwError("%s-restore --test rejects the new %s: %s" % (cmd, RULES[fam], (err or out).strip()))


def desired_files(policy):
    files = {
        IPSET_FILE: (ipt.ipset_file(policy), 0o600),
        ipt.UNIT_DIR + "/" + UNIT: (UNIT_TEXT.format(ipset=IPSET_FILE, relays=ipt.RELAYS_SCRIPT), 0o644),
    }
    if policy["relay_allowlist"]:
        files.update(ipt.relay_files(UNIT))
    return files


ALL_PATHS = [IPSET_FILE, ipt.UNIT_DIR + "/" + UNIT, ipt.RELAYS_SCRIPT,
             ipt.UNIT_DIR + "/" + ipt.RELAYS_UNIT, ipt.UNIT_DIR + "/" + ipt.RELAYS_TIMER]
