# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logic of the torexit.hardening.sshd_config module.

Everything that decides something is a plain function of text or data, so it can be
unit tested without sshd: rendering the managed file, parsing ``sshd -T``, building the
candidate configuration, and the three lock-out checks (password vs. keys, Allow/Deny
lists, ports vs. firewall). ``run()`` at the end does the I/O for the module.
"""

from __future__ import annotations

import base64
import fnmatch
import glob
import grp
import ipaddress
import json
import os
import pwd
import re
import shlex
import stat
import struct
import tempfile

DEFAULT_PATH = "/etc/ssh/sshd_config.d/00-torexit-hardening.conf"
BLOCK_BEGIN = "# BEGIN torexit.hardening.sshd_config"
BLOCK_END = "# END torexit.hardening.sshd_config"
HEADER = "# Managed by torexit.hardening.sshd_config: local changes are overwritten."

# Keywords whose list values are one comma-separated word; every other list value is
# written as one line per element for REPEATED keywords, else joined with spaces.
COMMA_KEYWORDS = {
    "ciphers", "macs", "kexalgorithms", "hostkeyalgorithms", "pubkeyacceptedalgorithms",
    "pubkeyacceptedkeytypes", "casignaturealgorithms", "hostbasedacceptedalgorithms",
}
REPEATED_KEYWORDS = {"port", "listenaddress", "hostkey", "hostcertificate", "subsystem"}
KEYWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class SshdConfigError(Exception):
    """Bad input or an environment the module cannot work in."""


class Refused(Exception):
    """A change that would lock the connecting user out."""

    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
        self.msg = msg


# --------------------------------------------------------------------------- render

def _word(key, value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if not text or "\n" in text or "\r" in text:
        raise SshdConfigError(f"settings.{key}: invalid value {value!r}")
    return text


def render(settings, comment=None):
    """Text of the managed file: header, optional comment, one line per setting."""
    lines = [HEADER]
    for line in (comment or "").splitlines():
        lines.append(("# " + line).rstrip())
    for key in settings:
        if not KEYWORD_RE.match(str(key)) or key.lower() in ("match", "include"):
            raise SshdConfigError(f"settings: invalid keyword {key!r} (Match and Include are not supported)")
        value = settings[key]
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            words = [_word(key, v) for v in value]
            if not words:
                continue
            if key.lower() in COMMA_KEYWORDS:
                lines.append("{} {}".format(key, ",".join(words)))
            elif key.lower() in REPEATED_KEYWORDS:
                lines.extend(f"{key} {w}" for w in words)
            else:
                lines.append("{} {}".format(key, " ".join(words)))
        else:
            lines.append(f"{key} {_word(key, value)}")
    return "\n".join(lines) + "\n"


def with_block(main_text, block):
    """Main file text with the managed block first (sshd keeps the first value seen)."""
    kept, inside = [], False
    for line in main_text.splitlines():
        if line.strip() == BLOCK_BEGIN:
            inside = True
            continue
        if line.strip() == BLOCK_END and inside:
            inside = False
            continue
        if not inside:
            kept.append(line)
    return "\n".join([BLOCK_BEGIN, block.rstrip("\n"), BLOCK_END] + kept) + "\n"


# ------------------------------------------------------------------ include handling

def include_patterns(main_text, main_dir):
    """Absolute glob patterns of every Include line of the main file."""
    patterns = []
    for line in main_text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) > 1 and words[0].lower() == "include":
            patterns.extend(w if os.path.isabs(w) else os.path.join(main_dir, w) for w in words[1:])
    return patterns


def covered_by_include(main_text, main_dir, path):
    return any(fnmatch.fnmatch(path, p) for p in include_patterns(main_text, main_dir))


def candidate_main(main_text, main_dir, path, candidate, globber=glob.glob):
    """Main file text whose Include lines list explicit files, with ``candidate`` read
    where ``path`` would be (and the installed ``path`` never read)."""
    out = []
    for line in main_text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or words[0].lower() != "include":
            out.append(line)
            continue
        files = []
        for word in words[1:]:
            pattern = word if os.path.isabs(word) else os.path.join(main_dir, word)
            matched = set(globber(pattern))
            if fnmatch.fnmatch(path, pattern):
                matched.add(path)
            files.extend(candidate if f == path else f for f in sorted(matched))
        indent = line[:len(line) - len(line.lstrip())]
        out.append(indent + ("Include " + " ".join(files) if files else "# (empty Include)"))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- sshd -T parsing

def parse_effective(text):
    """``sshd -T`` output as {keyword: [value, ...]} (keywords lower case)."""
    eff = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts:
            eff.setdefault(parts[0].lower(), []).append(parts[1] if len(parts) > 1 else "")
    return eff


def first(eff, key, default=""):
    values = eff.get(key)
    return values[0] if values else default


def words(eff, key):
    return [w for v in eff.get(key, []) for w in v.split()]


def effective_diff(before, after):
    keys = sorted(set(before) | set(after))
    return {k: {"before": before.get(k, []), "after": after.get(k, [])}
            for k in keys if before.get(k, []) != after.get(k, [])}


def listen_ports(eff):
    """TCP ports sshd listens on: from ListenAddress (which sshd -T prints with its
    port), else from Port."""
    ports = set()
    for value in eff.get("listenaddress", []):
        addr = value.split()[0]
        match = re.search(r":(\d+)$", addr)
        if match:
            ports.add(int(match.group(1)))
    if not ports:
        ports = {int(p) for p in eff.get("port", []) if p.isdigit()}
    return ports


def connection_spec(user=None, address=None, port=None):
    """The -C argument of ``sshd -T`` for the connecting user (Match blocks apply)."""
    spec = []
    if user:
        spec.append("user=" + user)
    if address:
        spec += ["addr=" + address, "host=" + address]
    if port:
        spec.append(f"lport={port}")
    return ",".join(spec)


# ------------------------------------------------------------- who is connecting

def parse_ssh_connection(value):
    """SSH_CONNECTION is 'client_addr client_port server_addr server_port'."""
    parts = (value or "").split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None, None
    return parts[0], int(parts[3])


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


# ---------------------------------------------------- refusal 1: passwords and keys

def password_possible(eff, user):
    if user == "root" and first(eff, "permitrootlogin") != "yes":
        return False
    if first(eff, "passwordauthentication") == "yes":
        return True
    return first(eff, "kbdinteractiveauthentication") == "yes" and first(eff, "usepam") == "yes"


def parse_key_line(line):
    """(options, key type, key blob) of an authorized_keys line, or None."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        fields = shlex.split(line, posix=False)
    except ValueError:
        return None
    for i, field in enumerate(fields[:-1]):
        if re.match(r"^(ssh-|ecdsa-|sk-|rsa-)", field):
            try:
                blob = base64.b64decode(fields[i + 1], validate=True)
            except ValueError:
                return None
            return " ".join(fields[:i]), field, blob
    return None


def rsa_bits(blob):
    """Modulus size of an ssh-rsa public key blob (string type, mpint e, mpint n)."""
    parts, offset = [], 0
    for _field in range(3):
        (length,) = struct.unpack(">I", blob[offset:offset + 4])
        parts.append(blob[offset + 4:offset + 4 + length])
        offset += 4 + length
    return int.from_bytes(parts[2], "big").bit_length()


def key_usable(options, keytype, blob, eff, user):
    """None when sshd would accept this key for a login shell, else the reason."""
    if first(eff, "pubkeyauthentication") != "yes":
        return "PubkeyAuthentication is no"
    if "cert-authority" in options.split(","):
        return "cert-authority line (certificates are not checked)"
    if user == "root" and first(eff, "permitrootlogin") not in ("yes", "prohibit-password", "without-password"):
        return "PermitRootLogin {}".format(first(eff, "permitrootlogin"))
    accepted = first(eff, "pubkeyacceptedalgorithms").split(",")
    algorithms = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if keytype == "ssh-rsa" else [keytype]
    if not any(a in accepted for a in algorithms):
        return f"key type {keytype} not in PubkeyAcceptedAlgorithms"
    if keytype == "ssh-rsa":
        try:
            bits = rsa_bits(blob)
        except (struct.error, IndexError):
            return "unreadable RSA key"
        if bits < int(first(eff, "requiredrsasize", "1024") or 1024):
            return f"RSA key of {bits} bits is below RequiredRSASize"
    return None


def authorized_keys_files(eff, user, home):
    files = []
    for pattern in words(eff, "authorizedkeysfile"):
        if pattern == "none":
            continue
        path = pattern.replace("%%", "\0").replace("%h", home).replace("%u", user).replace("%U", "")
        path = path.replace("\0", "%")
        if path.startswith("~/"):
            path = os.path.join(home, path[2:])
        files.append(path if os.path.isabs(path) else os.path.join(home, path))
    return files


def strict_modes_problem(path, uid, home, lstat=os.stat):
    """What sshd's StrictModes would object to on the file or its directories."""
    current = path
    for _level in range(64):
        try:
            st = lstat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if st.st_uid not in (0, uid):
            return f"{current} is owned by uid {st.st_uid}"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{current} is writable by group or others"
        if current in (home, "/"):
            return None
        current = os.path.dirname(current)
    return None


def usable_keys(eff, user, home, uid, read_text, lstat=os.stat):
    """(usable key descriptions, reasons the others are not usable)."""
    good, bad = [], []
    for path in authorized_keys_files(eff, user, home):
        text = read_text(path)
        if text is None:
            continue
        if first(eff, "strictmodes") == "yes":
            problem = strict_modes_problem(path, uid, home, lstat)
            if problem:
                bad.append(f"{path}: StrictModes: {problem}")
                continue
        for line in text.splitlines():
            parsed = parse_key_line(line)
            if parsed is None:
                continue
            reason = key_usable(parsed[0], parsed[1], parsed[2], eff, user)
            if reason:
                bad.append(f"{path}: {reason}")
            else:
                good.append(f"{path}: {parsed[1]}")
    return good, bad


def login_possible(eff, password, keys):
    """Whether AuthenticationMethods can be satisfied with what is available."""
    available = {"password": password, "keyboard-interactive": password, "publickey": keys}
    methods = first(eff, "authenticationmethods", "any")
    if methods == "any":
        return password or keys
    return any(all(available.get(m.split(":")[0], False) for m in lst.split(","))
               for lst in methods.split())


# -------------------------------------------------- refusal 2: Allow/Deny lists

def _host_matches(pattern, address):
    if address is None:
        return None
    for item in pattern.split(","):
        negate = item.startswith("!")
        item = item.lstrip("!")
        try:
            hit = ipaddress.ip_address(address) in ipaddress.ip_network(item, strict=False)
        except ValueError:
            hit = fnmatch.fnmatchcase(address, item)
        if hit:
            return not negate
    return False


def user_matches(pattern, user, address):
    """sshd's match_user: USER or USER@HOST with * and ? wildcards. None = unknown
    (a @HOST pattern while the connecting address is unknown)."""
    if "@" in pattern:
        upat, hpat = pattern.split("@", 1)
        if not fnmatch.fnmatchcase(user, upat):
            return False
        return _host_matches(hpat, address)
    return fnmatch.fnmatchcase(user, pattern)


def access_problem(eff, user, groups, address):
    """None when AllowUsers/DenyUsers/AllowGroups/DenyGroups let the user in, else why.
    Patterns that cannot be decided (unknown address) count against the user."""
    for pattern in words(eff, "denyusers"):
        if user_matches(pattern, user, address) is not False:
            return f"DenyUsers {pattern} matches {user}"
    allow = words(eff, "allowusers")
    if allow and not any(user_matches(p, user, address) for p in allow):
        return "AllowUsers {} does not include {}".format(" ".join(allow), user)
    for pattern in words(eff, "denygroups"):
        if any(fnmatch.fnmatchcase(g, pattern) for g in groups):
            return f"DenyGroups {pattern} matches a group of {user}"
    allow = words(eff, "allowgroups")
    if allow and not any(fnmatch.fnmatchcase(g, p) for g in groups for p in allow):
        return "AllowGroups {} includes no group of {} ({})".format(" ".join(allow), user, " ".join(groups))
    return None


# -------------------------------------------------- refusal 3: ports and firewall

def _port_in(spec, port):
    for item in str(spec).split(","):
        low, _sep, high = item.partition(":")
        if low.isdigit() and int(low) <= port <= int(high if high.isdigit() else low):
            return True
    return False


def ufw_open(status_text, port):
    """None when ufw is inactive; else whether the first ufw rule naming the TCP port
    allows it (ALLOW or LIMIT). The app profile OpenSSH stands for port 22."""
    lines = status_text.splitlines()
    if not lines or lines[0].strip().lower() != "status: active":
        return None
    for line in lines[1:]:
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) < 2 or cols[0] == "To" or set(cols[0]) <= set("- "):
            continue
        to = cols[0].replace("(v6)", "").split()[0]
        spec, _sep, proto = to.partition("/")
        if proto not in ("", "tcp"):
            continue
        if spec == "OpenSSH":
            spec = "22"
        if _port_in(spec, port):
            return cols[1].split()[0] in ("ALLOW", "LIMIT")
    return False


def _nft_values(right, sets):
    if isinstance(right, str) and right.startswith("@"):
        return _nft_values({"set": sets.get(right[1:], [])}, sets)
    if isinstance(right, dict) and "set" in right:
        out = []
        for elem in right["set"] if isinstance(right["set"], list) else [right["set"]]:
            out.extend(_nft_values(elem, sets))
        return out
    if isinstance(right, dict) and "range" in right:
        return [tuple(right["range"])]
    if isinstance(right, dict) and "elem" in right:
        return _nft_values(right["elem"].get("val"), sets)
    return [right]


def _nft_rule_accepts(expr, port, sets):
    verdict = any("accept" in e for e in expr)
    for e in expr:
        match = e.get("match") if isinstance(e, dict) else None
        if not match or match.get("op") not in ("==", "in"):
            continue
        payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
        if payload.get("field") == "dport" and payload.get("protocol") in ("tcp", "th"):
            for v in _nft_values(match.get("right"), sets):
                if isinstance(v, tuple) and v[0] <= port <= v[1]:
                    return verdict
                if isinstance(v, int) and v == port:
                    return verdict
    return False


def _nft_unconditional_drop(expr):
    kinds = [next(iter(e)) for e in expr if isinstance(e, dict)]
    return bool(kinds) and kinds[-1] in ("drop", "reject") and set(kinds[:-1]) <= {"counter", "log"}


def nft_open(ruleset, port, skip_ufw=False):
    """Whether every nftables table that filters input lets TCP ``port`` in.

    A table closes by default when one of its input base chains has policy drop or
    ends in an unconditional drop/reject; such a table counts as open for the port
    when any of its rules matches that TCP destination port (value, range, anonymous
    or named set) and accepts. Other conditions of that rule (source address,
    interface) are not evaluated. Returns (open, names of the tables that block)."""
    items = json.loads(ruleset).get("nftables", []) if ruleset.strip() else []
    tables = {}
    for item in items:
        kind, obj = next(iter(item.items()))
        if kind not in ("chain", "rule", "set") or obj.get("family") not in ("ip", "ip6", "inet"):
            continue
        table = tables.setdefault((obj["family"], obj["table"]), {"chains": [], "rules": [], "sets": {}})
        if kind == "chain":
            table["chains"].append(obj)
        elif kind == "rule":
            table["rules"].append(obj)
        else:
            table["sets"][obj["name"]] = obj.get("elem", [])
    blocking = []
    for (family, name), table in sorted(tables.items()):
        if skip_ufw and any(c["name"].startswith("ufw") for c in table["chains"]):
            continue
        inputs = [c["name"] for c in table["chains"] if c.get("hook") == "input"]
        closed = any(c.get("hook") == "input" and c.get("policy") == "drop" for c in table["chains"]) or any(
            r["chain"] in inputs and _nft_unconditional_drop(r.get("expr", [])) for r in table["rules"])
        if closed and not any(_nft_rule_accepts(r.get("expr", []), port, table["sets"]) for r in table["rules"]):
            blocking.append(f"{family} {name}")
    return not blocking, blocking


def iptables_open(save_text, port, skip_ufw=False):
    """Same rule as nft_open for iptables-save output (legacy iptables): the filter
    table closes by default with INPUT policy DROP or an unconditional -j DROP/REJECT
    in INPUT, and is open for the port when an ACCEPT rule names it with --dport or
    --dports."""
    closed = accepted = has_ufw = False
    in_filter = False
    for line in save_text.splitlines():
        if line.startswith("*"):
            in_filter = line.strip() == "*filter"
            continue
        if not in_filter:
            continue
        if line.startswith(":ufw"):
            has_ufw = True
        if line.startswith(":INPUT ") and line.split()[1] == "DROP":
            closed = True
        if not line.startswith("-A "):
            continue
        args = shlex.split(line)
        target = args[args.index("-j") + 1] if "-j" in args else ""
        if args[1] == "INPUT" and target in ("DROP", "REJECT") and len(args) == 4:
            closed = True
        if target == "ACCEPT" and ("tcp" in args or "6" in args):
            for flag in ("--dport", "--dports", "--destination-port", "--destination-ports"):
                if flag in args and _port_in(args[args.index(flag) + 1], port):
                    accepted = True
    if skip_ufw and has_ufw:
        return True
    return accepted or not closed


# ------------------------------------------------------------------- the decision

def check_lockout(before, after, user, groups, home, uid, address, port, read_text,
                  firewall, lstat=os.stat):
    """Raise Refused when ``after`` would lock the connecting user out where ``before``
    did not. ``before`` may be None (current configuration unreadable): then only
    ``after`` is judged. ``firewall(port)`` returns None when the port is open, else
    the reason it is not."""
    # Refusal 1: no way left to log in (passwords off and no usable key).
    pw_after = password_possible(after, user)
    keys_after, bad_after = usable_keys(after, user, home, uid, read_text, lstat)
    if not login_possible(after, pw_after, bool(keys_after)):
        ok_before = True
        if before is not None:
            keys_before, _problems = usable_keys(before, user, home, uid, read_text, lstat)
            ok_before = login_possible(before, password_possible(before, user), bool(keys_before))
        if ok_before:
            raise Refused(
                "no_usable_key",
                "refusing: password login would be impossible for {}, who has no usable "
                "authorized key ({})".format(user, "; ".join(bad_after) or "no authorized_keys file with a key"))
    # Refusal 2: AllowUsers/AllowGroups/DenyUsers/DenyGroups exclude the user.
    problem = access_problem(after, user, groups, address)
    if problem and (before is None or access_problem(before, user, groups, address) is None):
        raise Refused("user_excluded", "refusing: the new configuration would lock out the connecting user {}: {}{}".format(
            user, problem, "" if address else " (connecting address unknown: set connecting_address)"))
    # Refusal 3: ports.
    ports_before = listen_ports(before) if before is not None else set()
    ports_after = listen_ports(after)
    if port and port in ports_before and port not in ports_after:
        raise Refused("port_dropped", f"refusing: sshd would stop listening on port {port}, the port "
                      "of the current connection; add the new port first, reconnect on it, then "
                      "drop the old one")
    for new in sorted(ports_after - ports_before):
        reason = firewall(new)
        if reason:
            raise Refused("port_closed", f"refusing: new sshd port {new} is not open in the firewall ({reason})")
    return sorted(ports_before), sorted(ports_after)


# ------------------------------------------------------------------------ module I/O

def _read_text(path):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _firewall_checker(module):
    def check(port):
        ufw = module.get_bin_path("ufw")
        ufw_active = False
        if ufw:
            rc, out, _err = module.run_command([ufw, "status"])
            verdict = ufw_open(out, port) if rc == 0 else None
            ufw_active = verdict is not None
            if verdict is False:
                return f"ufw has no ALLOW or LIMIT rule for {port}/tcp"
        nft = module.get_bin_path("nft")
        if nft:
            rc, out, err = module.run_command([nft, "-j", "list", "ruleset"])
            if rc != 0:
                return f"cannot read the nftables ruleset: {err.strip()}"
            is_open, blocking = nft_open(out, port, skip_ufw=ufw_active)
            if not is_open:
                return (f"nftables table(s) {', '.join(blocking)} drop input by default "
                        f"and no rule accepts tcp dport {port}")
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            path = module.get_bin_path(tool)
            if path:
                rc, out, _err = module.run_command([path, "-t", "filter"])
                if rc == 0 and not iptables_open(out, port, skip_ufw=ufw_active):
                    return f"{tool}: INPUT drops by default and no ACCEPT rule names port {port}"
        return None
    return check


def _sshd_T(module, sshd, config, spec):
    cmd = [sshd, "-T", "-f", config] + (["-C", spec] if spec else [])
    rc, out, err = module.run_command(cmd)
    return (parse_effective(out), None) if rc == 0 else (None, err.strip() or out.strip())


def run(module):
    p = module.params
    path, main = p["path"], p["main_config"]
    sshd = p["sshd_path"] or module.get_bin_path("sshd", opt_dirs=["/usr/sbin", "/sbin"])
    if not sshd:
        module.fail_json(msg="sshd_path: sshd not found; is openssh-server installed?")
    try:
        new_file_text = render(p["settings"], p["comment"])
    except SshdConfigError as exc:
        module.fail_json(msg=str(exc))
    main_text = _read_text(main)
    if main_text is None:
        module.fail_json(msg=f"main_config: cannot read {main}")
    main_dir = os.path.dirname(main)
    dropin = covered_by_include(main_text, main_dir, path)
    target = path if dropin else main
    old_text = _read_text(target)
    new_text = new_file_text if dropin else with_block(main_text, new_file_text)

    # Who is connecting: explicit options, else SUDO_USER / the module's user, and
    # SSH_CONNECTION from the environment or the nearest ancestor process.
    user = p["connecting_user"] or os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        module.fail_json(msg=f"connecting_user: no such user {user!r} on the target")
    groups = sorted({grp.getgrgid(pw.pw_gid).gr_name} | {g.gr_name for g in grp.getgrall() if user in g.gr_mem})
    addr, port = parse_ssh_connection(find_ssh_connection(os.environ, proc_environ, proc_ppid, os.getpid()))
    address = p["connecting_address"] or addr
    port = p["connecting_port"] or port
    spec = connection_spec(user, address, port)

    tmpdir = tempfile.mkdtemp(prefix="sshd_config.")
    try:
        cand = os.path.join(tmpdir, os.path.basename(target))
        with open(cand, "w") as f:
            f.write(new_text)
        if dropin:
            cand_main = os.path.join(tmpdir, "sshd_config")
            with open(cand_main, "w") as f:
                f.write(candidate_main(main_text, main_dir, path, cand))
        else:
            cand_main = cand
        rc, out, err = module.run_command([sshd, "-t", "-f", cand_main])
        if rc != 0:
            module.fail_json(msg="settings: sshd -t rejects the new configuration: %s" % (err.strip() or out.strip()),
                             rc=rc)
        before, before_err = _sshd_T(module, sshd, main, spec)
        after, after_err = _sshd_T(module, sshd, cand_main, spec)
        if after is None:
            module.fail_json(msg=f"settings: sshd -T rejects the new configuration: {after_err}")
        try:
            ports_before, ports_after = check_lockout(
                before, after, user, groups, pw.pw_dir, pw.pw_uid, address, port, _read_text,
                _firewall_checker(module))
        except Refused as exc:
            module.fail_json(msg=exc.msg, refused=exc.code, connecting_user=user, connecting_port=port,
                             connecting_address=address)
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)

    changed = old_text != new_text
    result = {
        "changed": changed, "path": target, "mode": "drop-in" if dropin else "main",
        "effective_changed": before != after,
        "effective_diff": effective_diff(before or {}, after),
        "ports_before": ports_before, "ports_after": ports_after,
        "connecting_user": user, "connecting_port": port, "connecting_address": address,
    }
    if before is None:
        module.warn(f"the current configuration is rejected by sshd -T ({before_err})")
    if port is None:
        module.warn("connecting port unknown (no connecting_port, no SSH_CONNECTION): "
                    "not checking that sshd keeps listening on it")
    if module._diff:
        result["diff"] = {"before": old_text or "", "after": new_text, "before_header": target, "after_header": target}
    if changed and not module.check_mode:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".sshd_config.")
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
        if old_text is None:
            os.chmod(tmp, 0o644)
        module.atomic_move(tmp, target)
    return result
