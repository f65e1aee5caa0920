# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one sequence that applies or removes the egress guard, for every backend.

    policy -> desired (backend) -> live (backend) -> plan: files, units, diff
      -> validate (backend; before the check-mode stop when it needs no change)
      -> stop in check mode or when nothing changes
      -> files -> units enabled -> load (backend.apply) -> units started -> verify

Check mode, the diff and `changed` are decided here and nowhere else (the shape of
ansible.posix's FirewallTransaction.run: read, compare, stop in check mode, change).
A backend (guard_nftables, guard_iptables, guard_ufw) only says what it wants
(`desired`), what it finds (`live`, `installed`) and how to load or unload it
(`validate`, `apply`, `remove`). A failing step is named in the error; files
written before it get their old contents back, so the host keeps the old state
(the loads themselves are single transactions per family).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import time

from ansible_collections.torexit.hardening.plugins.module_utils import guard_common as common
from ansible_collections.torexit.hardening.plugins.module_utils import guard_host as host
from ansible_collections.torexit.hardening.plugins.module_utils import guard_iptables, guard_nftables, guard_ufw
from ansible_collections.torexit.hardening.plugins.module_utils.guard_policy import PolicyError, build_policy, policy_digest

BACKENDS = {"nftables": guard_nftables, "iptables": guard_iptables, "ufw": guard_ufw}

# Stands in for the digest while the rules are rendered to compute it.
PLACEHOLDER = "0" * 64


class StepFailed(Exception):
    def __init__(self, step, error):
        super().__init__("%s step failed: %s" % (step, error))
        self.step = step


def rules_digest(policy, render):
    """The id stored with the loaded rules: SHA-256 of the policy and of the rules
    `render` makes of it. A digest of the policy alone would stay the same when a
    new version of the collection renders other rules for the same options; the
    files would be rewritten while the kernel kept the old rules."""
    blob = "%s\n%s" % (policy_digest(policy), render(policy, PLACEHOLDER))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _step(name, func, *args):
    try:
        return func(*args)
    except (common.GuardError, OSError) as exc:
        raise StepFailed(name, exc) from None


def _systemctl(env, *args):
    rc, out, err = env.run(["systemctl"] + list(args))
    if rc != 0:
        raise common.GuardError("systemctl %s failed: %s" % (" ".join(args), (err or out).strip()))


def _unit_is(env, state, unit):
    rc, _out, _err = env.run(["systemctl", "is-" + state, "--quiet", unit])
    return rc == 0


def _mode(path):
    return os.stat(path).st_mode & 0o7777 if os.path.exists(path) else None


def _spliced_mode(path):
    """A file we splice our block into (ufw's rules files) then holds prefixes:
    never group-writable nor readable by others (0640 or tighter)."""
    return _mode(path) & ~0o027


# --- present ---------------------------------------------------------------------------

def make_plan(env, desired, live):
    edited = dict((path, (host.read(path), edit(host.read(path)))) for path, edit in desired.edits.items())
    return common.Plan(
        desired=desired, live=live, write=tuple(host.file_changes(desired.files)), edited=edited,
        remove=tuple(p for p in desired.paths
                     if p not in desired.files and p not in desired.keep and host.read(p) is not None),
        enable=tuple(u for u in desired.units if not _unit_is(env, "enabled", u)),
        start=tuple(u for u in desired.units if not _unit_is(env, "active", u)))


def _changed_edits(edited):
    return [path for path, (old, new) in edited.items() if old != new]


def _sets_diff(set_lines):
    """A diff entry naming the sets that would be created or replaced with their
    options; never their elements (bans hold destinations)."""
    created = [line.split(" ", 1)[1] for line in set_lines if line.startswith("create ")]
    return {"before": "", "after": "".join("create %s\n" % c for c in created),
            "before_header": "ipsets", "after_header": "ipsets (created or replaced)"}


def _diff(plan, changed):
    d = plan.desired
    if plan.edited:
        views = [{"before": old, "after": new, "before_header": path, "after_header": path}
                 for path, (old, new) in plan.edited.items()]
    else:
        views = [{"before": plan.live.shown if changed else d.ruleset, "after": d.ruleset,
                  "before_header": "%s (current)" % d.view, "after_header": "%s (wanted)" % d.view}]
    if plan.live.sets:
        views.append(_sets_diff(plan.live.sets))
    return views[0] if len(views) == 1 else views


def _write_files(module, env, plan, undo):
    """Write and remove files, remembering what was there for _undo()."""
    writes = [(path, new, _spliced_mode(path)) for path, (old, new) in plan.edited.items() if old != new]
    writes += [(path,) + plan.desired.files[path] for path in plan.write]
    for path, content, mode in writes:
        undo.append((path, host.read(path), _mode(path)))
        host.write(module, path, content, mode)
    for path in plan.remove:
        undo.append((path, host.read(path), _mode(path)))
        os.remove(path)
    if env.systemd and (plan.write or plan.remove):
        _systemctl(env, "daemon-reload")


def _enable_units(env, plan, undo):
    # A rewritten unit file may name another target in [Install]: reenable.
    rewritten = [u for u in plan.desired.units if os.path.join(host.UNIT_DIR, u) in plan.write]
    for unit in sorted(set(plan.enable) | set(rewritten)):
        _systemctl(env, "reenable", unit)
        if unit in plan.enable:
            undo.append((unit, None, "unit"))


def _start_units(env, plan):
    for unit in plan.start:
        _systemctl(env, "start", unit)


def _verify(backend, env, desired):
    if not backend.live(env, desired).loaded:
        raise common.GuardError("the %s backend's rules are not loaded as rendered" % backend.NAME)


def _undo(module, env, undo):
    """Put back the files written before a step failed, and disable the units it enabled."""
    for path, content, mode in reversed(undo):
        if mode == "unit":
            env.run(["systemctl", "disable", path])
        elif content is None:
            os.remove(path)
        else:
            host.write(module, path, content, mode)
    if env.systemd and any(mode != "unit" for _p, _c, mode in undo):
        env.run(["systemctl", "daemon-reload"])


def present(module, backend, env):
    try:
        policy = build_policy(module.params, user_exists=_user_exists)
    except PolicyError as exc:
        module.fail_json(msg=str(exc))
    digest = rules_digest(policy, backend.render)
    result = dict(changed=False, backend=backend.NAME, policy=policy, digest=digest)
    undo = []
    try:
        desired = _step("plan", backend.desired, policy, digest, env)
        result["ruleset"] = desired.ruleset
        live = _step("read", backend.live, env, desired)
        result.update(live.extra)
        plan = _step("plan", make_plan, env, desired, live)
        validated = not live.sets          # validating needs no change first
        if validated:
            result.update(_step("validate", backend.validate, env, plan) or {})
        edited = _changed_edits(plan.edited)
        changed = bool(not live.loaded or live.sets or edited or plan.write or plan.remove or plan.enable)
        result.update(changed=changed, files=edited + list(plan.write) + list(plan.remove))
        if module._diff:
            result["diff"] = _diff(plan, changed)
        if module.check_mode or not changed:
            module.exit_json(**result)
        if not validated:
            result.update(_step("validate", backend.validate, env, plan) or {})
        _step("files", _write_files, module, env, plan, undo)
        _step("units", _enable_units, env, plan, undo)
        result.update(_step("load", backend.apply, env, plan) or {})
        _step("units", _start_units, env, plan)
        _step("verify", _verify, backend, env, desired)
        if result.get("bans_dropped"):
            module.warn("set_size %d is below the number of active bans: %d bans with the least time "
                        "left were dropped" % (policy["set_size"], result["bans_dropped"]))
    except StepFailed as exc:
        _undo(module, env, undo)
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


# --- absent ----------------------------------------------------------------------------

def _remove_files(module, env, inst, edited):
    for path in _changed_edits(edited):
        host.write(module, path, edited[path][1], _mode(path))
    if env.systemd:
        for unit in inst.units:
            if host.read(os.path.join(host.UNIT_DIR, unit)) is not None:
                env.run(["systemctl", "disable", "--now", unit])
    for path in inst.paths:
        os.remove(path)
    for directory in inst.dirs:    # directories we created for our files
        if any(p.startswith(directory + "/") for p in inst.paths) and os.path.isdir(directory) \
                and not os.listdir(directory):
            os.rmdir(directory)
    if inst.paths and env.systemd:
        _systemctl(env, "daemon-reload")


def absent(module, backend, env):
    result = dict(changed=False, backend=backend.NAME)
    try:
        inst = _step("read", backend.installed, env)
        edited = _step("plan", lambda: dict((p, (host.read(p), e(host.read(p)))) for p, e in inst.edits.items()))
        changed = bool(inst.paths or _changed_edits(edited) or inst.loaded)
        result.update(changed=changed, files=_changed_edits(edited) + list(inst.paths))
        if module._diff:
            result["diff"] = ([{"before": old, "after": new, "before_header": p, "after_header": p}
                               for p, (old, new) in edited.items()] if inst.edits
                              else {"before": inst.shown, "after": ""})
        if module.check_mode or not changed:
            module.exit_json(**result)
        _step("files", _remove_files, module, env, inst, edited)
        _step("unload", backend.remove, env, inst)
    except StepFailed as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


LOCK = "/run/lock/torexit-egress-guard.lock"
LOCK_WAIT = 60


def lock(path=None, wait=None):
    """Serialize runs of the module on one host (two plays, or a play and a hand-run):
    an exclusive lock on `path`, waited for up to `wait` seconds. Returns the open
    file (the lock lasts as long as it is open) or None and the holder's pid."""
    path = path or LOCK
    wait = LOCK_WAIT if wait is None else wait
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                return None, holder
            time.sleep(0.5)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd, None


def run(module):
    """Pick the backend, check its commands, apply or remove the guard."""
    name = module.params["backend"]
    if name == "auto":
        name = "nftables" if module.get_bin_path("nft") else "iptables"
    backend = BACKENDS[name]
    state = module.params["state"]
    for command in backend.COMMANDS + (backend.PRESENT_COMMANDS if state == "present" else []):
        if not module.get_bin_path(command):
            module.fail_json(msg="backend: %s needs the %s command, which was not found on this host "
                                 "(install the Debian package %s)"
                                 % (name, command, "nftables" if command == "nft" else command.split("-")[0]))

    def runner(args, data=None):
        return module.run_command(args, data=data, binary_data=True)

    env = common.Env(run=runner, persist=module.params["persist"], systemd=host.systemd_running(),
                     have=lambda command: bool(module.get_bin_path(command)))
    held, holder = lock()
    if held is None:
        module.fail_json(msg="another run of egress_guard (pid %s) has been changing the guard on this host for "
                             "more than %d s (lock %s); nothing was changed, run again when it has finished"
                             % (holder or "unknown", LOCK_WAIT, LOCK))
    (present if state == "present" else absent)(module, backend, env)
