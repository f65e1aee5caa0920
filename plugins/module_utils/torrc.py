# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit a torrc option by option, keeping comments and the order of the rest.

A torrc is a list of lines ``Keyword value``; keywords are case-insensitive,
options such as ExitPolicy or ORPort may repeat and then count in file order,
``#`` starts a comment, a trailing backslash continues a line, and
``%include PATH`` reads a file or every file of a directory in place.

How tor reads the file is ported from tor's own parser, so that this module
sees the same options tor sees: ``read_file_to_str`` (src/lib/fs/files.c: every
carriage return is deleted, a NUL byte ends the text) and
``parse_config_line_from_str_verbose`` (src/lib/encoding/confline.c) with
``unescape_string`` (src/lib/encoding/cstring.c) for values in double quotes.
Values this module writes go out unquoted, so :func:`check_value` refuses every
character or shape tor would read as more, or less, than the value itself.
"""

from __future__ import annotations

import bisect
import re
import subprocess
import unicodedata

# TOR_ISSPACE (src/lib/string/compat_ctype.c): space, \t, \n, \v, \f, \r
TOR_SPACE = " \t\n\v\f\r"
_HEX = "0123456789abcdefABCDEF"
_OCT = "01234567"


class TorrcError(ValueError):
    """A value that cannot be written to a torrc line as given."""


class Line:
    """One logical torrc line (possibly several physical lines)."""

    __slots__ = ("key", "raw", "tor_value", "value")

    def __init__(self, raw, key=None, value=None, tor_value=None):
        self.raw = raw              # text as found, without the final newline
        self.key = key              # keyword as written, None for comments/blank lines
        self.value = value          # tor's value with runs of blanks made one space (None: tor cannot read it)
        self.tor_value = tor_value  # the value exactly as tor reads it

    @property
    def name(self):
        return self.key.lower() if self.key else None


def unescape(text, pos):
    """Port of tor's unescape_string: decode the C-style quoted string starting at
    ``text[pos] == '"'``. Return (value, position after the closing quote), or
    (None, pos) when tor would refuse it."""
    n = len(text)
    cp = pos + 1
    while True:  # first pass: validate, as tor does
        c = text[cp] if cp < n else "\0"
        if c in "\0\n":
            return None, pos
        if c == '"':
            break
        if c == "\\":
            nxt = text[cp + 1] if cp + 1 < n else "\0"
            if nxt in "xX":
                if not (cp + 3 < n and text[cp + 2] in _HEX and text[cp + 3] in _HEX):
                    return None, pos
                cp += 4
            elif nxt in _OCT:
                cp += 2
                for _digit in range(2):
                    if cp < n and text[cp] in _OCT:
                        cp += 1
            elif nxt in "nrt\"\\'":
                cp += 2
            else:
                return None, pos
        else:
            cp += 1
    out, cp = [], pos + 1
    while text[cp] != '"':  # second pass: decode
        c = text[cp]
        if c != "\\":
            out.append(c)
            cp += 1
            continue
        nxt = text[cp + 1]
        if nxt in "nrt":
            out.append({"n": "\n", "r": "\r", "t": "\t"}[nxt])
            cp += 2
        elif nxt in "xX":
            out.append(chr(int(text[cp + 2:cp + 4], 16)))
            cp += 4
        elif nxt in _OCT:
            digits = nxt
            cp += 2
            for _digit in range(2):
                if text[cp] in _OCT:
                    digits += text[cp]
                    cp += 1
            if int(digits, 8) > 255:
                return None, pos
            out.append(chr(int(digits, 8)))
        else:  # ' " \\
            out.append(nxt)
            cp += 2
    return "".join(out), cp + 1


def parse_entry(text, pos):
    """Port of tor's parse_config_line_from_str_verbose at ``text[pos:]``.

    Returns (key, value, next_pos, entry_end, error): key and value are None at
    the end of the text; next_pos is where tor goes on (comments and blank lines
    skipped); entry_end is just after the newline that ends this entry; error is
    tor's message when it refuses the line.
    """
    n = len(text)
    i = pos
    while True:  # skip blanks and comment lines up to the keyword
        while i < n and text[i] in TOR_SPACE:
            i += 1
        if i < n and text[i] == "#":
            while i < n and text[i] != "\n":
                i += 1
        else:
            break
    if i >= n:
        return None, None, i, i, None
    start = i
    while i < n and text[i] not in TOR_SPACE and text[i] != "#" and text[i:i + 2] != "\\\n":
        i += 1
    key = text[start:i]
    while i < n and text[i] in " \t":
        i += 1
    val = i
    if i < n and text[i] == '"':
        value, i = unescape(text, i)
        if value is None:
            return key, None, i, _line_end(text, i), "Invalid escape sequence in quoted string"
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "\r":
            i += 1
            if i < n and text[i] == "\n":
                i += 1
        if i < n and text[i] not in "#\n":
            return key, None, i, _line_end(text, i), "Excess data after quoted string"
        entry_end = _line_end(text, i)
    else:
        continuation = False
        while i < n and text[i] != "\n" and (text[i] != "#" or continuation):
            if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                continuation = True
                i += 2
            elif text[i] == "#":  # inside a continuation a comment also eats its newline
                i += 1
                while i < n and text[i] != "\n":
                    i += 1
                if i < n:
                    i += 1
            else:
                i += 1
        if i < n and text[i] == "\n":
            cp = i
            i += 1
            entry_end = i
        else:
            cp = i
            entry_end = _line_end(text, i)
        while cp > val and text[cp - 1] in TOR_SPACE:
            cp -= 1
        value = text[val:cp]
        if continuation:
            value = _join_continued(value)
    if i < n and text[i] == "#":
        while i < n and text[i] != "\n":
            i += 1
    while i < n and text[i] in TOR_SPACE:
        i += 1
    return key, value, i, entry_end, None


def _line_end(text, i):
    """Position just after the newline at or after ``i`` (or the end of the text)."""
    at = text.find("\n", i)
    return len(text) if at < 0 else at + 1


def _join_continued(value):
    out, j, n = [], 0, len(value)
    while j < n:
        if value[j] == "#":
            j += 1
            while j < n and value[j] != "\n":
                j += 1
            if j < n:
                j += 1
        elif value[j] == "\\" and j + 1 < n and value[j + 1] == "\n":
            j += 2
        else:
            out.append(value[j])
            j += 1
    return "".join(out)


def tor_text(text):
    """The text tor's parser gets from a torrc file: CRs deleted, cut at the first NUL."""
    return text.replace("\r", "").split("\0", 1)[0]


def tor_lines(text):
    """[(key, value)] exactly as tor reads the torrc ``text`` (without %include
    expansion). Raises TorrcError with tor's message where tor refuses the text."""
    text = tor_text(text)
    out, pos = [], 0
    while True:
        key, value, pos, _end, error = parse_entry(text, pos)
        if error:
            raise TorrcError(f"tor cannot parse the line of {key}: {error}")
        if key is not None:
            out.append((key, value))
        if pos >= len(text):
            return out


def _blanks(value):
    return re.sub(r"[ \t]+", " ", value.strip(" \t"))


def parse(text):
    """Parse torrc text into a list of Line objects, as tor groups and reads it.

    Raises TorrcError for a NUL byte: tor stops reading there, so every later
    line only seems to be in force.
    """
    if "\0" in text:
        row = text[:text.index("\0")].count("\n") + 1
        raise TorrcError(f"line {row} holds a NUL byte: tor ignores the rest of the file after it; "
                         "remove it first")
    clean = text.replace("\r", "")  # tor deletes every CR before it parses
    raw_rows = text.split("\n")
    if text.endswith("\n"):
        raw_rows.pop()
    starts = [0] + [m.end() for m in re.finditer("\n", clean)]
    lines, row = [], 0
    while row < len(raw_rows):
        body = clean[starts[row]:starts[row + 1] - 1] if row + 1 < len(starts) else clean[starts[row]:]
        stripped = body.strip(TOR_SPACE)
        if not stripped or stripped.startswith("#"):
            lines.append(Line(raw_rows[row]))
            row += 1
            continue
        key, value, _next, entry_end, error = parse_entry(clean, starts[row])
        if error:  # tor refuses the file; keep the line as it is, known only by its key
            last, value, tor_value = row, None, None
        else:
            last = max(bisect.bisect_right(starts, entry_end - 1) - 1, row)
            tor_value, value = value, _blanks(value)
        lines.append(Line("\n".join(raw_rows[row:last + 1]), key, value, tor_value))
        row = last + 1
    return lines


def render(lines):
    """Text of a list of Line objects, ending in a newline when not empty."""
    if not lines:
        return ""
    return "\n".join(line.raw for line in lines) + "\n"


def value_problem(text):
    """Why tor would read ``Option text`` as something other than ``text``, or None.

    ``text`` has no blanks at either end (tor drops those). Values are written
    unquoted, so tor's parser takes them literally except for: a newline (the
    line ends there, the rest becomes an option of its own); a backslash at the
    end (a continuation: the next line becomes part of this value); ``#`` (a
    comment start: the rest is dropped, and inside a continuation even the next
    line is swallowed); a CR (tor deletes every CR before parsing, so ``\\<CR>``
    would turn into a continuation); a NUL (tor stops reading the file there);
    a leading ``"`` (a C-style quoted string whose escapes tor decodes).
    """
    if "\n" in text:
        return "holds a newline, which ends the line: the rest would be read as an option of its own " \
               "(give a list for repeated lines)"
    if "\r" in text:
        return "holds a carriage return; tor deletes every CR before parsing, which changes what the line means"
    if "\0" in text:
        return "holds a NUL byte; tor stops reading the file there and drops every later line"
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") and char != "\t":
            return f"holds the control or line-separator character U+{ord(char):04X}"
    if text.endswith("\\"):
        return "ends in a backslash, which tor reads as a line continuation: the next line would become " \
               "part of this value"
    if "#" in text:
        return "holds '#', which tor reads as the start of a comment: the rest of the value would be dropped"
    if text.startswith('"'):
        return "starts with a double quote, so tor would read a quoted string and decode backslash escapes " \
               "in it; give the value without quotes"
    return None


def check_value(option, value):
    """Return the value as one torrc line will hold it, or raise TorrcError.

    Blanks at either end are dropped (tor drops them too) and runs of blanks
    inside become one space; anything tor would read differently is refused,
    naming the option and the value.
    """
    if not isinstance(value, str):
        value = str(value)
    text = value.strip(" \t")
    problem = value_problem(text)
    if problem:
        raise TorrcError(f"option {option}: value {value!r} {problem}")
    return _blanks(text)


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
