# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and systemd units that make the egress guard survive reboots.

Debian's /etc/nftables.conf starts with `flush ruleset`, so a restart or reload
of nftables.service wipes every table. The guard's unit is `PartOf=` and
`ReloadPropagatedFrom=` nftables.service and ordered after it: whatever
nftables.service does, the guard's table is loaded again right after.
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

CONSENSUS_GLOBS = "/var/lib/tor/cached-microdesc-consensus /var/lib/tor-instances/*/cached-microdesc-consensus"

GUARD_UNIT_TEXT = """\
# Managed by torexit.hardening.egress_guard
[Unit]
Description=torexit.hardening egress guard (nftables table inet torexit_guard)
Documentation=https://docs.ansible.com/ansible/latest/collections/torexit/hardening/
After=nftables.service
Before=network-pre.target tor.service
Wants=network-pre.target
PartOf=nftables.service
ReloadPropagatedFrom=nftables.service
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
WantedBy=multi-user.target
"""

# Known relays are never limited: relay-to-relay traffic is what makes Tor work.
# Addresses come from the consensus tor already keeps on disk.
RELAYS_SCRIPT_TEXT = """\
#!/bin/sh
# Managed by torexit.hardening.egress_guard.
# Load the addresses of all relays in tor's cached consensus into the guard's
# allow sets, replacing the previous contents in one transaction.
set -eu
files=$(ls {globs} 2>/dev/null || true)
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
Description=torexit.hardening: refresh the egress guard's relay allow list every 30 minutes

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
    }
    if relay_allowlist:
        files[RELAYS_SCRIPT] = (relays_script(), 0o755)
        files[os.path.join(UNIT_DIR, RELAYS_UNIT)] = (RELAYS_UNIT_TEXT.format(relays=RELAYS_SCRIPT), 0o644)
        files[os.path.join(UNIT_DIR, RELAYS_TIMER)] = (RELAYS_TIMER_TEXT, 0o644)
    return files


ALL_PATHS = [RULESET, os.path.join(UNIT_DIR, GUARD_UNIT), RELAYS_SCRIPT,
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
