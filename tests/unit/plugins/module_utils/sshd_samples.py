# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared samples for the sshd_config unit tests: sshd -T output, keys, a lockout() call."""

from __future__ import annotations

import base64
import struct
from types import SimpleNamespace

from ansible_collections.torexit.hardening.plugins.module_utils import sshd_effective, sshd_lockout

# Abridged `sshd -T -C user=op` output of Debian 12's OpenSSH 9.2 with its default config.
SSHD_T = """\
port 22
addressfamily any
listenaddress [::]:22
listenaddress 0.0.0.0:22
usepam yes
pubkeyauthentication yes
passwordauthentication yes
kbdinteractiveauthentication no
permitrootlogin without-password
strictmodes yes
requiredrsasize 1024
authenticationmethods any
authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2
pubkeyacceptedalgorithms ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256
maxsessions 10
forcecommand none
acceptenv LANG
acceptenv LC_*
"""


def eff(**changes):
    """Effective config parsed from SSHD_T with some keywords replaced."""
    base = sshd_effective.parse_effective(SSHD_T)
    for key, value in changes.items():
        base[key] = value if isinstance(value, list) else [value]
    return base


def ssh_string(data):
    return struct.pack(">I", len(data)) + data


def rsa_line(bits):
    n = (1 << (bits - 1)) | 1
    blob = ssh_string(b"ssh-rsa") + ssh_string(b"\x01\x00\x01") + ssh_string(b"\x00" + n.to_bytes(bits // 8, "big"))
    return "ssh-rsa " + base64.b64encode(blob).decode() + " op@laptop"


ED25519 = "ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"k" * 32)).decode() + " op@laptop"


def safe_stat(path):
    return SimpleNamespace(st_uid=1000, st_mode=0o40755 if not path.endswith("keys") else 0o100600)


def reader(files):
    return files.get


HOME = "/home/op"
KEYS = HOME + "/.ssh/authorized_keys"


def lockout(before, after, files=None, groups=("op",), address="198.18.0.5", port=22, firewall=None, user="op",
            **connection):
    return sshd_lockout.check_lockout(before, after, user, list(groups), HOME, 1000, address, port,
                                      reader(files or {}), firewall or (lambda p: None), lstat=safe_stat, **connection)
