# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit a torrc option by option, keeping comments and the order of the rest.

A torrc is a list of lines ``Keyword value``; keywords are case-insensitive,
options such as ExitPolicy or ORPort may repeat and then count in file order,
``#`` starts a comment, a trailing backslash continues a line, and
``%include PATH`` reads a file or every file of a directory in place.
"""

from __future__ import annotations

import re
import subprocess

_COMMENT_RE = re.compile(r"\s+#.*$")


class TorrcError(ValueError):
    """A value that cannot be written to a torrc line as given."""


class Line:
    """One logical torrc line (possibly several physical lines)."""

    __slots__ = ("key", "raw", "value")

    def __init__(self, raw, key=None, value=None):
        self.raw = raw        # text as found, without the final newline
        self.key = key        # keyword as written, None for comments/blank lines
        self.value = value    # value without comment, whitespace collapsed

    @property
    def name(self):
        return self.key.lower() if self.key else None


def _split(logical):
    text = logical.strip()
    if not text or text.startswith("#"):
        return None, None
    text = _COMMENT_RE.sub("", text)
    key, _sep, value = text.partition(" ") if " " in text else text.partition("\t")
    return key.strip(), " ".join(value.split())


def parse(text):
    """Parse torrc text into a list of Line objects."""
    lines, pending = [], []
    for physical in text.splitlines():
        pending.append(physical)
        stripped = physical.rstrip()
        if stripped.endswith("\\") and not stripped.lstrip().startswith("#"):
            continue
        raw = "\n".join(pending)
        logical = " ".join(p.rstrip().rstrip("\\") for p in pending)
        key, value = _split(logical)
        lines.append(Line(raw, key, value))
        pending = []
    if pending:  # file ended inside a continuation
        raw = "\n".join(pending)
        key, value = _split(" ".join(p.rstrip().rstrip("\\") for p in pending))
        lines.append(Line(raw, key, value))
    return lines


def render(lines):
    """Text of a list of Line objects, ending in a newline when not empty."""
    if not lines:
        return ""
    return "\n".join(line.raw for line in lines) + "\n"


def check_value(option, value):
    """Return the value as one torrc line would hold it, or raise TorrcError."""
    if not isinstance(value, str):
        value = str(value)
    if "\n" in value or "\r" in value:
        raise TorrcError(f"option {option}: value {value!r} spans several lines; give a list for repeated lines")
    if re.search(r"(^|\s)#", value):
        raise TorrcError(f"option {option}: value {value!r} contains ' #', which tor reads as the start of a comment")
    return " ".join(value.split())


def check_option(option):
    if not option or not re.match(r"^(%include|[+/]?[A-Za-z][A-Za-z0-9_]*)$", option):
        raise TorrcError(f"option name {option!r} is not a torrc keyword")
    return option


def get_values(lines, option):
    name = option.lower()
    return [line.value for line in lines if line.name == name]


def _new_line(option, value):
    return Line(f"{option} {value}" if value != "" else option, option, value)


def _insert_index(lines, option):
    """New %include lines go before the first option, everything else at the end."""
    if option.lower() == "%include":
        for index, line in enumerate(lines):
            if line.key is not None:
                return index
    return len(lines)


def set_option(lines, option, values):
    """Make ``option`` hold exactly ``values`` (in order); return the new list.

    The first existing line of the option keeps its place and the new lines go
    there; other lines of the option are removed. An empty list removes it.
    """
    option = check_option(option)
    values = [check_value(option, v) for v in values]
    if get_values(lines, option) == values:
        return list(lines)  # nothing to do: leave the lines byte for byte
    name = option.lower()
    out, placed = [], False
    for line in lines:
        if line.name != name:
            out.append(line)
        elif not placed:
            out.extend(_new_line(option, v) for v in values)
            placed = True
    if not placed:
        at = _insert_index(out, option)
        out[at:at] = [_new_line(option, v) for v in values]
    return out


def remove_values(lines, option, values=None):
    """Remove every line of ``option``, or only the lines holding ``values``."""
    name = option.lower()
    drop = None if values is None else {check_value(option, v) for v in values}
    return [line for line in lines
            if line.name != name or (drop is not None and line.value not in drop)]


def purge(lines, keep):
    """Remove every option line whose keyword is not in ``keep`` (comments stay)."""
    keep = {k.lower() for k in keep}
    return [line for line in lines if line.key is None or line.name in keep]


def verify(path, tor_binary="tor", defaults_torrc=None, run=subprocess.run):
    """Run ``tor --verify-config`` on ``path``; return (ok, message)."""
    cmd = [tor_binary, "--verify-config", "-f", path]
    if defaults_torrc:
        cmd[1:1] = ["--defaults-torrc", defaults_torrc]
    try:
        proc = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   universal_newlines=True, cwd="/", check=False, timeout=120)
    except OSError as exc:
        return False, f"cannot run {tor_binary}: {exc}"
    output = proc.stdout or ""
    if proc.returncode == 0:
        return True, output
    problems = [line.split("] ", 1)[-1] for line in output.splitlines()
                if "[warn]" in line or "[err]" in line]
    return False, "; ".join(problems) or output.strip() or f"exit code {proc.returncode}"
