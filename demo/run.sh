#!/usr/bin/env bash
# make demo: a lab fleet of Tor exit relays in containers, hardened with
# playbooks/harden_exit.yml, joined to a private Tor network, then a short abuse
# drill through Tor against a fake internet.
#
#   relays      torexit-demo-relay1 (Debian 12, nftables, enforce), -relay2 (Debian 13,
#               nftables, monitor, two tor instances), -relay3 (Debian 12, ufw already
#               in use, exitpolicy), -relay4 (Debian 13, iptables, enforce)
#   authorities torexit-demo-authorities: 3 directory authorities of a private Tor
#               network (TestingTorNetwork); the relays are its exits
#   client      torexit-demo-client: tor with a SocksPort, runs demo/tordrill.py
#   internet    torexit-demo-internet: answers for all of 198.19.0.0/16 on every port
#               and tells each connection the address it came from (the exit)
#   network     torexit-demo, 198.18.0.0/24 (reserved for benchmarking, RFC 2544)
#
# TOREXIT_LAB=NAME gives the containers and the network names of their own
# (torexit-demo-NAME-*) and a /24 of their own inside 198.18.0.0/16, so demos of
# several checkouts can run side by side on one machine; demo-clean then removes
# only that lab's.
#
# Phases: containers and the Tor network's authorities and client, lab set-up,
# inventory (with the tor_exit role's test-only tor_exit_test_network_options:
# TestingTorNetwork and the authorities), harden_exit.yml twice (the second run with
# --diff must change nothing, else the demo fails and lists the tasks that changed),
# abuse drill through Tor, screenshot, summary with timings per phase. More with
#   DEMO_EXTRA="fresh-check check undo" bash demo/run.sh
#   fresh-check  harden_exit.yml --check --diff before the first run (must not fail;
#                what a dry run cannot show on a fresh host: playbooks/harden_exit.yml)
#   check        harden_exit.yml --check --diff after the second run (must report nothing)
#   undo         undo_exit_hardening.yml on relay3 (ufw) and relay4 (iptables), twice;
#                the second undo must change nothing
#
# RELAYS=N (make demo RELAYS=10) adds relay5..N (Debian 12/13 in turn, group defaults).
# The summary lists the time per role of both runs (ansible.posix.profile_roles) and
# the relays-vs-seconds table of every demo so far (results/demo-scaling.tsv).
#
# Everything created carries the label torexit.demo=1 (=NAME with TOREXIT_LAB=NAME);
# `make demo-clean` removes it.
# Traffic never leaves the demo network's reserved ranges (the relays reach the
# Debian mirror through Docker's NAT only for packages). Tor runs only between the
# demo's containers: its authorities are the demo's own.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
export PATH="$TOP/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$TOP/.cache/collections"
export ANSIBLE_FORCE_COLOR=false ANSIBLE_NOCOLOR=1 ANSIBLE_STDOUT_CALLBACK=default
export ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 ANSIBLE_HOST_KEY_CHECKING=false
# Speed without changing what runs: one `docker exec` per task (pipelining), all
# relays at once, and the slowest tasks listed at the end of every run.
export ANSIBLE_PIPELINING=true ANSIBLE_FORKS=10
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks,ansible.posix.profile_roles PROFILE_TASKS_TASK_OUTPUT_LIMIT=15

GEN=$TOP/results/demo
LAB=${TOREXIT_LAB:-}
if [ -n "$LAB" ]; then
  [[ $LAB =~ ^[a-z0-9]{1,20}$ ]] || { echo "demo: TOREXIT_LAB=$LAB: use 1-20 lowercase letters or digits" >&2; exit 2; }
  PFX=torexit-demo-$LAB
  OCTET=$(( $(printf '%s' "$LAB" | cksum | cut -d' ' -f1) % 200 + 20 ))
  export DEMO_LABEL=$LAB
else
  PFX=torexit-demo
  OCTET=0
  export DEMO_LABEL=1
fi
NET=$PFX
SUBNET=198.18.$OCTET.0/24
GATEWAY=198.18.$OCTET.1
INTERNET_IP=198.18.$OCTET.2
AUTH_IP=198.18.$OCTET.3
CLIENT_IP=198.18.$OCTET.4
FAKE_INTERNET=198.19.0.0/16
# name:debian release:address. RELAYS=N (4-40, default 4): relay1-4 as described
# above, relay5 and up alternate Debian 12/13 with the group defaults (nftables, enforce).
NRELAYS=${RELAYS_COUNT:-4}
if ! [[ $NRELAYS =~ ^[0-9]+$ ]] || [ "$NRELAYS" -lt 4 ] || [ "$NRELAYS" -gt 40 ]; then
  echo "demo: RELAYS=$NRELAYS: give a number of relays from 4 to 40" >&2
  exit 2
fi
RELAYS=()
for i in $(seq 1 "$NRELAYS"); do
  RELAYS+=("relay$i:$(( i % 2 ? 12 : 13 )):198.18.$OCTET.$((10 + i))")
done
LABEL=(--label "torexit.demo=$DEMO_LABEL")
# The same flags as the platforms in .config/molecule/config.yml.
SYSTEMD_FLAGS=(--cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add NET_RAW
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined
  --tmpfs /run --tmpfs /run/lock --tmpfs /tmp --cgroupns=host
  -v /sys/fs/cgroup:/sys/fs/cgroup:rw)

declare -a TIMINGS=()
T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
PHASE_START=$T0
phase_done() {
  local now; now=$(date +%s)
  TIMINGS+=("$(printf '%-40s %5d s' "$1" $((now - PHASE_START)))")
  PHASE_START=$now
}
say() { printf '\n=== demo: %s\n' "$*"; }
relay_c() { echo "$PFX-$1"; }

say "removing what an earlier demo left"
bash demo/clean.sh
mkdir -p "$GEN/inventory/host_vars" "$GEN/logs"

# Every playbook run of the demo uses one copy of the collection taken now: the
# second run must compare against what the first one installed, even when the
# checkout is edited meanwhile (a changed renderer between the two runs rightly
# rewrites the guard's rules, and the demo would report that as non-idempotence).
SNAP=$GEN/collections/ansible_collections/torexit/hardening
mkdir -p "$SNAP"
cp -a galaxy.yml meta plugins roles playbooks "$SNAP/"
export ANSIBLE_COLLECTIONS_PATH="$GEN/collections"
echo "collection snapshot: $SNAP (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- galaxy.yml meta plugins roles playbooks 2>/dev/null || echo ', with uncommitted changes'))"

say "network $NET ($SUBNET) and containers"
docker network create "${LABEL[@]}" --subnet "$SUBNET" --gateway "$GATEWAY" "$NET" >/dev/null
# The base image enables Debian's tor, which at boot would try the public Tor network
# through Docker's NAT: the relays boot without it; the tor_exit role enables and
# starts it with the demo network's configuration.
for spec in "${RELAYS[@]}"; do
  IFS=: read -r name rel ip <<<"$spec"
  docker run -d --name "$(relay_c "$name")" --hostname "$name" "${LABEL[@]}" \
    --network "$NET" --ip "$ip" "${SYSTEMD_FLAGS[@]}" "torexit/debian:$rel" \
    sh -c 'rm -f /etc/systemd/system/multi-user.target.wants/tor.service; exec /lib/systemd/systemd' >/dev/null
  echo "  $(relay_c "$name")  Debian $rel  $ip"
done
# The internet: the whole fake range is local to it, every TCP port goes to one
# listener that answers with the connection's source address (the exit) and reads;
# it stops by itself after an hour.
docker run -d --name "$PFX-internet" --hostname internet "${LABEL[@]}" \
  --network "$NET" --ip "$INTERNET_IP" --cap-add NET_ADMIN \
  -v "$TOP/demo:/srv/demo:ro" torexit/debian:12 sh -ec "
    ip route add local $FAKE_INTERNET dev lo
    nft add table ip demo
    nft add chain ip demo pre '{ type nat hook prerouting priority dstnat; }'
    nft add rule ip demo pre meta l4proto tcp redirect to :7
    exec python3 /srv/demo/internet.py --port 7 --lifetime 3600" >/dev/null
echo "  $PFX-internet  answers for $FAKE_INTERNET  $INTERNET_IP"
# The private Tor network: authorities in one container, the client in another (tor
# from the base image, no systemd; they stop after two hours at the latest). Their
# work directory is mounted at the same path in both.
TORNET=$GEN/tornet
mkdir -p "$TORNET"
docker run -d --name "$PFX-authorities" --hostname authorities "${LABEL[@]}" \
  --network "$NET" --ip "$AUTH_IP" -v "$TORNET:$TORNET" torexit/debian:12 sleep 7200 >/dev/null
docker run -d --name "$PFX-client" --hostname client "${LABEL[@]}" \
  --network "$NET" --ip "$CLIENT_IP" -v "$TORNET:$TORNET" -v "$TOP/demo:/srv/demo:ro" \
  -v "$TOP/tests/integration/torkit.py:/srv/torkit/torkit.py:ro" -e TORKIT_DIR=/srv/torkit \
  torexit/debian:12 sleep 7200 >/dev/null
mkdir -p "$GEN/inventory/group_vars"
python3 demo/tornet.py --dir "$TORNET" --authorities "$PFX-authorities" --auth-address "$AUTH_IP" \
  --client "$PFX-client" --vars "$GEN/inventory/group_vars/all.yml"
# The relays' inbound DoS limits (torutils': one new connection per source and port,
# then 9 a minute) exempt known relays, read from tor's consensus every 30 minutes. In
# this network the three authorities share one address and each of them tests every
# relay's ORPort (reachability), and no relay is in a consensus yet: two tests within
# 6.7 s blocked that address on every relay, no relay became Running, and the drill
# found no exits. On the real network each authority has an address of its own.
cat >>"$GEN/inventory/group_vars/all.yml" <<EOF
# Written by demo/run.sh: the demo's own network is exempt from the inbound DoS limits.
firewall_inbound_dos_exempt: ["$SUBNET"]
EOF

for spec in "${RELAYS[@]}"; do
  IFS=: read -r name _ _ <<<"$spec"
  for _ in $(seq 1 60); do
    state=$(docker exec "$(relay_c "$name")" systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 1
  done
done
phase_done "containers up, Tor authorities and client started"

say "lab set-up inside the relays (not part of the collection)"
for spec in "${RELAYS[@]}"; do
  IFS=: read -r name _ _ <<<"$spec"
  docker exec -i "$(relay_c "$name")" bash -e <<EOF
ip route replace $FAKE_INTERNET via $INTERNET_IP
# the operator the SSH hardening must never lock out
id ops >/dev/null 2>&1 || useradd -m -s /bin/bash ops
install -d -m 700 -o ops -g ops /home/ops/.ssh
[ -f /home/ops/.ssh/id_ed25519 ] || runuser -u ops -- ssh-keygen -q -t ed25519 -N '' -f /home/ops/.ssh/id_ed25519
install -m 600 -o ops -g ops /home/ops/.ssh/id_ed25519.pub /home/ops/.ssh/authorized_keys
EOF
done
# relay3 already runs ufw for its own services.
docker exec "$(relay_c relay3)" bash -ec 'ufw allow 22/tcp >/dev/null; ufw allow 80/tcp >/dev/null; ufw --force enable >/dev/null 2>&1 || true; ufw status | head -1'
phase_done "lab set-up"

say "inventory $GEN/inventory"
cat >"$GEN/inventory/hosts.yml" <<EOF
---
# Generated by demo/run.sh; removed by make demo-clean.
all:
  vars:
    ansible_connection: community.docker.docker
    ansible_python_interpreter: /usr/bin/python3
  children:
    tor_exits:
      hosts:
EOF
for spec in "${RELAYS[@]}"; do
  IFS=: read -r name _ ip <<<"$spec"
  printf '        %s:\n          ansible_host: %s\n          demo_address: %s\n' "$name" "$(relay_c "$name")" "$ip" >>"$GEN/inventory/hosts.yml"
done
mkdir -p "$GEN/inventory/group_vars"
cp demo/group_vars_tor_exits.yml "$GEN/inventory/group_vars/tor_exits.yml"
for f in demo/host_vars/*.yml; do cp "$f" "$GEN/inventory/host_vars/"; done
cat "$GEN/inventory/hosts.yml"

PLAYBOOK=(ansible-playbook -i "$GEN/inventory" "$SNAP/playbooks/harden_exit.yml" -e torexit_serial=100%)
# Sum of changed= over the PLAY RECAP of a log; the tasks that changed, with host.
recap_changed() {
  awk '/^PLAY RECAP/{r=1} r && /changed=/{sub(/.*changed=/,""); sub(/ .*/,""); s+=$0} END{print s+0}' "$1"
}
changed_tasks() {
  awk '/^TASK \[/{t=$0; sub(/^TASK \[/,"",t); sub(/\] \**$/,"",t)} /^changed: \[/{h=$2; gsub(/[\[\]:]/,"",h); print "  " h ": " t}' "$1" | sort -u
}

if [[ " ${DEMO_EXTRA:-} " == *" fresh-check "* ]]; then
  say "${PLAYBOOK[*]} --check --diff   (dry run on the fresh fleet)"
  "${PLAYBOOK[@]}" --check --diff 2>&1 | tee "$GEN/logs/harden-0-check.log"
  phase_done "harden_exit.yml --check, fresh fleet"
fi

say "${PLAYBOOK[*]}   (first run)"
RUN_START=$(date +%s)
"${PLAYBOOK[@]}" 2>&1 | tee "$GEN/logs/harden-1.log"
FIRST_SECONDS=$(( $(date +%s) - RUN_START ))
phase_done "harden_exit.yml, first run"

# --diff: a task that is not idempotent shows what it changed.
say "${PLAYBOOK[*]} --diff   (second run: must change nothing)"
RUN_START=$(date +%s)
"${PLAYBOOK[@]}" --diff 2>&1 | tee "$GEN/logs/harden-2.log"
SECOND_SECONDS=$(( $(date +%s) - RUN_START ))
phase_done "harden_exit.yml, second run"
# One line per demo in a file that demo-clean keeps: relays vs. seconds.
SCALING=$TOP/results/demo-scaling.tsv
[ -s "$SCALING" ] || printf 'date\tgit\trelays\tfirst_run_s\tno_change_run_s\tload_1min\n' >"$SCALING"
printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$NRELAYS" "$FIRST_SECONDS" "$SECOND_SECONDS" "$(cut -d' ' -f1 /proc/loadavg)" >>"$SCALING"
changed_second=$(recap_changed "$GEN/logs/harden-2.log")
if [ "$changed_second" -ne 0 ]; then
  echo "demo: NOT idempotent, the second run changed (the diffs are above and in $GEN/logs/harden-2.log):"
  changed_tasks "$GEN/logs/harden-2.log"
fi

changed_check=0
if [[ " ${DEMO_EXTRA:-} " == *" check "* ]]; then
  say "${PLAYBOOK[*]} --check --diff   (dry run on the hardened fleet: must report nothing)"
  "${PLAYBOOK[@]}" --check --diff 2>&1 | tee "$GEN/logs/harden-3-check.log"
  phase_done "harden_exit.yml --check, hardened fleet"
  changed_check=$(recap_changed "$GEN/logs/harden-3-check.log")
  [ "$changed_check" -eq 0 ] || { echo "demo: the dry run reported changes:"; changed_tasks "$GEN/logs/harden-3-check.log"; }
fi

# relay1-4: the four set-ups (relays 5 and up repeat relay1's)
DRILL_RELAYS=(relay1 relay2 relay3 relay4)
DRILL_ARGS=() SUMMARY_RELAYS=()
for spec in "${RELAYS[@]}"; do
  IFS=: read -r name _ ip <<<"$spec"
  SUMMARY_RELAYS+=(--relay "$name=$ip")
  [[ " ${DRILL_RELAYS[*]} " == *" $name "* ]] || continue
  mode=$(awk '/^firewall_guard_mode:/{print $2}' "demo/host_vars/$name.yml")
  DRILL_ARGS+=(--relay "$name=$ip=${mode:-enforce}")
done
say "abuse drill through Tor from $PFX-client, pinned to each exit in turn: ${DRILL_ARGS[*]}"
drill_ok=0
docker exec "$PFX-client" python3 /srv/demo/tordrill.py "${DRILL_ARGS[@]}" --users-after relay3 \
  | tee "$GEN/logs/drill.jsonl" || drill_ok=$?
# The metrics exporter reads the guard of every backend.
METRICS_ARGS=()
for name in "${DRILL_RELAYS[@]}"; do
  METRICS_ARGS+=(--metrics "$name=$GEN/logs/metrics-$name.prom")
  docker exec "$(relay_c "$name")" systemctl start torexit-guard-metrics.service
  docker exec "$(relay_c "$name")" cat /var/lib/prometheus/node-exporter/torexit_guard.prom \
    >"$GEN/logs/metrics-$name.prom"
done
phase_done "abuse drill"

say "exit notice screenshot"
URL="http://198.18.$OCTET.11/"
SHOT="$GEN/exit-notice-relay1.png"
profile=$(mktemp -d)
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
  --screenshot="$SHOT" --window-size=1200,1600 "$URL" >/dev/null 2>&1 || true
rm -rf "$profile"
[ -s "$SHOT" ] || SHOT="(no screenshot: chromium failed)"
phase_done "screenshot"

undo_second=0
if [[ " ${DEMO_EXTRA:-} " == *" undo "* ]]; then
  UNDO=(ansible-playbook -i "$GEN/inventory" "$SNAP/playbooks/undo_exit_hardening.yml" -e torexit_serial=100% --limit relay3,relay4)
  say "${UNDO[*]} --diff   (relay3: ufw, relay4: iptables)"
  "${UNDO[@]}" --diff 2>&1 | tee "$GEN/logs/undo-1.log"
  say "${UNDO[*]} --diff   (second undo: must change nothing)"
  "${UNDO[@]}" --diff 2>&1 | tee "$GEN/logs/undo-2.log"
  phase_done "undo_exit_hardening.yml, twice"
  undo_second=$(recap_changed "$GEN/logs/undo-2.log")
  echo "undo: first run changed=$(recap_changed "$GEN/logs/undo-1.log"), second run changed=$undo_second"
  [ "$undo_second" -eq 0 ] || { echo "demo: the second undo changed:"; changed_tasks "$GEN/logs/undo-2.log"; }
  for name in relay3 relay4; do
    echo "  $name after undo: $(docker exec "$(relay_c "$name")" sh -c 'ls /etc/torexit 2>/dev/null | wc -l; iptables -S | grep -c TOREXIT; ipset list -n | grep -c torexit; systemctl list-unit-files "torexit*" --no-legend | wc -l' | tr '\n' ' ')(files in /etc/torexit, TOREXIT iptables rules, torexit ipsets, torexit units)"
  done
fi

say "summary"
python3 demo/summary.py --changed-second "$changed_second" --drill "$GEN/logs/drill.jsonl" "${SUMMARY_RELAYS[@]}" \
  "${METRICS_ARGS[@]}" || drill_ok=1
echo
echo "exit notice:   $URL"
echo "screenshot:    $SHOT"
echo "logs:          $GEN/logs/"
echo
echo "timings ($NRELAYS relays)"
printf '  %s\n' "${TIMINGS[@]}"
printf '  %-40s %5d s\n' "total" $(( $(date +%s) - T0 ))
echo "  load average (1, 5, 15 min): $LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(nproc) cores)"
echo
echo "time per role (ansible.posix.profile_roles), first run / no-change run"
roles_recap() { awk '/^ROLES RECAP/{r=1; next} r && /^[a-z].* -+ +[0-9.]+s$/{n=$1; t=$NF; sub(/s$/,"",t); print n, t}' "$1"; }
join -a1 -a2 -e - -o 0,1.2,2.2 <(roles_recap "$GEN/logs/harden-1.log" | sort) <(roles_recap "$GEN/logs/harden-2.log" | sort) \
  | sort -k3 -rn | awk '{printf "  %-40s %8s s %8s s\n", $1, $2, $3}'
echo
echo "relays vs. seconds, every demo run on this checkout ($SCALING):"
column -t -s $'\t' "$SCALING" | sed 's/^/  /'
echo
echo "Remove the lab with: make demo-clean"
[ "$changed_second" -eq 0 ] && [ "$changed_check" -eq 0 ] && [ "$undo_second" -eq 0 ] && [ "$drill_ok" -eq 0 ]
