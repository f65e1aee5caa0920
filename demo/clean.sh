#!/usr/bin/env bash
# make demo-clean: remove everything `make demo` created - containers and the
# network labelled torexit.demo=1, and the generated inventory. Leaves the Docker
# daemon, the base images and everything else alone.
set -uo pipefail
cd "$(dirname "$0")/.."
containers=$(docker ps -aq --filter label=torexit.demo=1)
if [ -n "$containers" ]; then
  docker rm -f $containers >/dev/null
fi
networks=$(docker network ls -q --filter label=torexit.demo=1)
if [ -n "$networks" ]; then
  docker network rm $networks >/dev/null
fi
rm -rf results/demo
echo "demo-clean: removed $(echo $containers | wc -w) container(s), $(echo $networks | wc -w) network(s), results/demo"
