#!/usr/bin/env bash
# Run `ansible-test sanity` from an ansible_collections/torexit/hardening tree.
# ansible-test wants the collection at that path and inside a git checkout, and
# downloads pip's bootstrap script from a host that is not reachable here, so a
# stand-in that uses ensurepip is put in its cache first (see lab-notes).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tree="$top/.cache/sanity/ansible_collections/torexit/hardening"
mkdir -p "$tree"

cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for v in 24_2 25_0 25_1; do
  cat >"$cache/get_pip_$v.py" <<'PY'
# Stand-in for pip's get-pip.py: no route to its download host from this lab.
import os
import subprocess
import sys
import ensurepip

ensurepip.bootstrap()
for var in ("PIP_CONFIG_FILE", "ENSUREPIP_OPTIONS"):
    os.environ.pop(var, None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PY
done

# Copy exactly what git tracks or would track (not ignored), then commit it in the
# copy. Everything else in the copy goes, except tests/output (ansible-test's cache).
cd "$top"
find "$tree" -mindepth 1 -maxdepth 1 ! -name tests ! -name .git -exec rm -rf {} +
find "$tree/tests" -mindepth 1 -maxdepth 1 ! -name output -exec rm -rf {} + 2>/dev/null || true
git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$tree/"
cd "$tree"
git init -q 2>/dev/null || true
git add -A >/dev/null
git -c user.name=ci -c user.email=ci@localhost commit -q -m sanity --allow-empty >/dev/null
export PATH="$top/.venv/bin:$PATH"
# ansible-test finds the collection by the tree it runs in; a path from outside confuses it.
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS
ansible-test sanity --venv --requirements --python 3.11 --color no "$@"
