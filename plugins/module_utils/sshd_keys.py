# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether the connecting user can still log in: password login, usable authorized
keys (key types, RSA sizes, StrictModes, options) and AuthenticationMethods."""

from __future__ import annotations

import base64
import os
import re
import shlex
import stat
import struct

from ansible_collections.torexit.hardening.plugins.module_utils.sshd_effective import first, words
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_match import match_host_and_ip

CRYPT_RE = re.compile(r"^(\$.+|[./0-9A-Za-z]{13}|_[./0-9A-Za-z]{19})$")


def password_state(user, shadow_text, passwd_field):
    """The user's password as sshd's password check sees it: ``set`` (a crypt hash),
    ``empty``, ``locked`` (``!``/``*`` prefixes and every other non-hash), or
    ``unknown`` (no /etc/shadow entry and ``x`` in passwd). The hash is not kept."""
    field = None
    for line in (shadow_text or "").splitlines():
        name, sep, rest = line.partition(":")
        if sep and name == user:
            field = rest.split(":", 1)[0]
            break
    if field is None:
        field = passwd_field if passwd_field not in (None, "x") else None
    if field is None:
        return "unknown"
    if field == "":
        return "empty"
    return "set" if CRYPT_RE.match(field) else "locked"


def password_problem(eff, user, state="set"):
    """None when password or keyboard-interactive login is possible for the user, else why not."""
    if user == "root" and first(eff, "permitrootlogin") != "yes":
        return "PermitRootLogin {} allows no password for root".format(first(eff, "permitrootlogin"))
    if first(eff, "passwordauthentication") != "yes" and not (
            first(eff, "kbdinteractiveauthentication") == "yes" and first(eff, "usepam") == "yes"):
        return "password login is off"
    if state == "set" or (state == "empty" and first(eff, "permitemptypasswords") == "yes"):
        return None
    if state == "empty":
        return f"the password of {user} is empty and PermitEmptyPasswords is no"
    if state == "locked":
        return f"the password of {user} is locked in /etc/shadow"
    return f"the password of {user} is unknown (no /etc/shadow entry)"


def password_possible(eff, user, state="set"):
    return password_problem(eff, user, state) is None


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


def key_options(text):
    """[(name in lower case, value or None)] of an authorized_keys options field:
    comma-separated, values in double quotes with backslash-escaped quotes."""
    options, i = [], 0
    while i < len(text):
        name = re.match(r"[^=,]*", text[i:]).group(0)
        i += len(name)
        value = None
        if text[i:i + 2] == '="':
            i, chars = i + 2, []
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and text[i + 1:i + 2] == '"':
                    i += 1
                chars.append(text[i])
                i += 1
            value = "".join(chars)
            i += 1
        options.append((name.strip().lower(), value))
        i += 1  # the comma
    return options


def from_problem(options, address, usedns="no"):
    """None when the key's from= options admit the connecting address, else why."""
    patterns = [v for name, v in key_options(options) if name == "from"]
    if not patterns:
        return None
    if len(patterns) > 1:
        return "more than one from= option (sshd rejects the line)"
    shown = f'from="{patterns[0]}"'
    if address is None:
        return f"{shown} (connecting address unknown: set connecting_address)"
    # With UseDNS no (the default) sshd matches the host patterns against the address text.
    verdict = match_host_and_ip(address, address, patterns[0])
    if verdict == 1:
        return None
    if verdict == -1:
        return f"{shown} is not a valid pattern list for sshd"
    hint = " (UseDNS yes: host names are not resolved here)" if usedns == "yes" else ""
    return f"{shown} does not admit {address}{hint}"


def key_usable(options, keytype, blob, eff, user, address=None):
    """None when sshd would accept this key for a login shell from ``address``, else the reason."""
    if first(eff, "pubkeyauthentication") != "yes":
        return "PubkeyAuthentication is no"
    if "cert-authority" in [name for name, _value in key_options(options)]:
        return "cert-authority line (certificates are not checked)"
    restricted = from_problem(options, address, first(eff, "usedns", "no"))
    if restricted:
        return restricted
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


def usable_keys(eff, user, home, uid, read_text, lstat=os.stat, address=None):
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
            reason = key_usable(parsed[0], parsed[1], parsed[2], eff, user, address)
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
