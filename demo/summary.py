# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the demo's drill table (through Tor: one row per relay and scenario, with
the exits that carried the streams) and the guard's counters from the metrics files."""

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


def carried(exits, names):
    if not exits:
        return "-"
    return ", ".join("%s %d" % (names.get(a, a), n) for a, n in sorted(exits.items(), key=lambda x: -x[1]))


def tor_reasons(reasons):
    """tor's end reasons of the streams that failed, e.g. `EXITPOLICY 80` (streams)."""
    return ", ".join("%s %d" % kv for kv in sorted(reasons.items()))


def verdict(d, addr_of):
    """(good, text) for one row."""
    scenario, mode = d["scenario"], d["mode"]
    if "error" in d:
        return False, d["error"]
    exits = d.get("exits", {})
    if scenario == "users":
        good = d["passed"] == d["attempts"] and d.get("avoid") not in exits
        return good, ("all reached the /24 through other exits" if good else
                      "SOME DID NOT ARRIVE" if d["passed"] < d["attempts"] else "CARRIED BY THE REFUSING EXIT")
    pinned = addr_of.get(d["relay"])
    elsewhere = sum(n for a, n in exits.items() if a != pinned)
    if elsewhere:
        return False, "%d STREAMS LEFT THROUGH ANOTHER EXIT" % elsewhere
    if scenario in ORDINARY or mode == "monitor":
        good = d["passed"] == d["attempts"]
        return good, "all passed, as it should" if good else "SOMETHING WAS BLOCKED"
    if d["refused"] == 0:
        return False, "NOT STOPPED"
    how = "tor refused the rest (exit policy)" if mode == "exitpolicy" else "the guard refused the rest"
    if mode == "exitpolicy" and "EXITPOLICY" not in tor_reasons(d.get("reasons", {})):
        return False, "STOPPED, BUT NOT BY THE EXIT POLICY"
    return True, ("stopped after %d: %s" % (d["passed"], how) if d["passed"]
                  else "refused from the start (an earlier ban is still active)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changed-second", type=int, required=True)
    parser.add_argument("--metrics", action="append", default=[], help="RELAY=FILE")
    parser.add_argument("--relay", action="append", default=[], help="NAME=ADDRESS")
    parser.add_argument("--drill", required=True, help="the drill's JSON lines (demo/tordrill.py)")
    args = parser.parse_args()
    addr_of = dict(r.split("=", 1) for r in args.relay)
    names = {a: n for n, a in addr_of.items()}

    rows, ready = [], None
    with open(args.drill) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                d = json.loads(line)
                if d.get("ready"):
                    ready = d
                else:
                    rows.append(d)
    if ready:
        print("Tor network: client bootstrapped after %.0f s more, every relay an exit in its consensus after %.0f s more;"
              " exits: %s" % (ready["bootstrap_wait_s"], ready["exits_wait_s"],
                              ", ".join(names[a] for a in ready["exits"] if a in names)))
    print("Every stream: client container -> Tor (3 hops) -> the exit in `carried by` -> 198.19.0.0/16."
          " Pinned to one exit per relay (ExitNodes), except the `users` row.\n")
    fmt = "%-7s %-10s %-8s %-36s %8s %7s %8s %8s  %-20s %s"
    print(fmt % ("relay", "mode", "scenario", "traffic", "attempts", "passed", "refused", "seconds", "carried by", "verdict"))
    ok = bool(rows)
    for d in rows:
        if "error" in d:  # the drill could not start this relay's rows
            ok = False
            print("%-7s %s" % (d["relay"], "FAILED: " + d["error"]))
            continue
        good, text = verdict(d, addr_of)
        if d.get("mbit_s"):
            text += " (%.1f Mbit/s, all bytes arrived)" % d["mbit_s"] if good else " (%.1f Mbit/s)" % d["mbit_s"]
        reasons = tor_reasons(d.get("reasons", {}))
        if reasons and d["refused"]:
            text += " [tor: %s]" % reasons
        ok = ok and good
        print(fmt % (d["relay"], d.get("mode", "?"), d.get("scenario", "?"), d.get("what", ""), d.get("attempts", 0),
                     d.get("passed", 0), d.get("refused", 0), "%.2f" % d.get("seconds", 0),
                     carried(d.get("exits"), names), text))
    if not rows:
        print("(no drill rows: see the drill log)")

    for spec in args.metrics:
        relay, path = spec.split("=", 1)
        m = prom(path)
        blocked = ", ".join("%s %d" % (det, m.get(("torexit_guard_blocked_total", det), 0))
                            for det in ("hscan", "vscan", "flood", "psweep", "wide", "deny", "optout"))
        detect = ", ".join("%s %d" % (det, m.get(("torexit_guard_detections_total", det), 0))
                           for det in ("hscan", "vscan", "flood", "psweep", "wide"))
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
