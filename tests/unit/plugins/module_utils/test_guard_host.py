"""The relay refresh script (one for every backend): malformed consensus entries are
skipped and counted, the rest is loaded in one transaction, and when reading fails
the loader is not called, so the previous set stays."""
import os
import subprocess
import sys

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as gh

# A stand-in for nft/ipset: every address must be valid or the whole input is
# refused (as in a transaction); a valid input is kept in $FAKE_STATE.
FAKE = """#!%s
import ipaddress, os, re, sys
if "list" in sys.argv[1:]:   # only the tables/ipsets named in $FAKE_PRESENT are loaded
    sys.exit(0 if set(sys.argv) & set(os.environ["FAKE_PRESENT"].split()) else 1)
text = sys.stdin.read()
for line in text.splitlines():
    m = re.match(r"add element \\S+ \\S+ (relays_v[46]) \\{ (.*) \\}$", line) or \\
        re.match(r"add (torexit_tmp_(?:in_)?relays_v[46]) (\\S+)$", line)
    for addr in (m.group(2).split(", ") if m else []):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            sys.stderr.write("Error: invalid address %%s\\n" %% addr)
            sys.exit(1)
with open(os.environ["FAKE_STATE"], "a") as f:
    f.write(text)
""" % sys.executable

CONSENSUS = """network-status-version 3 microdesc
r good1 AAAA 2026-11-23 12:00:00 198.18.0.1 9001 0
m abc
r bad1 AAAA 2026-11-23 12:00:00 198.18.300.2 9001 0
r short AAAA 2026-11-23
r good2 AAAA BBBB 2026-11-23 12:00:00 198.18.0.3 9001 0
a [2001:db8::9]:9001
a [2001:db8::zz]:9001
a [fe80::1%eth0]:9001
"""


GUARD_ONLY = "torexit_guard torexit_relays_v4"


def refresh(tmp_path, kind, consensus, present=GUARD_ONLY):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in ("nft", "ipset"):
        path = bindir / name
        path.write_text(FAKE)
        path.chmod(0o755)
    script = tmp_path / "relays.sh"
    script.write_text(gh.relays_script(kind))
    state = tmp_path / "state"
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), FAKE_STATE=str(state), FAKE_PRESENT=present)
    proc = subprocess.run(["sh", str(script)] + [str(c) for c in consensus], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    return proc, state.read_text() if state.exists() else None


@pytest.mark.parametrize("kind", ["nftables", "ipset"])
def test_malformed_entries_are_skipped_and_counted(tmp_path, kind):
    consensus = tmp_path / "cached-microdesc-consensus"
    consensus.write_text(CONSENSUS)
    proc, loaded = refresh(tmp_path, kind, [consensus])
    assert proc.returncode == 0, proc.stderr
    assert "2 IPv4 and 1 IPv6 relay addresses, 4 malformed entries skipped" in proc.stderr
    for addr in ("198.18.0.1", "198.18.0.3", "2001:db8::9"):
        assert addr in loaded
    assert "198.18.300.2" not in loaded and "zz" not in loaded and "fe80" not in loaded
    assert "inbound" not in loaded and "in_relays" not in loaded   # the inbound rules are not loaded
    if kind == "nftables":   # flush and refill in one input, so in one transaction
        assert loaded.startswith("flush set inet torexit_guard relays_v4\nflush set inet torexit_guard relays_v6\n")
        assert "add element inet torexit_guard relays_v4 { 198.18.0.1, 198.18.0.3 }" in loaded
    else:                    # a temporary set swapped in whole
        assert loaded.rstrip().endswith("destroy torexit_tmp_relays_v6")
        assert "add torexit_tmp_relays_v4 198.18.0.1" in loaded


def test_an_unreadable_consensus_keeps_the_previous_set(tmp_path):
    consensus = tmp_path / "cached-microdesc-consensus"
    consensus.write_text(CONSENSUS)
    proc, loaded = refresh(tmp_path, "nftables", [consensus, tmp_path / "missing"])
    assert proc.returncode != 0 and loaded is None     # nothing was flushed


@pytest.mark.parametrize("kind", ["nftables", "ipset"])
def test_inbound_exemption_sets_are_filled_when_loaded(tmp_path, kind):
    """The firewall role's inbound DoS rules exempt the same relays (same parse,
    same transaction); without the inbound table/ipsets nothing is sent there."""
    consensus = tmp_path / "cached-microdesc-consensus"
    consensus.write_text(CONSENSUS)
    both = GUARD_ONLY + " torexit_inbound torexit_in_relays_v4"
    proc, loaded = refresh(tmp_path, kind, [consensus], present=both)
    assert proc.returncode == 0, proc.stderr
    if kind == "nftables":
        assert "flush set inet torexit_inbound relays_v4\nflush set inet torexit_inbound relays_v6\n" in loaded
        assert "add element inet torexit_inbound relays_v4 { 198.18.0.1, 198.18.0.3 }" in loaded
        assert "add element inet torexit_inbound relays_v6 { 2001:db8::9 }" in loaded
        assert "add element inet torexit_guard relays_v4 { 198.18.0.1, 198.18.0.3 }" in loaded
    else:
        assert "add torexit_tmp_in_relays_v6 2001:db8::9" in loaded
        assert "swap torexit_tmp_in_relays_v4 torexit_in_relays_v4" in loaded
        assert "swap torexit_tmp_relays_v4 torexit_relays_v4" in loaded


def test_nothing_loaded_means_nothing_sent(tmp_path):
    consensus = tmp_path / "cached-microdesc-consensus"
    consensus.write_text(CONSENSUS)
    proc, loaded = refresh(tmp_path, "nftables", [consensus], present="none")
    assert proc.returncode == 0 and loaded is None
