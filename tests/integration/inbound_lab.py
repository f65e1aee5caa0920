"""The firewall role's inbound ruleset (nftables; iptables: the *_xt helpers) in a netlab.Lab: shared by
tests/integration/test_inbound_dos.py and the bench's inbound rows (tests/bench/inbound.py).

render() renders the role's real template with its defaults and role vars (only
firewall_inbound_dos_mode and the per-network rate set); load_relays() fills the relay sets with the guard's
own relay refresh script from a consensus file; static_neighbours() pins the lab
link's neighbours so bursts of SYNs are not lost behind neighbour discovery.
"""
import json
import os
import re
import subprocess
import sys
import time

from netlab import V4_LINK, V6_LINK

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = ("inet", "torexit_inbound")
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: {vars_files}
  tasks:
    - ansible.builtin.template:
        src: {template}
        dest: {dest}
        mode: "0600"
      vars:
        firewall_inbound_dos_mode: {mode}
        firewall_inbound_dos_net_rate_per_minute: {net_rate}
"""


def render(tmp_dir, mode, net_rate=0):
    """The role's inbound.nft.j2 with the role's defaults, firewall_inbound_dos_mode=mode and
    firewall_inbound_dos_net_rate_per_minute=net_rate."""
    dest = os.path.join(str(tmp_dir), "inbound-%s-%d.nft" % (mode, net_rate))
    book = os.path.join(str(tmp_dir), "render-%s.yml" % mode)
    with open(book, "w") as f:
        f.write(PLAYBOOK.format(vars_files=json.dumps(vars_files()),
                                template=os.path.join(TOP, "roles/firewall/templates/inbound.nft.j2"),
                                dest=dest, mode=mode, net_rate=int(net_rate)))
    _render(book, "inbound.nft.j2", mode)
    return dest


def vars_files():
    """The role's defaults and role vars (vars/main.yml), as the role reads them at run
    time: whatever they are on this checkout."""
    return [os.path.join(TOP, "roles/firewall", name, "main.yml") for name in ("defaults", "vars")]


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
        time.sleep(0.1)
    return False


def counters(lab):
    data = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "counters", "table", *TABLE).stdout)
    return {c["counter"]["name"]: c["counter"]["packets"] for c in data["nftables"] if "counter" in c}


def set_size(lab, name):
    data = json.loads(lab.ns(lab.relay, "nft", "-j", "list", "set", *TABLE, name).stdout)
    return sum(len(s["set"].get("elem", [])) for s in data["nftables"] if "set" in s)


# --- the iptables backend (the ufw backend loads the same chains from ufw's files) ---
XT_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars_files: VARS_FILES
  tasks:
    - ansible.builtin.template: {src: TDIR/inbound-dos.ipset.j2, dest: DEST.ipset, mode: "0600"}
    - ansible.builtin.template: {src: TDIR/inbound.iptables.j2, dest: "DEST.ip{{ item }}", mode: "0600"}
      vars:   # task vars: above the defaults of vars_files
        firewall_inbound_dos_mode: MODE
        firewall_inbound_dos_net_rate_per_minute: NETRATE
        firewall_inbound_dos_burst: BURST
        firewall_chain: TOREXIT-INPUT
        firewall_dos_chain: TOREXIT-DOS
        firewall_family: "{{ item }}"
      loop: [4, 6]
"""
XT_SETS = {"relays_v4": "torexit_in_relays_v4", "relays_v6": "torexit_in_relays_v6",
           "dos_blocked_v4": "torexit_in_blocked_v4", "dos_blocked_v6": "torexit_in_blocked_v6"}


def render_xt(tmp_dir, mode, net_rate=0, burst=None):
    """The role's inbound.iptables.j2 (both families) and inbound-dos.ipset.j2 with its defaults
    (firewall_inbound_dos_burst: `burst` when given): {"ipset": path, 4: path, 6: path}."""
    dest = os.path.join(str(tmp_dir), "inbound-%s-%d-%s" % (mode, net_rate, burst))
    book = os.path.join(str(tmp_dir), "render-xt-%s-%d-%s.yml" % (mode, net_rate, burst))
    text = (XT_PLAYBOOK.replace("VARS_FILES", json.dumps(vars_files()))
            .replace("TDIR", os.path.join(TOP, "roles/firewall/templates")).replace("DEST", dest)
            .replace("MODE", mode).replace("NETRATE", str(int(net_rate))))
    if burst is None:
        text = text.replace("        firewall_inbound_dos_burst: BURST\n", "")
    text = text.replace("BURST", str(burst))
    with open(book, "w") as f:
        f.write(text)
    _render(book, "inbound.iptables.j2", mode)
    return {"ipset": dest + ".ipset", 4: dest + ".ip4", 6: dest + ".ip6"}


def _render(book, template, mode):
    """Run a local rendering playbook of render() or render_xt()."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    proc = subprocess.run([os.path.join(TOP, ".venv", "bin", "ansible-playbook"), "-c", "local", book],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError("rendering %s (mode %s) failed:\n%s" % (template, mode, proc.stdout[-2000:]))


def load_xt(lab, files):
    """What torexit-inbound-iptables.service does: the sets, both families' chains, the hook
    (once: a reload replaces the chains only)."""
    lab.ns(lab.relay, "ipset", "-exist", "restore", "-file", files["ipset"])
    for fam, cmd in ((4, "iptables"), (6, "ip6tables")):
        lab.ns(lab.relay, cmd + "-restore", "--noflush", files[fam])
        if lab.ns(lab.relay, cmd, "-C", "INPUT", "-j", "TOREXIT-INPUT", check=False).returncode != 0:
            lab.ns(lab.relay, cmd, "-I", "INPUT", "1", "-j", "TOREXIT-INPUT")


def unload_xt(lab, tries=50):
    """Undo load_xt in the relay namespace: the INPUT hooks, every TOREXIT-* chain of both
    families, the torexit_in_* ipsets. Then wait (at most tries x 0.1 s) until the kernel
    freed the ipsets and the rules' hashlimit tables: nf_tables frees deleted rules
    asynchronously, and a hashlimit table still there when the next rules load would be
    taken over with its meters. The ipsets and hashlimit tables are the namespace's own."""
    for cmd in ("iptables", "ip6tables"):
        for _hook in range(10):
            if lab.ns(lab.relay, cmd, "-D", "INPUT", "-j", "TOREXIT-INPUT", check=False).returncode != 0:
                break
        chains = re.findall(r"^:(TOREXIT-\S+)", lab.ns(lab.relay, cmd + "-save", "-t", "filter", check=False).stdout,
                            re.M)
        for op in ("-F", "-X"):
            for chain in chains:
                lab.ns(lab.relay, cmd, op, chain, check=False)
    for _attempt in range(tries):
        sets = [n for n in lab.ns(lab.relay, "ipset", "list", "-n", check=False).stdout.split()
                if n.startswith("torexit_in_")]
        for name in sets:
            lab.ns(lab.relay, "ipset", "destroy", name, check=False)
        meters = lab.ns(lab.relay, "sh", "-c", "ls /proc/net/ipt_hashlimit /proc/net/ip6t_hashlimit 2>/dev/null",
                        check=False).stdout.split()
        if not sets and not [m for m in meters if m.startswith("torexit_in_")]:
            return
        time.sleep(0.1)
    raise RuntimeError("the iptables rules' ipsets or hashlimit tables were not freed: %s %s" % (sets, meters))


def load_relays_xt(lab, tmp_dir, consensus_text):
    """The guard's relay refresh script for ipsets (fills torexit_in_relays_v4/_v6) on a consensus file."""
    consensus = os.path.join(str(tmp_dir), "cached-microdesc-consensus")
    with open(consensus, "w") as f:
        f.write(consensus_text)
    sys.path.insert(0, os.path.join(TOP, ".cache", "collections"))
    from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables  # pylint: disable=import-outside-toplevel
    script = os.path.join(str(tmp_dir), "relays-ipset.sh")
    with open(script, "w") as f:
        f.write(guard_xtables.relays_script())
    lab.ns(lab.relay, "sh", script, consensus)


def counters_xt(lab):
    """{counter name: packets} of the rules tagged `torexit.hardening inbound_dos NAME`, both families."""
    out = {}
    for cmd in ("iptables-save", "ip6tables-save"):
        for line in lab.ns(lab.relay, cmd, "-c", "-t", "filter").stdout.splitlines():
            m = re.match(r'^\[(\d+):\d+\] .*--comment "?torexit\.hardening inbound_dos (\w+)', line)
            if m:
                out[m.group(2)] = out.get(m.group(2), 0) + int(m.group(1))
    return out


def set_size_xt(lab, name):
    text = lab.ns(lab.relay, "ipset", "list", "-t", XT_SETS[name]).stdout
    m = re.search(r"^Number of entries: (\d+)", text, re.M)
    return int(m.group(1)) if m else 0
