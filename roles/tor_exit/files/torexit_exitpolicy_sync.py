# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn the egress guard's ban and opt-out sets into tor ExitPolicy reject lines.

Reads the guard's sets wherever the backend keeps them (names: docs/guard-sets.md):
`nft -j list table inet torexit_guard` (nftables backend) and `ipset save` of the
ipsets `torexit_ban_*` / `torexit_optout_v4|v6` (iptables and ufw backends); a
host that holds both (a backend switched without removing the old one) gets the
union. It writes one `ExitPolicy reject PREFIX:PORT` line per ban or opt-out to an
included torrc file, checks every listed torrc with `tor --verify-config` and
reloads tor only when the file changed. A config tor rejects is rolled back and
tor is not reloaded. Lines disappear when the kernel expires the set element.

Privacy: the banned prefixes are only written to the torrc file (tor publishes
its exit policy anyway); nothing here logs them, only counts.

Python 3 standard library only; run by torexit-exitpolicy-sync.service as
/usr/bin/python3 /usr/local/lib/torexit/torexit_exitpolicy_sync.py.
"""

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile

TABLE = ("inet", "torexit_guard")
IPSET_PREFIX = "torexit_"  # the iptables and ufw backends' ipsets: torexit_ + the nftables set name
BAN_SET_RE = re.compile(r"^ban_[a-z0-9]+_v([46])_(\d{1,3})$")
OPTOUT_SET_RE = re.compile(r"^optout_v([46])$")
ADDRESS_RE = re.compile(r"\[?[0-9a-fA-F]*:[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\]?(/\d+)?|\d+\.\d+\.\d+\.\d+(/\d+)?")
HEADER = (
    "# Managed by torexit-exitpolicy-sync (torexit.hardening.tor_exit): do not edit.\n"
    "# The egress guard's current bans and opt-outs as tor exit policy rejects;\n"
    "# read before the exit policy's accept lines, since tor uses the first match.\n"
)


class SyncError(Exception):
    """Something that must stop the sync without touching tor."""


def _network(addr, prefixlen=None):
    """ipaddress network for an address with an optional prefix length."""
    text = str(addr) if prefixlen is None else f"{addr}/{prefixlen}"
    return ipaddress.ip_network(text, strict=False)


def _target(net):
    """tor's notation of a network: 198.18.1.0/24, 198.18.1.1, [2001:db8::]/48."""
    if net.version == 4:
        return str(net.network_address) if net.prefixlen == 32 else str(net)
    if net.prefixlen == 128:
        return f"[{net.network_address}]"
    return f"[{net.network_address}]/{net.prefixlen}"


def _value_networks(val, version, prefixlen):
    """Networks that one set key (without the port) stands for."""
    if isinstance(val, str):
        net = _network(val, prefixlen)
        nets = [net]
    elif isinstance(val, dict) and "prefix" in val:
        nets = [_network(val["prefix"]["addr"], val["prefix"]["len"])]
    elif isinstance(val, dict) and "range" in val:
        low, high = (ipaddress.ip_address(a) for a in val["range"])
        nets = list(ipaddress.summarize_address_range(low, high))
    else:
        raise ValueError(f"unexpected set key {val!r}")
    for net in nets:
        if net.version != version:
            raise ValueError(f"IPv{net.version} key in an IPv{version} set")
    return nets


def guard_set(name, prefix=""):
    """(ban match, opt-out match) of a set name of the guard, after `prefix` (the
    ipsets' torexit_); (None, None) for any other set."""
    if not name.startswith(prefix):
        return None, None
    short = name[len(prefix):]
    return BAN_SET_RE.match(short), OPTOUT_SET_RE.match(short)


def _port(value):
    """A port (int) or a port range (low, high) from nft JSON (80, {"range": [80, 82]})
    or ipset text ("80", "80-82")."""
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
    elif isinstance(value, str) and "-" in value:
        low, high = value.split("-", 1)
    else:
        low = high = value
    low, high = int(low), int(high)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"port {value!r} out of range")
    return low if low == high else (low, high)


def _port_key(port):
    if port is None:
        return (0, 0)
    return port if isinstance(port, tuple) else (port, port)


def entries_from_nft(document):
    """Parse `nft -j` output into a list of entries.

    Each entry is a dict: kind ("ban" or "optout"), net (ipaddress network),
    port (int or None for all ports), age (seconds since it was added, from
    timeout - expires; 0 when unknown). Sets with other names are ignored;
    elements that cannot be understood are counted in `skipped`.
    """
    entries, skipped = [], 0
    for item in document.get("nftables", []):
        nset = item.get("set")
        if not nset or (nset.get("family"), nset.get("table")) != TABLE:
            continue
        ban, optout = guard_set(nset.get("name", ""))
        if not ban and not optout:
            continue
        version = int((ban or optout).group(1))
        prefixlen = int(ban.group(2)) if ban else None
        if prefixlen is not None and prefixlen > (32 if version == 4 else 128):
            continue
        for element in nset.get("elem", []):
            meta = element.get("elem") if isinstance(element, dict) and "elem" in element else {"val": element}
            val = meta.get("val")
            try:
                port = None
                if isinstance(val, dict) and "concat" in val:
                    if optout or len(val["concat"]) != 2:
                        raise ValueError("unexpected concatenation")
                    val, port = val["concat"][0], _port(val["concat"][1])
                nets = _value_networks(val, version, prefixlen)
            except (ValueError, TypeError, KeyError):
                skipped += 1
                continue
            timeout, expires = meta.get("timeout"), meta.get("expires")
            age = timeout - expires if isinstance(timeout, int) and isinstance(expires, int) else 0
            for net in nets:
                entries.append({"kind": "ban" if ban else "optout", "net": net, "port": port, "age": max(age, 0)})
    return entries, skipped


def _ipset_entry(key, version, prefixlen, optout):
    """(networks, port) of one ipset element: `198.18.0.0,tcp:22` (hash:ip,port, the
    address already masked to the set's netmask), `2001:db8::5` (hash:ip) or
    `198.18.5.0/24` (hash:net, opt-outs)."""
    addr, comma, service = key.partition(",")
    port = None
    if comma:
        proto, _colon, ports = service.rpartition(":")
        if optout or proto not in ("tcp", ""):
            raise ValueError("unexpected element")  # tor exits TCP only
        port = _port(ports)
    if "/" in addr and not optout:
        raise ValueError("unexpected prefix")
    return _value_networks(addr, version, prefixlen), port


def entries_from_ipset(text):
    """Parse `ipset save` output into entries like entries_from_nft.

    Only sets named torexit_ban_<detector>_v<4|6>_<len> and torexit_optout_v<4|6>
    are read; age is the set's default timeout minus the seconds left (0 when
    unknown). Elements that cannot be understood are counted in `skipped`.
    """
    entries, skipped, sets = [], 0, {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] not in ("create", "add"):
            continue
        if words[0] == "create":
            ban, optout = guard_set(words[1], IPSET_PREFIX)
            if not ban and not optout:
                continue
            version = int((ban or optout).group(1))
            prefixlen = int(ban.group(2)) if ban else None
            family = words[words.index("family") + 1] if "family" in words[:-1] else None
            if family != ("inet" if version == 4 else "inet6") or (prefixlen or 0) > (32 if version == 4 else 128):
                continue
            default = int(words[words.index("timeout") + 1]) if "timeout" in words[:-1] else None
            sets[words[1]] = (ban is not None, version, prefixlen, default)
            continue
        if words[1] not in sets:
            continue
        ban, version, prefixlen, default = sets[words[1]]
        try:
            nets, port = _ipset_entry(words[2], version, prefixlen, not ban)
            left = int(words[words.index("timeout") + 1]) if "timeout" in words[3:-1] else None
        except (ValueError, TypeError):
            skipped += 1
            continue
        age = default - left if default is not None and left is not None else 0
        for net in nets:
            entries.append({"kind": "ban" if ban else "optout", "net": net, "port": port, "age": max(age, 0)})
    return entries, skipped


def select(entries, max_lines):
    """At most max_lines entries: opt-outs first, then the most recent bans.

    Duplicates are dropped. The result is sorted (IPv4 before IPv6, then by
    address and port) so that the same sets always give the same file.
    """
    ranked = sorted(entries, key=lambda e: (e["kind"] != "optout", e["age"]))
    chosen, seen = [], set()
    for entry in ranked:
        key = (entry["net"], entry["port"])
        if key in seen:
            continue
        seen.add(key)
        chosen.append(entry)
        if len(chosen) >= max_lines:
            break
    return sorted(chosen, key=lambda e: (e["net"].version, e["net"].network_address,
                                         e["net"].prefixlen, _port_key(e["port"])))


def _port_text(port):
    if port is None:
        return "*"
    return f"{port[0]}-{port[1]}" if isinstance(port, tuple) else str(port)


def render(entries):
    lines = [f"ExitPolicy reject {_target(e['net'])}:{_port_text(e['port'])}" for e in entries]
    return HEADER + "".join(line + "\n" for line in lines)


def read_nft(nft="nft"):
    """The guard table as JSON; an absent table (or no nft program) reads as empty."""
    try:
        proc = subprocess.run([nft, "-j", "list", "table", *TABLE], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return {"nftables": []}
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return {"nftables": []}
        raise SyncError(f"nft failed ({proc.returncode}): {proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise SyncError(f"nft printed no JSON: {exc}") from None


def _ipset_run(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None


def read_ipsets(ipset="ipset"):
    """`ipset save` text of the guard's ban and opt-out ipsets; '' when there are none
    (nftables backend, or no ipset program). Other sets (the large torexit_seen_*) are
    not read."""
    proc = _ipset_run([ipset, "list", "-n"])
    if proc is None:
        return ""
    if proc.returncode != 0:
        raise SyncError(f"ipset list failed ({proc.returncode}): {proc.stderr.strip()}")
    texts = []
    for name in proc.stdout.split():
        if not any(guard_set(name, IPSET_PREFIX)):
            continue
        saved = _ipset_run([ipset, "save", name])
        if saved is None or (saved.returncode != 0 and "does not exist" in saved.stderr):
            continue  # destroyed since it was listed
        if saved.returncode != 0:
            raise SyncError(f"ipset save failed ({saved.returncode}): {saved.stderr.strip()}")
        texts.append(saved.stdout)
    return "".join(texts)


def write_atomic(path, text):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".torexit-sync-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o640)  # prefixes: root and group debian-tor (the include directory is setgid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify(tor, torrc):
    proc = subprocess.run([tor, "--verify-config", "-f", torrc], capture_output=True,
                          text=True, check=False, cwd="/")
    if proc.returncode == 0:
        return None
    problems = [line.split("] ", 1)[-1] for line in proc.stdout.splitlines() if "[warn]" in line or "[err]" in line]
    # tor quotes offending policy lines: keep the addresses out of the journal
    return ADDRESS_RE.sub("<address>", "; ".join(problems)) or f"exit code {proc.returncode}"


def sync(args, document=None, saved=None):
    """One sync of the nft JSON `document` and the `ipset save` text `saved` (both
    read from the kernel when neither is given). Returns a one-line summary;
    raises SyncError on failure."""
    if document is None and saved is None:
        document = read_nft(args.nft)
        try:
            saved = read_ipsets(args.ipset)
        except SyncError as exc:
            if not document.get("nftables"):
                raise
            # the nftables backend holds the guard: an ipset error must not stop it
            print(f"torexit-exitpolicy-sync: ipsets not read: {exc}", file=sys.stderr)
    entries, skipped = entries_from_nft(document or {"nftables": []})
    more, more_skipped = entries_from_ipset(saved or "")
    entries, skipped = entries + more, skipped + more_skipped
    chosen = select(entries, args.max_lines)
    text = render(chosen)
    old = None
    if os.path.exists(args.output):
        with open(args.output) as f:
            old = f.read()
    optouts = sum(1 for e in chosen if e["kind"] == "optout")
    counts = (f"{len(chosen)} reject lines ({optouts} opt-outs, {len(chosen) - optouts} bans; "
              f"{max(len({(e['net'], e['port']) for e in entries}) - len(chosen), 0)} over the limit, "
              f"{skipped} unreadable)")
    if text == old:
        return f"unchanged: {counts}"

    write_atomic(args.output, text)
    for torrc in args.torrc:
        problem = verify(args.tor, torrc)
        if problem:
            if old is None:
                os.unlink(args.output)
            else:
                write_atomic(args.output, old)
            raise SyncError(f"tor --verify-config -f {torrc} rejected the new file, rolled back: {problem}")
    for unit in args.reload:
        # reload (SIGHUP) a running unit; a stopped one reads the file when it starts
        proc = subprocess.run(["systemctl", "try-reload-or-restart", unit], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SyncError(f"reloading {unit} failed: {proc.stderr.strip()}")
    return f"updated, reloaded {', '.join(args.reload) or 'nothing'}: {counts}"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--output", default="/etc/tor/torrc.d/10-torexit-guard.conf",
                        help="included torrc file to write")
    parser.add_argument("--max-lines", type=int, default=500, help="at most this many reject lines")
    parser.add_argument("--torrc", action="append", default=[],
                        help="torrc to check with tor --verify-config (repeat for several instances)")
    parser.add_argument("--reload", action="append", default=[], help="systemd unit to reload (repeatable)")
    parser.add_argument("--tor", default="tor", help="tor program")
    parser.add_argument("--nft", default="nft", help="nft program")
    parser.add_argument("--ipset", default="ipset", help="ipset program")
    parser.add_argument("--nft-json", help="read this file instead of running nft and ipset (for tests)")
    parser.add_argument("--ipset-save", help="read this `ipset save` output instead of running nft and ipset "
                                             "(for tests)")
    args = parser.parse_args(argv)
    if args.max_lines < 1:
        parser.error("--max-lines must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        document = saved = None
        if args.nft_json:
            with open(args.nft_json) as f:
                document = json.load(f)
        if args.ipset_save:
            with open(args.ipset_save) as f:
                saved = f.read()
        print(sync(args, document, saved))
    except (SyncError, OSError, ValueError) as exc:
        print(f"torexit-exitpolicy-sync: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
