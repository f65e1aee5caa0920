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

# Copy what git tracks or would track (not ignored), then commit it in the copy.
cd "$top"
git ls-files -co --exclude-standard -z | rsync -a --delete --from0 --files-from=- ./ "$tree/" \
  --exclude tests/output
cd "$tree"
# rsync --files-from does not delete files that vanished; rebuild the list.
git init -q 2>/dev/null || true
git ls-files -z | while IFS= read -r -d '' f; do [ -e "$top/$f" ] || rm -f "$f"; done
git add -A >/dev/null
git -c user.name=ci -c user.email=ci@localhost commit -q -m sanity --allow-empty >/dev/null
export PATH="$top/.venv/bin:$PATH"
ansible-test sanity --venv --requirements --python 3.11 --color no "$@"
