# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export the egress guard's counters and ban gauges for Prometheus.

Reads `nft -j list table inet torexit_guard` (names: docs/guard-sets.md and the
COUNTERS of plugins/module_utils/guard_nftables.py) and writes a file in the
Prometheus text format for node_exporter's textfile collector. The file is
written to a temporary name in the same directory and renamed, so the
collector never reads half a file.

Privacy: only counters and element counts are written. Set elements (banned
prefixes, opt-outs, recently contacted hosts) are destinations of relayed
traffic; they are counted and never written or logged.

Python 3 standard library only; run by torexit-guard-metrics.service.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

TABLE = ("inet", "torexit_guard")
DETECTORS = ("flood", "hscan", "vscan")
BLOCK_REASONS = ("deny", "optout") + DETECTORS
SET_NAME_RE = re.compile(r"^[a-z0-9_]+$")

HELP = {
    "torexit_guard_up": "1 when the egress guard's nftables table is loaded, else 0.",
    "torexit_guard_policy_info": "Policy digest of the loaded guard (label digest); always 1.",
    "torexit_guard_new_connections_total": "New outbound TCP connections of the guarded user.",
    "torexit_guard_allowed_total": "Of those, to allow-listed addresses or known Tor relays.",
    "torexit_guard_blocked_total": "Connections matching a ban, deny or opt-out: refused in enforce mode, "
                                   "only counted in monitor and exitpolicy mode.",
    "torexit_guard_detections_total": "Detections by the guard (each one starts a ban).",
    "torexit_guard_seen_full_total": "First contacts not recorded because the seen set was full.",
    "torexit_guard_bans": "Active bans (elements) in a ban set.",
    "torexit_guard_optouts": "Active opt-outs (elements) in an opt-out set.",
    "torexit_guard_set_fill_ratio": "Elements of a bounded kernel set divided by its maximum size; at 1 the set takes no new elements.",
}
TYPES = {name: ("counter" if name.endswith("_total") else "gauge") for name in HELP}


def parse(doc):
    """Counters, digest and per-set (elements, size) from `nft -j` output.

    Only the number of elements is kept, never their values."""
    counters, sets, digest = {}, {}, None
    for obj in doc.get("nftables", []):
        if "counter" in obj:
            c = obj["counter"]
            if c.get("name") == "policy_id":
                comment = c.get("comment", "")
                digest = comment[len("sha256:"):] if comment.startswith("sha256:") else None
            else:
                counters[c.get("name")] = int(c.get("packets", 0))
        elif "set" in obj:
            s = obj["set"]
            name = s.get("name", "")
            if SET_NAME_RE.match(name):
                sets[name] = (len(s.get("elem", []) or []), s.get("size"))
    return {"counters": counters, "sets": sets, "digest": digest}


def _fmt(value):
    if isinstance(value, float):
        return "%.6g" % value
    return str(int(value))


def render(state):
    """Prometheus text format; `state` is parse()'s result, or None without table."""
    samples = {name: [] for name in HELP}
    if state is None:
        samples["torexit_guard_up"].append(("", 0))
    else:
        samples["torexit_guard_up"].append(("", 1))
        if state["digest"] and re.match(r"^[0-9a-f]+$", state["digest"]):
            samples["torexit_guard_policy_info"].append(('{digest="%s"}' % state["digest"], 1))
        counters = state["counters"]
        if "guarded_new" in counters:
            samples["torexit_guard_new_connections_total"].append(("", counters["guarded_new"]))
        if "allowed" in counters:
            samples["torexit_guard_allowed_total"].append(("", counters["allowed"]))
        for reason in BLOCK_REASONS:
            if "blocked_" + reason in counters:
                samples["torexit_guard_blocked_total"].append(
                    ('{detector="%s"}' % reason, counters["blocked_" + reason]))
        for det in DETECTORS:
            if "detect_" + det in counters:
                samples["torexit_guard_detections_total"].append(
                    ('{detector="%s"}' % det, counters["detect_" + det]))
        if "seen_full" in counters:
            samples["torexit_guard_seen_full_total"].append(("", counters["seen_full"]))
        for name in sorted(state["sets"]):
            elements, size = state["sets"][name]
            label = '{set="%s"}' % name
            if name.startswith("ban_"):
                samples["torexit_guard_bans"].append((label, elements))
            elif name.startswith("optout_"):
                samples["torexit_guard_optouts"].append((label, elements))
            if size:
                samples["torexit_guard_set_fill_ratio"].append((label, float(elements) / size))
    out = []
    for name in HELP:
        if not samples[name]:
            continue
        out.append("# HELP %s %s" % (name, HELP[name]))
        out.append("# TYPE %s %s" % (name, TYPES[name]))
        out.extend("%s%s %s" % (name, labels, _fmt(value)) for labels, value in samples[name])
    return "\n".join(out) + "\n"


def read_nft(nft="nft"):
    """parse()'d table, or None when the table is not loaded."""
    proc = subprocess.run([nft, "-j", "list", "table", TABLE[0], TABLE[1]],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise RuntimeError("nft failed (exit %d): %s" % (proc.returncode, proc.stderr.strip()[:200]))
    return parse(json.loads(proc.stdout))


def write_atomic(path, text, mode=0o644):
    """Write `text` to `path` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True,
                        help="the .prom file, e.g. /var/lib/prometheus/node-exporter/torexit_guard.prom")
    parser.add_argument("--nft", default="nft", help="the nft command")
    args = parser.parse_args(argv)
    if not args.output.endswith(".prom"):
        parser.error("--output must end in .prom (node_exporter reads only those): %s" % args.output)
    try:
        state = read_nft(args.nft)
    except (RuntimeError, OSError, ValueError) as exc:
        print("torexit_guard_metrics: %s" % exc, file=sys.stderr)
        return 1
    write_atomic(args.output, render(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
