# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cell helpers shared by the bench's tables (bench.py, torbench.py)."""
from __future__ import annotations


def g(res, *path):
    """res[path[0]][path[1]]..., or None where a level is missing."""
    for p in path:
        if not isinstance(res, dict) or p not in res:
            return None
        res = res[p]
    return res


def max22(scn):
    """A row's cell: the most distinct hosts of one /22 that scenario `scn` reached."""
    def f(r, n):
        m = g(r, scn, "sweep_hosts", "max_per_22")
        return ("n/a", None) if m is None else ("%d hosts" % m, m)
    return f
