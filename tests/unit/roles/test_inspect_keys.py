# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/tor_exit/files/torexit_inspect_keys.py: what the controller knows of offline master keys.

The keys are made by tor itself (`tor --keygen`, as the role does) and the expiry is
compared with tor's own reading (`tor --key-expiration sign`).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "tor_exit", "files",
                      "torexit_inspect_keys.py")
TOR = shutil.which("tor") or ("/usr/sbin/tor" if os.path.exists("/usr/sbin/tor") else None)
needs_tor = pytest.mark.skipif(TOR is None, reason="tor is not installed")
NO_TORRC = ["--ignore-missing-torrc", "--defaults-torrc", "/nonexistent", "-f", "/nonexistent"]


def inspect(*dirs):
    out = subprocess.run([sys.executable, SCRIPT, *dirs], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def keygen(datadir, days):
    subprocess.run([TOR, "--keygen", "--no-passphrase", *NO_TORRC, "--DataDirectory", str(datadir),
                    "--SigningKeyLifetime", "%d days" % days], check=True, capture_output=True)


def test_missing_directory_has_no_master_and_no_expiry(tmp_path):
    assert inspect(str(tmp_path / "none")) == {str(tmp_path / "none"): {"master": False}}


@needs_tor
def test_expiry_and_identity_match_what_tor_says(tmp_path):
    keygen(tmp_path, 7)
    got = inspect(str(tmp_path))[str(tmp_path)]
    tor = subprocess.run([TOR, "--key-expiration", "sign", "--format", "timestamp", *NO_TORRC,
                          "--DataDirectory", str(tmp_path)], capture_output=True, text=True, check=False)
    line = [x for x in (tor.stdout + tor.stderr).splitlines() if x.startswith("signing-cert-expiry:")]
    expiry = int(line[0].split()[1])
    assert got["master"] is True
    assert got["expiry"] == expiry
    # tor rounds the expiry up to the hour
    assert time.time() + 7 * 86400 - 1 <= got["expiry"] <= time.time() + 7 * 86400 + 3600
    assert len(got["ed25519"]) == 43 and not got["ed25519"].endswith("=")


@needs_tor
def test_renewal_keeps_identity_and_moves_expiry(tmp_path):
    keygen(tmp_path, 3)
    first = inspect(str(tmp_path))[str(tmp_path)]
    keygen(tmp_path, 20)
    second = inspect(str(tmp_path))[str(tmp_path)]
    assert second["ed25519"] == first["ed25519"]
    assert second["expiry"] - first["expiry"] == 17 * 86400


@needs_tor
def test_master_secret_removed_is_reported(tmp_path):
    keygen(tmp_path, 7)
    os.remove(tmp_path / "keys" / "ed25519_master_id_secret_key")
    got = inspect(str(tmp_path))[str(tmp_path)]
    assert got["master"] is False and "expiry" in got and "ed25519" in got
