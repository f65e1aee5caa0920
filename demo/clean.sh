#!/usr/bin/env bash
# make demo-clean: remove everything `make demo` created - containers (relays, the
# Tor network's authorities and client, the internet) and the network labelled
# torexit.demo=1 (torexit.demo=NAME with TOREXIT_LAB=NAME: only that lab's), and the
# generated inventory. Leaves the Docker daemon, the base images and everything else alone.
set -uo pipefail
cd "$(dirname "$0")/.."
label=torexit.demo=${TOREXIT_LAB:-1}
containers=$(docker ps -aq --filter "label=$label")
if [ -n "$containers" ]; then
  docker rm -f $containers >/dev/null
fi
networks=$(docker network ls -q --filter "label=$label")
if [ -n "$networks" ]; then
  docker network rm $networks >/dev/null
fi
rm -rf results/demo
echo "demo-clean: removed $(echo $containers | wc -w) container(s), $(echo $networks | wc -w) network(s), results/demo"
