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
  - Banned prefixes are destinations of relayed traffic; they are only returned
    with O(show_bans=true).
author:
  - torexit.hardening contributors
extends_documentation_fragment: []
attributes:
  check_mode:
    support: full
    details: The module only reads.
options:
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
installed:
  description: Whether the guard's table is loaded.
  returned: always
  type: bool
digest:
  description: SHA-256 of the policy the loaded table was rendered from.
  returned: when installed
  type: str
counters:
  description: Named counters (packets, bytes) - guarded_new, allowed, blocked_*, detect_*, seen_full.
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

from ansible_collections.torexit.hardening.plugins.module_utils import guard_nftables as nft


def main():
    module = AnsibleModule(
        argument_spec=dict(show_bans=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    if not module.get_bin_path("nft"):
        module.fail_json(msg="the nft command was not found on this host (install the Debian package nftables)")

    def run(args, data=None):
        return module.run_command(args, data=data, binary_data=True)

    state = nft.read_state(run, show_bans=module.params["show_bans"])
    if state is None:
        module.exit_json(changed=False, installed=False)
    module.exit_json(changed=False, installed=True, **state)


if __name__ == "__main__":
    main()
