# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every backend of the egress guard shares, whatever firewall it renders for:
the decision order, the counters, the families, the ban sets and the detectors,
and the conversion of "N per window" into a rate. No firewall syntax here; each
backend (guard_nftables, guard_iptables, guard_ufw) imports this module and no
other backend.
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

# --- where a new outbound connection's fate is decided -------------------------------


class Step(NamedTuple):
    """One step of the decision order. Steps of one `stage` act on disjoint
    families (an IPv4 rule never matches an IPv6 packet), so a renderer that
    writes both families into one chain may write a stage family by family."""
    name: str
    stage: str
    per_family: bool
    counter: str | None


# The order every renderer walks (guard_nftables.render, guard_xtables.rules); a unit
# test checks each backend's golden output against it.
DECISION_ORDER = (
    Step("ct_new", "skip", False, None),            # not a new connection: untouched (most packets leave here)
    Step("protocol", "skip", False, None),          # not TCP: untouched
    Step("owner", "skip", False, None),             # another user's connection: untouched
    Step("loopback", "skip", False, None),          # to loopback: untouched
    Step("guarded", "count", False, "guarded_new"),
    Step("allow", "pass", True, "allowed"),         # allow list: never limited
    Step("relays", "pass", True, "allowed"),        # known Tor relays: never limited
    Step("deny", "refuse", True, "blocked_deny"),
    Step("deny_port", "refuse", True, "blocked_deny"),
    Step("optout", "refuse", True, "blocked_optout"),
    Step("bans", "ban", True, None),                # active bans (counter blocked_<detector>)
    Step("detect", "detect", False, None),          # the detectors
)

COUNTERS = [
    ("guarded_new", "new outbound connections of the guarded user"),
    ("allowed", "of those, to allow-listed addresses or known relays"),
    ("blocked_deny", "refused: deny list"),
    ("blocked_optout", "refused: opt-out from the exit notice"),
    ("blocked_flood", "refused: destination banned for a flood"),
    ("blocked_hscan", "refused: prefix and port banned for a horizontal scan"),
    ("blocked_vscan", "refused: host banned for a vertical scan"),
    ("detect_flood", "flood detections (bans started)"),
    ("detect_hscan", "horizontal scan detections (bans started)"),
    ("detect_vscan", "vertical scan detections (bans started)"),
    ("seen_full", "first contacts not recorded because the seen set was full"),
    ("blocked_login", "refused: host and strict port banned for repeated logins"),
    ("blocked_psweep", "refused: prefix and port banned for a sweep"),
    ("blocked_wide", "refused at random: first contact on a strict port above the global rate"),
    ("detect_login", "repeated-login detections (bans started)"),
    ("detect_psweep", "prefix sweep detections (bans started)"),
    ("detect_wide", "first contacts on a strict port above the global rate"),
    ("psweep_failed", "failed first contacts: refused or unanswered"),
]
COUNTER_NAMES = [name for name, _comment in COUNTERS]


class Family(NamedTuple):
    name: str       # suffix of set names: v4, v6
    version: int
    host: int       # prefix length of one host


FAMILIES = (Family("v4", 4, 32), Family("v6", 6, 128))
FAMILY = dict((f.name, f) for f in FAMILIES)     # by name: "v4", "v6"

# Sets that hold addresses put there from outside the guard (exit notice, relay
# refresh) and how many elements they may hold.
OPTOUT_SIZE = 65536
RELAYS_SIZE = 65536


class Detector(NamedTuple):
    name: str       # in ban set and counter names
    by_port: bool   # the ban key holds the port
    prefix: bool    # the ban key is a prefix of the policy's levels (`options`' prefixes_v4/v6)
    options: str    # the policy's option group: ban time, prefix levels, on or off


# In the order their ban rules are checked. The wide-scan gate bans nothing.
DETECTORS = (Detector("flood", True, False, "flood"), Detector("vscan", False, False, "vertical_scan"),
             Detector("hscan", True, True, "horizontal_scan"), Detector("login", True, False, "login"),
             Detector("psweep", True, True, "prefix_sweep"))

# Bits of the conntrack mark the prefix-sweep detector keeps on the guarded
# connections it follows (others left alone): passed the guard; a first contact;
# settled (reply data seen or counted as failed). Nothing else, no destination.
MARK_CONTACT = 0x40000000
MARK_FIRST = 0x20000000
MARK_SETTLED = 0x10000000


def detector_on(policy, det):
    """A detector whose options turn it off has no ban set and no rules."""
    opts = policy.get(det.options) or {}
    if det.name == "login":
        return bool(opts.get("rate"))
    if det.name == "psweep":
        return any(opts.get("burst") or [])
    return True


def _ban_levels(policy, det, fam):
    if det.name == "psweep":
        ps = policy["prefix_sweep"]
        return [length for length, burst in zip(ps["prefixes_" + fam.name], ps["burst"]) if burst]
    if det.prefix:
        return policy[det.options]["prefixes_" + fam.name]
    return [fam.host]


def psweep_levels(policy, fam):
    """(prefix length, burst, rate per minute) of the prefix-sweep levels that are on."""
    ps = policy["prefix_sweep"]
    return [(length, burst, r) for length, burst, r in zip(ps["prefixes_" + fam.name], ps["burst"], ps["rate"])
            if burst]


def psweep_covers(policy, fam, length, hosts):
    """True when the prefix sweep, which counts first contacts into unconfirmed
    prefixes, stops a sweep of one /`length` no later than a horizontal-scan
    threshold of `hosts` per scan_window would: one of its levels is as wide or
    wider, with a burst no larger, a rate no faster and a ban no shorter. In
    unconfirmed prefixes such a horizontal-scan level is not counted (by default
    the /16 of the web and default tiers: 96 + 12 a minute against 2,048 and 256
    per 10 minutes), which spares every first contact there a set update."""
    if policy["prefix_sweep"]["ban_time"] < policy["ban_time"]:
        return False
    return any(plen <= length and burst <= hosts and rate * policy["scan_window"] <= hosts * 60
               for plen, burst, rate in psweep_levels(policy, fam))


def ban_prefix(policy, fam):
    """The widest prefix length of the family's ban sets: a destination can be
    banned only if its prefix of this length holds a ban (guard_nftables keeps
    those prefixes in `banned_<family>_<length>` and skips the ban lookups of
    every other destination)."""
    return min(b.length for b in ban_sets(policy) if b.family == fam.name)


class BanSet(NamedTuple):
    """A ban set (docs/guard-sets.md): `ban_<detector>_<family>_<prefix length>`."""
    name: str
    family: str
    detector: str
    length: int
    by_port: bool
    ban_time: int


def ban_sets(policy):
    """The ban sets of a policy, family by family, in the order their rules are checked."""
    out = []
    for fam in FAMILIES:
        for det in DETECTORS:
            if not detector_on(policy, det):
                continue
            ban_time = (policy.get(det.options) or {}).get("ban_time") or policy["ban_time"]
            for length in _ban_levels(policy, det, fam):
                out.append(BanSet("ban_%s_%s_%d" % (det.name, fam.name, length), fam.name, det.name,
                                  length, det.by_port, ban_time))
    return out


def rate(count, window):
    """`count` per `window` seconds as a rate with an integer numerator (nft and
    hashlimit both take "N/second|minute|hour|day")."""
    for unit, seconds in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
        if (count * seconds) % window == 0:
            return "%d/%s" % (count * seconds // window, unit)
    return "%d/day" % -(-count * 86400 // window)


def walk(render_step, families=True):
    """Walk DECISION_ORDER and return the lines `render_step(step, family)` makes.
    With `families`, the per-family steps of one stage are written family by family
    (v4's allow and relays, then v6's); without, `render_step` gets family None
    and writes the one family it renders."""
    lines = []
    i = 0
    while i < len(DECISION_ORDER):
        step = DECISION_ORDER[i]
        if not (families and step.per_family):
            lines += render_step(step, None)
            i += 1
            continue
        stage = list(itertools.takewhile(lambda s, first=step: s.stage == first.stage and s.per_family,
                                         DECISION_ORDER[i:]))
        for fam in FAMILIES:
            for s in stage:
                lines += render_step(s, fam)
        i += len(stage)
    return lines


def split_walk(render_step):
    """For a renderer that dispatches on the family once (nftables: a verdict map on
    the family): the lines of the steps before the first per-family step, which
    `render_step(step, None)` writes for both families, and for each family the
    lines of that step and of every step after it, `render_step(step, family)`
    (the last steps, such as `detect`, once per family). Same order as walk()."""
    first = next(i for i, step in enumerate(DECISION_ORDER) if step.per_family)
    shared = []
    for step in DECISION_ORDER[:first]:
        shared += render_step(step, None)
    per_family = {}
    for fam in FAMILIES:
        lines = []
        for step in DECISION_ORDER[first:]:
            lines += render_step(step, fam)
        per_family[fam.name] = lines
    return shared, per_family


_ADDRESS = re.compile(r"(?<![\w:.])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})"
                      r"(?:/\d{1,3})?(?![\w:.])")


def scrub(text):
    """An error text of a command that was fed set elements (bans, opt-outs: destinations
    of relayed traffic), fit for the controller's output: the lines nft echoes from
    its input are dropped and every address is replaced."""
    lines = [line for line in text.splitlines()
             if "Error" in line or "error" in line or not line.strip() or not line.startswith((" ", "\t", "add "))]
    lines = [line for line in lines if line.strip().strip("^~ ")]
    return _ADDRESS.sub("ADDRESS", "\n".join(lines)).strip()


def keep_longest(entries, size):
    """Of [(key, seconds left)] the `size` entries with the most time left, and how
    many were dropped (a set_size below the number of active bans)."""
    if len(entries) <= size:
        return list(entries), 0
    kept = sorted(entries, key=lambda e: -(e[1] or 0))[:size]
    return kept, len(entries) - size


# --- what the apply sequence (guard_apply) and the backends hand each other ----------

class GuardError(RuntimeError):
    """A backend could not read, validate or change the host; the message says what."""


class Env(NamedTuple):
    run: object         # run(args, data=None) -> (rc, stdout, stderr)
    persist: bool       # the module's `persist`
    systemd: bool       # systemd runs on the host
    have: object        # have(command) -> bool


class Desired(NamedTuple):
    """What a backend wants on the host for a policy; built without reading the kernel."""
    policy: dict
    digest: str
    ruleset: str                # the rendered rules, returned as `ruleset`
    view: str                   # what the rules are called in a diff (their file)
    files: dict                 # {path: (content, mode)} to write
    edits: dict                 # {path: edit(old text) -> new text}: files of other software changed in place
    units: tuple                # systemd units enabled and running
    paths: tuple                # every file this backend may write; those not wanted are removed
    keep: tuple                 # of those, files another backend still uses
    rules: object               # the backend's own load input (apply() reads it)


class Live(NamedTuple):
    """What a backend found loaded."""
    loaded: bool                # the kernel holds the desired rules (digest, hook)
    sets: tuple                 # set changes needed first ('create NAME OPTIONS' lines, never elements)
    shown: str                  # what stands for the loaded rules in a diff
    extra: dict                 # returned as they are (ufw_active)
    state: object               # the backend's own reading, handed back to apply()


class Plan(NamedTuple):
    """The differences the sequence found: what apply() has to bring about."""
    desired: Desired
    live: Live
    write: tuple                # paths of files written
    edited: dict                # {path: (old, new)} of edits that change something
    remove: tuple               # stale paths removed
    enable: tuple               # units (re)enabled
    start: tuple                # units started after loading


class Installed(NamedTuple):
    """What state=absent removes."""
    loaded: bool                # rules, chains or sets in the kernel
    paths: tuple                # files removed
    edits: dict                 # {path: edit(old) -> new}
    units: tuple                # units disabled (those whose unit file exists)
    dirs: tuple                 # directories removed when left empty
    shown: str                  # the diff's before text
    state: object
