# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml: valid for ansible-builder 3, and the build context it
makes (scripts/build-ee.sh, `ansible-builder create`: no container runtime needed)
installs this collection, whose Python and system dependencies ansible-builder's
introspection finds - what the image build would do, minus the network."""

import os
import re
import subprocess
import sys
import tarfile

import pytest
import yaml
from ansible_builder.ee_schema import validate_schema
from ansible_builder.exceptions import DefinitionError
from packaging.requirements import Requirement

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def load(path):
    with open(os.path.join(TOP, path)) as f:
        return yaml.safe_load(f)


def test_definition_is_valid_for_ansible_builder_3():
    ee = load("execution-environment.yml")
    assert ee["version"] == 3
    validate_schema(ee)
    # the validator is not a no-op: a misspelt key is refused
    broken = dict(ee, dependencies=dict(ee["dependencies"], pyhton="requirements.txt"))
    with pytest.raises(DefinitionError):
        validate_schema(broken)


def test_versions_agree_with_the_collection():
    ee = load("execution-environment.yml")
    core = Requirement(ee["dependencies"]["ansible_core"]["package_pip"])
    assert core.name == "ansible-core"
    # the oldest ansible-core meta/runtime.yml allows and the one the tests use are both in
    required = load("meta/runtime.yml")["requires_ansible"]
    oldest = re.match(r"^>=\s*([\d.]+)$", required).group(1)
    with open(os.path.join(TOP, "requirements-dev.txt")) as f:
        tested = re.search(r"^ansible-core==([\d.]+)$", f.read(), re.M).group(1)
    assert oldest in core.specifier and tested in core.specifier
    # the Galaxy dependencies are galaxy.yml's
    wanted = load("galaxy.yml")["dependencies"]
    listed = dict((c["name"], c.get("version")) for c in load("ee/requirements.yml")["collections"]
                  if c.get("type") != "file")
    assert listed == wanted


def test_dependency_files_parse():
    with open(os.path.join(TOP, "requirements.txt")) as f:
        reqs = [Requirement(line) for line in f.read().splitlines() if line.strip() and not line.startswith("#")]
    assert "netaddr" in [r.name for r in reqs]
    netaddr_min = [r for r in reqs if r.name == "netaddr"][0].specifier
    assert "1.3.0" in netaddr_min      # the version the tests run with (requirements-dev.txt)
    from bindep.depends import Depends
    with open(os.path.join(TOP, "bindep.txt")) as f:
        deps = Depends(f.read())
    # the ssh client's package name on the base image's (rpm) and on Debian-based images
    assert [rule[0] for rule in deps.active_rules(["platform:rpm"])] == ["openssh-clients"]
    assert [rule[0] for rule in deps.active_rules(["platform:dpkg"])] == ["openssh-client"]
    meta = load("meta/execution-environment.yml")["dependencies"]
    assert meta == {"python": "requirements.txt", "system": "bindep.txt"}


def test_build_context_installs_the_collection_and_its_dependencies(tmp_path):
    env = dict(os.environ, EE_WORKDIR=str(tmp_path), PATH=BIN + os.pathsep + os.environ["PATH"])
    out = subprocess.run(["bash", os.path.join(TOP, "scripts", "build-ee.sh")], env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert re.search(r'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2\.17,<2\.20 ansible-runner"', containerfile)
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect.py introspect" in containerfile
    build = context / "_build"
    assert yaml.safe_load((build / "requirements.yml").read_text()) == load("ee/requirements.yml")
    tarball = build / "collections" / "torexit-hardening.tar.gz"
    with tarfile.open(tarball) as tar:
        members = set(tar.getnames())
    assert {"MANIFEST.json", "requirements.txt", "bindep.txt", "meta/execution-environment.yml",
            "playbooks/harden_exit.yml"} <= members
    # the galaxy stage: the file requirement, resolved from the context's /build
    target = tmp_path / "installed"
    file_req = [c["name"] for c in load("ee/requirements.yml")["collections"] if c.get("type") == "file"]
    assert file_req == ["collections/torexit-hardening.tar.gz"]
    out = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force", "--no-deps",
                          "-p", str(target), file_req[0]], cwd=build, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # the builder stage: ansible-builder's introspection of the installed collections
    out = subprocess.run([os.path.join(BIN, "ansible-builder"), "introspect", "--sanitize", str(target)],
                         env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    found = yaml.safe_load(out.stdout.split("\n", 1)[1])
    assert any(line.startswith("netaddr>=0.10") for line in found["python"])
    assert any(line.startswith("openssh-clients [platform:rpm]") for line in found["system"])
    assert all("torexit.hardening" in line for line in found["python"] + found["system"])
