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
import grp
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from select import select as wait_readable

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
            # an element added with the set's own timeout prints only `expires`
            timeout, expires = meta.get("timeout", nset.get("timeout")), meta.get("expires")
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


def aggregate(entries, prefix_v4=32, prefix_v6=128):
    """Fewer, coarser entries that reject at least the same destinations.

    Every network longer than prefix_v4 / prefix_v6 is widened to that length (the
    operator's choice of how precisely the published policy names a destination),
    the ports of one network are merged into ranges (80, 81, 82 -> 80-82), and an
    entry inside a network whose every port is rejected is dropped. A merged entry
    is an opt-out when any of its parts is one, and as old as its youngest part.
    """
    by_net = {}
    for entry in entries:
        net = entry["net"]
        limit = prefix_v4 if net.version == 4 else prefix_v6
        if net.prefixlen > limit:
            net = net.supernet(new_prefix=limit)
        by_net.setdefault(net, []).append(entry)
    whole = sorted((net for net, parts in by_net.items() if any(e["port"] is None for e in parts)),
                   key=lambda n: n.prefixlen)
    out = []
    for net, parts in by_net.items():
        if any(w.version == net.version and w != net and net.subnet_of(w) for w in whole):
            continue  # every port of a wider network is rejected already
        if any(e["port"] is None for e in parts):
            groups = [((None, None), parts)]
        else:
            groups = []
            for entry in sorted(parts, key=lambda e: _port_key(e["port"])):
                low, high = _port_key(entry["port"])
                if groups and low <= groups[-1][0][1] + 1:
                    (glow, ghigh), members = groups[-1]
                    groups[-1] = ((glow, max(ghigh, high)), members + [entry])
                else:
                    groups.append(((low, high), [entry]))
        for (low, high), members in groups:
            port = None if low is None else (low if low == high else (low, high))
            kind = "optout" if any(e["kind"] == "optout" for e in members) else "ban"
            out.append({"kind": kind, "net": net, "port": port, "age": min(e["age"] for e in members)})
    return out


def descriptor_bytes(entry):
    """Bytes an entry adds to the relay descriptor tor uploads: IPv4 lines are listed
    one by one ("reject 198.18.7.0/24:22"), IPv6 ones only in the ipv6-policy port
    summary, so they add nothing there. Directory authorities refuse descriptors over
    20,000 bytes (MAX_DESCRIPTOR_UPLOAD_SIZE)."""
    if entry["net"].version != 4:
        return 0
    return len(f"reject {_target(entry['net'])}:{_port_text(entry['port'])}\n")


def select(entries, max_lines, max_bytes=None):
    """At most max_lines entries, and IPv4 lines of at most max_bytes in the
    descriptor: opt-outs first, then the most recent bans.

    Duplicates are dropped. The result is sorted (IPv4 before IPv6, then by
    address and port) so that the same sets always give the same file.
    """
    ranked = sorted(entries, key=lambda e: (e["kind"] != "optout", e["age"]))
    chosen, seen, used = [], set(), 0
    for entry in ranked:
        key = (entry["net"], entry["port"])
        if key in seen:
            continue
        seen.add(key)
        size = descriptor_bytes(entry)
        if max_bytes is not None and used + size > max_bytes:
            continue  # an IPv6 line may still fit
        used += size
        chosen.append(entry)
        if len(chosen) >= max_lines:
            break
    return sorted(chosen, key=lambda e: (e["net"].version, e["net"].network_address,
                                         e["net"].prefixlen, _port_key(e["port"])))


def _port_text(port):
    if port is None:
        return "*"
    return f"{port[0]}-{port[1]}" if isinstance(port, tuple) else str(port)


def policy_values(entries):
    """The ExitPolicy values (as GETCONF/SETCONF carry them) of entries."""
    return [f"reject {_target(e['net'])}:{_port_text(e['port'])}" for e in entries]


def render(entries):
    return HEADER + "".join(f"ExitPolicy {value}\n" for value in policy_values(entries))


def file_values(text):
    """The ExitPolicy values of a file written by render (None for no file)."""
    if text is None:
        return None
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.startswith("ExitPolicy ") and len(line.split(None, 1)) == 2]


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


class IpsetSets:
    """Reads the guard's ban and opt-out ipsets with one `ipset -` process per call
    (its command mode: one `save NAME` line per set), instead of one process per set;
    the names (`ipset list -n`) are refreshed every `refresh` seconds, and at once
    after an error (a set gone), when that call falls back to read_ipsets."""

    def __init__(self, ipset="ipset", refresh=5.0, clock=time.monotonic):
        self.ipset, self.refresh, self.clock = ipset, refresh, clock
        self.names, self.when = None, None

    def __call__(self):
        now = self.clock()
        if self.names is None or now - self.when >= self.refresh:
            proc = _ipset_run([self.ipset, "list", "-n"])
            if proc is None:
                return ""
            if proc.returncode != 0:
                raise SyncError(f"ipset list failed ({proc.returncode}): {proc.stderr.strip()}")
            self.names = [n for n in proc.stdout.split() if any(guard_set(n, IPSET_PREFIX))]
            self.when = now
        if not self.names:
            return ""
        try:
            proc = subprocess.run([self.ipset, "-"], input="".join(f"save {n}\n" for n in self.names),
                                  capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return ""
        text = "".join(line.replace("ipset> ", "") + "\n" for line in proc.stdout.splitlines()
                       if line.replace("ipset> ", "").strip())
        created = {line.split()[1] for line in text.splitlines() if line.startswith("create ")}
        if proc.returncode != 0 or proc.stderr.strip() or created != set(self.names):
            self.names = None
            return read_ipsets(self.ipset)
        return text


FILE_MODE = 0o640  # the lines become public with the descriptor, but not before tor publishes them
ACL_XATTR = "system.posix_acl_access"


def _gid(group):
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SyncError(f"group {group!r} (--group/--reader) does not exist") from None


def acl_blob(mode, gids):
    """A POSIX access ACL (the kernel's xattr form) of `mode` plus read for `gids`."""
    entry = struct.Struct("<HHI")
    undefined = 0xFFFFFFFF
    entries = [entry.pack(0x01, (mode >> 6) & 7, undefined), entry.pack(0x04, (mode >> 3) & 7, undefined)]
    entries += [entry.pack(0x08, 4, gid) for gid in sorted(set(gids))]
    entries += [entry.pack(0x10, ((mode >> 3) & 7) | 4, undefined), entry.pack(0x20, mode & 7, undefined)]
    return struct.pack("<I", 2) + b"".join(entries)


def write_atomic(path, text, group=None, readers=()):
    """Replace `path` with `text`, mode 0640, in one rename. The group is `group`, else
    the old file's group; `readers` are further groups given read access through a
    POSIX ACL (tor instances that run as other users, e.g. _tor-NAME). Returns a
    warning (str) when the ACL could not be set, else None."""
    directory = os.path.dirname(path) or "."
    try:
        gid = _gid(group) if group else os.stat(path).st_gid
    except FileNotFoundError:
        gid = -1
    reader_gids = [_gid(r) for r in readers]
    warning = None
    fd, tmp = tempfile.mkstemp(prefix=".torexit-sync-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, FILE_MODE)
        if gid != -1 and gid != os.stat(tmp).st_gid:
            os.chown(tmp, -1, gid)
        if reader_gids:
            try:
                os.setxattr(tmp, ACL_XATTR, acl_blob(FILE_MODE, reader_gids))
            except OSError as exc:
                warning = f"no ACL for the --reader groups on {path}: {exc.strerror}"
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return warning


def verify(tor, torrc):
    proc = subprocess.run([tor, "--verify-config", "-f", torrc], capture_output=True,
                          text=True, check=False, cwd="/")
    if proc.returncode == 0:
        return None
    problems = [line.split("] ", 1)[-1] for line in proc.stdout.splitlines() if "[warn]" in line or "[err]" in line]
    # tor quotes offending policy lines: keep the addresses out of the journal
    return ADDRESS_RE.sub("<address>", "; ".join(problems)) or f"exit code {proc.returncode}"


def plan(args, document, saved):
    """(chosen entries, summary of counts) for the nft JSON `document` and the
    `ipset save` text `saved`: aggregated, then cut to the line budget."""
    entries, skipped = entries_from_nft(document or {"nftables": []})
    more, more_skipped = entries_from_ipset(saved or "")
    entries, skipped = aggregate(entries + more, args.prefix_v4, args.prefix_v6), skipped + more_skipped
    chosen = select(entries, args.max_lines, args.max_bytes)
    optouts = sum(1 for e in chosen if e["kind"] == "optout")
    counts = (f"{len(chosen)} reject lines ({optouts} opt-outs, {len(chosen) - optouts} bans; "
              f"{max(len({(e['net'], e['port']) for e in entries}) - len(chosen), 0)} over the limit, "
              f"{skipped} unreadable)")
    return chosen, counts


def read_kernel(args, nft_reader=None, ipset_reader=None):
    """(nft JSON document, ipset save text) of the guard's sets; `nft_reader` and
    `ipset_reader` (callables returning them) replace the whole-table listing and
    read_ipsets."""
    document = nft_reader() if nft_reader else read_nft(args.nft)
    try:
        saved = ipset_reader() if ipset_reader else read_ipsets(args.ipset)
    except SyncError as exc:
        if not document.get("nftables"):
            raise
        # the nftables backend holds the guard: an ipset error must not stop it
        log(f"ipsets not read: {exc}")
        saved = ""
    return document, saved


def log(message):
    print(f"torexit-exitpolicy-sync: {message}", file=sys.stderr, flush=True)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _restore(path, old, args):
    if old is None:
        os.unlink(path)
    else:
        write_atomic(path, old, args.group, args.reader)


def verify_and_reload(args, old, torrcs, units):
    """The timer-era path: check each torrc with the new file, roll back if tor
    rejects it, else reload (SIGHUP) the units. Raises SyncError."""
    for torrc in torrcs:
        problem = verify(args.tor, torrc)
        if problem:
            _restore(args.output, old, args)
            raise SyncError(f"tor --verify-config -f {torrc} rejected the new file, rolled back: {problem}")
    for unit in units:
        # reload (SIGHUP) a running unit; a stopped one reads the file when it starts
        proc = subprocess.run(["systemctl", "try-reload-or-restart", unit], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SyncError(f"reloading {unit} failed: {proc.stderr.strip()}")


def sync(args, document=None, saved=None):
    """One sync of the nft JSON `document` and the `ipset save` text `saved` (both
    read from the kernel when neither is given): write the file, verify it with
    tor and reload the units. Returns a one-line summary; raises SyncError."""
    if document is None and saved is None:
        document, saved = read_kernel(args)
    chosen, counts = plan(args, document, saved)
    text = render(chosen)
    old = _read(args.output)
    if text == old:
        return f"unchanged: {counts}"
    warning = write_atomic(args.output, text, args.group, args.reader)
    if warning:
        log(warning)
    verify_and_reload(args, old, args.torrc, args.reload)
    return f"updated, reloaded {', '.join(args.reload) or 'nothing'}: {counts}"


# --- watch mode: poll the sets, update tor through its control socket ------------

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_GETOBJ = 10, 13, 19
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_LEN, NFTA_SET_TIMEOUT = 1, 2, 3, 5, 11
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION = 1, 3, 4, 5
NFTA_SET_ELEM_KEY_END = 10
NFTA_DATA_VALUE = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER, NFTA_COUNTER_PACKETS = 1, 2
# the nftables guard's counters of detections that start a ban (detect_wide bans nothing)
BAN_COUNTERS = ("detect_flood", "detect_hscan", "detect_vscan", "detect_login", "detect_psweep")
NFT_SET_ANONYMOUS, NFT_SET_INTERVAL = 0x1, 0x4
NFT_SET_ELEM_INTERVAL_END = 0x1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO_INET = 1
NETLINK_NETFILTER = 12


def _nlattrs(data):
    """{type: payload} of a run of netlink attributes (a repeated type: the last one)."""
    return dict(_nlattr_list(data))


def _nlattr_list(data):
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out.append((kind & 0x3FFF, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def _nlstr(data):
    return data.rstrip(b"\0").decode()


def _be(data):
    return int.from_bytes(data, "big") if data else None


def nl_messages(chunks):
    """(message type, attributes after struct nfgenmsg) of nf_tables netlink answers,
    and whether NLMSG_DONE came. Raises OSError for a netlink error message."""
    messages, done = [], False
    for data in chunks:
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            body = data[offset + 16:offset + length]
            offset += (length + 3) & ~3
            if kind == NLMSG_DONE:
                done = True
            elif kind == NLMSG_ERROR:
                errno = -struct.unpack_from("=i", body)[0]
                if errno:
                    raise OSError(errno, os.strerror(errno))
            elif kind >> 8 == NFNL_SUBSYS_NFTABLES:
                messages.append((kind & 0xFF, body[4:]))
    return messages, done


def _nlattr(kind, data):
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def nl_dump(msg, attrs):
    """One nf_tables dump request (inet family) and all its answers."""
    body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + b"".join(_nlattr(k, v) for k, v in attrs)
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg,
                         NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.send(header + body)
        messages, done = [], False
        while not done:
            more, done = nl_messages([sock.recv(1 << 20)])
            messages += more
    return messages


def parse_sets(messages, table=TABLE[1]):
    """{name: {"flags", "key_len", "timeout" (seconds or None)}} of the sets of
    `table` in NEWSET messages (a GETSET dump: declarations only, no elements).
    Anonymous sets and maps (`__map0`, the guard's verdict maps) are no declarations
    of ours and are left out, as nft leaves them out of its listing."""
    sets = {}
    for _kind, body in messages:
        attrs = _nlattrs(body)
        if _nlstr(attrs.get(NFTA_SET_TABLE, b"")) != table or NFTA_SET_NAME not in attrs:
            continue
        flags = _be(attrs.get(NFTA_SET_FLAGS)) or 0
        if flags & NFT_SET_ANONYMOUS:
            continue
        timeout = _be(attrs.get(NFTA_SET_TIMEOUT))
        sets[_nlstr(attrs[NFTA_SET_NAME])] = {"flags": flags,
                                              "key_len": _be(attrs.get(NFTA_SET_KEY_LEN)),
                                              "timeout": timeout // 1000 if timeout else None}
    return sets


def parse_elements(messages):
    """Elements in NEWSETELEM messages: dicts with key (bytes), key_end (bytes or
    None), flags, timeout and expires (seconds or None)."""
    out = []
    for _kind, body in messages:
        for kind, elements in _nlattr_list(body):
            if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
                continue
            for _one, element in _nlattr_list(elements):
                attrs = _nlattrs(element)
                key = _nlattrs(attrs.get(NFTA_SET_ELEM_KEY, b"")).get(NFTA_DATA_VALUE)
                if key is None:
                    continue
                end = _nlattrs(attrs.get(NFTA_SET_ELEM_KEY_END, b"")).get(NFTA_DATA_VALUE)
                timeout, expires = _be(attrs.get(NFTA_SET_ELEM_TIMEOUT)), _be(attrs.get(NFTA_SET_ELEM_EXPIRATION))
                out.append({"key": key, "key_end": end, "flags": _be(attrs.get(NFTA_SET_ELEM_FLAGS)) or 0,
                            "timeout": timeout // 1000 if timeout is not None else None,
                            "expires": expires // 1000 if expires is not None else None})
    return out


def _address(data):
    return str(ipaddress.ip_address(bytes(data)))


def nft_set_json(name, info, elements):
    """A set as `nft -j list set` prints it (the parts entries_from_nft reads), from
    its declaration and netlink elements. Keys: an address (4 or 16 bytes), or an
    address . port concatenation (each field padded to 4 bytes: 8 or 20 bytes).
    Interval sets come as start and end elements (end = the first address after the
    range), as nft's own listing decomposes them."""
    key_len = info["key_len"]
    alen = 4 if key_len in (4, 8) else 16

    def meta(element, val):
        out = {"val": val}
        if element["timeout"] is not None:
            out["timeout"] = element["timeout"]
        if element["expires"] is not None:
            out["expires"] = element["expires"]
        return {"elem": out}

    elems = []
    if info["flags"] & NFT_SET_INTERVAL and key_len in (4, 16):
        # an end equals the next start when two ranges touch: the end sorts first
        ordered = sorted(elements, key=lambda e: (e["key"], not e["flags"] & NFT_SET_ELEM_INTERVAL_END))
        for i, element in enumerate(ordered):
            if element["flags"] & NFT_SET_ELEM_INTERVAL_END:
                continue
            low = int.from_bytes(element["key"], "big")
            if element["key_end"] is not None:
                high = int.from_bytes(element["key_end"], "big")
            elif i + 1 < len(ordered) and ordered[i + 1]["flags"] & NFT_SET_ELEM_INTERVAL_END:
                high = int.from_bytes(ordered[i + 1]["key"], "big") - 1
            else:
                high = (1 << (8 * alen)) - 1  # open to the end of the address space
            if high < low:
                continue  # not a range: leave it out rather than guess
            lo_addr, hi_addr = (_address(v.to_bytes(alen, "big")) for v in (low, high))
            elems.append(meta(element, lo_addr if low == high else {"range": [lo_addr, hi_addr]}))
    else:
        for element in elements:
            key = element["key"]
            if len(key) == alen:
                val = _address(key)
            elif len(key) == alen + 4:
                val = {"concat": [_address(key[:alen]), int.from_bytes(key[alen:alen + 2], "big")]}
            else:
                continue
            elems.append(meta(element, val))
    out = {"family": TABLE[0], "table": TABLE[1], "name": name, "elem": elems}
    if info["timeout"]:
        out["timeout"] = info["timeout"]
    return {"set": out}


def read_nft_netlink(table=TABLE[1], dump=nl_dump):
    """The guard's ban and opt-out sets, read over netlink without running nft: one
    dump of the table's set declarations (no elements, so the detectors' large sets
    cost nothing) and one element dump per ban or opt-out set. An absent table reads
    as empty."""
    name = table.encode() + b"\0"
    try:
        sets = parse_sets(dump(NFT_MSG_GETSET, [(NFTA_SET_TABLE, name)]), table)
    except FileNotFoundError:
        return {"nftables": []}
    items = []
    for set_name, info in sets.items():
        if not any(guard_set(set_name)):
            continue
        try:
            messages = dump(NFT_MSG_GETSETELEM, [(NFTA_SET_ELEM_LIST_TABLE, name),
                                                 (NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")])
        except FileNotFoundError:
            continue  # the guard replaced its table in between
        items.append(nft_set_json(set_name, info, parse_elements(messages)))
    return {"nftables": items}


def parse_counters(messages, table=TABLE[1]):
    """{name: packets} of the named counters of `table` in NEWOBJ messages."""
    out = {}
    for _kind, body in messages:
        attrs = _nlattrs(body)
        if (_nlstr(attrs.get(NFTA_OBJ_TABLE, b"")) != table or NFTA_OBJ_NAME not in attrs
                or _be(attrs.get(NFTA_OBJ_TYPE)) != NFT_OBJECT_COUNTER):
            continue
        out[_nlstr(attrs[NFTA_OBJ_NAME])] = _be(_nlattrs(attrs.get(NFTA_OBJ_DATA, b"")).get(NFTA_COUNTER_PACKETS)) or 0
    return out


def read_detections(table=TABLE[1], dump=nl_dump):
    """How many bans the nftables guard has started: the sum of its detect_* counters
    that come with a ban (one netlink dump of the table's counter objects, a few
    dozen bytes each; no set is read). 0 when there is no such table."""
    attrs = [(NFTA_OBJ_TABLE, table.encode() + b"\0"), (NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER))]
    try:
        counters = parse_counters(dump(NFT_MSG_GETOBJ, attrs), table)
    except FileNotFoundError:
        return 0
    return sum(counters.get(name, 0) for name in BAN_COUNTERS)


class Detections:
    """Tells the watcher that the guard has started a ban since the last look, so that
    it reads the sets now instead of at the next --poll. Reads only the nftables
    guard's detection counters (read_detections); the ipsets of the iptables and ufw
    backends have no such counter, so there the --poll interval stays the delay.
    A reader that fails is given up (logged once): the regular poll still runs."""

    def __init__(self, reader=read_detections):
        self.reader, self.last = reader, None

    def changed(self):
        if self.reader is None:
            return False
        try:
            value = self.reader()
        except OSError as exc:
            log(f"guard counters not readable ({exc}); reading the sets every --poll only")
            self.reader = None
            return False
        changed = self.last is not None and value != self.last
        self.last = value
        return changed


def nft_set_names(table=TABLE[1]):
    """Names of the sets in `inet table` (a netlink dump of the declarations)."""
    return list(parse_sets(nl_dump(NFT_MSG_GETSET, [(NFTA_SET_TABLE, table.encode() + b"\0")]), table))


class NftSets:
    """Reads only the guard's ban and opt-out sets: over netlink (read_nft_netlink, well
    under a millisecond), or where netlink is refused, one `nft -j list set` each (a few
    milliseconds); then the set names are refreshed every `refresh` seconds, and at once
    when a set has gone (the guard replaced its table)."""

    def __init__(self, nft="nft", refresh=5.0, clock=time.monotonic, names=nft_set_names, netlink=read_nft_netlink):
        self.nft, self.refresh, self.clock, self.names_of, self.netlink = nft, refresh, clock, names, netlink
        self.names, self.when = None, None

    def __call__(self):
        if self.netlink:
            try:
                return self.netlink()
            except OSError as exc:
                log(f"netlink not usable ({exc}); reading the sets with nft")
                self.netlink = None
        return self.by_nft()

    def _names(self):
        now = self.clock()
        if self.names is None or now - self.when >= self.refresh:
            try:
                names = self.names_of()
            except OSError:
                # no netlink here: take them from a listing of the whole table
                names = [item["set"]["name"] for item in read_nft(self.nft).get("nftables", []) if "set" in item]
            self.names = [n for n in names if any(guard_set(n))]
            self.when = now
        return self.names

    def by_nft(self):
        items = []
        for name in self._names():
            try:
                proc = subprocess.run([self.nft, "-j", "list", "set", *TABLE, name], capture_output=True,
                                      text=True, check=False)
            except FileNotFoundError:
                return {"nftables": []}
            if proc.returncode != 0:
                if "No such file or directory" in proc.stderr:
                    self.names = None  # the table or the set has gone: look again next time
                    continue
                raise SyncError(f"nft failed ({proc.returncode}): {proc.stderr.strip()}")
            try:
                items += [item for item in json.loads(proc.stdout).get("nftables", []) if "set" in item]
            except ValueError as exc:
                raise SyncError(f"nft printed no JSON: {exc}") from None
        return {"nftables": items}


# see Control.rebuild_descriptor()
REBUILD_DESCRIPTOR = "GETINFO extra-info/digest/" + "0" * 40


class ControlError(Exception):
    """tor answered a control command with an error (the control connection stays usable)."""


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Control:
    """A tor control connection on a unix socket (control-spec.txt): cookie (or no)
    authentication, GETCONF/SETCONF ExitPolicy and the SIGNAL event."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.events = []

    def close(self):
        self.sock.close()

    def fileno(self):
        return self.sock.fileno()

    def _line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("tor closed the control connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def _message(self):
        """(status code, [lines]) of one reply or event."""
        lines = []
        while True:
            line = self._line()
            if len(line) < 4 or not line[:3].isdigit():
                raise ConnectionError("unexpected line from tor's control port")
            lines.append(line[4:])
            if line[3] == "+":
                while True:
                    data = self._line()
                    if data == ".":
                        break
                    lines.append(data[1:] if data.startswith(".") else data)
            elif line[3] == " ":
                return int(line[:3]), lines

    def command(self, text):
        """Send one command, return the lines of its 250 reply; events that arrive
        first are kept in self.events. A 4xx/5xx reply raises ControlError with the
        reply's text, addresses replaced."""
        self.sock.sendall(text.encode() + b"\r\n")
        while True:
            code, lines = self._message()
            if code == 650:
                self.events.append(lines[0])
                continue
            if code != 250:
                raise ControlError(ADDRESS_RE.sub("<address>", f"{code} {' '.join(lines)}"))
            return lines

    def poll_events(self):
        """Events that arrived since the last call (without waiting)."""
        while self.buf or wait_readable([self.sock], [], [], 0)[0]:
            code, lines = self._message()
            if code == 650:
                self.events.append(lines[0])
        events, self.events = self.events, []
        return events

    def authenticate(self):
        info = " ".join(self.command("PROTOCOLINFO 1"))
        methods = re.search(r"METHODS=(\S+)", info)
        methods = methods.group(1).split(",") if methods else []
        if "NULL" in methods:
            self.command("AUTHENTICATE")
        elif "COOKIE" in methods:
            cookiefile = re.search(r'COOKIEFILE="((?:[^"\\]|\\.)*)"', info)
            if not cookiefile:
                raise ControlError("tor offers cookie authentication but names no cookie file")
            with open(cookiefile.group(1).replace('\\"', '"').replace("\\\\", "\\"), "rb") as f:
                self.command("AUTHENTICATE " + f.read().hex())
        else:
            raise ControlError(f"no supported authentication method among {methods} (need COOKIE or NULL)")

    def get_exit_policy(self):
        """ExitPolicy values in force, in order ([] when unset)."""
        return [line.split("=", 1)[1] for line in self.command("GETCONF ExitPolicy") if "=" in line]

    def set_exit_policy(self, values):
        self.command("SETCONF " + (" ".join(f"ExitPolicy={_quote(v)}" for v in values) or "ExitPolicy"))

    def rebuild_descriptor(self):
        """Make tor apply the ExitPolicy just set now instead of about 1 s later.

        An exit checks each stream against the policy of its own router descriptor
        (router_compare_to_my_exit_policy() reads router_get_my_routerinfo()->
        exit_policy), not against its options. SETCONF only marks that descriptor
        dirty (mark_my_descriptor_dirty("config change")), and tor's check that
        rebuilds it runs 1 s later (reschedule_descriptor_update_check(): interval 1 s).
        GETINFO extra-info/digest/<hex digest> first asks whether the digest is the
        relay's own extra-info (router_extrainfo_digest_is_me()), which rebuilds a
        dirty descriptor at once (router_get_my_extrainfo() ->
        router_rebuild_descriptor(0)). No descriptor has an all-zero digest, so tor
        answers 552 (unrecognized key): expected. The rebuild happens either way; this
        only moves it forward, so tor uploads no more descriptors than before."""
        try:
            self.command(REBUILD_DESCRIPTOR)
        except ControlError as exc:
            if not str(exc).startswith("552 "):
                raise


def find_block(values, block):
    """Index of the first run of `block` inside `values` (0 for an empty block), or None."""
    if not block:
        return 0
    for i in range(len(values) - len(block) + 1):
        if values[i:i + len(block)] == block:
            return i
    return None


class Instance:
    """One tor instance: its control socket and, for the SIGHUP fallback, its torrc
    and unit. `base` is the instance's own ExitPolicy values (from its torrc and any
    other included file) that go after the guard's rejects."""

    def __init__(self, control, torrc=None, unit=None, connect=Control):
        self.path, self.torrc, self.unit, self.connect_to = control, torrc, unit, connect
        self.conn, self.base, self.next_try, self.failing = None, None, 0.0, False

    def drop(self):
        if self.conn:
            self.conn.close()
        self.conn, self.base = None, None

    def learn_base(self, ours):
        """Take tor's ExitPolicy values apart: the run that equals `ours` (what the file
        holds, which tor read or we set) is the guard's, the rest is the base."""
        values = self.conn.get_exit_policy()
        at = find_block(values, ours)
        if at is None:
            return False
        self.base = values[:at] + values[at + len(ours):]
        return True

    def connect(self, ours, now, wait=5.0):
        """Connect, authenticate, subscribe to SIGNAL and learn the base. When tor's
        values do not hold the file's (the file changed while tor was not told), tor
        re-reads its files once (SIGNAL RELOAD) first. False while it cannot."""
        if now < self.next_try or not self.path:
            return False
        self.next_try = now + 2.0
        try:
            self.conn = self.connect_to(self.path)
            self.conn.authenticate()
            self.conn.command("SETEVENTS SIGNAL")
            if not self.learn_base(ours):
                self.conn.command("SIGNAL RELOAD")
                deadline, seen = time.monotonic() + wait, list(self.conn.events)
                while "SIGNAL RELOAD" not in seen and time.monotonic() < deadline:
                    wait_readable([self.conn], [], [], 0.1)
                    seen += self.conn.poll_events()
                if not self.learn_base(ours):
                    raise ControlError("tor's ExitPolicy does not hold the guard file's lines after a reload")
            self.conn.events = []
            self.failing = False
            return True
        except (OSError, ControlError) as exc:
            if not self.failing:  # once, not every retry
                log(f"{self.path}: {exc}; updating tor by reload until the control socket answers")
            self.failing = True
            self.drop()
            return False


class Batcher:
    """When tor may be told next. A change goes out at once when the gap since the last
    update has passed: the first one after a quiet spell at once. While changes keep
    coming (an update less than `high` seconds after the gap allowed it), the gap
    doubles from `low` up to `high` seconds; after a quiet spell it is `low` again."""

    def __init__(self, low, high):
        self.low, self.high = low, high
        self.last, self.gap = None, 0.0

    def due(self, now):
        return self.last is None or now >= self.last + self.gap

    def wait(self, now):
        return 0.0 if self.due(now) else self.last + self.gap - now

    def done(self, now):
        busy = self.last is not None and now - (self.last + self.gap) < self.high
        self.gap = min(max(self.gap * 2, self.low), self.high) if busy else self.low
        self.last = now


class Watcher:
    """The long-running mode: poll the sets, and on a change update the file and
    every tor instance (SETCONF through the control socket; SIGHUP after a tor
    --verify-config for an instance whose control socket does not answer)."""

    def __init__(self, args, instances, nft_reader=None, ipset_reader=None, clock=time.monotonic,
                 detections=None):
        self.args, self.instances, self.clock = args, instances, clock
        self.nft_reader = nft_reader or NftSets(args.nft)
        self.ipset_reader = ipset_reader or IpsetSets(args.ipset)
        self.detections = detections or Detections(read_detections if args.detect_poll else None)
        self.batcher = Batcher(args.batch_min, args.batch_max)
        self.updates = 0
        self.last_error = None

    def ours(self):
        return file_values(_read(self.args.output)) or []

    def step(self):
        """One poll. Returns True when tor was updated."""
        now = self.clock()
        ours = self.ours()
        stale = []
        for inst in self.instances:
            if inst.conn is None:
                if inst.connect(ours, now):
                    log(f"{inst.path}: connected, {len(inst.base)} ExitPolicy lines of its own")
                continue
            try:
                if "SIGNAL RELOAD" in inst.conn.poll_events() and not inst.learn_base(ours):
                    stale.append(inst)  # re-read files that do not hold ours: set them again
            except (OSError, ControlError) as exc:
                log(f"{inst.path}: {exc}")
                inst.drop()
        try:
            chosen, counts = plan(self.args, *read_kernel(self.args, self.nft_reader, self.ipset_reader))
        except (SyncError, OSError, ValueError) as exc:
            if str(exc) != self.last_error:
                log(f"sets not read: {exc}")
            self.last_error = str(exc)
            return False
        self.last_error = None
        values = policy_values(chosen)
        if (values == ours and not stale) or not self.batcher.due(now):
            return False
        self.apply(chosen, values, counts)
        self.batcher.done(now)
        return True

    def apply(self, chosen, values, counts):
        old = _read(self.args.output)
        warning = write_atomic(self.args.output, render(chosen), self.args.group, self.args.reader)
        if warning:
            log(warning)
        told, fallback = [], []
        for inst in self.instances:
            if inst.conn is None:
                fallback.append(inst)
                continue
            try:
                inst.conn.set_exit_policy(values + inst.base)
                told.append(inst)
            except ControlError as exc:
                log(f"{inst.path}: tor refused the new ExitPolicy ({exc}); file rolled back")
                _restore(self.args.output, old, self.args)
                for done in told:
                    done.conn.set_exit_policy((file_values(old) or []) + done.base)
                return
            except OSError as exc:
                log(f"{inst.path}: {exc}")
                inst.drop()
                fallback.append(inst)
        for inst in told:
            try:
                inst.conn.rebuild_descriptor()
            except (OSError, ControlError) as exc:  # tor still rebuilds it within about 1 s
                log(f"{inst.path}: descriptor not rebuilt at once: {exc}")
        how = [f"{len(told)} by control socket"]
        if fallback:
            try:
                verify_and_reload(self.args, old, [i.torrc for i in fallback if i.torrc],
                                  [i.unit for i in fallback if i.unit])
                how.append(f"{len(fallback)} by reload")
            except SyncError as exc:
                log(str(exc))
                for done in told:  # the file went back: so does tor
                    done.conn.set_exit_policy((file_values(old) or []) + done.base)
                return
        self.updates += 1
        log(f"updated ({', '.join(how)}): {counts}")

    def run(self, stop):
        """Read the sets every --poll seconds, and at once when tor signals a reload or
        (every --detect-poll seconds, nftables) the guard's detection counters moved."""
        due, woke = self.clock(), False
        tick = self.args.detect_poll or self.args.poll
        while not stop():
            started = self.clock()
            if woke or started >= due or self.detections.changed():
                self.step()
                due = started + self.args.poll
            now = self.clock()
            delay = max(min(due, now + tick) - now, 0.01)
            conns = [i.conn for i in self.instances if i.conn is not None]
            if conns:
                woke = bool(wait_readable(conns, [], [], delay)[0])  # a SIGNAL event wakes us early
            else:
                time.sleep(delay)
                woke = False


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--output", default="/etc/tor/torrc.d/10-torexit-guard.conf",
                        help="included torrc file to write (mode 0640)")
    parser.add_argument("--group", help="group of the file (default: keep the old file's group)")
    parser.add_argument("--reader", action="append", default=[],
                        help="another group that may read the file, through a POSIX ACL (repeatable)")
    parser.add_argument("--max-lines", type=int, default=500, help="at most this many reject lines")
    parser.add_argument("--max-bytes", type=int, default=10000,
                        help="IPv4 reject lines add at most this many bytes to the relay descriptor "
                             "(authorities refuse descriptors over 20000 bytes)")
    parser.add_argument("--prefix-v4", type=int, default=32,
                        help="widen IPv4 rejects to at most this prefix length (e.g. 24)")
    parser.add_argument("--prefix-v6", type=int, default=128,
                        help="widen IPv6 rejects to at most this prefix length (e.g. 48)")
    parser.add_argument("--torrc", action="append", default=[],
                        help="torrc to check with tor --verify-config (repeat for several instances)")
    parser.add_argument("--reload", action="append", default=[], help="systemd unit to reload (repeatable)")
    parser.add_argument("--control", action="append", default=[],
                        help="tor control socket, one per --reload unit in the same order (watch mode)")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: poll the sets every --poll seconds and update tor by its control socket")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between two reads of the sets")
    parser.add_argument("--detect-poll", type=float, default=0.02,
                        help="seconds between two reads of the nftables guard's detection counters; when they "
                             "move, the sets are read at once (0: off, only --poll)")
    parser.add_argument("--batch-min", type=float, default=5.0,
                        help="after an update, wait at least this long before the next one (seconds)")
    parser.add_argument("--batch-max", type=float, default=60.0,
                        help="the wait doubles while changes keep coming, up to this (seconds)")
    parser.add_argument("--tor", default="tor", help="tor program")
    parser.add_argument("--nft", default="nft", help="nft program")
    parser.add_argument("--ipset", default="ipset", help="ipset program")
    parser.add_argument("--nft-json", help="read this file instead of running nft and ipset (for tests)")
    parser.add_argument("--ipset-save", help="read this `ipset save` output instead of running nft and ipset "
                                             "(for tests)")
    args = parser.parse_args(argv)
    if args.max_lines < 1:
        parser.error("--max-lines must be at least 1")
    if not 100 <= args.max_bytes <= 18000:
        parser.error(f"--max-bytes must be 100 to 18000, not {args.max_bytes}")
    if not 8 <= args.prefix_v4 <= 32:
        parser.error(f"--prefix-v4 must be 8 to 32, not {args.prefix_v4}")
    if not 16 <= args.prefix_v6 <= 128:
        parser.error(f"--prefix-v6 must be 16 to 128, not {args.prefix_v6}")
    if not 0.05 <= args.poll <= 60:
        parser.error(f"--poll must be 0.05 to 60 seconds, not {args.poll}")
    if args.detect_poll and not 0.01 <= args.detect_poll <= args.poll:
        parser.error(f"--detect-poll must be 0 (off) or 0.01 to --poll ({args.poll}) seconds, not {args.detect_poll}")
    if not 0 <= args.batch_min <= args.batch_max:
        parser.error(f"--batch-min ({args.batch_min}) must be between 0 and --batch-max ({args.batch_max})")
    if args.control and len(args.control) != len(args.reload):
        parser.error(f"give one --control per --reload unit ({len(args.control)} for {len(args.reload)})")
    if args.watch and (args.nft_json or args.ipset_save):
        parser.error("--watch reads the kernel's sets; --nft-json and --ipset-save are for one run")
    return args


def instances_of(args):
    controls = args.control or [None] * len(args.reload)
    torrcs = args.torrc + [None] * (len(args.reload) - len(args.torrc))
    return [Instance(c, t, u) for c, t, u in zip(controls, torrcs, args.reload)]


def main(argv=None):
    args = parse_args(argv)
    if args.watch:
        stopping = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.append(True))
        try:
            Watcher(args, instances_of(args)).run(lambda: bool(stopping))
        except SyncError as exc:
            log(str(exc))
            return 1
        return 0
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
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
