# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fast slice of the abuse bench (tests/bench): a short /16 sweep and a short
upload, no guard vs the egress guard, in namespaces tx-bench-q-*. Fails when
the guard misses a target (or cannot be applied); see docs/bench.md."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(os.geteuid() != 0, reason="the bench needs root to create network namespaces")
def test_quick_bench_guard_meets_targets(tmp_path):
    r = subprocess.run(["bash", os.path.join(TOP, "tests", "bench", "run.sh"), "--quick", "--out", str(tmp_path)],
                       cwd=TOP, capture_output=True, text=True, timeout=180, check=False)
    report = tmp_path / "bench-quick.json"
    assert report.exists(), "bench wrote no report:\n%s\n%s" % (r.stdout[-3000:], r.stderr[-3000:])
    data = json.loads(report.read_text())
    guard = data["variants"].get("guard", {})
    assert guard.get("status") == "ok", "guard variant failed: %s" % guard.get("error")
    failed = {row["scenario"]: row["values"]["guard"] for row in data["rows"] if not row["pass"].get("guard")}
    assert not failed, "guard missed targets: %s\n%s" % (failed, r.stdout[-3000:])
    # the slice must measure something: the unguarded sweep really reached its /16
    none_sweep = data["variants"]["none"]["scenarios"]["sweep"]
    assert none_sweep["arrived"]["sweep"] > 0.9 * none_sweep["sweep"]["attempts"] > 0
    assert r.returncode == 0, r.stdout[-3000:]
