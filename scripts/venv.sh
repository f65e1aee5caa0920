#!/usr/bin/env bash
# Create .venv with the pinned tool chain; skip when requirements-dev.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sha256sum requirements-dev.txt | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.requirements 2>/dev/null)" = "$want" ]; then
  echo "venv: .venv is current"
else
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-dev.txt
  echo "$want" > .venv/.requirements
  echo "venv: installed $(wc -l < requirements-dev.txt) requirement lines"
fi
# Make this checkout importable as the collection torexit.hardening.
mkdir -p .cache/collections/ansible_collections/torexit
ln -sfn ../../../.. .cache/collections/ansible_collections/torexit/hardening
