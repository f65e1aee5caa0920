# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the demo's drill table and the guard's counters from the metrics files."""

import argparse
import json
import re

ORDINARY = ("upload", "browse")


def prom(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r'^(\w+)(?:\{\w+="([^"]*)"\})? (\S+)$', line.strip())
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changed-second", type=int, required=True)
    parser.add_argument("--metrics", action="append", default=[], help="RELAY=FILE")
    parser.add_argument("--mode", action="append", default=[], help="RELAY=MODE")
    parser.add_argument("rows", nargs="*", help="RELAY JSON, one per drill scenario")
    args = parser.parse_args()
    modes = dict(m.split("=", 1) for m in args.mode)

    fmt = "%-7s %-8s %-8s %-34s %8s %7s %8s %8s  %s"
    print(fmt % ("relay", "mode", "scenario", "traffic", "attempts", "passed", "refused", "seconds", "verdict"))
    ok = True
    for row in args.rows:
        relay, data = row.split(" ", 1)
        d = json.loads(data)
        mode = modes.get(relay, "?")
        if d["scenario"] in ORDINARY or mode != "enforce":
            good = d["passed"] == d["attempts"]
            verdict = "all passed, as it should" if good else "SOMETHING WAS BLOCKED"
        else:
            good = d["refused"] > 0
            verdict = ("NOT STOPPED" if not good else "stopped after %d" % d["passed"] if d["passed"]
                       else "refused from the start (an earlier ban is still active)")
        if d.get("mbit_s"):
            verdict += " (%d Mbit/s)" % d["mbit_s"]
        ok = ok and good
        print(fmt % (relay, mode, d["scenario"], d["what"], d["attempts"], d["passed"], d["refused"],
                     "%.2f" % d["seconds"], verdict))

    for spec in args.metrics:
        relay, path = spec.split("=", 1)
        m = prom(path)
        blocked = ", ".join("%s %d" % (det, m.get(("torexit_guard_blocked_total", det), 0))
                            for det in ("hscan", "vscan", "flood", "deny", "optout"))
        detect = ", ".join("%s %d" % (det, m.get(("torexit_guard_detections_total", det), 0))
                           for det in ("hscan", "vscan", "flood"))
        bans = ", ".join("%s %d" % (name, v) for (metric, name), v in sorted(m.items())
                         if metric == "torexit_guard_bans" and v)
        print("\n%s metrics (%s):" % (relay, path))
        print("  torexit_guard_up %d   new connections %d" % (m.get(("torexit_guard_up", ""), 0),
                                                              m.get(("torexit_guard_new_connections_total", ""), 0)))
        print("  blocked_total  %s" % blocked)
        print("  detections     %s" % detect)
        print("  active bans    %s" % (bans or "none"))
    print("\nsecond run of harden_exit.yml: changed=%d (%s)"
          % (args.changed_second, "idempotent" if args.changed_second == 0 else "NOT idempotent"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
