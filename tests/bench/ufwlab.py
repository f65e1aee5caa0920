# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real ufw inside a lab network namespace, never touching the host's ufw.

ufw keeps its configuration in /etc/ufw and /etc/default/ufw, which a network
namespace shares with the host. `copies()` makes lab copies of both (ufw
disabled, logging off, IPT_SYSCTL pointing at an empty file so ufw never writes
the host's sysctls); `inside()` runs a shell command in the namespace within a
private mount namespace (`unshare -m`) where the copies are bind-mounted over
the originals. The mounts vanish with that process; ufw's rules end up in the
namespace's own netfilter tables. `remove()` deletes the copies.

Used by the bench (tests/bench/variants.py, variant guard-ufw) and by
tests/integration/test_egress_guard_ufw.py.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile

ETC, DEFAULT = "/etc/ufw", "/etc/default/ufw"


def available():
    """True when ufw and its files exist on this machine (they are copied, never changed)."""
    return bool(shutil.which("ufw") and os.path.isdir(ETC) and os.path.exists(DEFAULT))


def copies(prefix="txfw-ufw-"):
    """Lab copies of /etc/ufw and /etc/default/ufw in a new temporary directory;
    returns (tmp, etc): tmp holds default-ufw and sysctl.conf, etc is the copy of /etc/ufw."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        etc = os.path.join(tmp, "ufw")
        shutil.copytree(ETC, etc, symlinks=True)
        with open(os.path.join(etc, "ufw.conf"), "w") as f:
            f.write("ENABLED=no\nLOGLEVEL=off\n")
        with open(DEFAULT) as f:
            default = f.read()
        open(os.path.join(tmp, "sysctl.conf"), "w").close()   # ufw must not write sysctls
        default = "\n".join("IPT_SYSCTL=%s/sysctl.conf" % tmp if line.startswith("IPT_SYSCTL=") else line
                            for line in default.splitlines()) + "\n"
        with open(os.path.join(tmp, "default-ufw"), "w") as f:
            f.write(default)
    except BaseException:
        remove(tmp)
        raise
    return tmp, etc


def remove(tmp):
    shutil.rmtree(tmp, ignore_errors=True)


def inside(netns, tmp, etc, command, timeout=180, **kw):
    """Run a shell command in network namespace `netns` with the lab's ufw files."""
    script = ("mount --bind %s /etc/ufw && mount --bind %s /etc/default/ufw && %s"
              % (shlex.quote(etc), shlex.quote(os.path.join(tmp, "default-ufw")), command))
    return subprocess.run(["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
                           "sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                          check=kw.pop("check", False), **kw)
