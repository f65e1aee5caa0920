# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logic of the torexit.hardening.sshd_config module: the I/O of one run.

What decides something lives in plain functions of text or data, one file per concern:
``sshd_render`` (the managed file), ``sshd_effective`` (``sshd -T``), ``sshd_connection``
(who is connecting), ``sshd_keys`` (password and key login), ``sshd_firewall`` (ports
in ufw/nftables/iptables) and ``sshd_lockout`` (the refusals).
"""

from __future__ import annotations

import grp
import os
import pwd
import tempfile

from ansible_collections.torexit.hardening.plugins.module_utils.sshd_connection import (
    find_ssh_connection,
    parse_ssh_connection,
    proc_environ,
    proc_ppid,
    server_address_of,
)
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_effective import connection_spec, effective_diff, parse_effective
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_firewall import firewall_checker
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_keys import password_state
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_lockout import Refused, check_lockout
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_render import (
    DEFAULT_PATH,
    SshdConfigError,
    candidate_main,
    covered_by_include,
    render,
    with_block,
)

__all__ = ["DEFAULT_PATH", "run"]


def _read_text(path):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _sshd_T(module, sshd, config, spec):
    cmd = [sshd, "-T", "-f", config] + (["-C", spec] if spec else [])
    rc, out, err = module.run_command(cmd)
    return (parse_effective(out), None) if rc == 0 else (None, err.strip() or out.strip())


def run(module):
    p = module.params
    path, main = p["path"], p["main_config"]
    sshd = p["sshd_path"] or module.get_bin_path("sshd", opt_dirs=["/usr/sbin", "/sbin"])
    if not sshd:
        module.fail_json(msg="sshd_path: sshd not found; is openssh-server installed?")
    try:
        new_file_text = render(p["settings"], p["comment"])
    except SshdConfigError as exc:
        module.fail_json(msg=str(exc))
    main_text = _read_text(main)
    if main_text is None:
        module.fail_json(msg=f"main_config: cannot read {main}")
    main_dir = os.path.dirname(main)
    dropin = covered_by_include(main_text, main_dir, path)
    target = path if dropin else main
    old_text = _read_text(target)
    new_text = new_file_text if dropin else with_block(main_text, new_file_text)

    # Who is connecting: explicit options, else SUDO_USER / the module's user, and
    # SSH_CONNECTION from the environment or the nearest ancestor process.
    user = p["connecting_user"] or os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        module.fail_json(msg=f"connecting_user: no such user {user!r} on the target")
    groups = sorted({grp.getgrgid(pw.pw_gid).gr_name} | {g.gr_name for g in grp.getgrall() if user in g.gr_mem})
    ssh_connection = find_ssh_connection(os.environ, proc_environ, proc_ppid, os.getpid())
    addr, port = parse_ssh_connection(ssh_connection)
    address = p["connecting_address"] or addr
    port = p["connecting_port"] or port
    server_address = p["connecting_server_address"] or server_address_of(ssh_connection)
    spec = connection_spec(user, address, port)

    tmpdir = tempfile.mkdtemp(prefix="sshd_config.")
    try:
        cand = os.path.join(tmpdir, os.path.basename(target))
        with open(cand, "w") as f:
            f.write(new_text)
        if dropin:
            cand_main = os.path.join(tmpdir, "sshd_config")
            with open(cand_main, "w") as f:
                f.write(candidate_main(main_text, main_dir, path, cand))
        else:
            cand_main = cand
        rc, out, err = module.run_command([sshd, "-t", "-f", cand_main])
        if rc != 0:
            module.fail_json(msg="settings: sshd -t rejects the new configuration: %s" % (err.strip() or out.strip()),
                             rc=rc)
        before, before_err = _sshd_T(module, sshd, main, spec)
        after, after_err = _sshd_T(module, sshd, cand_main, spec)
        if after is None:
            module.fail_json(msg=f"settings: sshd -T rejects the new configuration: {after_err}")
        try:
            ports_before, ports_after = check_lockout(
                before, after, user, groups, pw.pw_dir, pw.pw_uid, address, port, _read_text,
                firewall_checker(module, address), server_address=server_address,
                password_state=password_state(user, _read_text("/etc/shadow"), pw.pw_passwd))
        except Refused as exc:
            module.fail_json(msg=exc.msg, refused=exc.code, connecting_user=user, connecting_port=port,
                             connecting_address=address, connecting_server_address=server_address)
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)

    changed = old_text != new_text
    result = {
        "changed": changed, "path": target, "mode": "drop-in" if dropin else "main",
        "effective_changed": before != after,
        "effective_diff": effective_diff(before or {}, after),
        "ports_before": ports_before, "ports_after": ports_after,
        "connecting_user": user, "connecting_port": port, "connecting_address": address,
        "connecting_server_address": server_address,
    }
    if before is None:
        module.warn(f"the current configuration is rejected by sshd -T ({before_err})")
    if port is None:
        module.warn("connecting port unknown (no connecting_port, no SSH_CONNECTION): "
                    "not checking that sshd keeps listening on it")
    if module._diff:
        result["diff"] = {"before": old_text or "", "after": new_text, "before_header": target, "after_header": target}
    if changed and not module.check_mode:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".sshd_config.")
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
        if old_text is None:
            os.chmod(tmp, 0o644)
        module.atomic_move(tmp, target)
    return result
