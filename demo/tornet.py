# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo's private Tor network (TestingTorNetwork), set up from the host.

    python3 demo/tornet.py --dir DIR --authorities CONTAINER --auth-address IP \
        --client CONTAINER --vars FILE

- three directory authorities in the container CONTAINER (one tor process each, ORPorts
  5100-5102, DirPorts 7100-7102 on IP), keys made there with tor-gencert;
- the client in the client container: SocksPort and ControlPort on its 127.0.0.1;
- FILE: the inventory variables that make the relays exits of this network, set
  through the tor_exit role's test-only `tor_exit_test_network_options`.

DIR is bind-mounted at the same path into both containers. The torrc text, the keys and
the DirAuthority lines come from tests/integration/torkit.py, which the tests' and the
bench's network (tornet.py) use too. Nothing here talks to anything but the two
containers; the tor processes stop when the containers are removed (make demo-clean).
"""

import argparse
import json
import os
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import torkit as K  # noqa: E402

N_AUTH = 3
ORPORT, DIRPORT = 5100, 7100
SOCKS_PORT, CONTROL_PORT = 9050, 9051


def in_container(name):
    def run(argv, inp):
        r = subprocess.run(["docker", "exec", "-i", name] + argv, input=inp, capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0:
            raise RuntimeError("%s in %s: %s" % (argv[0], name, r.stderr.strip()[-500:]))
        return r.stdout
    return run


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start_tor(container, torrc, log):
    # `docker exec -d`: tor runs in the foreground of its own exec, until the container goes
    subprocess.run(["docker", "exec", "-d", container, "sh", "-c", 'exec tor -f "$1" >"$2" 2>&1', "sh", torrc, log],
                   check=True, timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="work directory, the same path inside both containers")
    ap.add_argument("--authorities", required=True, help="the authorities' container")
    ap.add_argument("--auth-address", required=True)
    ap.add_argument("--client", required=True, help="the client's container")
    ap.add_argument("--vars", required=True, help="inventory variables file to write (YAML, written as JSON)")
    args = ap.parse_args()

    work = os.path.abspath(args.dir)
    run = in_container(args.authorities)
    auths = []
    for i in range(N_AUTH):
        name = "demoauth%d" % i
        data = os.path.join(work, name)
        os.makedirs(data, mode=0o700, exist_ok=True)
        v3ident, fpr = K.authority_keys(data, name, args.auth_address, ORPORT + i, DIRPORT + i, run=run)
        auths.append((name, data, ORPORT + i, DIRPORT + i, v3ident, fpr))
    dirauth = [K.dirauth_line(name, args.auth_address, orport, dirport, v3ident, fpr)
               for name, _data, orport, dirport, v3ident, fpr in auths]
    common = K.COMMON + "".join("DirAuthority %s\n" % line for line in dirauth)

    for name, data, orport, dirport, _v3, _fpr in auths:
        torrc = os.path.join(data, "torrc")
        write(torrc, common + K.AUTHORITY + "Address %s\nNickname %s\nDataDirectory %s\nLog notice file %s\n"
              "SocksPort 0\nORPort %d\nDirPort %d\n"
              % (args.auth_address, name, data, os.path.join(data, "notice.log"), orport, dirport))
        start_tor(args.authorities, torrc, os.path.join(data, "stderr"))

    client = os.path.join(work, "client")
    os.makedirs(client, mode=0o700, exist_ok=True)
    torrc = os.path.join(client, "torrc")
    write(torrc, common + "Nickname democlient\nDataDirectory %s\nLog notice file %s\n"
          "SocksPort 127.0.0.1:%d\nControlPort 127.0.0.1:%d\n"
          % (client, os.path.join(client, "notice.log"), SOCKS_PORT, CONTROL_PORT) + K.CLIENT)
    start_tor(args.client, torrc, os.path.join(client, "stderr"))

    # The relays' side: what makes the tor_exit role's instances join this network. The
    # role refuses these options unless TestingTorNetwork is 1 and DirAuthority is set.
    options = {
        "TestingTorNetwork": 1,
        "DirAuthority": dirauth,
        # publish at once, without the self-test of the ORPort (the authorities assume
        # reachability too), and take the container's address from the inventory
        "AssumeReachable": 1,
        "Address": "{{ demo_address }}",
        # a restart (the role's first run restarts tor for its unit limits) waits 2 s
        # for open circuits, not 30
        "ShutdownWaitLength": 2,
    }
    write(args.vars, "---\n# Written by demo/tornet.py: the relays join the demo's private Tor network.\n"
          "tor_exit_test_network_options: %s\n" % json.dumps(options, indent=2))
    print("tor network: %d authorities in %s (%s, ORPorts %d-%d), client in %s (SOCKS 127.0.0.1:%d)"
          % (N_AUTH, args.authorities, args.auth_address, ORPORT, ORPORT + N_AUTH - 1, args.client, SOCKS_PORT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
