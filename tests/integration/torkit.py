# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pieces of a private Tor network (TestingTorNetwork) that need nothing but the
standard library and tor itself: the torrc text of authorities and exits, the
authorities' keys and DirAuthority lines, a control-port client, a SOCKS5 opener and
the STREAM event tally.

Shared by the namespace fixture of the tests and the bench (tornet.py, on the host)
and by `make demo` (demo/tornet.py on the host, demo/tordrill.py inside the demo's
client container, which has only Debian's python3). Recipe and pitfalls:
../shared/lab-notes.md, "Tor and friends".
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading
import time

COMMON = """TestingTorNetwork 1
RunAsDaemon 0
ShutdownWaitLength 0
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
TestingDirAuthVoteGuard *
TestingDirAuthVoteHSDir *
V3AuthNIntervalsValid 2
TestingMinExitFlagThreshold 0
ContactInfo torexit-lab
SafeLogging 1
"""
# The client: no entry guards (five relays), and a fixed circuit build timeout. On
# loopback tor learns a timeout of a few milliseconds; a burst of new circuits (20
# users at once) on a loaded machine overruns it, and after 18 timeouts tor decides
# the network changed and waits up to 60 s per circuit ("Your network connection
# speed appears to have changed"): every user's first three tries timed out (seen
# in 1 run of 3 under load, and in a fresh-clone run; make demo had this already).
CLIENT = """UseEntryGuards 0
LearnCircuitBuildTimeout 0
CircuitBuildTimeout 30
"""
# Stable for every relay: clients exit streams to LongLivedPorts (22 among them) only
# through Stable relays, and the authorities give Stable to relays whose uptime is at
# least the median; relays started together flap around it from one consensus to the
# next, and a client whose consensus lists no Stable exit refuses port 22 at once
# ("No Tor server allows exit to ...:22", SOCKS general failure; seen 1 run in 3).
AUTHORITY = """AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
AssumeReachable 1
ExitRelay 0
ExitPolicy reject *:*
V3AuthVotingInterval 20
V3AuthVoteDelay 4
V3AuthDistDelay 4
TestingV3AuthInitialVotingInterval 20
TestingV3AuthInitialVoteDelay 4
TestingV3AuthInitialDistDelay 4
AuthDirVoteStableGuaranteeMinUptime 0
AuthDirVoteStableGuaranteeMTBF 0
"""
# accept *:* (see the lab notes): the exits' namespace reaches only the lab internet.
# `reject *:25` first, as in every real exit policy (tor's default and the reduced
# policy reject 25): with an exact accept-all policy a client that meets one
# EXITPOLICY refusal stops using the exit for every stream ("seems to be more
# restrictive than its exit policy": adjust_exit_policy_from_exitpolicy_failure()
# in tor's relay.c, when node_exit_policy_is_exact()), which real exits never see.
EXIT = """AssumeReachable 1
ExitRelay 1
IPv6Exit 0
ExitPolicy reject *:25
ExitPolicy accept *:*
"""


class Control:
    """A tor control connection (TCP port or unix socket with cookie); replies are
    lists of lines. Events, when subscribed, are queued with their arrival time."""

    def __init__(self, where, cookie=None, timeout=10.0):
        if isinstance(where, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(where)
        self.f = self.sock.makefile("rb")
        self.events = []
        self.lock = threading.Lock()
        self.reader = None
        auth = "AUTHENTICATE %s" % open(cookie, "rb").read().hex() if cookie else "AUTHENTICATE"
        self.cmd(auth)

    def _reply(self):
        lines = []
        while True:
            raw = self.f.readline()
            if not raw:
                raise ConnectionError("control connection closed")
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if len(line) >= 4 and line[3] == "+":  # data block up to "."
                while True:
                    d = self.f.readline().decode(errors="replace").rstrip("\r\n")
                    if d == ".":
                        break
                    lines.append(d)
            elif len(line) >= 4 and line[3] == " ":
                return lines

    def cmd(self, line):
        self.sock.sendall((line + "\r\n").encode())
        lines = self._reply()
        if not lines[-1].startswith("250"):
            raise RuntimeError("tor control %r: %s" % (line.split()[0], lines[-1]))
        return lines

    def getinfo(self, key):
        lines = self.cmd("GETINFO " + key)
        first = lines[0][4:]
        if first.startswith(key + "="):
            rest = first[len(key) + 1:]
            return "\n".join(([rest] if rest else []) + list(lines[1:-1]))
        return "\n".join(lines[1:-1])

    def new_circuits(self):
        """SIGNAL NEWNYM, and close every circuit: NEWNYM alone leaves the clean circuits
        built ahead (while another exit, or none, was pinned), and new streams get those."""
        self.cmd("SIGNAL NEWNYM")
        for line in self.getinfo("circuit-status").splitlines():
            words = line.split()
            if words and words[0].isdigit():
                try:
                    self.cmd("CLOSECIRCUIT %s" % words[0])
                except RuntimeError:  # closed meanwhile
                    pass

    def subscribe(self, *events):
        """SETEVENTS, then read events in a thread; self.events gets (time, line)."""
        self.cmd("SETEVENTS " + " ".join(events))
        self.sock.settimeout(None)

        def read():
            try:
                while True:
                    raw = self.f.readline()
                    if not raw:
                        return
                    with self.lock:
                        self.events.append((time.monotonic(), raw.decode(errors="replace").rstrip("\r\n")))
            except (OSError, ValueError):
                return
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def take(self):
        with self.lock:
            ev, self.events = self.events, []
        return ev

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --- SOCKS5 through the client ----------------------------------------------------------
# tor's SOCKS5 replies: stream_end_reason_to_socks5_response() in tor's relay code
SOCKS_REPLY = {0: "ok", 1: "general", 2: "not_allowed", 3: "net_unreachable", 4: "host_unreachable",
               5: "refused", 6: "ttl_expired", 7: "cmd", 8: "addr_type"}


async def socks_open(port, host, dport, timeout, user=None):
    """Open a stream; returns (outcome, reader, writer); outcome "ok" or why not.
    `user`: a SOCKS username; tor isolates streams of different users on
    different circuits (IsolateSOCKSAuth), as for separate Tor users."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return "socks_down", None, None
    try:
        if user:
            name = user.encode()
            writer.write(b"\x05\x01\x02")
            await asyncio.wait_for(reader.readexactly(2), timeout)
            writer.write(b"\x01" + bytes([len(name)]) + name + b"\x01x")
            await asyncio.wait_for(reader.readexactly(2), timeout)
        else:
            writer.write(b"\x05\x01\x00")
            await asyncio.wait_for(reader.readexactly(2), timeout)
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", dport))
        head = await asyncio.wait_for(reader.readexactly(10), timeout)
        outcome = SOCKS_REPLY.get(head[1], "reply_%d" % head[1])
    except asyncio.TimeoutError:
        outcome = "timeout"
    except (OSError, asyncio.IncompleteReadError):
        outcome = "error"
    if outcome != "ok":
        writer.close()
        return outcome, None, None
    return outcome, reader, writer


def stream_reasons(events):
    """Counts of STREAM events by (status, REMOTE_REASON or REASON): only reasons
    and counts, never the target."""
    out = {}
    for _t, line in events:
        words = line.split()
        if len(words) < 4 or words[1] != "STREAM":
            continue
        kv = dict(w.split("=", 1) for w in words[5:] if "=" in w)
        key = "%s:%s" % (words[3], kv.get("REMOTE_REASON") or kv.get("REASON") or "-")
        out[key] = out.get(key, 0) + 1
    return out


def authority_keys(data, name, address, orport, dirport, run=None):
    """Make the v3 identity, signing key and certificate of an authority in
    DATA/keys, and its relay identity; returns (v3ident, fingerprint).

    `run(argv, stdin_text)` runs a command and returns its stdout (default: here, on
    this host); the demo passes one that runs it in the authorities' container,
    where DATA is the same path. tor reads no config from /dev/null: an empty file
    in DATA serves as torrc, and a placeholder DirAuthority keeps it from contacting
    the real authorities."""
    if run is None:
        def run(argv, inp):
            return subprocess.run(argv, input=inp, capture_output=True, text=True, timeout=60, check=True).stdout
    keys = os.path.join(data, "keys")
    ident, signing, cert = (os.path.join(keys, n) for n in ("authority_identity_key", "authority_signing_key",
                                                            "authority_certificate"))
    empty = os.path.join(data, "empty-torrc")
    run(["sh", "-ec", 'umask 077; mkdir -p "$1"; : >"$2"', "sh", keys, empty], "")
    run(["tor-gencert", "--create-identity-key", "-m", "12", "-a", "%s:%d" % (address, dirport),
         "-i", ident, "-s", signing, "-c", cert, "--passphrase-fd", "0"], "\n")
    text = run(["cat", cert], "")
    v3ident = next(line.split()[1] for line in text.splitlines() if line.startswith("fingerprint "))
    placeholder = "placeholder orport=1 no-v2 v3ident=%s 127.0.0.1:1 %s" % ("0" * 40, "0" * 40)
    out = run(["tor", "--list-fingerprint", "--defaults-torrc", empty, "-f", empty, "--DataDirectory", data,
               "--ORPort", str(orport), "--Nickname", name, "--DirAuthority", placeholder, "--Log", "err stderr"], "")
    line = [x for x in out.splitlines() if x.startswith(name + " ")][-1]
    return v3ident, "".join(line.split()[1:])


def dirauth_line(name, address, orport, dirport, v3ident, fingerprint):
    """The value of a DirAuthority option (without the option name)."""
    return "%s orport=%d no-v2 v3ident=%s %s:%d %s" % (name, orport, v3ident, address, dirport, fingerprint)
