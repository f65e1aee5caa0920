# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Describe the offline master keys the controller keeps, as JSON on stdout.

Run on the controller by the tor_exit role with one argument per tor instance: the
directory that `tor --keygen --DataDirectory DIR` writes into (DIR/keys). For each
it prints whether the master secret key is there, the ed25519 identity of the
master public key (base64 without padding, as tor's fingerprint-ed25519 file has
it) and the expiry of the signing certificate in Unix time.

ed25519_signing_cert: a 32-byte header, then the certificate (tor's cert-spec):
version (1 byte), type (1 byte), expiration in hours since the epoch (4 bytes).
Python 3 standard library only.
"""
import base64
import json
import os
import sys

HEADER = 32


def inspect(directory):
    keys = os.path.join(directory, "keys")
    out = {"master": os.path.isfile(os.path.join(keys, "ed25519_master_id_secret_key"))}
    try:
        with open(os.path.join(keys, "ed25519_master_id_public_key"), "rb") as handle:
            public = handle.read()
        if len(public) == HEADER + 32:
            out["ed25519"] = base64.b64encode(public[HEADER:]).decode("ascii").rstrip("=")
    except OSError:
        pass
    try:
        with open(os.path.join(keys, "ed25519_signing_cert"), "rb") as handle:
            cert = handle.read()
        if len(cert) >= HEADER + 6 and cert[HEADER] == 1:
            out["expiry"] = int.from_bytes(cert[HEADER + 2:HEADER + 6], "big") * 3600
    except OSError:
        pass
    return out


def main(argv):
    print(json.dumps({directory: inspect(directory) for directory in argv}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
