#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: egress_guard_info
short_description: Counters, bans and set fill levels of the egress guard
version_added: 0.1.0
description:
  - Reads the egress guard's table C(inet torexit_guard) and reports its counters
    per detector, the number of active bans per ban set, and how full each kernel
    set is against its maximum size.
  - For the C(iptables) and C(ufw) backends the counters are the packet and byte
    counts of the guard's rules tagged with the counter's name (C(iptables-save -c)),
    and bans and fill levels come from the ipsets C(torexit_*) (C(ipset list)); the
    return keys are the same, set names without the C(torexit_) prefix.
  - Banned prefixes are destinations of relayed traffic; they are only returned
    with O(show_bans=true).
author:
  - torexit.hardening contributors (@torexit)
attributes:
  check_mode:
    description: The module only reads.
    support: full
options:
  backend:
    description:
      - Which backend's state to read. C(auto) reads the nftables table when it is
        loaded, else the iptables backend's chains, else the ufw backend's.
    type: str
    choices: [auto, nftables, iptables, ufw]
    default: auto
  show_bans:
    description: Also return the banned prefixes and ports with the seconds they have left.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Read the guard's counters
  torexit.hardening.egress_guard_info:
  register: guard

- name: Show how many prefixes are banned for horizontal scans
  ansible.builtin.debug:
    msg: "{{ guard.bans.ban_hscan_v4_24.count }}"
"""

RETURN = r"""
backend:
  description: The backend whose state was read (C(auto) - the one found loaded).
  returned: always
  type: str
  sample: nftables
installed:
  description: Whether the guard's table is loaded.
  returned: always
  type: bool
digest:
  description: SHA-256 of the policy and of the rules rendered from it, as stored with the loaded rules (see the digest of M(torexit.hardening.egress_guard)).
  returned: when installed
  type: str
counters:
  description: Named counters (packets, bytes) - guarded_new, allowed, blocked_*, detect_*, seen_full, psweep_failed.
  returned: when installed
  type: dict
bans:
  description: Per ban or opt-out set, C(count) of entries; with O(show_bans) also C(entries) (key, expires).
  returned: when installed
  type: dict
sets:
  description: Per set, C(elements) and C(size) (its cap; null for unbounded static sets).
  returned: when installed
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.torexit.hardening.plugins.module_utils.guard_apply import BACKENDS


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", default="auto", choices=["auto", "nftables", "iptables", "ufw"]),
            show_bans=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )

    def run(args, data=None):
        return module.run_command(args, data=data, binary_data=True)

    commands = {"nftables": "nft", "iptables": "iptables-save", "ufw": "iptables-save"}
    wanted = module.params["backend"]
    for backend in (["nftables", "iptables", "ufw"] if wanted == "auto" else [wanted]):
        command = commands[backend]
        if not module.get_bin_path(command):
            if wanted == "auto":
                continue
            module.fail_json(msg="backend: %s - the %s command was not found on this host" % (backend, command))
        state = BACKENDS[backend].read_state(run, module.params["show_bans"])
        if state is not None:
            module.exit_json(changed=False, backend=backend, installed=True, **state)
    module.exit_json(changed=False, backend=wanted, installed=False)


if __name__ == "__main__":
    main()
