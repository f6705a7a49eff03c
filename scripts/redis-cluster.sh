#!/usr/bin/env bash
# A Redis Cluster on loopback for the remote tier's tests and benchmarks: 3 masters + 3 replicas,
# `redis-server` processes on ports BASE..BASE+5 (default 7100), in ${TMPDIR:-/tmp}/redknot-redis-cluster-BASE.
#
#   scripts/redis-cluster.sh up     [--base-port 7100]   start (idempotent); waits until cluster_state:ok
#   scripts/redis-cluster.sh down   [--base-port 7100]   kill the servers and remove the directory
#   scripts/redis-cluster.sh status [--base-port 7100]   exit 0 when all 6 answer and the cluster is ok
#   scripts/redis-cluster.sh start-node <i> [--base-port]  restart node i (0..5) from its config (after a kill)
#
# Every node is bound to 127.0.0.1 with protected mode on, no persistence (appendonly no, save ""), a small
# maxmemory (256mb; env REDKNOT_REDIS_MAXMEMORY, e.g. 1gb, when a new cluster directory is made), and
# cluster-node-timeout 2000 ms so that a killed master's replica takes over in a few seconds.
# Each node's pid is in DIR/node-<port>.pid (the fault test kills one with SIGKILL). Every wait is bounded.
set -euo pipefail

usage() { echo "usage: scripts/redis-cluster.sh up|down|status|start-node <i> [--base-port N]" >&2; exit 2; }

cmd="${1:-}"; shift || true
node_arg=""
if [[ "$cmd" == "start-node" ]]; then node_arg="${1:-}"; shift || true; fi
base=7100
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base-port) base="${2:?--base-port needs a value}"; shift 2 ;;
    *) usage ;;
  esac
done
[[ "$base" =~ ^[0-9]+$ ]] && (( base >= 1024 && base + 10005 <= 65535 )) || {
  echo "redis-cluster: --base-port $base must be in [1024, 55530] (cluster bus ports are +10000)" >&2; exit 2; }

dir="${TMPDIR:-/tmp}/redknot-redis-cluster-$base"
ports=()
for i in 0 1 2 3 4 5; do ports+=($((base + i))); done
log() { printf '[redis-cluster] %s\n' "$*"; }

need() {
  command -v "$1" >/dev/null 2>&1 || { log "$1 not found (apt-get install redis-server redis-tools)" >&2; exit 3; }
}

cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }

pid_of() { cat "$dir/node-$1.pid" 2>/dev/null || true; }

alive() {  # the node's pid file names a live redis-server of that port (not a zombie, not a reused pid)
  local pid; pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q "redis-server.*:$1"
}

cluster_ok() {  # every node sees the cluster ok with all slots served, and every replica is in sync
  local p info repl
  for p in "${ports[@]}"; do
    info="$(cli "$p" cluster info | tr -d '\r')" || return 1
    grep -q '^cluster_state:ok$' <<<"$info" && grep -q '^cluster_slots_ok:16384$' <<<"$info" || return 1
    repl="$(cli "$p" info replication | tr -d '\r')" || return 1
    if grep -q '^role:slave$' <<<"$repl"; then
      grep -q '^master_link_status:up$' <<<"$repl" && grep -q '^master_sync_in_progress:0$' <<<"$repl" || return 1
    fi
  done
}

start_node() {
  local p="$1"
  if alive "$p"; then return 0; fi
  mkdir -p "$dir/$p"
  if [[ ! -f "$dir/$p/redis.conf" ]]; then
    cat >"$dir/$p/redis.conf" <<EOF
port $p
bind 127.0.0.1
protected-mode yes
daemonize yes
dir $dir/$p
pidfile $dir/node-$p.pid
logfile $dir/$p/redis.log
cluster-enabled yes
cluster-config-file $dir/$p/nodes.conf
cluster-node-timeout 2000
cluster-replica-validity-factor 0
appendonly no
save ""
maxmemory ${REDKNOT_REDIS_MAXMEMORY:-256mb}
maxmemory-policy allkeys-lru
EOF
  fi
  redis-server "$dir/$p/redis.conf"
}

wait_for() {  # wait_for <seconds> <what> <command...>
  local secs="$1" what="$2"; shift 2
  local i
  for ((i = 0; i < secs * 5; i++)); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  log "timed out after ${secs}s waiting for $what" >&2
  return 1
}

all_ping() {
  local p
  for p in "${ports[@]}"; do [[ "$(cli "$p" ping)" == "PONG" ]] || return 1; done
}

do_down() {
  local p pid i
  for p in "${ports[@]}"; do
    # Only a redis-server of ours: the pid file could be stale and the pid reused.
    if alive "$p"; then kill -9 "$(pid_of "$p")" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 50; i++)); do
    local any=0
    for p in "${ports[@]}"; do alive "$p" && any=1; done
    [[ $any -eq 0 ]] && break
    sleep 0.1
  done
  rm -rf "$dir"
  log "down (ports ${ports[0]}..${ports[5]})"
}

do_up() {
  need redis-server; need redis-cli
  if cluster_ok; then log "already up: 127.0.0.1:${ports[0]}..${ports[5]}"; return 0; fi
  # Nodes that were created before (a restart after a kill) come back from their nodes.conf; a directory
  # without a cluster (an interrupted up) is started from scratch.
  local created=0
  [[ -f "$dir/created" ]] && created=1
  if [[ $created -eq 0 ]]; then do_down >/dev/null; fi
  mkdir -p "$dir"
  local p
  for p in "${ports[@]}"; do start_node "$p"; done
  wait_for 20 "the 6 redis-server processes to answer" all_ping
  if [[ $created -eq 0 ]]; then
    local hosts=()
    for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
    timeout 60 redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
      log "redis-cli --cluster create failed:" >&2; tail -20 "$dir/create.log" >&2; exit 1; }
    touch "$dir/created"
  fi
  if ! wait_for 60 "cluster_state:ok on every node" cluster_ok; then
    # Nodes restarted from an old directory (e.g. after a reboot) that do not make a cluster again: start over,
    # once.
    if [[ $created -eq 1 && "${REDIS_CLUSTER_RETRY:-0}" == "0" ]]; then
      log "the old cluster did not come back: recreating it"
      do_down >/dev/null
      REDIS_CLUSTER_RETRY=1 do_up
      return
    fi
    exit 1
  fi
  log "up: 127.0.0.1:${ports[0]}..${ports[5]} (dir $dir)"
}

do_status() {
  local p role
  for p in "${ports[@]}"; do
    role="$(cli "$p" role | head -1 || true)"
    printf '  127.0.0.1:%s pid=%s %s\n' "$p" "$(pid_of "$p")" "${role:-down}"
  done
  if cluster_ok; then log "ok"; return 0; fi
  log "not ok"; return 1
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  start-node)
    [[ "$node_arg" =~ ^[0-5]$ ]] || usage
    need redis-server
    start_node "${ports[$node_arg]}"
    wait_for 20 "node ${ports[$node_arg]} to answer" bash -c "[[ \"\$(timeout 5 redis-cli -p ${ports[$node_arg]} ping 2>/dev/null)\" == PONG ]]"
    ;;
  *) usage ;;
esac
