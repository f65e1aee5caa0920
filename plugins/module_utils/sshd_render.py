# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file the sshd_config module writes: rendering settings, the marked block at
the top of the main file, and the candidate main file with its Include lines made
explicit (so ``sshd -t``/``-T`` read the new drop-in instead of the installed one)."""

from __future__ import annotations

import fnmatch
import glob
import os
import re

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
