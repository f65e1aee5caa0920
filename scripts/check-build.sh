#!/usr/bin/env bash
# Build the collection tarball, install it into an empty collections path and ask
# ansible-doc for every module, as a user installing from Galaxy would.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$top"
ansible-galaxy collection build --force --output-path "$work" . >/dev/null
tarball=$(ls "$work"/torexit-hardening-*.tar.gz)
echo "check-build: built $(basename "$tarball")"
ansible-galaxy collection install --no-deps -p "$work/collections" "$tarball" >/dev/null
n=0
for m in plugins/modules/*.py; do
  [ -e "$m" ] || continue
  name=$(basename "$m" .py)
  ANSIBLE_COLLECTIONS_PATH="$work/collections" ansible-doc "torexit.hardening.$name" >/dev/null
  n=$((n + 1))
done
echo "check-build: ansible-doc works for $n module(s) from the installed tarball"
