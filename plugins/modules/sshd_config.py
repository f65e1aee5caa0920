#!/usr/bin/python
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sshd_config
short_description: Manage sshd settings without locking the connecting user out
description:
  - Writes O(settings) to a drop-in file under C(/etc/ssh/sshd_config.d/). When no
    C(Include) line of O(main_config) covers O(path) (an OpenSSH without Include
    support, or a main file without the line), the settings go into a marked block at
    the top of O(main_config) instead; sshd keeps the first value it reads, so they win
    either way.
  - The new configuration (the main file with the new drop-in in place of the old one)
    is checked with C(sshd -t -f) before it replaces the old file, and the file is
    replaced atomically. A configuration sshd rejects fails and changes nothing.
  - Before writing, the effective configuration for the connecting user is computed
    with C(sshd -T -C user=...,addr=...,lport=...) for the current and the new files
    (so C(Match) blocks apply), and the module refuses, changing nothing, when the
    change would 1. leave the user no way to log in - no usable password (password or
    keyboard-interactive login off, or the user's C(/etc/shadow) password locked,
    empty or missing) and no usable authorized key, 2. exclude the user through
    C(AllowUsers), C(AllowGroups), C(DenyUsers) or C(DenyGroups), 3. add a port that
    the firewall does not let in for the controller, or stop listening on the port of
    the current connection, 4. set C(MaxSessions 0) or a new C(ForceCommand) for the
    user (global or in a C(Match) that matches), 5. set an C(AddressFamily) without the
    family of the connection, or C(ListenAddress) values that drop the address the
    current connection arrived on.
  - A refusal fires only on a transition from "can log in" to "cannot". A
    configuration that already excluded the user is not refused again.
  - The module does not reload sshd; reload it when RV(effective_changed) is true.
version_added: 0.1.0
author: torexit.hardening contributors (@torexit)
options:
  settings:
    description:
      - sshd keywords and their values. V(true)/V(false) are written as C(yes)/C(no).
      - A list is written as one comma-separated word for algorithm keywords
        (C(Ciphers), C(MACs), C(KexAlgorithms), C(HostKeyAlgorithms),
        C(PubkeyAcceptedAlgorithms), C(CASignatureAlgorithms),
        C(HostbasedAcceptedAlgorithms)), as one line per element for C(Port),
        C(ListenAddress), C(HostKey), C(HostCertificate) and C(Subsystem), and as
        space-separated words otherwise (C(AllowUsers), C(AcceptEnv)).
      - V(null) values are left out. C(Match) and C(Include) are not supported.
    type: dict
    required: true
  path:
    description: The drop-in file the module owns entirely.
    type: path
    default: /etc/ssh/sshd_config.d/00-torexit-hardening.conf
  main_config:
    description: The main sshd configuration file.
    type: path
    default: /etc/ssh/sshd_config
  comment:
    description: Comment lines written under the file's header.
    type: str
  connecting_user:
    description:
      - The user whose access must survive the change.
      - Defaults to E(SUDO_USER) (set by C(become) with sudo), else the user the
        module runs as (for example V(root) when Ansible logs in as root).
      - Must be given when Ansible does not connect over SSH (docker connection,
        local) or becomes root with something other than sudo.
    type: str
  connecting_port:
    description:
      - The sshd port of the current connection; sshd must keep listening on it.
      - Defaults to the fourth field of E(SSH_CONNECTION). sudo removes that variable
        (Debian's default C(env_reset)), so the module reads it from the nearest
        ancestor process that has it (the login shell of the SSH session), which
        works when running as root. When no port is known the module warns and skips
        this check (new ports are still checked against the firewall).
    type: int
  connecting_address:
    description:
      - The client address of the current connection, used for C(Match Address),
        C(USER@HOST) patterns, C(from=) options of keys, C(AddressFamily) and firewall
        rules limited to a source or interface. Defaults to the first field of
        E(SSH_CONNECTION), found as for O(connecting_port). When unknown, C(USER@HOST)
        patterns count against the user, keys with C(from=) do not count, and firewall
        rules limited to a source or interface do not open a port.
    type: str
  connecting_server_address:
    description:
      - The server address the current connection arrived on; some C(ListenAddress)
        must keep accepting it on O(connecting_port). Defaults to the third field of
        E(SSH_CONNECTION), found as for O(connecting_port). When unknown, only the
        address family of O(connecting_address) is checked.
    type: str
  sshd_path:
    description: The sshd binary. Defaults to C(sshd) on the PATH or in C(/usr/sbin).
    type: path
notes:
  - B(changed) is V(true) when the managed file's bytes differ from what the module
    renders, so a new O(comment) alone reports a change. RV(effective_changed) says
    whether the effective configuration (C(sshd -T)) changes; only then does sshd need
    a reload.
  - B(Usable authorized key) means a line in a file of the new C(AuthorizedKeysFile)
    (C(%h), C(%u), C(~) expanded) whose key type is in the new
    C(PubkeyAcceptedAlgorithms), RSA keys at least C(RequiredRSASize) bits, with
    C(PubkeyAuthentication yes), C(PermitRootLogin) allowing keys for root, a
    C(from=) option (if any) that admits O(connecting_address) by sshd's own rules
    (C(*) and C(?) wildcards, CIDR, C(!) negation winning; host names are matched
    against the address text as with C(UseDNS no); unknown address - not usable),
    and, with C(StrictModes yes), the file and its directories up to the home
    directory owned by the user or root and not writable by group or others.
    C(cert-authority) lines and C(AuthorizedKeysCommand) do not count. B(Usable
    password) - C(PasswordAuthentication yes), or C(KbdInteractiveAuthentication yes)
    with C(UsePAM yes), and a crypt hash in the user's C(/etc/shadow) entry (an empty
    one only with C(PermitEmptyPasswords yes)); for root only with
    C(PermitRootLogin yes). C(AuthenticationMethods) lists are honoured.
  - B(Open in the firewall) is decided per active firewall, and each must agree, for
    a connection from O(connecting_address) arriving on the interface the kernel
    routes that address through (C(ip route get)). ufw (when C(ufw status) says
    active) - the first rule that names the TCP port (C(2222), C(2222/tcp), lists,
    ranges, the C(OpenSSH) profile for 22) and applies to the controller (From
    column, IPv4 or IPv6 row, C(on IFACE)) must be ALLOW or LIMIT. nftables
    (C(nft -j list ruleset), tables of families ip, ip6, inet; tables with ufw
    chains are left to the ufw check) - a table whose input base chain has policy
    drop or ends in an unconditional drop/reject must contain a rule that matches
    the TCP destination port (value, range, set or named set), whose C(ip saddr),
    C(ip6 saddr), C(iifname) and C(iif) conditions hold, and that accepts. Legacy
    iptables (C(iptables-legacy-save) or C(ip6tables-legacy-save), the controller's
    family) - same rule for INPUT with C(--dport)/C(--dports) ACCEPT rules and their
    C(-s)/C(-i) conditions. While the address is unknown, rules limited to a source
    or interface do not count. Other conditions (connection state, rate limits) are
    not evaluated, and no firewall means open.
  - Runs C(sshd -T), which needs root to read the host keys; use C(become).
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
"""

EXAMPLES = r"""
- name: Keys only, no root password login
  torexit.hardening.sshd_config:
    settings:
      PasswordAuthentication: false
      KbdInteractiveAuthentication: false
      PermitRootLogin: prohibit-password
  become: true
  register: sshd
  notify: Reload sshd

- name: Listen on the old and a new port (the new one must be open in the firewall)
  torexit.hardening.sshd_config:
    settings:
      Port: [22, 2222]

- name: Inside a container reached without SSH, name the operator explicitly
  torexit.hardening.sshd_config:
    settings:
      AllowUsers: [operator]
    connecting_user: operator
    connecting_port: 22
"""

RETURN = r"""
path:
  description: The file written (the drop-in, or the main file in block mode).
  returned: always
  type: str
mode:
  description: V(drop-in) or V(main) (block at the top of the main file).
  returned: always
  type: str
effective_changed:
  description: Whether the effective configuration (C(sshd -T)) changes.
  returned: always
  type: bool
effective_diff:
  description: Keywords whose effective values change, with C(before) and C(after) lists.
  returned: always
  type: dict
  sample: {"passwordauthentication": {"before": ["yes"], "after": ["no"]}}
ports_before:
  description: TCP ports sshd listens on with the current configuration.
  returned: always
  type: list
  elements: int
ports_after:
  description: TCP ports sshd listens on with the new configuration.
  returned: always
  type: list
  elements: int
connecting_user:
  description: The user whose access was checked.
  returned: always
  type: str
connecting_port:
  description: The port of the current connection, or null when unknown.
  returned: always
  type: int
connecting_address:
  description: The client address of the current connection, or null when unknown.
  returned: always
  type: str
connecting_server_address:
  description: The server address of the current connection, or null when unknown.
  returned: always
  type: str
refused:
  description: On a refusal, its kind - V(no_usable_key), V(user_excluded),
    V(port_dropped), V(port_closed), V(no_sessions), V(forced_command),
    V(address_family) or V(address_dropped).
  returned: failed
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.torexit.hardening.plugins.module_utils.sshd_config import (
    DEFAULT_PATH,
    run,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "required": True},
            "path": {"type": "path", "default": DEFAULT_PATH},
            "main_config": {"type": "path", "default": "/etc/ssh/sshd_config"},
            "comment": {"type": "str"},
            "connecting_user": {"type": "str"},
            "connecting_port": {"type": "int"},
            "connecting_address": {"type": "str"},
            "connecting_server_address": {"type": "str"},
            "sshd_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
