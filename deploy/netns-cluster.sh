#!/usr/bin/env bash
# Many hosts on one machine: a pushgate cluster in network namespaces, one "host" each,
# wired to one Linux bridge (in its own namespace, so the machine's own network is not
# touched):
#
#   pg-redis  10.77.0.10:6379       Redis (AOF, fsync on every write)
#   pg-gw1    10.77.0.21:8080       gateway --store redis://10.77.0.10:6379 --redis-durable
#   pg-gw2    10.77.0.22:8080       gateway, the same store
#   pg-w1..3  10.77.0.3N, .4N :9000 worker linked to both gateways, two IPs each
#   pg-lg     10.77.0.100-.103      loadgen
#   pg-net    bridge pg-br0         the "switch": one veth pair per host (pg-<host> here,
#                                   eth0 in the host)
#
#   deploy/netns-cluster.sh up      clean leftovers, build what is missing, start it all
#   deploy/netns-cluster.sh test    up, then loadgen churn from pg-lg (2 gateways, failover,
#                                   retries with idempotency keys) while a worker host and a
#                                   gateway are killed with -9 and brought back and Redis is
#                                   restarted; exits 0 only with zero loss, duplicates and
#                                   reordering of accepted messages, then runs `down`
#   deploy/netns-cluster.sh down    stop every process in the pg-* namespaces, remove them
#   deploy/netns-cluster.sh status  namespaces, processes, what the gateways see
#   deploy/netns-cluster.sh exec HOST CMD...   run CMD inside pg-HOST (e.g. exec lg curl ...)
#
# Needs root (ip netns), redis-server, curl. Environment:
#   BIN          directory of gateway, worker, loadgen (default target/release, or
#                $CARGO_TARGET_DIR/release; built with `cargo build --release -p gateway
#                -p worker -p loadgen` when absent)
#   PG_NETNS_DIR logs, pids, Redis data, loadgen JSON (default /tmp/pushgate-netns)
#   CLIENTS (2000), RATE (250/s), DURATION (60s), TRANSPORT (mixed): the test's load
#   KEEP=1       `test` leaves the cluster up afterwards (default: it runs `down`)
#   REDIS_RESTART  graceful (default: writes paused, SHUTDOWN, start) or kill (kill -9, start)
#   STRICT=1     `test` also fails when a live connection was told it had been replaced
#   RUST_LOG / LOADGEN_LOG  log filters of the servers / of loadgen (loadgen=info)
#
# Logs: $PG_NETNS_DIR/logs/<host>.log; the test's loadgen output: loadgen.{log,json}, its
# timeline of injected faults: faults.log. `down` keeps the logs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_SET_BY_USER=${BIN:+1}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
DIR=${PG_NETNS_DIR:-/tmp/pushgate-netns}
NET=10.77.0
PREFIX=24
BRIDGE_NS=pg-net
BRIDGE=pg-br0
REDIS_IP=$NET.10
GW_IPS=("$NET.21" "$NET.22")
LG_IPS=("$NET.100" "$NET.101" "$NET.102" "$NET.103")
GW_PORT=8080
WORKER_PORT=9000
WORKERS=3
LINK_KEY_FILE=$DIR/link-key
# The gateways' admin key: the loadgen host is not loopback to them, and /metrics and
# /v1/workers answer others only with it.
ADMIN_KEY_FILE=$DIR/admin-key

CLIENTS=${CLIENTS:-2000}
RATE=${RATE:-250/s}
DURATION=${DURATION:-60s}
TRANSPORT=${TRANSPORT:-mixed}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
now_ms() { date +%s%3N; }

# The IPs of worker $1 (1-based): 10.77.0.3N and 10.77.0.4N.
worker_ips() { echo "$NET.$((30 + $1)) $NET.$((40 + $1))"; }
gateway_urls() {
  local ip out=()
  for ip in "${GW_IPS[@]}"; do out+=("http://$ip:$GW_PORT"); done
  (
    IFS=,
    echo "${out[*]}"
  )
}
# Host names (namespace pg-<name>) in start order.
hosts() {
  local w
  echo redis gw1 gw2
  for w in $(seq 1 "$WORKERS"); do echo "w$w"; done
  echo lg
}
host_ips() {
  case $1 in
    redis) echo "$REDIS_IP" ;;
    gw1) echo "${GW_IPS[0]}" ;;
    gw2) echo "${GW_IPS[1]}" ;;
    w*) worker_ips "${1#w}" ;;
    lg) echo "${LG_IPS[*]}" ;;
    *) die "unknown host $1" ;;
  esac
}

in_ns() {
  local host=$1
  shift
  ip netns exec "pg-$host" "$@"
}

# ---------------------------------------------------------------------------------------
# Network

net_up() {
  ip netns add "$BRIDGE_NS"
  ip -n "$BRIDGE_NS" link set lo up
  ip -n "$BRIDGE_NS" link add "$BRIDGE" type bridge
  ip -n "$BRIDGE_NS" link set "$BRIDGE" up
  local host ip
  for host in $(hosts); do
    ip netns add "pg-$host"
    ip -n "pg-$host" link set lo up
    # Both ends are made inside their namespaces: nothing appears in the root namespace.
    ip link add eth0 netns "pg-$host" type veth peer name "pg-$host" netns "$BRIDGE_NS"
    ip -n "$BRIDGE_NS" link set "pg-$host" master "$BRIDGE"
    ip -n "$BRIDGE_NS" link set "pg-$host" up
    for ip in $(host_ips "$host"); do
      ip -n "pg-$host" addr add "$ip/$PREFIX" dev eth0
    done
    ip -n "pg-$host" link set eth0 up
  done
}

# Every process in a pg-* namespace is one this script started: stop them (TERM, then
# KILL what is left after a grace time), then remove the namespaces.
net_down() {
  local ns pids
  local all=()
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^pg-/ {print $1}'); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2206
    [ -n "$pids" ] && all+=($pids)
  done
  if [ ${#all[@]} -gt 0 ]; then
    kill -TERM "${all[@]}" 2>/dev/null || true
    local t
    for t in $(seq 1 50); do
      local alive=()
      local p
      for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
      [ ${#alive[@]} -eq 0 ] && break
      if [ "$t" -eq 50 ]; then kill -KILL "${alive[@]}" 2>/dev/null || true; fi
      sleep 0.1
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^pg-/ {print $1}'); do
    ip netns del "$ns" 2>/dev/null || true
  done
  # Links left in the root namespace by an interrupted run of an older layout.
  local l
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^pg-' || true); do
    ip link del "$l" 2>/dev/null || true
  done
}

# ---------------------------------------------------------------------------------------
# Processes

# Starts "$@" in pg-$1 in the background, in a session of its own (nothing that signals
# the caller's process group reaches it), logging to logs/$1.log; the pid goes to pids/$1.
start_in() {
  local host=$1
  shift
  setsid ip netns exec "pg-$host" "$@" </dev/null >>"$DIR/logs/$host.log" 2>&1 &
  echo $! >"$DIR/pids/$host"
  # Not this shell's job: its death (kill -9 on purpose) is not reported here.
  disown $!
  echo "--- $(date '+%F %T') started pid $!: $*" >>"$DIR/logs/$host.events"
}

# kill -9 of everything running in host $1's namespace (what a host crash does).
crash() {
  local host=$1 pids
  pids=$(ip netns pids "pg-$host" 2>/dev/null || true)
  # shellcheck disable=SC2086
  if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
  local t
  for t in $(seq 1 50); do
    [ -z "$(ip netns pids "pg-$host" 2>/dev/null)" ] && break
    sleep 0.1
  done
  echo "--- $(date '+%F %T') killed -9: $pids" >>"$DIR/logs/$host.events"
}

# Redis runs as a copy of redis-server named pg-kvstore: whatever stops redis-server
# processes machine-wide (the package's service script, a `pkill redis-server`, another
# test's cleanup) leaves this host's Redis alone.
start_redis() {
  mkdir -p "$DIR/redis" "$DIR/bin"
  if [ ! -x "$DIR/bin/pg-kvstore" ]; then
    cp "$(command -v redis-server)" "$DIR/bin/pg-kvstore"
  fi
  start_in redis "$DIR/bin/pg-kvstore" --bind "$REDIS_IP" 127.0.0.1 --port 6379 --protected-mode no \
    --dir "$DIR/redis" --appendonly yes --appendfsync always --save '' \
    --daemonize no --loglevel notice
}

# Whether the gateway has --redis-durable (this Redis keeps every acknowledged write
# across a restart, so a restart is the same history: no new epochs, no gaps).
gateway_durable() { "$BIN/gateway" --help 2>/dev/null | grep -q -- '--redis-durable'; }
gateway_admin() { "$BIN/gateway" --help 2>/dev/null | grep -q -- '--admin-key-file'; }

start_gateway() {
  local n=$1 ip=${GW_IPS[$(($1 - 1))]} durable=()
  if gateway_durable; then durable=(--redis-durable); fi
  if gateway_admin; then durable+=(--admin-key-file "$ADMIN_KEY_FILE"); fi
  start_in "gw$n" env RUST_LOG="${RUST_LOG:-gateway=info}" "$BIN/gateway" \
    --listen "$ip:$GW_PORT" --store "redis://$REDIS_IP:6379" "${durable[@]}" \
    --link-key "$(cat "$LINK_KEY_FILE")" --redis-timeout-ms 1000
}

start_worker() {
  local n=$1 ip args=() g
  for g in "${GW_IPS[@]}"; do args+=(--gateway "http://$g:$GW_PORT"); done
  for ip in $(worker_ips "$n"); do args+=(--listen "$ip:$WORKER_PORT"); done
  start_in "w$n" env RUST_LOG="${RUST_LOG:-worker=info}" "$BIN/worker" "${args[@]}" \
    --id "w$n" --link-key "$(cat "$LINK_KEY_FILE")"
}

# curl from the loadgen host (what clients reach is what counts).
lg_curl() { in_ns lg curl -s --max-time 2 -H "Authorization: Bearer $(cat "$ADMIN_KEY_FILE")" "$@"; }

wait_for() {
  local what=$1 secs=$2
  shift 2
  local t
  for t in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${secs}s (logs in $DIR/logs)"
}

redis_ready() { in_ns redis redis-cli -h "$REDIS_IP" ping | grep -q PONG; }
gateway_ready() { lg_curl "http://$1:$GW_PORT/healthz"; }
# Every gateway sees all workers healthy.
workers_healthy() {
  local ip n
  for ip in "${GW_IPS[@]}"; do
    n=$(lg_curl "http://$ip:$GW_PORT/v1/workers" | grep -o '"state":"healthy"' | wc -l)
    [ "$n" -ge "$WORKERS" ] || return 1
  done
}
worker_healthy_on_all() {
  local id=$1 ip
  for ip in "${GW_IPS[@]}"; do
    lg_curl "http://$ip:$GW_PORT/v1/workers" | grep -q "\"id\":\"$id\",[^}]*\"state\":\"healthy\"" || return 1
  done
}

need_binaries() {
  local b missing=0
  for b in gateway worker loadgen; do [ -x "$BIN/$b" ] || missing=1; done
  if [ $missing -eq 1 ]; then
    [ -z "${BIN_SET_BY_USER:-}" ] || die "BIN=$BIN lacks gateway, worker or loadgen"
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p gateway -p worker -p loadgen)
  fi
}

cmd_up() {
  [ "$(id -u)" -eq 0 ] || die "needs root (ip netns)"
  command -v redis-server >/dev/null || die "needs redis-server"
  command -v curl >/dev/null || die "needs curl"
  need_binaries
  net_down
  rm -rf "$DIR/pids" "$DIR/redis"
  mkdir -p "$DIR/logs" "$DIR/pids"
  rm -f "$DIR"/logs/*.log "$DIR"/logs/*.events
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LINK_KEY_FILE"
  chmod 600 "$LINK_KEY_FILE"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ADMIN_KEY_FILE"
  chmod 600 "$ADMIN_KEY_FILE"
  net_up
  log "network: bridge $BRIDGE in $BRIDGE_NS, $NET.0/$PREFIX; hosts $(hosts | tr '\n' ' ')"
  start_redis
  wait_for redis 10 redis_ready
  local n
  for n in 1 2; do start_gateway "$n"; done
  for n in 1 2; do wait_for "gateway gw$n" 20 gateway_ready "${GW_IPS[$((n - 1))]}"; done
  for n in $(seq 1 "$WORKERS"); do start_worker "$n"; done
  wait_for "workers" 20 workers_healthy
  log "up: gateways $(gateway_urls), $WORKERS workers x 2 IPs on :$WORKER_PORT, redis $REDIS_IP:6379; logs in $DIR/logs"
}

# ---------------------------------------------------------------------------------------
# The test

# The first number after "KEY": in loadgen's pretty JSON (every key read here is unique
# enough: the first occurrence is the one meant).
json_num() { { grep -o "\"$2\": *-\?[0-9][0-9.]*" "$1" || true; } | head -1 | sed 's/.*: *//'; }

# Sum of a metric (first sample line matching $2) over both gateways.
gateways_metric() {
  local ip sum=0 v
  for ip in "${GW_IPS[@]}"; do
    v=$(lg_curl "http://$ip:$GW_PORT/metrics" | grep -E "^$1( |\{)" | grep -F -- "${2:-}" | awk '{s+=$2} END {print s+0}')
    sum=$((sum + ${v%.*}))
  done
  echo "$sum"
}

# Milliseconds as seconds with three decimals.
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# Every host still runs its process (called where none is down on purpose); a host that
# stopped without the test stopping it ends the test with its log's last lines.
hosts_alive() {
  local h
  for h in $(hosts); do
    [ "$h" = lg ] && continue
    if [ -z "$(ip netns pids "pg-$h" 2>/dev/null)" ]; then
      tail -5 "$DIR/logs/$h.log" >&2
      die "host $h stopped though the test did not stop it (logs/$h.log above)"
    fi
  done
}

fault() {
  local d=$(($(now_ms) - T0))
  printf '[%s] +%ss %s\n' "$(date +%T.%3N)" "$(secs "$d")" "$*" | tee -a "$DIR/faults.log" >&2
}

# Sleeps until $1 seconds after T0 (the start of publishing).
at() {
  local due=$((T0 + $1 * 1000)) now
  now=$(now_ms)
  [ "$now" -lt "$due" ] || return 0
  sleep "$(secs $((due - now)))"
}

# Restarts Redis: graceful (default) = writes paused, SHUTDOWN (the AOF is fsynced), start
# again; REDIS_RESTART=kill = kill -9 and start again.
restart_redis() {
  local cli=(redis-cli -h "$REDIS_IP")
  if [ "${REDIS_RESTART:-graceful}" = kill ]; then
    REDIS_DOWN_MS=$(now_ms)
    crash redis
    fault "redis killed -9"
  else
    # Paused writes are not executed, so no call is committed without its answer; the
    # gateways' calls time out (503) and their publishers retry after the restart.
    in_ns redis "${cli[@]}" CLIENT PAUSE 10000 WRITE >/dev/null
    REDIS_DOWN_MS=$(now_ms)
    in_ns redis "${cli[@]}" SHUTDOWN >/dev/null 2>&1 || true
    local t
    for t in $(seq 1 50); do
      [ -z "$(ip netns pids pg-redis)" ] && break
      sleep 0.1
    done
    [ -z "$(ip netns pids pg-redis)" ] || crash redis
    fault "redis: writes paused, SHUTDOWN (AOF fsynced)"
  fi
  sleep "${REDIS_DOWN_SECS:-2}"
  start_redis
  wait_for redis 15 redis_ready
  fault "redis started again (AOF loaded)"
}

cmd_test() {
  cmd_up
  if [ "${KEEP:-0}" != 1 ]; then trap cmd_down EXIT; fi
  trap 'exit 130' INT TERM
  rm -f "$DIR/faults.log" "$DIR/loadgen.json" "$DIR/loadgen.log"
  local dur_s=${DURATION%s}
  [ "$dur_s" -ge 40 ] 2>/dev/null || die "DURATION must be whole seconds, at least 40s (got $DURATION)"
  local started
  started=$(now_ms)
  log "test: loadgen churn, $CLIENTS $TRANSPORT clients, $RATE for $DURATION, via both gateways"
  # loadgen is bounded three ways: the publish duration, the drain, --max-duration.
  ip netns exec pg-lg env RUST_LOG="${LOADGEN_LOG:-loadgen=info}" "$BIN/loadgen" churn \
    --gateway "$(gateway_urls)" \
    --clients "$CLIENTS" --transport "$TRANSPORT" --ramp 2000/s --settle 0s \
    --rate "$RATE" --duration "$DURATION" --drain 20s --poll-timeout 10 \
    --fraction 0.1 --backoff 200ms \
    --source-ips "${LG_IPS[0]}-${LG_IPS[${#LG_IPS[@]} - 1]}" \
    --retry-for 15s --allow-drops --allow-gaps --check-ids \
    --max-duration "$((dur_s + 90))s" --json "$DIR/loadgen.json" \
    </dev/null >"$DIR/loadgen.log" 2>&1 &
  local lg=$!
  # The fault schedule counts from the first accepted publish.
  local t
  for t in $(seq 1 300); do
    [ "$(gateways_metric pushgate_publish_total)" -gt 0 ] && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  T0=$(now_ms)
  fault "publishing started ($(((T0 - started) / 1000)) s after loadgen)"
  local w=2 g=1
  at $((dur_s * 13 / 100))
  hosts_alive
  crash "w$w"
  fault "worker host w$w: every process killed -9"
  at $((dur_s * 27 / 100))
  start_worker "$w"
  wait_for "worker w$w" 20 worker_healthy_on_all "w$w"
  fault "worker host w$w back, healthy on both gateways"
  at $((dur_s * 37 / 100))
  hosts_alive
  crash "gw$g"
  fault "gateway host gw$g: killed -9"
  at $((dur_s * 50 / 100))
  start_gateway "$g"
  wait_for "gateway gw$g" 20 gateway_ready "${GW_IPS[$((g - 1))]}"
  wait_for "workers on gw$g" 20 workers_healthy
  fault "gateway host gw$g back, every worker linked"
  at $((dur_s * 60 / 100))
  hosts_alive
  restart_redis
  local rc=0
  wait "$lg" || rc=$?
  hosts_alive
  fault "loadgen exited with status $rc"
  report "$rc" "$started"
}

# The figures of the run, and the verdict: loadgen's (loss, duplicates, reordering,
# invented messages, errors) plus the rule for gaps: none with --redis-durable (a restart
# from the AOF is the same history); without it (an older gateway) only after Redis went
# down, none saying a message was gone.
report() {
  local rc=$1 started=$2 j=$DIR/loadgen.json
  [ -s "$j" ] || {
    tail -20 "$DIR/loadgen.log" >&2
    die "loadgen wrote no JSON (status $rc)"
  }
  local k
  declare -A R
  for k in expected unique lost duplicated out_of_order unexpected gaps replayed \
    gaps_with_missing channels_with_gaps max_gaps_per_channel gap_first_unix_ms \
    gap_last_unix_ms id_duplicated messages_attempted messages_accepted retries \
    accepted_after_retry drops reconnects dropped_on_purpose total elapsed_secs \
    connected_at_end; do
    R[$k]=$(json_num "$j" "$k")
    : "${R[$k]:=?}"
  done
  # A live connection told it was replaced by a newer one: loadgen has one per channel,
  # so only the servers reordering subscriptions does that (counted as drops, by kind).
  local replaced=0 n
  for k in ws_close_4001 poll_http_409 sse_closed_replaced; do
    n=$(json_num "$j" "$k")
    replaced=$((replaced + ${n:-0}))
  done
  local drop_kinds
  drop_kinds=$(tr -d '\n ' <"$j" | { grep -o '"drops_by_kind":{[^}]*}' || true; } | sed 's/"drops_by_kind"://; s/[{}"]//g; s/:/=/g; s/,/ /g')
  local replid
  replid=$(gateways_metric pushgate_epoch_changes_total 'cause="replid"')
  local fails=()
  [ "${R[lost]}" = 0 ] || fails+=("${R[lost]} accepted messages never arrived")
  [ "${R[duplicated]}" = 0 ] || fails+=("${R[duplicated]} messages arrived twice under one seq")
  [ "${R[id_duplicated]}" = 0 ] || fails+=("${R[id_duplicated]} messages arrived under a second seq (appended twice; 'second seq' in loadgen.log names them)")
  [ "${R[out_of_order]}" = 0 ] || fails+=("${R[out_of_order]} messages arrived out of order")
  [ "${R[unexpected]}" = 0 ] || fails+=("${R[unexpected]} messages arrived that were never accepted")
  [ "${R[total]}" = 0 ] || fails+=("${R[total]} errors (loadgen.log)")
  if [ "$rc" -ne 0 ] && [ ${#fails[@]} -eq 0 ]; then
    fails+=("loadgen exited with status $rc (loadgen.log)")
  fi
  if [ "${R[gaps]}" != 0 ] && gateway_durable; then
    fails+=("${R[gaps]} gap frames though the gateways trust Redis restarts (--redis-durable)")
  elif [ "${R[gaps]}" != 0 ]; then
    [ "${R[gap_first_unix_ms]}" -ge "$REDIS_DOWN_MS" ] ||
      fails+=("a gap came $((REDIS_DOWN_MS - R[gap_first_unix_ms])) ms before Redis went down")
    [ "${R[gaps_with_missing]}" = 0 ] || fails+=("${R[gaps_with_missing]} gaps said messages were gone")
  fi
  if [ "$replaced" -gt 0 ] && [ "${STRICT:-0}" = 1 ]; then
    fails+=("$replaced live connections were told they had been replaced (STRICT=1)")
  fi
  local whole=$((($(now_ms) - started) / 1000))
  {
    echo
    echo "== netns cluster test: $CLIENTS $TRANSPORT clients, $RATE for $DURATION (churn 10 %), 2 gateways, $WORKERS workers x 2 IPs, Redis AOF appendfsync always$(gateway_durable && echo ', gateways --redis-durable')"
    sed 's/^\[[^]]*\] //' "$DIR/faults.log" | sed 's/^/   fault  /'
    echo "   publish   ${R[messages_accepted]} accepted of ${R[messages_attempted]}; ${R[retries]} retried requests, ${R[accepted_after_retry]} messages accepted on a retry (same idempotency key)"
    echo "   clients   ${R[reconnects]} reconnects (${R[dropped_on_purpose]} churned on purpose, ${R[drops]} unexpected drops or failed attempts, resumed with since); connected at the end ${R[connected_at_end]}"
    echo "   drops     ${drop_kinds:-none}"
    echo "   check     expected ${R[expected]} unique ${R[unique]} | lost ${R[lost]} duplicated ${R[duplicated]} id-duplicated ${R[id_duplicated]} out-of-order ${R[out_of_order]} unexpected ${R[unexpected]}"
    if [ "${R[gaps]}" != 0 ]; then
      echo "   gaps      ${R[gaps]} gap frames on ${R[channels_with_gaps]} channels (max ${R[max_gaps_per_channel]} per channel), $((R[gap_first_unix_ms] - REDIS_DOWN_MS)) to $((R[gap_last_unix_ms] - REDIS_DOWN_MS)) ms after Redis went down; ${R[gaps_with_missing]} said a message was gone; ${R[replayed]} retained messages sent again after them (not duplicates)"
      echo "             epochs: the gateways gave $replid channel logs a new epoch for a new Redis replication id (pushgate_epoch_changes_total{cause=\"replid\"}), so connected clients were told of a gap and got what is retained again"
    else
      echo "   gaps      none (new epochs for a new Redis replication id: $replid)"
    fi
    echo "   errors    ${R[total]} (drops are not errors)"
    if [ "$replaced" -gt 0 ]; then
      echo "   warning   $replaced live connections were closed as replaced by a newer connection (4001 / poll 409 / SSE replaced) while the client had no other open: the servers let an older subscription win; the clients resumed with since (channels and times: 'live connection replaced' in loadgen.log; STRICT=1 fails on this)"
    fi
    echo "   time      loadgen ${R[elapsed_secs]} s, whole test ${whole} s; logs in $DIR/logs, loadgen output $DIR/loadgen.{log,json}"
    if [ ${#fails[@]} -eq 0 ]; then
      echo "   result    PASS: zero loss, zero duplicates, zero reordering"
    else
      local f
      for f in "${fails[@]}"; do echo "   result    FAIL: $f"; done
    fi
  } | tee "$DIR/report.txt"
  [ ${#fails[@]} -eq 0 ]
}

cmd_down() {
  net_down
  rm -rf "$DIR/pids"
  log "down: pg-* namespaces and their processes are gone (logs kept in $DIR/logs)"
}

cmd_status() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^pg-/ {print $1}'); do
    printf '%-9s %s\n' "$ns" "$(ip netns pids "$ns" | tr '\n' ' ')"
  done
  local ip
  for ip in "${GW_IPS[@]}"; do
    echo "gateway $ip: $(lg_curl "http://$ip:$GW_PORT/v1/workers" || echo unreachable)"
  done
}

case ${1:-} in
  up) cmd_up ;;
  test) cmd_test ;;
  down) cmd_down ;;
  status) cmd_status ;;
  exec)
    shift
    h=${1:?host}
    shift
    in_ns "$h" "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
