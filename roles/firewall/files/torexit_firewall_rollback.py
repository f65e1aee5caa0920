# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Installed by the firewall role as /usr/local/libexec/torexit-firewall-rollback: changes there are overwritten.
"""torexit.hardening firewall role: keep the firewall state from before a change
and put it back unless the controller confirms the change in time.

  save     keep the current state in DIR and set the marker DIR/pending
  restore  put the saved state back, then forget it (run by the transient
           torexit-firewall-rollback.timer, or by hand)
  boot     at boot, if a rollback was pending: put the saved files back before
           the firewall units load them (torexit-firewall-rollback-boot.service)
  confirm  forget the saved state: the controller confirmed the change
  status   print "none" and exit 0 when no rollback is pending; otherwise say
           what is pending and what to do, and exit 3

What is saved (no destination of relayed traffic is ever written to disk):
  - the files: /etc/ufw, /etc/default/ufw, the collection's rule files and units;
  - nftables: the tables inet torexit_inbound and inet torexit_guard, rules and
    set definitions; elements only of static sets (allow, deny, ports). The
    elements of dynamic sets (seen, scan and flood meters, bans, opt-outs,
    relays) stay in the kernel and are carried into the restored table;
  - ipset: the sets torexit_*, with the elements of static sets only; dynamic
    sets are left as they are in the kernel on restore (bans stay);
  - iptables/ip6tables (filter table): our chains only - TOREXIT-* and ufw's
    ufw-*/ufw6-* (ufw's files are saved too) - the rules in other chains that
    jump to them, and the policies of INPUT and OUTPUT (ufw sets INPUT's;
    FORWARD's is only ever tightened back, as Docker may have set DROP).
    Everything else (Docker, fail2ban, the operator's own rules) is never
    saved, flushed or restored.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

DIR = "/var/lib/torexit/firewall-rollback"
PENDING = os.path.join(DIR, "pending")
FAILED = os.path.join(DIR, "failed")
TIMER = "torexit-firewall-rollback.timer"
SERVICE = "torexit-firewall-rollback.service"
SELF = "/usr/local/libexec/torexit-firewall-rollback"
FILES = """etc/ufw etc/default/ufw etc/torexit/inbound.nft etc/torexit/inbound.iptables etc/torexit/inbound.ip6tables
etc/torexit/egress-guard.nft etc/torexit/egress-guard.ipset etc/torexit/egress-guard-ufw.ipset
etc/torexit/egress-guard.iptables etc/torexit/egress-guard.ip6tables
etc/systemd/system/torexit-inbound.service etc/systemd/system/torexit-inbound-iptables.service
etc/systemd/system/torexit-egress-guard.service etc/systemd/system/torexit-egress-guard-iptables.service
etc/systemd/system/torexit-egress-guard-ufw-ipsets.service
etc/torexit/inbound-dos.ipset etc/systemd/system/torexit-inbound-ufw-ipsets.service""".split()
# nftables table -> its rule file (restored from the saved files first)
TABLES = {"torexit_inbound": "/etc/torexit/inbound.nft", "torexit_guard": "/etc/torexit/egress-guard.nft"}
CARRY_TABLES = ("torexit_guard",)   # dynamic elements carried into the restored table
IPSET_PREFIX = "torexit_"
IPSET_TMP = "torexit_rb_tmp"
OUR_CHAIN = re.compile(r"^(TOREXIT-|ufw6?-)")
POLICY_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
FAMILIES = ("iptables", "ip6tables")


def log(msg, prio="info"):
    print(msg, file=sys.stderr if prio != "info" else sys.stdout, flush=True)
    if os.environ.get("JOURNAL_STREAM"):   # run by systemd: the line above went to the journal
        return
    try:
        subprocess.run(["systemd-cat", "-t", "torexit-firewall", "-p", prio], input=msg, text=True,
                       check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


def run(args, data=None):
    """(rc, stdout, stderr); rc 127 when the command is missing."""
    try:
        p = subprocess.run(args, input=data, capture_output=True, text=True, check=False, timeout=300)
    except FileNotFoundError:
        return 127, "", "%s: not found" % args[0]
    return p.returncode, p.stdout, p.stderr


def have(cmd):
    return shutil.which(cmd) is not None


def write(name, text):
    path = os.path.join(DIR, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read(name):
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read()
    except FileNotFoundError:
        return None


# --- nftables -------------------------------------------------------------------

def nft_set_blocks(text):
    """Split `nft list table` text into (lines, set name or None) pieces: one piece
    per set block, the other lines one piece each."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*set (\S+) \{$", lines[i])
        if not m:
            out.append(([lines[i]], None))
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "}":
            j += 1
        out.append((lines[i:j + 1], m.group(1)))
        i = j + 1
    return out


def nft_dynamic(block):
    """A set filled by the packet path or by the guard at run time: a dynamic or
    timeout set, or the relay allow list (refreshed from tor's consensus)."""
    lines, name = block
    flags = " ".join(x.strip() for x in lines if x.strip().startswith(("flags ", "timeout ")))
    return name.startswith("relays_") or "dynamic" in flags or "timeout" in flags


def nft_split_elements(lines):
    """(set lines without the elements, elements text or '')."""
    keep, elems, inside = [], [], False
    for line in lines:
        s = line.strip()
        if not inside and s.startswith("elements = {"):
            inside = True
            s = s[len("elements = {"):]
        if inside:
            if s.endswith("}"):
                inside = False
                s = s[:-1]
            elems.append(s.strip())
            continue
        keep.append(line)
    return keep, " ".join(e for e in elems if e)


def nft_definitions(text):
    """The table without the elements of its dynamic sets."""
    out = []
    for block in nft_set_blocks(text):
        lines, name = block
        if name and nft_dynamic(block):
            lines = nft_split_elements(lines)[0]
        out += lines
    return "\n".join(out)


def nft_live_elements(table):
    """{set: elements text with their time left} of the table's dynamic sets, read
    from the kernel (kept in memory only)."""
    rc, text, _err = run(["nft", "list", "table", "inet", table])
    if rc != 0:
        return {}
    out = {}
    for block in nft_set_blocks(text):
        if block[1] and nft_dynamic(block):
            elems = nft_split_elements(block[0])[1]
            if elems:
                out[block[1]] = elems
    return out


def nft_save():
    for table in TABLES:
        rc, text, _err = run(["nft", "-s", "list", "table", "inet", table])
        if rc == 0:
            write("nft-%s" % table, nft_definitions(text))


def nft_restore():
    ok = True
    for table, rule_file in TABLES.items():
        saved = read("nft-%s" % table)
        if saved is None:
            rc, _out, err = run(["nft", "delete", "table", "inet", table])
            if rc != 0 and "No such file" not in err:
                log("nft: could not delete table inet %s: %s" % (table, err.strip()), "err")
                ok = False
            continue
        replace = "table inet %s {}\ndelete table inet %s\n" % (table, table)
        sources = []
        if os.path.exists(rule_file):
            with open(rule_file) as f:
                sources.append(("the rule file " + rule_file, f.read()))
        sources.append(("the saved table", replace + saved))
        carry = nft_live_elements(table) if table in CARRY_TABLES else {}
        adds = "".join("add element inet %s %s { %s }\n" % (table, s, e) for s, e in carry.items())
        for what, text in sources:
            # One transaction: the table comes back with its dynamic elements (bans).
            if run(["nft", "-f", "-"], data=text + "\n" + adds)[0] == 0:
                log("nft: table inet %s restored from %s%s" % (
                    table, what, ", %d dynamic sets carried over" % len(carry) if carry else ""))
                break
            if not carry:
                continue
            rc, _out, _err = run(["nft", "-f", "-"], data=text)
            if rc != 0:
                continue
            # nft echoes the failing element lines: its messages are not shown here.
            lost = [s for s, e in carry.items()
                    if run(["nft", "-f", "-"], data="add element inet %s %s { %s }\n" % (table, s, e))[0] != 0]
            log("nft: table inet %s restored from %s; the elements of %d of %d dynamic sets could not be "
                "carried over (sets: %s)" % (table, what, len(lost), len(carry), ", ".join(lost) or "none"),
                "warning" if lost else "info")
            break
        else:
            log("nft: table inet %s could not be restored from %s" % (table, " or ".join(w for w, _t in sources)),
                "err")
            ok = False
    return ok


# --- ipset ----------------------------------------------------------------------

def ipset_parse(text):
    """{name: {"create": line, "adds": [lines]}} of our sets, in order."""
    sets = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("create", "add") and words[1].startswith(IPSET_PREFIX):
            if words[0] == "create":
                sets[words[1]] = {"create": line, "adds": []}
            elif words[1] in sets:
                sets[words[1]]["adds"].append(line)
    return sets


def ipset_dynamic(name, create):
    return " timeout " in create + " " or name.startswith((IPSET_PREFIX + "relays_", IPSET_PREFIX + "in_relays_"))


def ipset_definitions(text):
    """Our sets of an `ipset save` text, with the elements of the static ones only."""
    lines = []
    for name, s in ipset_parse(text).items():
        lines.append(s["create"])
        if not ipset_dynamic(name, s["create"]):
            lines += s["adds"]
    return "\n".join(lines) + "\n"


def ipset_save():
    if not have("ipset"):
        return
    rc, text, _err = run(["ipset", "save"])
    if rc == 0:
        write("ipset", ipset_definitions(text))


def ipset_restore():
    """Bring back the sets that existed and the elements of the static ones.
    Dynamic sets that exist are left alone: their elements (bans) stay."""
    saved = read("ipset")
    if saved is None or not have("ipset"):
        return True
    live = set(run(["ipset", "list", "-n"])[1].split())
    ok = True
    for name, s in ipset_parse(saved).items():
        header = s["create"].split(None, 2)[2]
        if name in live and ipset_dynamic(name, s["create"]):
            continue
        if name not in live:
            batch = [s["create"]] + s["adds"]
        else:
            # static: swap in a copy with the saved elements, in one step
            batch = ["create %s %s" % (IPSET_TMP, header)]
            batch += [re.sub(r"^add \S+", "add " + IPSET_TMP, a) for a in s["adds"]]
            batch += ["swap %s %s" % (IPSET_TMP, name), "destroy %s" % IPSET_TMP]
        run(["ipset", "destroy", IPSET_TMP])
        rc, _out, err = run(["ipset", "restore"], data="\n".join(batch) + "\n")
        if rc != 0 and name in live:
            # another type now (swap refuses): refill the set in place
            run(["ipset", "destroy", IPSET_TMP])
            rc, _out, err = run(["ipset", "-exist", "restore"], data="\n".join(["flush " + name] + s["adds"]) + "\n")
        if rc != 0:
            run(["ipset", "destroy", IPSET_TMP])
            log("ipset: set %s could not be restored (%s)" % (name, err.strip().splitlines()[-1:]), "err")
            ok = False
    return ok


def ipset_remove_new():
    """After the rules are back: destroy our sets made since the save (a set still
    in use is refused by the kernel and stays)."""
    saved = read("ipset")
    if saved is None or not have("ipset"):
        return
    keep = set(ipset_parse(saved))
    for name in run(["ipset", "list", "-n"])[1].split():
        if name.startswith(IPSET_PREFIX) and name not in keep:
            run(["ipset", "destroy", name])


# --- iptables -------------------------------------------------------------------

def ipt_parse(text):
    """(policies, chain names in order, rules [(chain, rest)]) of a filter table dump."""
    policies, chains, rules = {}, [], []
    lines = text.splitlines()
    if "*filter" in lines:
        lines = lines[lines.index("*filter"):]
        lines = lines[:lines.index("COMMIT")] if "COMMIT" in lines else lines
    for line in lines:
        m = re.match(r"^:(\S+) (\S+)", line)
        if m:
            chains.append(m.group(1))
            if m.group(2) != "-":
                policies[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^-A (\S+) (.*)$", line)
        if m:
            rules.append((m.group(1), m.group(2)))
    return policies, chains, rules


def ipt_target(rest):
    m = re.search(r"(?:^| )-[jg] (\S+)", rest)
    return m.group(1) if m else None


def ipt_ours(text):
    """The part of a dump this role owns: our chains and rules, the rules of other
    chains that jump to ours (with whether they lead their chain), and the policies."""
    policies, chains, rules = ipt_parse(text)
    ours = [c for c in chains if OUR_CHAIN.match(c)]
    hooks, leading = [], {}
    for chain, rest in rules:
        if OUR_CHAIN.match(chain):
            continue
        target = ipt_target(rest)
        is_hook = target is not None and OUR_CHAIN.match(target) is not None
        top = leading.setdefault(chain, True) and is_hook
        leading[chain] = top
        if is_hook:
            hooks.append([chain, rest, top])
    return {"policies": {c: policies.get(c, "ACCEPT") for c in POLICY_CHAINS},
            "chains": ours,
            "rules": [[c, r] for c, r in rules if OUR_CHAIN.match(c)],
            "hooks": hooks}


def ipt_save():
    for cmd in FAMILIES:
        rc, text, _err = run([cmd + "-save", "-t", "filter"])
        if rc == 0:
            write(cmd + ".json", json.dumps(ipt_ours(text), indent=1))


def ipt_restore():
    ok = True
    for cmd in FAMILIES:
        saved = read(cmd + ".json")
        if saved is None:
            continue
        saved = json.loads(saved)
        rc, text, err = run([cmd + "-save", "-t", "filter"])
        if rc != 0:
            log("%s-save failed: %s" % (cmd, err.strip()), "err")
            ok = False
            continue
        now = ipt_ours(text)
        live_chains = ipt_parse(text)[1]
        stale = [c for c in now["chains"] if c not in saved["chains"]]
        L = ["*filter"]
        # FORWARD only ever tightened: Docker may have set DROP meanwhile
        L += [":%s %s [0:0]" % (c, p) for c, p in saved["policies"].items()
              if now["policies"].get(c) != p and (c != "FORWARD" or p != "ACCEPT")]
        L += [":%s - [0:0]" % c for c in saved["chains"] + stale]   # declared = emptied
        L += ["-D %s %s" % (c, r) for c, r, _top in now["hooks"]]
        L += ["-A %s %s" % (c, r) for c, r in saved["rules"]]
        at = {}
        for c, r, top in saved["hooks"]:
            if c not in live_chains and c not in ("INPUT", "FORWARD", "OUTPUT"):
                continue
            if top:
                at[c] = at.get(c, 0) + 1
                L.append("-I %s %d %s" % (c, at[c], r))
            else:
                L.append("-A %s %s" % (c, r))
        L += ["-X %s" % c for c in stale]
        if len(L) == 1:
            continue   # nothing of ours then or now: do not even create the table
        L.append("COMMIT")
        rc, _out, err = run([cmd + "-restore", "--noflush"], data="\n".join(L) + "\n")
        if rc != 0:
            log("%s: our chains could not be restored: %s" % (cmd, err.strip()), "err")
            ok = False
        else:
            log("%s: our %d chains restored, %d made since removed; other chains untouched"
                % (cmd, len(saved["chains"]), len(stale)))
    return ok


# --- files ----------------------------------------------------------------------

def unit_digest():
    out = []
    for f in FILES:
        if f.startswith("etc/systemd/") and os.path.exists("/" + f):
            with open("/" + f, "rb") as fh:
                out.append((f, fh.read()))
    return out


def files_save():
    present = [f for f in FILES if os.path.lexists("/" + f)]
    rc, _out, err = run(["tar", "-C", "/", "-cf", os.path.join(DIR, "files.tar"), "--files-from", "-"],
                        data="\n".join(present) + ("\n" if present else ""))
    if rc != 0:
        raise SystemExit("tar failed: %s" % err.strip())


def files_restore():
    units = unit_digest()
    for f in FILES:
        if os.path.lexists("/" + f) and not os.path.isdir("/" + f):
            os.unlink("/" + f)
    rc, _out, err = run(["tar", "-C", "/", "-xpf", os.path.join(DIR, "files.tar")])
    if rc != 0:
        log("files: tar could not restore them: %s" % err.strip(), "err")
        return False
    if unit_digest() != units:
        run(["systemctl", "daemon-reload"])
    return True


# --- commands -------------------------------------------------------------------

def save():
    shutil.rmtree(DIR, ignore_errors=True)   # also a save of an older version, which held set elements
    os.makedirs(DIR, mode=0o700)
    os.chmod(DIR, 0o700)
    files_save()
    if have("nft"):
        nft_save()
    ipset_save()
    ipt_save()
    write("pending", "%d\n" % time.time())


def forget():
    shutil.rmtree(DIR, ignore_errors=True)


def upgrade_legacy():
    """A save of the collection's earlier shell version (marker `saved`), made while its
    timer was armed: keep only what this version keeps, in its format."""
    if not os.path.exists(os.path.join(DIR, "saved")) or os.path.exists(PENDING):
        return
    for table in TABLES:
        text = read(table + ".nft")
        if text is not None:
            write("nft-" + table, nft_definitions(text))
            os.unlink(os.path.join(DIR, table + ".nft"))
    text = read("ipset")
    if text is not None:
        write("ipset", ipset_definitions(text))
    for cmd in FAMILIES:
        text = read(cmd)
        if text is not None:
            write(cmd + ".json", json.dumps(ipt_ours(text), indent=1))
            os.unlink(os.path.join(DIR, cmd))
    write("pending", "%d\n" % time.time())


def restore():
    upgrade_legacy()
    if not os.path.exists(PENDING) and not os.path.exists(FAILED):
        raise SystemExit("torexit firewall: no rollback is pending (nothing saved in %s)" % DIR)
    run(["systemctl", "stop", TIMER])   # run by hand: the timer must not restore a second time
    ok = files_restore()
    if have("nft"):
        ok = nft_restore() and ok
    ok = ipset_restore() and ok
    ok = ipt_restore() and ok
    ipset_remove_new()
    if ok:
        forget()
        log("torexit firewall: previous rules restored", "warning")
        return
    write("failed", "%d\n" % time.time())
    log("torexit firewall: the previous rules were restored only in part (see the messages above); the "
        "saved state stays in %s: fix the cause and run '%s restore' again" % (DIR, SELF), "err")
    raise SystemExit(1)


def boot():
    """The transient timer died with the reboot: the kernel is empty, so putting
    the files back is enough - the firewall units started after this one load them."""
    if not os.path.exists(PENDING):
        return
    if files_restore():
        forget()
        log("torexit firewall: a reboot came before the change was confirmed; the previous rule files "
            "were restored before the firewall units started", "warning")
    else:
        write("failed", "%d\n" % time.time())
        raise SystemExit(1)


def unit_state(unit):
    return run(["systemctl", "is-active", unit])[1].strip()


def status():
    timer, service = unit_state(TIMER), unit_state(SERVICE)
    what = []
    if service in ("active", "activating"):
        what.append("the restore is running right now")
    if timer == "active":
        what.append("%s is armed by an earlier run that was not confirmed" % TIMER)
    if os.path.exists(FAILED):
        what.append("an earlier restore failed in part")
    elif os.path.exists(PENDING) and not what:
        what.append("a change was never confirmed (its timer is gone: a reboot, or it was stopped by hand)")
    if not what:
        print("none")
        return
    wait = ("wait until it has restored the previous rules (firewall_rollback_timeout seconds after the "
            "earlier run armed it), or " if timer == "active" else "")
    print("a rollback of the firewall is pending: %s. Its saved rules are the ones to come back to, so this "
          "run does not replace them: %srestore them now with 'sudo %s restore', or keep the rules as they are "
          "now with 'sudo %s confirm'; then run the role again." % ("; ".join(what), wait, SELF, SELF))
    raise SystemExit(3)


def main():
    os.umask(0o077)
    cmd = sys.argv[1] if len(sys.argv) == 2 else ""
    actions = {"save": save, "restore": restore, "boot": boot, "confirm": forget, "status": status}
    if cmd not in actions:
        raise SystemExit("usage: %s save|restore|boot|confirm|status" % sys.argv[0])
    if cmd == "confirm":
        run(["systemctl", "stop", TIMER])
    actions[cmd]()


if __name__ == "__main__":
    main()
