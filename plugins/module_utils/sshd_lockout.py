# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The refusal check: would the new effective configuration lock the connecting user
out where the current one did not? Plain functions of data, unit tested without sshd."""

from __future__ import annotations

import os

from ansible_collections.torexit.hardening.plugins.module_utils.sshd_effective import first, ip_or_none, listen_ports, listens_on, words
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_keys import login_possible, password_possible, password_problem, usable_keys
from ansible_collections.torexit.hardening.plugins.module_utils.sshd_match import match_host_and_ip, match_pattern


class Refused(Exception):
    """A change that would lock the connecting user out."""

    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
        self.msg = msg


# -------------------------------------------------- refusal 2: Allow/Deny lists

def user_matches(pattern, user, address):
    """sshd's match_user: USER or USER@HOST (split at the last @), * and ? wildcards,
    HOST by match_host_and_ip with the address as host name (UseDNS no). None =
    undecided (address unknown, or a list sshd rejects): counts against the user."""
    if "@" not in pattern:
        return match_pattern(user, pattern)
    upat, _sep, hpat = pattern.rpartition("@")
    if not match_pattern(user, upat):
        return False
    if address is None:
        return None
    verdict = match_host_and_ip(address, address, hpat)
    return None if verdict == -1 else verdict == 1


def access_problem(eff, user, groups, address):
    """None when AllowUsers/DenyUsers/AllowGroups/DenyGroups let the user in, else why.
    Patterns that cannot be decided (unknown address) count against the user."""
    for pattern in words(eff, "denyusers"):
        if user_matches(pattern, user, address) is not False:
            return f"DenyUsers {pattern} matches {user}"
    allow = words(eff, "allowusers")
    if allow and not any(user_matches(p, user, address) for p in allow):
        return "AllowUsers {} does not include {}".format(" ".join(allow), user)
    for pattern in words(eff, "denygroups"):
        if any(match_pattern(g, pattern) for g in groups):
            return f"DenyGroups {pattern} matches a group of {user}"
    allow = words(eff, "allowgroups")
    if allow and not any(match_pattern(g, p) for g in groups for p in allow):
        return "AllowGroups {} includes no group of {} ({})".format(" ".join(allow), user, " ".join(groups))
    return None


# ------------------------------------------------ refusal 4: sessions and commands

def forced_command(eff):
    """The ForceCommand that applies (sshd -T prints none when there is none)."""
    command = first(eff, "forcecommand", "none")
    return None if command.lower() == "none" else command


def session_refusal(before, after):
    """(code, reason) when ``after`` leaves the user no session or only a forced
    command, where ``before`` did not; else None."""
    if first(after, "maxsessions") == "0" and (before is None or first(before, "maxsessions") != "0"):
        return "no_sessions", "MaxSessions 0 allows no shell, command or subsystem session"
    command = forced_command(after)
    if command is not None and (before is None or forced_command(before) != command):
        return "forced_command", (f"ForceCommand {command} would replace every command of the connecting "
                                  "user, Ansible's included")
    return None


# ------------------------------------------------ refusal 5: address and family

FAMILIES = {"inet": 4, "inet6": 6}


def family_refusal(before, after, address):
    """Reason when AddressFamily in ``after`` excludes the connection's family."""
    client = ip_or_none(address)
    if client is None:
        return None
    family = first(after, "addressfamily", "any")
    if FAMILIES.get(family, client.version) == client.version:
        return None
    if before is not None and FAMILIES.get(first(before, "addressfamily", "any"), client.version) != client.version:
        return None
    return (f"AddressFamily {family} would stop sshd accepting IPv{client.version} connections, and the "
            f"current connection comes from {address}")


def address_refusal(before, after, server_address, port):
    """Reason when no ListenAddress of ``after`` accepts the current connection's
    server address and port any more."""
    if ip_or_none(server_address) is None or not port:
        return None
    if listens_on(after, server_address, port) or (before is not None and not listens_on(before, server_address, port)):
        return None
    listen = " ".join(v.split()[0] for v in after.get("listenaddress", []))
    return (f"ListenAddress {listen} would drop {server_address} port {port}, where the current connection "
            "arrived; keep that address and port, reconnect on the new one, then drop it")


# ------------------------------------------------------------------- the decision

def check_lockout(before, after, user, groups, home, uid, address, port, read_text,
                  firewall, lstat=os.stat, server_address=None, password_state="set"):
    """Raise Refused when ``after`` would lock the connecting user out where ``before``
    did not. ``before`` may be None (current configuration unreadable): then only
    ``after`` is judged. ``firewall(port)`` returns None when the port is open, else
    the reason it is not."""
    # Refusal 1: no way left to log in (no usable password and no usable key).
    pw_after = password_problem(after, user, password_state)
    keys_after, bad_after = usable_keys(after, user, home, uid, read_text, lstat, address)
    if not login_possible(after, pw_after is None, bool(keys_after)):
        ok_before = True
        if before is not None:
            keys_before, _problems = usable_keys(before, user, home, uid, read_text, lstat, address)
            ok_before = login_possible(before, password_possible(before, user, password_state), bool(keys_before))
        if ok_before:
            why = "; ".join(bad_after) or "no authorized_keys file with a key"
            if pw_after is None:
                msg = "refusing: AuthenticationMethods {} needs a key, and {} has no usable authorized key ({})".format(
                    first(after, "authenticationmethods"), user, why)
            elif pw_after == "password login is off" or pw_after.startswith("PermitRootLogin"):
                msg = f"refusing: password login would be impossible for {user}, who has no usable authorized key ({why})"
            else:
                msg = f"refusing: {user} could not log in any more: {pw_after}, and there is no usable authorized key ({why})"
            raise Refused("no_usable_key", msg)
    # Refusal 2: AllowUsers/AllowGroups/DenyUsers/DenyGroups exclude the user.
    problem = access_problem(after, user, groups, address)
    if problem and (before is None or access_problem(before, user, groups, address) is None):
        raise Refused("user_excluded", "refusing: the new configuration would lock out the connecting user {}: {}{}".format(
            user, problem, "" if address else " (connecting address unknown: set connecting_address)"))
    # Refusal 4 (checked before the ports): no session, or a forced command instead of the user's commands.
    session = session_refusal(before, after)
    if session:
        raise Refused(session[0], f"refusing: {session[1]} (user {user})")
    # Refusal 3: ports.
    ports_before = listen_ports(before) if before is not None else set()
    ports_after = listen_ports(after)
    if port and port in ports_before and port not in ports_after:
        raise Refused("port_dropped", f"refusing: sshd would stop listening on port {port}, the port "
                      "of the current connection; add the new port first, reconnect on it, then "
                      "drop the old one")
    family = family_refusal(before, after, address)
    if family:
        raise Refused("address_family", "refusing: " + family)
    dropped = address_refusal(before, after, server_address, port)
    if dropped:
        raise Refused("address_dropped", "refusing: " + dropped)
    for new in sorted(ports_after - ports_before):
        reason = firewall(new)
        if reason:
            raise Refused("port_closed", f"refusing: new sshd port {new} is not open in the firewall ({reason})")
    return sorted(ports_before), sorted(ports_after)
