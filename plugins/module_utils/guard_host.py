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
# Addresses come from the consensus tor already keeps on disk.
RELAYS_SCRIPT_TEXT = """\
#!/bin/sh
# Managed by torexit.hardening.egress_guard.
# Load the addresses of all relays in tor's cached consensus into the guard's
# allow sets, replacing the previous contents in one transaction.
# Arguments: consensus files to read instead of tor's usual places.
set -eu
if [ $# -gt 0 ]; then files="$*"; else files=$(ls {globs} 2>/dev/null || true); fi
[ -n "$files" ] || exit 0
nft list table inet torexit_guard >/dev/null 2>&1 || exit 0
v4=$(awk '$1 == "r" {{ for (i = 6; i <= 8; i++) if ($i ~ /^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/) {{ print $i; break }} }}' $files | sort -u | paste -sd, -)
v6=$(awk '$1 == "a" && $2 ~ /^\\[/ {{ sub(/^\\[/, "", $2); sub(/\\]:[0-9]+$/, "", $2); print $2 }}' $files | sort -u | paste -sd, -)
{{
  echo "flush set inet torexit_guard relays_v4"
  echo "flush set inet torexit_guard relays_v6"
  [ -z "$v4" ] || echo "add element inet torexit_guard relays_v4 {{ $v4 }}"
  [ -z "$v6" ] || echo "add element inet torexit_guard relays_v6 {{ $v6 }}"
}} | nft -f -
"""

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


def relays_script():
    return RELAYS_SCRIPT_TEXT.format(globs=CONSENSUS_GLOBS)


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
