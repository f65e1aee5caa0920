# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Statistics of the paired CPU rounds (guard on / off): the median of the per-round
ratios, and how far the rounds spread, so that a reader sees how sure the number is.

A shared machine makes single rounds noisy (other jobs evict caches, take the CPU
mid-round); pairing each "on" round with an "off" round taken right before or
after it, in alternating order, lets that noise hit both states alike, and the
median of many paired ratios is what the bench reports and checks.
"""
from __future__ import annotations

import math
import statistics


def median_ci(values, level=0.95):
    """A distribution-free confidence interval of the median: the order statistics
    x(k) and x(n+1-k) with the largest k for which Binomial(n, 1/2) puts at most
    (1 - level) / 2 below k. None with fewer than 6 values (no such k)."""
    xs = sorted(values)
    n = len(xs)
    tail, k, acc = (1.0 - level) / 2, 0, 0.0
    while k < n:
        p = math.comb(n, k) / 2.0 ** n
        if acc + p > tail:
            break
        acc += p
        k += 1
    if k < 1:
        return None
    return xs[k - 1], xs[n - k]


def paired(on, off, key="proc_us"):
    """Ratios on/off of `key` per paired round and their median, quartiles, range and
    95% interval of the median; None without a pair."""
    ratios = [a[key] / b[key] for a, b in zip(on, off) if b.get(key)]
    if not ratios:
        return None
    q1, _q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    ci = median_ci(ratios)
    return {"rounds": len(ratios), "median": statistics.median(ratios), "q1": q1, "q3": q3,
            "min": min(ratios), "max": max(ratios), "ci95": list(ci) if ci else None}


def medians(samples, keys=("proc_us", "sys_us", "softirq_us", "machine_us", "steal_us", "nivcsw")):
    """Per state the median of each measured quantity over its rounds."""
    return {state: {k: statistics.median(x[k] for x in xs) for k in keys if all(k in x for x in xs)}
            for state, xs in samples.items() if xs}


def summary(samples):
    """What the bench stores and prints for a CPU scenario: the paired ratios of the
    process CPU (the figure checked against the target) and of its kernel part,
    the medians of each state, and conntrack alone (off / bare) where measured."""
    out = {"ratio": paired(samples["on"], samples["off"]),
           "kernel_ratio": paired(samples["on"], samples["off"], "sys_us"),
           "medians": medians(samples),
           "failed": {state: sum(x["n"] - x["ok"] for x in xs) for state, xs in samples.items() if xs}}
    if samples.get("bare"):
        out["conntrack_ratio"] = paired(samples["off"], samples["bare"])
    return out


def describe(s):
    """One line for the log and the table cell."""
    r, m = s["ratio"], s["medians"]
    txt = "%.2f× (median of %d paired rounds; IQR %.2f-%.2f" % (r["median"], r["rounds"], r["q1"], r["q3"])
    if r["ci95"]:
        txt += ", 95%% CI of the median %.2f-%.2f" % tuple(r["ci95"])
    txt += ", range %.2f-%.2f; per connection %.1f vs %.1f µs, of that kernel %.1f vs %.1f µs" % (
        r["min"], r["max"], m["on"]["proc_us"], m["off"]["proc_us"], m["on"]["sys_us"], m["off"]["sys_us"])
    if s.get("kernel_ratio"):
        txt += " (%.2f×, sampled at the scheduler tick)" % s["kernel_ratio"]["median"]
    if s.get("conntrack_ratio"):
        txt += "; conntrack alone, inbound firewall vs bare namespace: %.2f×" % s["conntrack_ratio"]["median"]
    return txt + ")"
