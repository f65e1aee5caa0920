# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A private Tor network in the lab (TestingTorNetwork), for tests and the bench.

    with TorNet() as net:            # ~1 minute until a stream crosses each exit
        net.apply_guard("enforce")   # the egress guard, real default owner debian-tor
        net.pin(net.hx)              # client: ExitNodes = the hardened exit
        await socks_request(net.socks, "198.18.3.4", 22)

Topology (recipe and pitfalls: ../shared/lab-notes.md "Tor and friends"):
- namespace <prefix>relay holds every tor process on 127.0.0.1: 3 directory
  authorities, 2 exits, 1 client (SocksPort 9050, ControlPort 9051);
- namespace <prefix>net is the lab's "internet" of tests/bench/lab.py: local routes
  for 198.18.0.0/15 (and 244.0.0.0/6, 2001:db8::/33), its server on ports 22, 80,
  443, 3389 and 200 high ports, and SYN counters per address range.
- `hx`, the exit hardened by the collection: tor runs as debian-tor (User
  debian-tor), so the guard applied with its real default owner sees exactly its
  connections; its torrc reads `%include <dir>/torrc.d/` first, where the real
  sync program (roles/tor_exit/files/torexit_exitpolicy_sync.py) writes the rejects,
  with a control socket and cookie like Debian's tor service. `px`, a plain exit
  running as root: the guard (owner debian-tor) never sees its connections.

Exit traffic only reaches the internet namespace, which answers for reserved
ranges; nothing else is reachable. Cleanup: tor and helper processes by PID,
both namespaces, the work directory; a run whose owner died is cleaned up by the
next one (`python3 tornet.py --cleanup-stale`). Names start with `tornet-`.
TORNET_KEEP_LOGS=DIR keeps a copy of every node's torrc and log there (no keys).
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "bench"))
import lab as L  # noqa: E402  (the bench's namespaces, server and counters)
import torkit as K  # noqa: E402  (torrc text, authority keys, control port, SOCKS: shared with the demo)
import variants as V  # noqa: E402  (the bench's way of running the guard module)

SYNC = os.path.join(TOP, "roles", "tor_exit", "files", "torexit_exitpolicy_sync.py")
TOR_USER = "debian-tor"
UNIT = "tor@default.service"          # what the role names the default instance
SOCKS_PORT, CONTROL_PORT = 9050, 9051
N_AUTH = 3
READY_TIMEOUT = 180.0
PREFIX = "tornet-"
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)   # setns(2): os.setns needs Python 3.12
ADDRESS = "127.0.0.1"                          # every node listens here, in one namespace
COMMON = K.COMMON + "Address %s\n" % ADDRESS
AUTHORITY, EXIT = K.AUTHORITY, K.EXIT
Control, SOCKS_REPLY, socks_open, stream_reasons = K.Control, K.SOCKS_REPLY, K.socks_open, K.stream_reasons
HDR = struct.Struct("!IIH")   # the lab server's request header (tests/bench/server.py)


def sh(*cmd, check=True, timeout=60, inp=None):
    return L.sh(*cmd, check=check, timeout=timeout, inp=inp)


def netns_names():
    return [line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines() if line.strip()]


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale(prefix=PREFIX):
    """Remove namespaces and work directories of earlier runs whose owner process
    is gone (an interrupted test or bench). Returns the names removed."""
    removed = []
    tmp = tempfile.gettempdir()
    for ns in netns_names():
        if not ns.startswith(prefix) or not ns.endswith(("-relay", "-net")):
            continue
        tag = ns[len(prefix):].rsplit("-", 1)[0]
        owner = os.path.join(tmp, prefix + tag, "owner.pid")
        try:
            alive = _pid_alive(int(open(owner).read().strip()))
        except (OSError, ValueError):
            alive = False
        if alive:
            continue
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(os.path.join(tmp, prefix + tag), ignore_errors=True)
        removed.append(ns)
    return removed


class Node:
    def __init__(self, name, kind, index, work):
        self.name, self.kind, self.index = name, kind, index
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.torrc = os.path.join(self.dir, "torrc")
        self.log = os.path.join(self.dir, "notice.log")
        self.orport = 5100 + index
        self.dirport = 7100 + index
        self.proc = None
        self.fingerprint = None
        self.v3ident = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class TorNet:
    """Start with `with TorNet() as net:` (or net.start()/net.close())."""

    def __init__(self, prefix=PREFIX, ready_timeout=READY_TIMEOUT):
        if not prefix.startswith(PREFIX):
            raise ValueError("prefix must start with %r" % PREFIX)
        self.base_prefix = prefix
        self.ready_timeout = ready_timeout
        self.work = None
        self.lab = None
        self.nodes = []
        self.helpers = []          # other processes we started (sync loops, services)
        self.guard_mode = None
        self.timings = {}

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        t0 = time.monotonic()
        cleanup_stale(self.base_prefix)
        # a short tag: interface names (<prefix><tag>-r0) have at most 15 characters
        while True:
            tag = os.urandom(2).hex()
            self.work = os.path.join(tempfile.gettempdir(), self.base_prefix + tag)
            try:
                os.mkdir(self.work, 0o755)   # debian-tor must reach its own directory below
                break
            except FileExistsError:
                continue
        os.chmod(self.work, 0o755)
        with open(os.path.join(self.work, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        try:
            self.lab = L.Lab("%s%s-" % (self.base_prefix, tag))
            self.lab.setup()
            self.relay_ns, self.net_ns = self.lab.relay, self.lab.net
            self._make_nodes()
            self._write_configs()
            for node in self.nodes:
                self._launch(node)
            self.timings["launched_s"] = round(time.monotonic() - t0, 1)
            self._wait_ready(t0)
            self.timings["ready_s"] = round(time.monotonic() - t0, 1)
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        for proc in self.helpers + [n.proc for n in self.nodes if n.proc]:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.helpers + [n.proc for n in self.nodes if n.proc]:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.helpers = []
        for ctl in ("_client_ctl",):
            c = getattr(self, ctl, None)
            if c:
                c.close()
                setattr(self, ctl, None)
        if self.lab:
            self.lab.teardown()    # its server, anything left in both namespaces, the namespaces
            self.lab = None
        if self.work:
            keep = os.environ.get("TORNET_KEEP_LOGS")
            if keep:
                shutil.copytree(self.work, os.path.join(keep, os.path.basename(self.work)),
                                ignore=shutil.ignore_patterns("keys", "cached-*", "diff-*", "*.sock", "control*"),
                                ignore_dangling_symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    # -- configuration ---------------------------------------------------------------
    def _make_nodes(self):
        names = ["auth%d" % i for i in range(N_AUTH)] + ["hx", "px", "client"]
        kinds = ["authority"] * N_AUTH + ["exit", "exit", "client"]
        self.nodes = [Node(n, k, i, self.work) for i, (n, k) in enumerate(zip(names, kinds))]
        self.auths = self.nodes[:N_AUTH]
        self.hx, self.px, self.client = self.nodes[N_AUTH:]
        for node in self.nodes:
            os.makedirs(node.data, mode=0o700)
        # the hardened exit: like Debian's tor service (tor-service-defaults-torrc)
        self.hx.run = os.path.join(self.hx.dir, "run")
        self.hx.torrc_d = os.path.join(self.hx.dir, "torrc.d")
        self.hx.control_socket = os.path.join(self.hx.run, "control")
        self.hx.cookie = os.path.join(self.hx.run, "control.authcookie")
        self.exitpolicy_file = os.path.join(self.hx.torrc_d, "10-torexit-guard.conf")
        os.makedirs(self.hx.run, mode=0o755)
        os.makedirs(self.hx.torrc_d, mode=0o755)
        user = pwd.getpwnam(TOR_USER)
        for path in (self.hx.dir, self.hx.data, self.hx.run):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.hx.dir, 0o755)
        os.chmod(self.hx.run, 0o2750)
        # as the tor_exit role makes it: setgid debian-tor, so the sync's 0640 rejects
        # file is readable by tor, which re-reads its config as debian-tor on a reload
        os.chown(self.hx.torrc_d, 0, user.pw_gid)
        os.chmod(self.hx.torrc_d, 0o2755)

    def _write_configs(self):
        open(os.path.join(self.work, "empty-torrc"), "a").close()   # tor reads no config from /dev/null
        for a in self.auths:
            a.v3ident, a.fingerprint = K.authority_keys(a.data, a.name, ADDRESS, a.orport, a.dirport)
        dirauth = "".join("DirAuthority %s\n" % K.dirauth_line(a.name, ADDRESS, a.orport, a.dirport, a.v3ident, a.fingerprint)
                          for a in self.auths)
        for node in self.nodes:
            text = ""
            if node is self.hx:
                # the role's torrc: included files first, read before the exit policy
                text += "%%include %s/\n" % self.hx.torrc_d
            text += COMMON + dirauth
            text += "Nickname %s\nDataDirectory %s\nLog notice file %s\n" % (node.name, node.data, node.log)
            if node.kind == "client":
                text += "SocksPort 127.0.0.1:%d\nControlPort 127.0.0.1:%d\n" % (SOCKS_PORT, CONTROL_PORT)
                text += K.CLIENT
            else:
                text += "SocksPort 0\nORPort 127.0.0.1:%d\nDirPort 127.0.0.1:%d\n" % (node.orport, node.dirport)
                text += AUTHORITY if node.kind == "authority" else EXIT
            if node is self.hx:
                text += ("User %s\nPidFile %s/tor.pid\n"
                         "ControlSocket %s GroupWritable RelaxDirModeCheck\nControlSocketsGroupWritable 1\n"
                         "CookieAuthentication 1\nCookieAuthFileGroupReadable 1\nCookieAuthFile %s\n"
                         % (TOR_USER, self.hx.run, self.hx.control_socket, self.hx.cookie))
            with open(node.torrc, "w") as f:
                f.write(text)
        # hx opens its log before it switches to debian-tor and writes it afterwards
        open(self.hx.log, "a").close()
        user = pwd.getpwnam(TOR_USER)
        os.chown(self.hx.log, user.pw_uid, user.pw_gid)

    def _launch(self, node):
        # stdout/stderr: only startup errors before the log file opens
        err = open(os.path.join(node.dir, "stderr"), "w")
        node.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.relay_ns, "tor", "--defaults-torrc", os.path.join(self.work, "empty-torrc"),
             "-f", node.torrc],
            stdout=err, stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        err.close()

    def _fingerprint_file(self, node):
        try:
            with open(os.path.join(node.data, "fingerprint")) as f:
                return f.read().split()[1]
        except (OSError, IndexError):
            return None

    def _check_alive(self):
        for node in self.nodes:
            if node.proc.poll() is not None:
                tail = (node.log_text() or open(os.path.join(node.dir, "stderr")).read())[-1500:]
                raise RuntimeError("tor %s exited (rc %s): %s" % (node.name, node.proc.returncode, tail))

    def flags(self, node):
        """The flags of `node` in the client's consensus (empty if not listed)."""
        try:
            text = self._client_ctl.getinfo("ns/id/%s" % node.fingerprint)
        except RuntimeError:
            return set()
        return {w for line in text.splitlines() if line.startswith("s ") for w in line.split()[1:]}

    def _wait_ready(self, t0):
        """Bounded: the client bootstrapped, both exits in its consensus with the Exit
        and Stable flags (torkit.AUTHORITY), and one stream through each exit reached
        the lab internet."""
        deadline = t0 + self.ready_timeout

        def until(done, interval):
            """Poll `done` until it is true; TimeoutError past the deadline."""
            while True:
                self._check_alive()
                if done():
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError
                time.sleep(interval)
        stage = "client bootstrap"
        try:
            until(lambda: "Bootstrapped 100%" in self.client.log_text(), 0.5)
            self.timings["bootstrapped_s"] = round(time.monotonic() - t0, 1)
            for node in (self.hx, self.px):
                node.fingerprint = self._fingerprint_file(node)
            stage = "control port"
            self._client_ctl = self._in_ns(lambda: Control(("127.0.0.1", CONTROL_PORT)))
            for node in (self.hx, self.px):
                stage = "%s with the Exit and Stable flags in the client's consensus" % node.name
                until(lambda node=node: {"Exit", "Stable"} <= self.flags(node), 0.5)
            for node in (self.hx, self.px):
                stage = "a stream through %s" % node.name
                self.pin(node)
                until(lambda: self.run(socks_request(SOCKS_PORT, L.UPLOAD_HOST, 443, timeout=10)) == "ok", 1.0)
            self.unpin()
        except TimeoutError:
            raise RuntimeError("private Tor network not ready after %.0f s (waiting for %s); client log:\n%s"
                               % (self.ready_timeout, stage, self.client.log_text()[-2000:])) from None

    # -- running things inside the relay namespace --------------------------------
    def _in_ns(self, fn):
        """Run fn in a thread that joined the relay namespace (sockets made there
        live there)."""
        box = {}

        def body():
            fd = os.open("/run/netns/%s" % self.relay_ns, os.O_RDONLY)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns %s" % self.relay_ns)
            finally:
                os.close(fd)
            try:
                box["v"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["e"] = exc
        t = threading.Thread(target=body)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box.get("v")

    def run(self, coro):
        """Run a coroutine (SOCKS clients) in the relay namespace."""
        return self._in_ns(lambda: asyncio.run(coro))

    def control(self):
        """A new control connection to the client (events need their own)."""
        return self._in_ns(lambda: Control(("127.0.0.1", CONTROL_PORT)))

    def hx_control(self):
        """A control connection to the hardened exit (unix socket, cookie)."""
        return Control(self.hx.control_socket, cookie=self.hx.cookie)

    def spawn(self, *cmd, env=None, log=None):
        """A helper process in the relay namespace, stopped by close()."""
        out = open(log, "a") if log else subprocess.DEVNULL
        proc = subprocess.Popen(["ip", "netns", "exec", self.relay_ns] + list(cmd), stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True)
        if log:
            out.close()
        self.helpers.append(proc)
        return proc

    def stop(self, proc):
        L.stop_process(proc)
        if proc in self.helpers:
            self.helpers.remove(proc)

    # -- the client's exit choice -------------------------------------------------------
    def pin(self, node):
        """Only `node` as exit; tor marks existing circuits unusable when ExitNodes changes."""
        self._client_ctl.cmd("SETCONF ExitNodes=%s StrictNodes=1" % node.fingerprint)

    def unpin(self):
        self._client_ctl.cmd("RESETCONF ExitNodes StrictNodes")

    def new_circuits(self):
        """Fresh circuits for new streams (torkit's Control.new_circuits: NEWNYM and
        every circuit closed; NEWNYM alone leaves the clean circuits built ahead while
        another exit was pinned, and tor gives new streams those - make demo's drill saw it)."""
        self._client_ctl.new_circuits()
        time.sleep(0.2)

    # -- the egress guard on the hardened exit -------------------------------------------
    def apply_guard(self, mode="enforce", extra=""):
        """The collection's egress_guard module in the exits' namespace with its real
        default owner (debian-tor): only hx's connections are guarded."""
        V._ansible(self.lab, ("state=present backend=nftables persist=false mode=%s %s" % (mode, extra)).strip())
        self.guard_mode = mode

    def remove_guard(self):
        V._ansible(self.lab, "state=absent backend=nftables persist=false")
        self.guard_mode = None

    def guard_counters(self):
        r = self.lab.ns(self.relay_ns, "nft", "-j", "list", "counters", "table", *V.GUARD_TABLE, check=False)
        if r.returncode != 0:
            return {}
        return {i["counter"]["name"]: i["counter"]["packets"] for i in json.loads(r.stdout)["nftables"]
                if "counter" in i}

    # -- exitpolicy mode: the role's sync program, run as its unit would ---------------
    def sync_env(self):
        """Environment of the sync unit in the lab: PATH finds a `systemctl` that does
        what systemd does for `try-reload-or-restart tor@default.service` on this
        host's tor unit (ExecReload: kill -HUP $MAINPID), aimed at hx's PID."""
        shim_dir = os.path.join(self.work, "bin")
        os.makedirs(shim_dir, exist_ok=True)
        shim = os.path.join(shim_dir, "systemctl")
        with open(shim, "w") as f:
            f.write("#!/bin/sh\n# lab stand-in for systemd: reload = SIGHUP to the unit's main PID\n"
                    "[ \"$1\" = try-reload-or-restart ] && [ \"$2\" = %s ] || "
                    "{ echo \"systemctl (lab): unsupported: $*\" >&2; exit 1; }\n"
                    "exec kill -HUP %d\n" % (UNIT, self.hx.pid))
        os.chmod(shim, 0o755)
        return dict(os.environ, PATH=shim_dir + ":/usr/sbin:/usr/bin:/sbin:/bin")

    def sync_command(self, max_lines=500):
        """The ExecStart of torexit-exitpolicy-sync.service for this exit."""
        return ["/usr/bin/python3", SYNC, "--output", self.exitpolicy_file, "--max-lines", str(max_lines),
                "--torrc", self.hx.torrc, "--reload", UNIT]

    def sync_once(self):
        r = subprocess.run(["ip", "netns", "exec", self.relay_ns] + self.sync_command(), env=self.sync_env(),
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError("exitpolicy sync failed: %s" % r.stderr.strip()[-800:])
        return r.stdout.strip()

    def service_command(self):
        """The ExecStart of torexit-exitpolicy-sync.service as the tor_exit role
        deploys it (its unit template rendered with the role's defaults, one
        `default` instance), with the lab's paths for the program, the rejects file,
        hx's torrc and its control socket."""
        import shlex

        import jinja2
        import yaml
        role = os.path.join(TOP, "roles", "tor_exit")
        with open(os.path.join(role, "defaults", "main.yml")) as f:
            defaults = yaml.safe_load(f)
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        env.filters["dirname"] = os.path.dirname
        with open(os.path.join(role, "templates", "torexit-exitpolicy-sync.service.j2")) as f:
            unit = env.from_string(f.read()).render(dict(
                defaults, ansible_managed="lab", tor_exit_guard_exitpolicy_file=self.exitpolicy_file,
                tor_exit_instance_list=[{"name": "default", "torrc": self.hx.torrc, "unit": UNIT}]))
        line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
        lab = {"/usr/local/lib/torexit/torexit_exitpolicy_sync.py": SYNC, "/run/tor/control": self.hx.control_socket}
        return [lab.get(word, word) for word in shlex.split(line[len("ExecStart="):])]

    def start_sync_service(self, log=None, extra=(), **override):
        """torexit-exitpolicy-sync.service (watch mode, the role's defaults) on hx,
        in the relay namespace, as root like its unit. `override`: option=value
        (e.g. batch_max=10) replacing the unit's value; `extra`: more arguments
        (options the unit leaves at the program's default). Stop it with stop(proc)."""
        cmd = self.service_command()
        for key, value in override.items():
            cmd[cmd.index("--" + key.replace("_", "-")) + 1] = str(value)
        cmd += list(extra)
        self.sync_log = log or os.path.join(self.work, "sync-service.log")
        return self.spawn(*cmd, env=self.sync_env(), log=self.sync_log)

    def sync_log_lines(self):
        try:
            with open(self.sync_log) as f:
                return f.read().splitlines()
        except (AttributeError, OSError):
            return []

    def clear_exitpolicy(self):
        """Drop the guard's reject lines and reload hx (as the role does when the mode is off)."""
        if os.path.exists(self.exitpolicy_file):
            os.unlink(self.exitpolicy_file)
            os.kill(self.hx.pid, signal.SIGHUP)
            t0 = time.monotonic()
            while any(x.startswith("reject 198.") for x in self.exit_policy_in_effect()):
                if time.monotonic() - t0 > 10:
                    raise TimeoutError("hx kept the guard's rejects 10 s after a reload")
                time.sleep(0.05)

    def exit_policy_in_effect(self):
        """hx's exit policy as tor applies it to new streams: the policy of its own
        router descriptor (GETINFO exit-policy/full), which tor rebuilds shortly
        after a reload (measured: not within 40 ms, within 2 s)."""
        ctl = self.hx_control()
        try:
            return ctl.getinfo("exit-policy/full").splitlines()
        finally:
            ctl.close()

    def wait_exit_policy(self, line, timeout=10.0, present=True):
        """Seconds until `line` (e.g. "reject 198.18.1.0/24:22") is (or is no longer)
        in hx's effective exit policy; bounded by `timeout`."""
        t0 = time.monotonic()
        while (line in self.exit_policy_in_effect()) != present:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("hx exit policy: %r still %s after %.0f s"
                                   % (line, "missing" if present else "present", timeout))
            time.sleep(0.05)
        return time.monotonic() - t0

    def exitpolicy_lines(self):
        try:
            with open(self.exitpolicy_file) as f:
                return [line for line in f if line.startswith("ExitPolicy ")]
        except OSError:
            return []


# --- requests through the client (SOCKS5: torkit.socks_open) -------------------------------
async def socks_request(port, host, dport, timeout=20.0, up=64, down=256, rtts=0, user=None):
    """One request through Tor to the lab server: connect, upload `up` bytes, read
    `down` bytes. Returns "ok" or the failure."""
    t_end = time.monotonic() + timeout
    outcome, reader, writer = await socks_open(port, host, dport, timeout, user)
    if outcome != "ok":
        return outcome
    try:
        writer.write(HDR.pack(up, down, rtts) + bytes(up))
        got = 0
        while got < down:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.1, t_end - time.monotonic()))
            if not chunk:
                return "closed"
            got += len(chunk)
        return "ok"
    except asyncio.TimeoutError:
        return "timeout"
    except OSError:
        return "error"
    finally:
        writer.close()


async def socks_many(port, pairs, concurrency=20, rate=None, seconds=60.0, timeout=20.0, up=64, down=256,
                     rtts=0, connect_only=False, users=False, attempts=1):
    """Requests to (host, port) pairs, at most `concurrency` at once and `rate` new
    ones per second, all within `seconds`. Returns counts per outcome, how many were
    tried and, per outcome, the time (s from start) it first occurred. Destinations
    are not kept. users=True: each request as a different Tor user (own circuit);
    attempts > 1: a failed request is tried again on a new circuit (a new SOCKS
    username), as a user clicks "New circuit for this site"; counts["retried"]."""
    sem = asyncio.Semaphore(concurrency)
    counts, first = {}, {}
    t0 = time.monotonic()
    tasks = []

    async def one(host, dport, user):
        try:
            for attempt in range(attempts):
                name = "%s-%d" % (user, attempt) if user and attempt else user
                if connect_only:
                    outcome, _r, w = await socks_open(port, host, dport, timeout, name)
                    if w:
                        w.close()
                else:
                    outcome = await socks_request(port, host, dport, timeout, up, down, rtts, name)
                if outcome == "ok":
                    break
                if attempt + 1 < attempts:
                    counts["retried"] = counts.get("retried", 0) + 1
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome not in first:
                first[outcome] = round(time.monotonic() - t0, 3)
        finally:
            sem.release()

    for i, (host, dport) in enumerate(pairs):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if time.monotonic() - t0 > seconds:
            break
        await sem.acquire()
        tasks.append(asyncio.ensure_future(one(host, dport, "user%d" % i if users else None)))
    if tasks:
        # each request may take `attempts` tries of up to `timeout` each
        await asyncio.wait(tasks, timeout=attempts * timeout + 5)
    return {"tried": len(tasks), "counts": counts, "first_s": first, "elapsed_s": round(time.monotonic() - t0, 2)}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="start a private Tor network, report, remove it")
    ap.add_argument("--cleanup-stale", action="store_true", help="only remove leftovers of dead runs")
    ap.add_argument("--hold", type=float, default=0, help="seconds to keep the network up")
    args = ap.parse_args(argv)
    if args.cleanup_stale:
        print("removed: %s" % (", ".join(cleanup_stale()) or "nothing"))
        return 0
    with TorNet() as net:
        print(json.dumps({"timings": net.timings, "relay_ns": net.relay_ns, "net_ns": net.net_ns,
                          "hx": net.hx.fingerprint, "px": net.px.fingerprint}))
        time.sleep(min(args.hold, 600))
    return 0


if __name__ == "__main__":
    sys.exit(main())
