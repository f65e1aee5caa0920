#!/usr/bin/env bash
# Build the execution environment of execution-environment.yml from this checkout.
#   scripts/build-ee.sh              the build context only, in $EE_WORKDIR/context (default
#                                    .cache/ee/context); needs no container runtime
#   scripts/build-ee.sh build ARGS   also the image: ansible-builder build ARGS (needs podman or
#                                    docker, and access to the base image's registry and Galaxy)
# The collection is built from the checkout (ansible-galaxy collection build) and put
# next to a copy of execution-environment.yml and ee/requirements.yml in $EE_WORKDIR.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=${EE_WORKDIR:-$top/.cache/ee}
mkdir -p "$work/ee"
cp "$top/execution-environment.yml" "$work/"
cp "$top/ee/requirements.yml" "$work/ee/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ansible-galaxy collection build --force --output-path "$tmp" "$top" >/dev/null
mv "$tmp"/torexit-hardening-*.tar.gz "$work/ee/torexit-hardening.tar.gz"
echo "build-ee: collection tarball $work/ee/torexit-hardening.tar.gz"
cd "$work"
if [ "${1:-create}" = build ]; then
  shift
  ansible-builder build -f execution-environment.yml -c context "$@"
else
  ansible-builder create -f execution-environment.yml -c context --output-filename Containerfile
  echo "build-ee: build context in $work/context (podman build -t torexit-hardening-ee:latest $work/context)"
fi
