# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tor_exit_test_network_options (test only, `make demo`'s private Tor network) is
refused unless it really describes a test network: TestingTorNetwork 1 and
DirAuthority lines. The role's own checks from tasks/validate.yml, run by
ansible-playbook on localhost with the role's defaults."""
import json
import os
import subprocess
import sys

import pytest
import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(TOP, "roles", "tor_exit")
PLAYBOOK_BIN = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CHECKS = ("Test network options only with TestingTorNetwork and the test network's authorities",
          "Exit policy options are set through the tor_exit_policy variables only")
AUTH = "demoauth0 orport=5100 no-v2 v3ident=%s 198.18.0.3:7100 %s" % ("A" * 40, "B" * 40)

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="needs ansible-playbook in the venv")


def run_checks(tmp_path, options):
    with open(os.path.join(ROLE, "tasks", "validate.yml")) as f:
        tasks = [t for t in yaml.safe_load(f) if t["name"] in CHECKS]
    assert len(tasks) == len(CHECKS)
    with open(os.path.join(ROLE, "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": dict(defaults, tor_exit_test_network_options=options), "tasks": tasks}]
    book = tmp_path / "play.yml"
    book.write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    r = subprocess.run([PLAYBOOK_BIN, "-i", "localhost,", str(book)], capture_output=True, text=True,
                       timeout=300, env=env, check=False)
    return r.returncode, r.stdout + r.stderr


def test_unset_and_a_real_test_network_pass(tmp_path):
    rc, out = run_checks(tmp_path, {})
    assert rc == 0, out
    rc, out = run_checks(tmp_path, {"TestingTorNetwork": 1, "DirAuthority": [AUTH], "AssumeReachable": 1})
    assert rc == 0, out


@pytest.mark.parametrize("options, named", [
    ({"AssumeReachable": 1}, "TestingTorNetwork="),                      # ordinary options: refused
    ({"TestingTorNetwork": 0, "DirAuthority": [AUTH]}, "TestingTorNetwork=0"),
    ({"TestingTorNetwork": 1}, "'TestingTorNetwork'"),                    # no authorities: refused
    ({"TestingTorNetwork": 1, "DirAuthority": [AUTH], "ExitPolicy": "accept *:*"}, "['exitpolicy']"),
])
def test_anything_else_is_refused_naming_the_option(tmp_path, options, named):
    rc, out = run_checks(tmp_path, options)
    assert rc != 0, out
    assert "tor_exit_test_network_options" in out and named in out, out
