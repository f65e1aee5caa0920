"""Shared fixtures: run the collection's modules inside a lab namespace."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from netlab import Lab, can_use_netns  # noqa: E402


def ansible_module(ns, module, args, check=False, diff=False):
    """Run a module with `ansible localhost` inside namespace `ns`; return its result dict."""
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    cmd = ["ip", "netns", "exec", ns, os.path.join(TOP, ".venv", "bin", "ansible"), "localhost",
           "-c", "local", "-m", module] + (["-a", json.dumps(args)] if args else [])
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    data = json.loads(proc.stdout)
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.fixture
def lab():
    if not can_use_netns():
        pytest.skip("needs root and network namespaces")
    with Lab() as lab:
        yield lab
