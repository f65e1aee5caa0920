"""The apply sequence (guard_apply): the digest kept with the loaded rules covers the
rendered rules, so rules rendered differently for the same options are loaded into
the kernel; check mode, diff and `changed` for every backend, and a failing step."""
import json
import os
import re

import pytest

from ansible_collections.torexit.hardening.plugins.module_utils import guard_apply as eg
from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as gc
from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as gn
from ansible_collections.torexit.hardening.plugins.module_utils import guard_policy as gp
from ansible_collections.torexit.hardening.plugins.module_utils import guard_ufw as gu
from ansible_collections.torexit.hardening.plugins.module_utils import guard_xtables as gx

PARAMS = {"mode": "enforce", "owner": "any", "persist": False, "relay_allowlist": False,
          "allow": [], "deny": []}


class Done(Exception):
    def __init__(self, result, failed):
        super().__init__(result.get("msg", ""))
        self.result, self.failed = result, failed


class FakeKernel:
    """Just enough of `nft` for present(): the policy_id comment of the loaded table."""

    def __init__(self, digest=None):
        self.digest, self.loads = digest, 0

    def run(self, args, data=None, **_kw):
        if args[:3] == ["nft", "-c", "-f"]:
            return 0, "", ""
        if args[:2] == ["nft", "-f"]:
            self.loads += 1
            self.digest = re.search(r'counter policy_id \{ comment "sha256:([0-9a-f]+)" \}', data).group(1)
            return 0, "", ""
        if args[:4] == ["nft", "-j", "list", "counter"]:
            if self.digest is None:
                return 1, "", "No such file or directory"
            counter = {"name": "policy_id", "comment": "sha256:" + self.digest}
            return 0, json.dumps({"nftables": [{"counter": counter}]}), ""
        if args[:4] == ["nft", "-j", "list", "set"]:
            return 1, "", "No such file or directory"   # no bans to carry over
        if args[:5] == ["nft", "-t", "-j", "list", "table"]:   # the loaded table without elements
            return 1, "", "No such file or directory"    # (none: the whole table is replaced)
        raise AssertionError("unexpected command %r" % (args,))


class FakeModule:
    def __init__(self, kernel, check_mode=False):
        self.params, self.check_mode, self._diff, self.kernel = dict(PARAMS), check_mode, False, kernel

    def run_command(self, args, data=None, **kw):
        return self.kernel.run(args, data, **kw)

    def exit_json(self, **result):
        raise Done(result, False)

    def fail_json(self, **result):
        raise Done(result, True)


def present(kernel, check_mode=False):
    module = FakeModule(kernel, check_mode)
    with pytest.raises(Done) as done:
        eg.present(module, gn, gc.Env(run=kernel.run, persist=False, systemd=False, have=lambda c: True))
    assert not done.value.failed, done.value.result["msg"]
    return done.value.result


def policy():
    return gp.build_policy(PARAMS, user_exists=lambda name: True)


def test_digest_follows_the_rendered_rules():
    p = policy()
    first = eg.rules_digest(p, gn.render)
    assert eg.rules_digest(policy(), gn.render) == first
    # same options, other rules (a new version of the renderer): another digest
    assert eg.rules_digest(p, lambda pol, d: gn.render(pol, d) + "# one more line\n") != first
    # other options: another digest
    other = gp.build_policy(dict(PARAMS, mode="monitor"), user_exists=lambda name: True)
    assert eg.rules_digest(other, gn.render) != first


def test_rules_rendered_otherwise_are_reloaded_then_left_alone():
    """The table was loaded by a version whose id covered the policy only (or whose
    renderer differed): the kernel gets the current rules, once."""
    p = policy()
    kernel = FakeKernel(digest=gp.policy_digest(p))

    dry = present(kernel, check_mode=True)
    assert dry["changed"] and kernel.loads == 0

    first = present(kernel)
    assert first["changed"]
    assert kernel.loads == 1 and kernel.digest == first["digest"] == eg.rules_digest(p, gn.render)
    assert 'comment "sha256:%s"' % first["digest"] in first["ruleset"]

    second = present(kernel)
    assert not second["changed"] and kernel.loads == 1


def test_fresh_host_loads_the_table():
    kernel = FakeKernel()
    result = present(kernel)
    assert result["changed"] and kernel.loads == 1 and kernel.digest == result["digest"]


def test_sets_diff_names_sets_and_options_never_elements():
    lines = ["create torexit_tmp_ban_vscan_v4_32 hash:ip family inet maxelem 65536 timeout 3600",
             "add torexit_tmp_ban_vscan_v4_32 198.18.7.9 timeout 1200",
             "swap torexit_tmp_ban_vscan_v4_32 torexit_ban_vscan_v4_32",
             "destroy torexit_tmp_ban_vscan_v4_32"]
    diff = eg._sets_diff(lines)
    assert diff["after"] == "create torexit_tmp_ban_vscan_v4_32 hash:ip family inet maxelem 65536 timeout 3600\n"
    assert "198.18.7.9" not in diff["after"] + diff["before"]


# --- the sequence for every backend, against a fake host -------------------------------

class FakeHost:
    """Just enough of nft, iptables(-save/-restore), ipset and ufw to apply, read and
    remove the guard: rules and sets live in dicts; `fail` makes one command fail."""

    READ_ONLY = (["nft", "-c"], ["nft", "-j", "list"], ["iptables-save"], ["ip6tables-save"], ["ipset", "list"],
                 ["ufw", "status"], ["iptables-restore", "--test"], ["ip6tables-restore", "--test"])

    def __init__(self, ufw_files=None):
        self.nft_digest = None
        self.chains = {"iptables": {"INPUT": [], "OUTPUT": []}, "ip6tables": {"INPUT": [], "OUTPUT": []}}
        self.sets = {}
        self.ufw_files = ufw_files or {}
        self.calls, self.fail, self.before_restore = [], None, None

    def changing(self):
        return [c for c in self.calls if not any(c[:len(r)] == r for r in self.READ_ONLY)]

    def run(self, args, data=None, **_kw):
        self.calls.append(list(args))
        if self.fail and args[:len(self.fail)] == self.fail:
            return 1, "", "simulated failure of %s" % " ".join(args)
        if isinstance(data, bytes):
            data = data.decode()
        cmd = args[0]
        if cmd == "nft":
            return self.nft(args, data)
        if cmd.endswith("-save"):
            return 0, self.save(cmd[:-5]), ""
        if cmd.endswith("-restore"):
            if "--test" not in args:
                self.restore(cmd[:-8], data)
            return 0, "", ""
        if cmd == "ipset":
            return self.ipset(args, data)
        if cmd == "ufw":
            if args[1] == "reload":
                for path, fam in self.ufw_files.items():
                    with open(path) as f:
                        text = f.read()
                    self.chains[fam]["ufw-before-output"] = []
                    self.chains[fam]["ufw-before-input"] = []
                    self.restore(fam, text.split("*filter", 1)[1])
            return 0, "Status: active\n", ""
        raise AssertionError("unexpected command %r" % (args,))

    def nft(self, args, data):
        if args[1:3] == ["-c", "-f"]:
            return 0, "", ""
        if args[1:3] == ["-f", "-"]:
            self.nft_digest = re.search(r'counter policy_id \{ comment "sha256:([0-9a-f]+)" \}', data).group(1)
            return 0, "", ""
        if args[1:4] == ["-j", "list", "counter"] and self.nft_digest:
            return 0, json.dumps({"nftables": [{"counter": {"name": "policy_id",
                                                            "comment": "sha256:" + self.nft_digest}}]}), ""
        if args[1:4] == ["-j", "list", "tables"]:
            tables = [{"table": {"name": "torexit_guard"}}] if self.nft_digest else []
            return 0, json.dumps({"nftables": tables}), ""
        if args[1:3] == ["delete", "table"]:
            self.nft_digest = None
            return 0, "", ""
        return 1, "", "No such file or directory"

    def save(self, fam):
        chains = self.chains[fam]
        lines = ["*filter"] + [":%s %s [0:0]" % (c, "ACCEPT" if c in ("INPUT", "OUTPUT") else "-") for c in chains]
        lines += ["-A %s %s" % (c, r) for c in chains for r in chains[c]]
        return "\n".join(lines + ["COMMIT", ""])

    def restore(self, fam, text):
        chains = self.chains[fam]
        for line in text.splitlines():
            words = line.split(" ", 2)
            if line.startswith(":"):
                chains[line[1:].split()[0]] = []
            elif words[0] == "-A":
                chains[words[1]].append(words[2])
            elif words[0] == "-I":
                chains[words[1]].insert(0, words[2].split(" ", 1)[1])
            elif words[0] == "-D":
                chains[words[1]].remove(words[2])
            elif words[0] == "-X":
                del chains[words[1]]

    def ipset(self, args, data):
        if args[1] == "list":
            out = []
            for name, s in self.sets.items():
                if len(args) > 2 and name != args[2]:
                    continue
                out += ["Name: " + name, "Type: " + s["type"], "Header: " + " ".join(s["header"]), "Members:"]
                out += ["%s timeout %d" % (k, left) if left else k for k, left in s["members"].items()] + [""]
            return 0, "\n".join(out), ""
        if args[1] == "destroy":
            self.sets.pop(args[2], None)
            return 0, "", ""
        if self.before_restore:     # something adds to a set after it was read, before the swap
            self.before_restore, before = None, self.before_restore
            before()
        for line in data.splitlines():
            words = [w for w in line.split() if w != "-exist"]
            if words[0] == "create" and words[1] not in self.sets:
                self.sets[words[1]] = {"type": words[2], "header": words[3:], "members": {}}
            elif words[0] == "add":
                self.sets[words[1]]["members"][words[2]] = int(words[4]) if len(words) > 4 else None
            elif words[0] == "flush":
                self.sets[words[1]]["members"] = {}
            elif words[0] == "swap":
                self.sets[words[1]], self.sets[words[2]] = self.sets[words[2]], self.sets[words[1]]
            elif words[0] == "destroy":
                del self.sets[words[1]]
        return 0, "", ""


class Module(FakeModule):
    def __init__(self, kernel, params, check_mode=False, diff=False):
        super().__init__(kernel, check_mode)
        self.params.update(params)
        self._diff = diff

    def atomic_move(self, src, dest):
        os.rename(src, dest)


UFW_BEFORE = """*filter
:ufw-before-input - [0:0]
:ufw-before-output - [0:0]
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-output -o lo -j ACCEPT
COMMIT
"""

BACKEND_NAMES = ["nftables", "iptables", "ufw"]


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake host for each backend; ufw's rules files are in tmp_path."""
    files = {"v4": str(tmp_path / "before.rules"), "v6": str(tmp_path / "before6.rules")}
    for path in files.values():
        with open(path, "w") as f:
            f.write(UFW_BEFORE.replace("ufw-", "ufw6-") if path.endswith("6.rules") else UFW_BEFORE)
    for fam, path in files.items():
        monkeypatch.setitem(gu.RULES_FILES, fam, path)
    fake = FakeHost({files["v4"]: "iptables", files["v6"]: "ip6tables"})
    fake.chains["iptables"].update({"ufw-before-input": [], "ufw-before-output": []})
    fake.chains["ip6tables"].update({"ufw6-before-input": [], "ufw6-before-output": []})
    return fake


def apply(fake, backend, params=None, check_mode=False, diff=False, state="present"):
    params = dict(params or {}, backend=backend, state=state, persist=backend == "ufw")
    module = Module(fake, params, check_mode, diff)
    env = gc.Env(run=fake.run, persist=params["persist"], systemd=False, have=lambda c: True)
    fake.calls = []
    with pytest.raises(Done) as done:
        (eg.present if state == "present" else eg.absent)(module, eg.BACKENDS[backend], env)
    return done.value.result, done.value.failed


def loaded(fake, backend):
    """The digest of the rules the fake kernel holds."""
    if backend == "nftables":
        return fake.nft_digest
    prefix = "TOREXIT-UFW-" if backend == "ufw" else "TOREXIT-"
    return gx.digest_of(fake.save("iptables"), prefix)


def ufw_texts(fake):
    out = {}
    for path in fake.ufw_files:
        with open(path) as f:
            out[path] = f.read()
    return out


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_check_mode_runs_no_changing_command(host, backend):
    files = ufw_texts(host)
    result, failed = apply(host, backend, check_mode=True, diff=True)
    assert not failed and result["changed"] is True
    assert host.changing() == [] and loaded(host, backend) is None and host.sets == {}
    assert ufw_texts(host) == files


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_changed_exactly_when_something_changed(host, backend):
    first, failed = apply(host, backend)
    assert not failed and first["changed"] is True and loaded(host, backend) == first["digest"]
    again, _failed = apply(host, backend)
    assert again["changed"] is False and host.changing() == []
    assert apply(host, backend, check_mode=True)[0]["changed"] is False
    other, _failed = apply(host, backend, {"vertical_scan": {"ports": 64}})
    assert other["changed"] is True and other["digest"] != first["digest"] and loaded(host, backend) == other["digest"]
    assert apply(host, backend, {"vertical_scan": {"ports": 64}})[0]["changed"] is False
    # rules lost from the kernel (a firewall reload by hand): loaded again
    if backend == "nftables":
        host.nft_digest = None
    else:
        host.chains["iptables"] = {"INPUT": [], "OUTPUT": [], "ufw-before-input": [], "ufw-before-output": []}
        if backend == "ufw":   # ufw reloads its files: the block comes back with them
            assert apply(host, backend, {"vertical_scan": {"ports": 64}})[0]["changed"] is True
            assert loaded(host, backend) == other["digest"]
            return
    assert apply(host, backend, {"vertical_scan": {"ports": 64}})[0]["changed"] is True
    assert loaded(host, backend) == other["digest"]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_diff_shows_before_and_after(host, backend):
    result, _failed = apply(host, backend, check_mode=True, diff=True)
    views = result["diff"] if isinstance(result["diff"], list) else [result["diff"]]
    rules = views[:2] if backend == "ufw" else views[:1]
    assert all(v["before"] != v["after"] for v in rules)
    assert "sha256:" + result["digest"] in "".join(v["after"] for v in rules)
    if backend != "nftables":    # the sets to be created, by name and options, never elements
        assert views[-1]["before_header"] == "ipsets" and "create torexit_seen_v4 hash:ip,port" in views[-1]["after"]
    apply(host, backend)
    result, _failed = apply(host, backend, diff=True)
    views = result["diff"] if isinstance(result["diff"], list) else [result["diff"]]
    assert not result["changed"] and all(v["before"] == v["after"] for v in views)


FAILING_LOAD = {"nftables": ["nft", "-f", "-"], "iptables": ["iptables-restore", "--noflush"],
                "ufw": ["ufw", "reload"]}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_a_failing_step_is_named_and_leaves_the_old_state(host, backend):
    old, _failed = apply(host, backend)
    files = ufw_texts(host)
    host.fail = FAILING_LOAD[backend]
    result, failed = apply(host, backend, {"vertical_scan": {"ports": 64}})
    assert failed and result["msg"].startswith("load step failed: ") and "simulated failure" in result["msg"]
    assert loaded(host, backend) == old["digest"]
    assert ufw_texts(host) == files      # ufw's files written before the reload are put back
    host.fail = None
    assert apply(host, backend, {"vertical_scan": {"ports": 64}})[0]["changed"] is True


def test_a_ruleset_that_does_not_validate_changes_nothing(host):
    host.fail = ["nft", "-c"]
    result, failed = apply(host, "nftables")
    assert failed and result["msg"].startswith("validate step failed: the rendered ruleset does not load")
    assert host.changing() == [] and host.nft_digest is None


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_absent_removes_what_present_added(host, backend):
    files = ufw_texts(host)
    apply(host, backend)
    assert apply(host, backend, state="absent", check_mode=True)[0]["changed"] is True
    assert host.changing() == [] and loaded(host, backend)
    result, failed = apply(host, backend, state="absent")
    assert not failed and result["changed"] is True
    assert loaded(host, backend) is None and host.sets == {} and ufw_texts(host) == files
    assert not [c for fam in host.chains.values() for c in fam if c.startswith("TOREXIT")]
    assert apply(host, backend, state="absent")[0]["changed"] is False


# --- issue 17 item 3: errors never echo set elements; lowering set_size keeps the longest bans

class BannedKernel(FakeKernel):
    """A loaded table (of another policy) whose ban set holds `count` bans; `nft -f`
    fails like nft does, echoing the input line it choked on, when `fail` is set."""

    def __init__(self, count, fail=False):
        super().__init__(digest="ab" * 32)
        self.bans = [("198.18.%d.0 . 22" % (i % 250), 100 + i) for i in range(count)]
        self.fail, self.loaded_text = fail, None

    def run(self, args, data=None, **kw):
        if args[:4] == ["nft", "-j", "list", "set"] and args[-1] == "ban_hscan_v4_24":
            elem = [{"elem": {"val": {"concat": [key.split(" . ")[0], 22]}, "expires": left}} for key, left in self.bans]
            return 0, json.dumps({"nftables": [{"set": {"name": args[-1], "elem": elem}}]}), ""
        if args[:2] == ["nft", "-f"]:
            self.loaded_text = data
            if self.fail:
                line = [x for x in data.splitlines() if x.startswith("add element")][0]
                return 1, "", ("/dev/stdin:400:1-90: Error: Could not process rule: No space left on device\n"
                               "%s\n%s\n" % (line, "^" * 40))
        return super().run(args, data, **kw)


def run_present(kernel, **params):
    module = FakeModule(kernel)
    module.params.update(params)
    module.warnings = []
    module.warn = module.warnings.append
    with pytest.raises(Done) as done:
        eg.present(module, gn, gc.Env(run=kernel.run, persist=False, systemd=False, have=lambda c: True))
    return done.value.result, done.value.failed, module.warnings


def test_a_failing_load_counts_the_carried_bans_and_never_names_them():
    result, failed, _warnings = run_present(BannedKernel(3, fail=True))
    assert failed and "carrying over 3 bans and opt-outs" in result["msg"]
    assert "No space left on device" in result["msg"]
    assert "198.18" not in result["msg"] and "add element" not in result["msg"]


def test_lowering_set_size_below_the_active_bans_keeps_those_with_most_time_left():
    kernel = BannedKernel(1030)
    result, failed, warnings = run_present(kernel, set_size=1024)
    assert not failed and result["bans_dropped"] == 6
    assert "6 bans with the least time left were dropped" in warnings[0]
    lines = [x for x in kernel.loaded_text.splitlines() if x.startswith("add element")]
    carried = re.findall(r"timeout (\d+)s", [x for x in lines if " ban_hscan_v4_24 " in x][0])
    assert len(carried) == 1024 and min(int(x) for x in carried) == 106    # 100..105 left out
    # the new table's prefilter holds the bans' /16, for as long as the longest ban there
    assert [x for x in lines if " banned_v4_16 " in x] == [
        "add element inet torexit_guard banned_v4_16 { 198.18.0.0 timeout 1129s }"]


def test_ipsets_keep_the_longest_bans_when_maxelem_shrinks():
    p = gp.build_policy(dict(PARAMS, set_size=1024), user_exists=lambda name: True)
    live = {}
    for spec in gx.ipsets(p):
        live[spec["name"]] = {"type": spec["type"], "entries": [(e, None) for e in spec.get("elements") or []],
                              "header": dict([("family", spec["family"])] + [(k, str(v)) for k, v in spec["options"]])}
    ban = live["torexit_ban_vscan_v4_32"]
    ban["header"]["maxelem"] = "4096"
    ban["entries"] = [("198.18.%d.%d" % (i // 250, i % 250), 1000 + i) for i in range(1030)]
    dropped = []
    script = gx.ipset_script(p, live, dropped)
    adds = [line for line in script if line.startswith("add -exist torexit_tmp_ban_vscan_v4_32")]
    assert dropped == [6] and len(adds) == 1024 and not [a for a in adds if a.endswith(("timeout 1000", "timeout 1005"))]


def test_scrub_drops_echoed_input_and_addresses():
    text = ("ipset v7.17: Error in line 7: Element 198.18.3.0,tcp:22 cannot be added: set is full\n"
            "/dev/stdin:3:1-20: Error: Could not process rule\nadd element inet t s { 2001:db8::1 . 22 }\n   ^^^^\n")
    out = gc.scrub(text)
    assert "198.18" not in out and "2001:db8" not in out and "add element" not in out
    assert "set is full" in out and "Could not process rule" in out


def test_a_failing_ipset_restore_never_names_the_elements():
    """ipset echoes the element it could not add: the iptables and ufw backends' error
    keeps ipset's reason and line, never the address."""
    def run(args, data=None):
        assert args == ["ipset", "restore"] and "198.18.3.7" in data
        return 1, "", ("ipset v7.17: Error in line 2: Element cannot be added to the set: 198.18.3.7 "
                       "is already in torexit_tmp_ban_vscan_v4_32\n")
    with pytest.raises(gx.IptablesError) as err:
        gx._restore_sets(run, ["create torexit_tmp_ban_vscan_v4_32 hash:ip family inet maxelem 1024 timeout 600",
                               "add -exist torexit_tmp_ban_vscan_v4_32 198.18.3.7 timeout 500"])
    assert "Error in line 2" in str(err.value) and "torexit_tmp_ban_vscan_v4_32" in str(err.value)
    assert "198.18" not in str(err.value)


# --- issue 17 item 10: concurrent runs of the module are serialized

def test_a_second_run_waits_for_the_lock_then_fails_clearly(tmp_path, monkeypatch):
    import fcntl
    path = str(tmp_path / "lock" / "egress-guard.lock")
    monkeypatch.setattr(eg, "LOCK", path)
    monkeypatch.setattr(eg, "LOCK_WAIT", 0.5)
    first, holder = eg.lock()
    assert first is not None and holder is None
    kernel = FakeKernel()
    module = FakeModule(kernel)
    module.params.update(state="present", backend="nftables")
    module.get_bin_path = lambda command: "/usr/sbin/" + command
    calls = []
    kernel.run = lambda args, data=None, **kw: calls.append(args) or (0, "", "")
    with pytest.raises(Done) as done:
        eg.run(module)
    assert done.value.failed and "another run of egress_guard (pid %d)" % os.getpid() in done.value.result["msg"]
    assert "nothing was changed" in done.value.result["msg"] and calls == []
    fcntl.flock(first, fcntl.LOCK_UN)
    os.close(first)
    again, _holder = eg.lock()
    assert again is not None
    os.close(again)


class LoadedKernel(FakeKernel):
    """A table of another policy is loaded; its ban and opt-out sets have the wanted
    size and timeout except ban_flood_v4_32 (another ban time)."""

    def __init__(self, policy):
        super().__init__(digest="ab" * 32)
        self.sets = dict((b[0], (policy["set_size"], b[4])) for b in gn.ban_sets(policy))
        self.sets["ban_flood_v4_32"] = (policy["set_size"], 60)
        self.sets.update(optout_v4=(65536, None), optout_v6=(65536, None), seen_v4=(262144, 600))
        self.sets.update((name, want) for name, (want, _length, _bans) in gn.prefilters(policy).items())
        self.listed, self.loaded_text = [], None

    def run(self, args, data=None, **kw):
        if args[:5] == ["nft", "-t", "-j", "list", "table"]:
            objs = [{"chain": {"name": "output"}}, {"chain": {"name": "hscan_hit_v4_8"}},
                    {"counter": {"name": "policy_id"}}]
            objs += [{"set": dict({"name": n, "size": s}, **({"timeout": t} if t else {}))}
                     for n, (s, t) in self.sets.items()]
            return 0, json.dumps({"nftables": objs}), ""
        if args[:4] == ["nft", "-j", "list", "set"]:
            self.listed.append(args[-1])
            elem = [{"elem": {"val": {"concat": ["198.18.7.0", 22]}, "expires": 30}}]
            return 0, json.dumps({"nftables": [{"set": {"name": args[-1], "elem": elem}}]}), ""
        if args[:2] == ["nft", "-f"]:
            self.loaded_text = data
        return super().run(args, data, **kw)


def test_a_reload_leaves_unchanged_ban_and_optout_sets_in_place():
    """Nothing is read from and written back to a ban or opt-out set whose definition
    stays: bans the kernel or the opt-out service adds during the reload survive."""
    p = policy()
    kernel = LoadedKernel(p)
    result, failed, _warnings = run_present(kernel)
    assert not failed and result["changed"] and kernel.digest == result["digest"]
    text = kernel.loaded_text
    assert "delete table" not in text
    assert "delete chain inet torexit_guard hscan_hit_v4_8" in text        # a chain the new rules lack
    assert "delete set inet torexit_guard seen_v4" in text                 # detector state starts afresh
    for name in [b[0] for b in gn.ban_sets(p) if b[0] != "ban_flood_v4_32"] + ["optout_v4", "optout_v6"]:
        assert "delete set inet torexit_guard %s\n" % name not in text
    # only the set with another ban time is re-created, with its bans read just before
    assert kernel.listed == ["ban_flood_v4_32"]
    assert "delete set inet torexit_guard ban_flood_v4_32\n" in text
    assert text.rstrip().endswith("add element inet torexit_guard ban_flood_v4_32 { 198.18.7.0 . 22 timeout 30s }")
    for name in gn.prefilters(p):
        assert "delete set inet torexit_guard %s\n" % name not in text


def test_a_reload_that_creates_the_prefilter_fills_it_from_the_bans():
    """Upgrading from a table without banned_* (or changing its definition): the
    prefixes of every current ban go into it, with the time their bans have left,
    so no ban stops working."""
    p = policy()
    kernel = LoadedKernel(p)
    for name in gn.prefilters(p):
        del kernel.sets[name]
    result, failed, _warnings = run_present(kernel)
    assert not failed and result["changed"]
    assert sorted(kernel.listed) == sorted(["ban_flood_v4_32"] + [b[0] for b in gn.ban_sets(p) if "_v4_" in b[0]]
                                           + [b[0] for b in gn.ban_sets(p) if "_v6_" in b[0]])
    assert "add element inet torexit_guard banned_v4_16 { 198.18.0.0 timeout 30s }" in kernel.loaded_text


def test_a_replaced_ipset_keeps_the_bans_added_while_it_was_replaced(host):
    apply(host, "iptables")
    ban = host.sets["torexit_ban_vscan_v4_32"]["members"]
    ban["198.18.1.1"] = 500

    def kernel_bans_more():
        host.sets["torexit_ban_vscan_v4_32"]["members"]["198.18.2.2"] = 550
    host.before_restore = kernel_bans_more
    result, failed = apply(host, "iptables", {"ban_time": 900})      # the ban sets get another timeout
    assert not failed and result["changed"]
    replaced = host.sets["torexit_ban_vscan_v4_32"]
    assert "timeout 900" in " ".join(replaced["header"])
    assert set(replaced["members"]) == {"198.18.1.1", "198.18.2.2"}
    assert not [name for name in host.sets if "_tmp_" in name]
