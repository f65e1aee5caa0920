#!/usr/bin/env bash
# The shipped Prometheus alert rules: syntax (`promtool check rules`) and behaviour
# (`promtool test rules`: every alert fires on the input series meant to fire it and
# on no other). promtool comes with Debian's prometheus package (bootstrap-host.sh).
set -euo pipefail
cd "$(dirname "$0")/../monitoring/prometheus"
promtool check rules torexit-hardening.rules.yml
promtool test rules torexit-hardening.test.yml
