# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and systemd units that make the egress guard survive reboots.

Debian's /etc/nftables.conf starts with `flush ruleset`, so a restart or reload
of nftables.service wipes every table. Two pieces keep the guard loaded:
- `torexit-egress-guard.service` loads it at boot (nftables.service is disabled
  on a default Debian install) and on demand;
- a drop-in for nftables.service appends the same load to its ExecStartPost and
  ExecReload, so it runs right after nftables' own steps, in order. (Propagating
  a reload to a separate unit races with nftables' flush.)

Also here, for every backend: the relay allow-list refresh script (one parser,
a loader per backend), the timer text, and reading and writing files (guard_apply).
"""

from __future__ import annotations

import os
import tempfile

RULESET = "/etc/torexit/egress-guard.nft"
UNIT_DIR = "/etc/systemd/system"
GUARD_UNIT = "torexit-egress-guard.service"
RELAYS_SCRIPT = "/usr/local/libexec/torexit-guard-relays"
RELAYS_UNIT = "torexit-guard-relays.service"
RELAYS_TIMER = "torexit-guard-relays.timer"
NFTABLES_DROPIN = "/etc/systemd/system/nftables.service.d/torexit-egress-guard.conf"

CONSENSUS_GLOBS = "/var/lib/tor/cached-microdesc-consensus /var/lib/tor-instances/*/cached-microdesc-consensus"

GUARD_UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard
[Unit]
Description=torexit.hardening egress guard (nftables table inet torexit_guard)
Documentation=https://docs.ansible.com/ansible/latest/collections/torexit/hardening/
# Loaded early like nftables.service itself: before any network and before tor.
DefaultDependencies=no
After=local-fs.target nftables.service
Before=network-pre.target shutdown.target tor.service tor@default.service
Wants=network-pre.target
Conflicts=shutdown.target
ConditionPathExists={ruleset}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f {ruleset}
ExecStartPost=-{relays}
ExecReload=/usr/sbin/nft -f {ruleset}
ExecReload=-{relays}
ExecStop=-/usr/sbin/nft delete table inet torexit_guard

[Install]
WantedBy=sysinit.target
"""

# Known relays are never limited: relay-to-relay traffic is what makes Tor work.
# Addresses come from the consensus tor already keeps on disk. One script for every
# backend; only what it feeds to the kernel differs (RELAYS_LOADERS).
RELAYS_SCRIPT_TEXT = """\
#!/bin/sh
# Managed by torexit.hardening.egress_guard.
# Load the addresses of all relays in tor's cached consensus into the guard's
# {sets} and, when the firewall role's inbound DoS rules are loaded, into
# their exemption sets, replacing the previous contents in one transaction.
# A malformed address is skipped and counted; when reading or loading fails,
# the previous contents stay.
# Arguments: consensus files to read instead of tor's usual places.
set -eu
if [ $# -gt 0 ]; then files="$*"; else files=$(ls {globs} 2>/dev/null || true); fi
[ -n "$files" ] || exit 0
targets=$(for t in {targets}; do {exists} >/dev/null 2>&1 && echo "$t"; done || true)
[ -n "$targets" ] || exit 0
input=$(python3 - {kind} "$targets" $files <<'EOF'
{parser}EOF
)
printf '%s\\n' "$input" | {loader}
"""

# Reads consensus files, prints the loader's input only when every file was read.
RELAYS_PARSER = r"""import ipaddress
import re
import sys

kind, targets, paths = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
found, skipped = {4: set(), 6: set()}, 0
for path in paths:
    with open(path, errors="replace") as f:
        for line in f:
            words = line.split()
            if words[:1] == ["r"]:
                text = ([w for w in words[5:8] if re.match(r"^[0-9]+([.][0-9]+){3}$", w)] + [""])[0]
                version = 4
            elif words[:1] == ["a"] and len(words) > 1 and words[1].startswith("["):
                text = re.sub(r"[]]:[0-9]+$", "", words[1][1:])
                version = 6
            else:
                continue
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                addr = None
            if addr is None or addr.version != version or "%" in text:
                skipped += 1
                continue
            found[version].add(str(addr))
v4, v6 = sorted(found[4]), sorted(found[6])
for target in targets:
    if kind == "nftables":
        print("flush set inet %s relays_v4" % target)
        print("flush set inet %s relays_v6" % target)
        for fam, addrs in (("v4", v4), ("v6", v6)):
            if addrs:
                print("add element inet %s relays_%s { %s }" % (target, fam, ", ".join(addrs)))
        continue
    tmp = target.replace("torexit_", "torexit_tmp_", 1)
    for fam, family in (("v4", "inet"), ("v6", "inet6")):
        print("create %s_%s hash:ip family %s maxelem 65536" % (tmp, fam, family))
        print("flush %s_%s" % (tmp, fam))
    for fam, addrs in (("v4", v4), ("v6", v6)):
        for addr in addrs:
            print("add %s_%s %s" % (tmp, fam, addr))
    for fam in ("v4", "v6"):
        print("swap %s_%s %s_%s" % (tmp, fam, target, fam))
        print("destroy %s_%s" % (tmp, fam))
sys.stderr.write("torexit-guard-relays: %d IPv4 and %d IPv6 relay addresses, %d malformed entries skipped\n"
                 % (len(v4), len(v6), skipped))
"""

RELAYS_LOADERS = {
    # kind: (sets named in the header, tables/set prefixes that may hold relay sets,
    #        command that tells one ($t) is loaded, loader)
    "nftables": ("allow sets relays_v4/_v6", "torexit_guard torexit_inbound", 'nft list set inet "$t" relays_v4',
                 "nft -f -"),
    "ipset": ("ipsets torexit_relays_v4/_v6", "torexit_relays torexit_in_relays", 'ipset list -n "${t}_v4"',
              "ipset -exist restore"),
}

NFTABLES_DROPIN_TEXT = """\
# Managed by torexit.hardening.egress_guard: reload the guard's table after
# nftables.service flushed the ruleset (start, restart, reload).
[Service]
ExecStartPost=-/usr/sbin/nft -f {ruleset}
ExecStartPost=-{relays}
ExecReload=-/usr/sbin/nft -f {ruleset}
ExecReload=-{relays}
"""

RELAYS_UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard
[Unit]
Description=torexit.hardening: refresh the egress guard's relay allow list
After=torexit-egress-guard.service
Requisite=torexit-egress-guard.service

[Service]
Type=oneshot
ExecStart={relays}
"""

RELAYS_TIMER_TEXT = """\
# Managed by torexit.hardening.egress_guard
[Unit]
Description=torexit.hardening: refresh the egress guard's {what} every 30 minutes

[Timer]
OnBootSec=2min
OnUnitActiveSec=30min
RandomizedDelaySec=2min

[Install]
WantedBy=timers.target
"""


def relays_script(kind="nftables"):
    """The relay refresh script for the nftables table or the ipsets."""
    sets, targets, exists, loader = RELAYS_LOADERS[kind]
    return RELAYS_SCRIPT_TEXT.format(sets=sets, globs=CONSENSUS_GLOBS, targets=targets, exists=exists, kind=kind,
                                     parser=RELAYS_PARSER, loader=loader)


def desired_files(ruleset_text, relay_allowlist):
    """{path: (content, mode)} of everything the guard installs."""
    files = {
        RULESET: (ruleset_text, 0o600),
        os.path.join(UNIT_DIR, GUARD_UNIT): (GUARD_UNIT_TEXT.format(ruleset=RULESET, relays=RELAYS_SCRIPT), 0o644),
        NFTABLES_DROPIN: (NFTABLES_DROPIN_TEXT.format(ruleset=RULESET, relays=RELAYS_SCRIPT), 0o644),
    }
    if relay_allowlist:
        files[RELAYS_SCRIPT] = (relays_script(), 0o755)
        files[os.path.join(UNIT_DIR, RELAYS_UNIT)] = (RELAYS_UNIT_TEXT.format(relays=RELAYS_SCRIPT), 0o644)
        files[os.path.join(UNIT_DIR, RELAYS_TIMER)] = (RELAYS_TIMER_TEXT.format(what="relay allow list"), 0o644)
    return files


ALL_PATHS = [RULESET, os.path.join(UNIT_DIR, GUARD_UNIT), NFTABLES_DROPIN, RELAYS_SCRIPT,
             os.path.join(UNIT_DIR, RELAYS_UNIT), os.path.join(UNIT_DIR, RELAYS_TIMER)]


def read(path):
    try:
        with open(path, "r") as f:
            return f.read()
    except (IOError, OSError):
        return None


def file_changes(files):
    """Paths whose content or mode differs from what is wanted."""
    changed = []
    for path, (content, mode) in sorted(files.items()):
        if read(path) != content or (os.stat(path).st_mode & 0o7777) != mode:
            changed.append(path)
    return changed


def write(module, path, content, mode):
    """Atomic write through Ansible's atomic_move."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".torexit-")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)
    os.chmod(path, mode)


def systemd_running():
    return os.path.isdir("/run/systemd/system")
