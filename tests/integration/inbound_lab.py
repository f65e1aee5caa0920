"""The firewall role's inbound ruleset (nftables) in a netlab.Lab: shared by
tests/integration/test_inbound_dos.py and the bench's inbound rows (tests/bench/inbound.py).

render() renders the role's real template with its defaults (only
firewall_inbound_dos_mode set); load_relays() fills the relay sets with the guard's
own relay refresh script from a consensus file; static_neighbours() pins the lab
link's neighbours so bursts of SYNs are not lost behind neighbour discovery.
"""
import json
import os
import subprocess
import sys

from netlab import V4_LINK, V6_LINK

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = ("inet", "torexit_inbound")
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: [{defaults}]
  tasks:
    - ansible.builtin.template:
        src: {template}
        dest: {dest}
        mode: "0600"
      vars:
        firewall_inbound_dos_mode: {mode}
"""


def render(tmp_dir, mode):
    """The role's inbound.nft.j2 with the role's defaults and firewall_inbound_dos_mode=mode."""
    dest = os.path.join(str(tmp_dir), "inbound-%s.nft" % mode)
    book = os.path.join(str(tmp_dir), "render-%s.yml" % mode)
    with open(book, "w") as f:
        f.write(PLAYBOOK.format(defaults=os.path.join(TOP, "roles/firewall/defaults/main.yml"),
                                template=os.path.join(TOP, "roles/firewall/templates/inbound.nft.j2"),
                                dest=dest, mode=mode))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    proc = subprocess.run([os.path.join(TOP, ".venv", "bin", "ansible-playbook"), "-c", "local", book],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError("rendering inbound.nft.j2 (mode %s) failed:\n%s" % (mode, proc.stdout[-2000:]))
    return dest


def relays_script():
    """The guard's relay refresh script for nftables (fills relays_v4/relays_v6)."""
    sys.path.insert(0, os.path.join(TOP, ".cache", "collections"))
    from ansible_collections.torexit.hardening.plugins.module_utils import guard_host  # pylint: disable=import-outside-toplevel
    return guard_host.relays_script("nftables")


def load_relays(lab, tmp_dir, consensus_text):
    """Write a consensus file and run the relay refresh script on it in the relay namespace."""
    consensus = os.path.join(str(tmp_dir), "cached-microdesc-consensus")
    with open(consensus, "w") as f:
        f.write(consensus_text)
    script = os.path.join(str(tmp_dir), "relays.sh")
    with open(script, "w") as f:
        f.write(relays_script())
    lab.ns(lab.relay, "sh", script, consensus)


def static_neighbours(lab):
    """Permanent neighbour entries on the lab link: a burst of SYNs waiting for
    neighbour discovery overflows its queue, and the lost ones would count as failures."""
    devs = {lab.relay: "v%sr" % lab.relay[-6:], lab.net: "v%sn" % lab.relay[-6:]}
    macs = {ns: json.loads(lab.ns(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"]
            for ns, dev in devs.items()}
    for ns, peer, idx in ((lab.relay, lab.net, 1), (lab.net, lab.relay, 0)):
        for addr in (V4_LINK[idx], V6_LINK[idx]):
            lab.ns(ns, "ip", "neigh", "replace", addr, "lladdr", macs[peer], "dev", devs[ns], "nud", "permanent")


def wait_listening(lab, port, sockets=2, tries=50):
    """Wait (at most tries x 0.1 s) until `sockets` listeners on port exist in the relay namespace."""
    for _attempt in range(tries):
        if lab.ns(lab.relay, "ss", "-ltnH", "sport = :%d" % port, check=False).stdout.count("LISTEN") >= sockets:
            return True
        subprocess.run(["sleep", "0.1"], check=False)
    return False


def counters(lab):
    data = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "counters", "table", *TABLE).stdout)
    return {c["counter"]["name"]: c["counter"]["packets"] for c in data["nftables"] if "counter" in c}


def set_size(lab, name):
    data = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "set", *TABLE, name).stdout)
    return sum(len(s["set"].get("elem", [])) for s in data["nftables"] if "set" in s)
