# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A short abuse drill from a relay, run as tor's user against the demo's internet.

Every target is inside 198.19.0.0/16, which only the demo's internet container
answers (it accepts every connection on every port): a refused connection was
refused by the egress guard on this relay. Every scenario is bounded in count and
time. Prints one JSON object per scenario.
"""

import json
import socket
import sys
import time

NET = "198.19."
TIMEOUT = 2.0


def connect(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
        return s, "passed"
    except ConnectionRefusedError:
        s.close()
        return None, "refused"
    except OSError:
        s.close()
        return None, "timeout"


def tally(name, what, results, started, **extra):
    row = {"scenario": name, "what": what, "attempts": len(results),
           "passed": results.count("passed"), "refused": results.count("refused"),
           "timeout": results.count("timeout"), "seconds": round(time.monotonic() - started, 2)}
    row.update(extra)
    print(json.dumps(row), flush=True)


def each_host(name, octet, last, port):
    """One connection to each of 198.19.OCTET.1-LAST on PORT, closed at once."""
    started, results = time.monotonic(), []
    for host in range(1, last + 1):
        s, res = connect(NET + "%d.%d" % (octet, host), port)
        if s:
            s.close()
        results.append(res)
    tally(name, "%s%d.1-%d port %d" % (NET, octet, last, port), results, started)


def sweep():
    """Horizontal scan: every host of one /24 on SSH, one connection each."""
    each_host("sweep", 2, 254, 22)


def flood():
    """Flood: 300 connections to one host and port as fast as possible, held open."""
    started, results, held = time.monotonic(), [], []
    for _attempt in range(300):
        s, res = connect(NET + "3.10", 8080)
        if s:
            held.append(s)
        results.append(res)
    for s in held:
        s.close()
    tally("flood", "300 x 198.19.3.10:8080 held open", results, started)


def upload():
    """Upload burst: 4 connections to one host, 16 MiB each (ordinary use)."""
    started, results, sent = time.monotonic(), [], 0
    chunk = b"\0" * 65536
    for _conn in range(4):
        s, res = connect(NET + "4.20", 443)
        if s:
            s.settimeout(10)
            try:
                for _chunk in range(256):
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                res = "timeout"
            s.close()
        results.append(res)
    took = max(time.monotonic() - started, 0.001)
    tally("upload", "4 x 16 MiB to 198.19.4.20:443", results, started,
          mbit_s=round(sent * 8 / took / 1e6))


def browse():
    """Browsing a CDN: 100 hosts of one /24 on 443 (ordinary use)."""
    each_host("browse", 5, 100, 443)


if __name__ == "__main__":
    for scenario in (upload, browse, sweep, flood):
        scenario()
    sys.exit(0)
