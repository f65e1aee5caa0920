#!/usr/bin/env bash
# Abuse bench entry point (`make bench`; `bash tests/bench/run.sh --quick` for the slice).
# Everything runs in namespaces it creates (tx-bench-*); the trap removes them, the
# lab copies of ufw's files, and stops the bench process even on failure or Ctrl-C.
set -uo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
prefix=tx-bench-
for a in "$@"; do [ "$a" = "--quick" ] && prefix=tx-bench-q-; done
prev=
for a in "$@"; do
  [ "$prev" = "--prefix" ] && prefix=$a
  case "$a" in --prefix=*) prefix=${a#--prefix=} ;; esac
  prev=$a
done
case "$prefix" in tx-bench-*) ;; *) echo "run.sh: --prefix must start with tx-bench-" >&2; exit 2 ;; esac

pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null; sleep 2; kill -KILL "$pid" 2>/dev/null
  fi
  for ns in "${prefix}relay" "${prefix}net" "${prefix}in-r" "${prefix}in-n"; do
    if ip netns list | grep -qw -- "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null
    fi
  done
  # lab copies of ufw's files (variant guard-ufw, tests/bench/ufwlab.py)
  rm -rf -- "${TMPDIR:-/tmp}/${prefix}ufw-"*
  # the rendered inbound tables of the inbound rows (tests/bench/inbound.py)
  rm -rf -- "${TMPDIR:-/tmp}/${prefix}in-"*
  # the private Tor network of the tor rows (tornet-* of runs whose owner is gone)
  "$py" tests/integration/tornet.py --cleanup-stale >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$py" tests/bench/bench.py "$@" &
pid=$!
wait "$pid"
rc=$?
pid=
exit "$rc"
