# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is connecting: SSH_CONNECTION from the environment or from /proc."""

from __future__ import annotations


def parse_ssh_connection(value):
    """SSH_CONNECTION is 'client_addr client_port server_addr server_port'."""
    parts = (value or "").split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None, None
    return parts[0], int(parts[3])


def server_address_of(value):
    """The server address (third field) of SSH_CONNECTION, or None."""
    parts = (value or "").split()
    return parts[2] if len(parts) == 4 else None


def find_ssh_connection(environ, read_proc_environ, ppid_of, pid, limit=16):
    """SSH_CONNECTION from our environment or, since sudo's env_reset drops it, from
    the nearest ancestor process that has it (bounded walk up the process tree)."""
    if environ.get("SSH_CONNECTION"):
        return environ["SSH_CONNECTION"]
    for _step in range(limit):
        pid = ppid_of(pid)
        if not pid or pid <= 1:
            return None
        value = read_proc_environ(pid).get("SSH_CONNECTION")
        if value:
            return value
    return None


def proc_environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
