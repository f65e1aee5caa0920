#!/usr/bin/python
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: torrc
short_description: Manage options in a tor configuration file, validated by tor
description:
  - Sets, replaces or removes options of a torrc file, including options that repeat
    (V(ExitPolicy), V(ORPort), V(MyFamily), V(%include)), keeping comments and the order
    of all other lines.
  - The new file is checked with C(tor --verify-config -f) before it replaces the old
    one. An unknown option or a value tor rejects fails with tor's own message and
    leaves the file untouched.
  - Optionally writes a whole exit policy (a preset plus validated extra entries) and
    returns the policy in force as data.
version_added: 0.1.0
author: torexit.hardening contributors (@torexit)
options:
  path:
    description: The torrc file, for example C(/etc/tor/torrc) or a file under C(/etc/tor/torrc.d/).
    type: path
    required: true
    aliases: [dest]
  option:
    description:
      - One torrc keyword, matched case-insensitively. Use V(%include) for include lines.
      - Mutually exclusive with O(options).
    type: str
  value:
    description: The single value of O(option). Mutually exclusive with O(values).
    type: str
  values:
    description:
      - All values of a repeated O(option), one torrc line each, in this order. With
        O(state=present) the option ends up with exactly these lines.
      - With O(state=absent) only lines holding one of these values are removed.
    type: list
    elements: str
  options:
    description:
      - Several options at once, validated together. Keys are torrc keywords; a value
        is a string, a list (one line per element) or V(null) (remove the option).
    type: dict
  exit_policy:
    description:
      - Write the exit policy options (V(ExitRelay), V(ExitPolicy), V(ReducedExitPolicy),
        V(IPv6Exit), V(ExitPolicyRejectPrivate), V(ExitPolicyRejectLocalInterfaces)).
      - Where the installed tor knows V(ReducedExitPolicy), the V(reduced) preset is
        written as C(ReducedExitPolicy 1); otherwise as explicit ExitPolicy lines.
    type: dict
    suboptions:
      preset:
        description: V(reduced) is tor's ReducedExitPolicy, V(default) tor's default
          exit policy, V(web) ports 80 and 443 only, V(none) makes the relay a non-exit.
        type: str
        choices: [reduced, default, web, none]
        default: reduced
      accept:
        description: Extra entries C(ADDR[/LEN]:PORT[-PORT]) accepted before the preset
          (IPv6 in brackets, C(*) for any address or port).
        type: list
        elements: str
        default: []
      reject:
        description: Extra entries rejected before the accept entries and the preset.
        type: list
        elements: str
        default: []
      ipv6_exit:
        description: Exit to IPv6 destinations with the same policy (V(IPv6Exit 1)).
        type: bool
        default: true
  state:
    description: Whether O(option) should be present or absent.
    type: str
    choices: [present, absent]
    default: present
  purge:
    description: Remove every option line not named in O(option), O(options) or
      set by O(exit_policy). Comments stay.
    type: bool
    default: false
  create:
    description: Create the file when it does not exist.
    type: bool
    default: true
  backup:
    description: Keep a timestamped copy of the old file when it changes.
    type: bool
    default: false
  verify:
    description: Check the new file with C(tor --verify-config) before writing it.
    type: bool
    default: true
  tor_binary:
    description: The tor program used for verification and version detection.
    type: path
    default: tor
  defaults_torrc:
    description: Passed to tor as C(--defaults-torrc) during verification, as the
      service does (Debian's C(tor@default) uses C(/usr/share/tor/tor-service-defaults-torrc)).
    type: path
extends_documentation_fragment:
  - ansible.builtin.files
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The verification also runs in check mode, on a temporary file.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
notes:
  - A new V(%include) line is put before the first option so that the included files
    come first; tor uses the first matching ExitPolicy line. Other new options are
    appended.
  - Values are written unquoted, one line each, and read back the way tor reads them
    (a port of tor's own config parser). A value tor would read as more or less than
    itself is refused with the option's name and the value, before anything is written -
    a newline, a carriage return, a NUL byte or another control character, a backslash at
    the end (tor continues the line, so the next option would become part of this value),
    a C(#) (the start of a comment), or a leading double quote (tor decodes the escapes
    of a quoted string). Blanks at either end are dropped, as tor drops them.
  - A file holding a NUL byte is refused, because tor stops reading at that byte.
  - In check mode on a host without tor, verification is skipped with a warning.
"""

EXAMPLES = r"""
- name: Set the nickname
  torexit.hardening.torrc:
    path: /etc/tor/torrc
    option: Nickname
    value: myexit

- name: Two ORPorts
  torexit.hardening.torrc:
    path: /etc/tor/torrc
    option: ORPort
    values: ["198.18.0.10:443", "[2001:db8::10]:443"]

- name: Read the guard's fragments before the exit policy
  torexit.hardening.torrc:
    path: /etc/tor/torrc
    option: "%include"
    value: /etc/tor/torrc.d/

- name: Whole file, reduced exit policy with one extra reject, nothing else kept
  torexit.hardening.torrc:
    path: /etc/tor/torrc
    purge: true
    backup: true
    defaults_torrc: /usr/share/tor/tor-service-defaults-torrc
    options:
      "%include": /etc/tor/torrc.d/
      Nickname: myexit
      ORPort: "9001"
      DirPort: null
    exit_policy:
      preset: reduced
      reject: ["198.18.0.0/24:25"]
  register: torrc_result

- name: Show the policy in force
  ansible.builtin.debug:
    var: torrc_result.exit_policy_effective
"""

RETURN = r"""
exit_policy_effective:
  description: The exit policy in force, first match first, when O(exit_policy) is given.
  returned: when O(exit_policy) is set
  type: list
  elements: str
  sample: ["reject private:*", "reject 198.18.0.0/24:25", "accept *:20-23", "reject *:*"]
reduced_exit_policy_option:
  description: Whether the installed tor knows C(ReducedExitPolicy).
  returned: when O(exit_policy) is set
  type: bool
tor_version:
  description: Version of the installed tor, empty when tor was not found.
  returned: always
  type: str
  sample: 0.4.9.11
backup_file:
  description: Name of the backup file.
  returned: when a backup was made
  type: str
msg:
  description: What happened.
  returned: always
  type: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.torexit.hardening.plugins.module_utils import exit_policy as ep
from ansible_collections.torexit.hardening.plugins.module_utils import torrc


def tor_info(module, tor_binary):
    """(version tuple or None, version text, knows ReducedExitPolicy)."""
    binary = module.get_bin_path(tor_binary) if "/" not in tor_binary else tor_binary
    if not binary or not os.path.exists(binary):
        return None, "", None
    rc, out, _err = module.run_command([binary, "--version"])
    version = ep.parse_tor_version(out) if rc == 0 else None
    rc, out, _err = module.run_command([binary, "--list-torrc-options"])
    knows_reduced = "ReducedExitPolicy" in out.split() if rc == 0 else None
    text = ".".join(str(p) for p in version) if version else ""
    return version, text, knows_reduced


def desired_changes(params, version, knows_reduced):
    """Ordered list of (option, values or None for remove), plus effective policy."""
    changes, effective = [], None
    if params["option"]:
        if params["state"] == "present":
            if params["value"] is None and params["values"] is None:
                raise torrc.TorrcError(f"option {params['option']}: state=present needs value or values")
            values = [params["value"]] if params["value"] is not None else params["values"]
            changes.append((params["option"], values, False))
        else:
            changes.append((params["option"], params["values"], True))
    for option, value in (params["options"] or {}).items():
        if value is None:
            changes.append((option, None, True))
        elif isinstance(value, list):
            changes.append((option, [to_native(v) for v in value], False))
        else:
            changes.append((option, [to_native(value)], False))
    if params["exit_policy"] is not None:
        pol = params["exit_policy"]
        options, effective = ep.build(pol["preset"], pol["accept"], pol["reject"], pol["ipv6_exit"],
                                      tor_version=version, reduced_option=bool(knows_reduced))
        changes.extend((option, values or None, not values) for option, values in options)
    return changes, effective


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True, "aliases": ["dest"]},
            "option": {"type": "str"},
            "value": {"type": "str"},
            "values": {"type": "list", "elements": "str"},
            "options": {"type": "dict"},
            "exit_policy": {"type": "dict", "options": {
                "preset": {"type": "str", "default": "reduced", "choices": list(ep.PRESETS)},
                "accept": {"type": "list", "elements": "str", "default": []},
                "reject": {"type": "list", "elements": "str", "default": []},
                "ipv6_exit": {"type": "bool", "default": True},
            }},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "purge": {"type": "bool", "default": False},
            "create": {"type": "bool", "default": True},
            "backup": {"type": "bool", "default": False},
            "verify": {"type": "bool", "default": True},
            "tor_binary": {"type": "path", "default": "tor"},
            "defaults_torrc": {"type": "path"},
        },
        mutually_exclusive=[("option", "options"), ("value", "values")],
        required_by={"value": "option", "values": "option"},
        required_one_of=[("option", "options", "exit_policy")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"]
    result = {"changed": False, "path": path}

    if os.path.isdir(path):
        module.fail_json(msg=f"path {path} is a directory", **result)
    exists = os.path.exists(path)
    if not exists and not p["create"]:
        module.fail_json(msg=f"{path} does not exist and create=false", **result)
    before_text = ""
    if exists:
        with open(path, "rb") as f:
            before_text = to_native(f.read(), errors="surrogate_or_strict")

    version, result["tor_version"], knows_reduced = tor_info(module, p["tor_binary"])
    if version is None and p["exit_policy"] is not None and not module.check_mode and p["verify"]:
        module.fail_json(msg=f"tor ({p['tor_binary']}) not found: cannot tell which exit policy options it supports", **result)

    try:
        changes, effective = desired_changes(p, version, knows_reduced)
        lines = torrc.parse(before_text)
        for option, values, remove in changes:
            torrc.check_option(option)
            if remove:
                lines = torrc.remove_values(lines, option, values)
            else:
                lines = torrc.set_option(lines, option, values)
        if p["purge"]:
            lines = torrc.purge(lines, [c[0] for c in changes if not c[2]])
    except (torrc.TorrcError, ep.ExitPolicyError) as exc:
        module.fail_json(msg=to_native(exc), **result)

    after_text = torrc.render(lines)
    if effective is not None:
        result["exit_policy_effective"] = effective
        result["reduced_exit_policy_option"] = bool(knows_reduced)
    changed = after_text != before_text or not exists
    if module._diff:
        result["diff"] = {"before": before_text, "after": after_text,
                          "before_header": f"{path} (content)", "after_header": f"{path} (content)"}

    if changed:
        fd, tmp = tempfile.mkstemp(prefix=".torrc-", dir=module.tmpdir)
        with os.fdopen(fd, "wb") as f:
            f.write(to_bytes(after_text))
        if p["verify"]:
            if version is None and module.check_mode:
                module.warn(f"tor ({p['tor_binary']}) not found: the new {path} was not verified")
            else:
                ok, message = torrc.verify(tmp, p["tor_binary"], p["defaults_torrc"])
                if not ok:
                    os.remove(tmp)
                    module.fail_json(msg=f"tor --verify-config rejected the new {path}, file left unchanged: {message}", **result)
        if not module.check_mode:
            if p["backup"] and exists:
                result["backup_file"] = module.backup_local(path)
            module.atomic_move(tmp, path, unsafe_writes=p["unsafe_writes"])
            if not exists and p["mode"] is None:
                os.chmod(path, 0o644)
        elif os.path.exists(tmp):
            os.remove(tmp)

    if not module.check_mode and os.path.exists(path):
        file_args = module.load_file_common_arguments(p)
        changed = module.set_fs_attributes_if_different(file_args, changed, diff=None)
    result["changed"] = changed
    result["msg"] = f"{path} updated" if changed else f"{path} unchanged"
    module.exit_json(**result)


if __name__ == "__main__":
    main()
