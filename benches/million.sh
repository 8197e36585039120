#!/usr/bin/env bash
# One million concurrent clients on one machine, clients and servers on the same host:
# one gateway with as many local workers as the per-process open-file limit requires
# (PER_WORKER connections each, each worker on IPS_PER_WORKER loopback IPs), and one
# `loadgen run` (which splits itself into as many processes as the same limit requires)
# holding N clients, one channel each, 80 % WebSocket, 10 % SSE, 10 % long-poll, while
# RATE single publishes go to their channels for DURATION; every message is checked for
# loss, duplicates and order.
#
#   benches/million.sh [N=1000000] [DURATION=10m]
#
# What it does, in order:
#   1. checks what the run needs and says plainly what is missing (exit 3): curl, python3,
#      setsid, ps; the release binaries (built when absent; BIN or CARGO_TARGET_DIR as in the
#      other scripts); the open-file hard limit (`ulimit -Hn`, which sets how many workers
#      and loadgen processes there are), fs.file-max and fs.nr_open, nf_conntrack and its
#      table size, the local port range, somaxconn / tcp_max_syn_backlog; and memory: an
#      estimate for N (below) against MemAvailable, refused with the estimate (and the N
#      that would fit) when short;
#   2. raises the kernel settings the run needs (never lowers one) for its duration only,
#      and writes the host's previous values back at exit; they are listed, with why, in
#      deploy/sysctl-pushgate.conf. Writing them needs root. Without root the run goes on
#      with the host's values where only recommended ones are missing (somaxconn and the
#      like) and stops where a required one is (fs.file-max below two files per client,
#      nf_conntrack_max below N while connections are tracked). $OUT/sysctl-restore.conf
#      holds the previous values meanwhile (`sysctl -p $OUT/sysctl-restore.conf` restores
#      them if this script was killed -9);
#   3. starts the gateway, waits until every worker has linked and reports load, and runs
#      loadgen: a ramp at RAMP, then publishing for DURATION (the steady phase);
#   4. records, while it runs: the time to connect all N; memory of the whole machine
#      (MemTotal - MemAvailable, Slab, /proc/net/sockstat) before the gateway starts, with
#      the workers idle, and in the steady phase; the RSS of each role (gateway, workers
#      summed, loadgen processes summed) and per connection; the CPU (utime + stime) of each
#      role over the steady window (from 3 s after the gateway counts the first publish to
#      3 s before DURATION ends); the time /v1/workers and /v1/stats take to answer; a
#      sample every 5 s in $OUT/samples.csv. Prints a summary and writes
#      $OUT/summary.json with loadgen's check, latency percentiles and errors;
#   5. is bounded: past ramp + DURATION + margins (the deadline it prints) it kills
#      everything and exits 124; on Ctrl-C, an error or the end of the run it stops every
#      process it started (each role runs in its own process group) and restores sysctls.
# Exit status: loadgen's verdict (0 passed: no loss, duplicate, reordering, gap or error;
# 1 failed; 2 loadgen could not run), 3 a prerequisite is missing, 124 the deadline passed,
# 130 interrupted.
#
# The traffic, in one `loadgen churn` over the same clients: a steady phase (the first
# STEADY_SHARE of DURATION: RATE single publishes plus a broadcast to BROADCAST_CHANNELS
# channels every BROADCAST_EVERY), then a churn phase (the rest of DURATION: publishing goes
# on while CHURN_FRACTION of the clients drop and resume with `since`, spread over the
# phase). The CPU and memory readings are the steady phase's.
#
# CI size: `benches/million.sh 40000 30s` (three workers and three loadgen processes at a
# 20,000 open-file limit: 40,000 is just over two of each; about 45 s).
#
# Environment (defaults):
#   N, DURATION       as the arguments (the arguments win)
#   RAMP=4000/s       connect rate: the highest that 200,000 clients kept on 2 cores shared
#                     with other work, every client connected on the first attempt
#                     (benches/RESULTS.md, "One million clients on one machine"); past what
#                     the machine sustains, connects queue in loadgen, time out and retry,
#                     and the achieved rate falls below the sustainable one
#   RATE=1000/s       single publishes, each to a channel picked at random
#   MIX=ws=80,sse=10,poll=10   loadgen --transport-mix
#   PER_WORKER        connections per worker (open-file hard limit - 500: the worker's
#                     capacity is the limit - 64, and assignments can run past the last
#                     load report by a second's worth of the ramp)
#   PER_SHARD         clients per loadgen process (--max-per-process; default: the
#                     open-file hard limit - 224, what loadgen itself allows). PER_WORKER
#                     and PER_SHARD pin the split whatever the limit: CI uses
#                     PER_WORKER=19500 PER_SHARD=19776 (three of each at 40,000)
#   IPS_PER_WORKER=2  loopback IPs per worker (gateway --local-worker-ips)
#   SOURCE_IPS        loadgen source addresses, from 127.1.0.1 on (default: the most of
#                     40, two per loadgen process, and what keeps every source IP within
#                     half the local port range over all its connections)
#   OUT=benches/out/million-N-DATE   results: summary.json, loadgen.json, report.html,
#                     samples.csv, the logs
#   BROADCAST_EVERY=60s, BROADCAST_CHANNELS=N/10 (100,000 at a million): one broadcast
#                     that often naming that many random channels (BROADCAST_EVERY=0: none)
#   STEADY_SHARE=80   percent of DURATION before the churn phase
#   CHURN_FRACTION=0.05  clients that drop and resume in the churn phase
#   LOADGEN_ARGS      extra loadgen arguments, appended last (split on whitespace)
#   PING_SECS=300     the workers' --ping-interval-secs (WebSocket pings, SSE heartbeats)
#   POLL_TIMEOUT=120  loadgen's --poll-timeout (a long-poll held that long when idle)
#   CONNECT_TIMEOUT=30s  loadgen's --connect-timeout (assign + connect + handshake)
#                     The keep-alive defaults are what a million idle clients leave room
#                     for on 2 cores: at 60 s pings and 60 s polls the upkeep of 800,000
#                     idle clients took the whole machine, connects queued past a 10 s
#                     timeout and retried, and the ramp stalled at 804,351
#                     (benches/RESULTS.md); at these, the million connected.
#   WORKER_ARGS       extra worker arguments (split on whitespace; each becomes a
#                     --local-worker-arg), e.g. WORKER_ARGS="--max-poll-timeout-secs 300"
#   LOADGEN_WS_BYTES=1000, LOADGEN_SSE_BYTES=1000, LOADGEN_POLL_BYTES=1000: loadgen's
#                     memory per client of each transport, for the estimate (its lean
#                     client plane: 0.5-0.85 KB measured, benches/RESULTS.md; the task plane,
#                     --client-plane tasks in LOADGEN_ARGS, needs 14,000 / 41,000 / 42,000);
#                     LOADGEN_CLIENT_BYTES
#                     one figure for all instead; KERNEL_SOCKET_BYTES=4200 per socket, two
#                     per client (deploy/sysctl-pushgate.conf)
#   MEMORY_RESERVE_MB=1024      left free for the rest of the host
#   PORT              the gateway's port (default: a free one)
set -euo pipefail

N=${1:-${N:-1000000}}
DURATION=${2:-${DURATION:-10m}}
RAMP=${RAMP:-4000/s}
RATE=${RATE:-1000/s}
MIX=${MIX:-ws=80,sse=10,poll=10}
IPS_PER_WORKER=${IPS_PER_WORKER:-2}
BROADCAST_EVERY=${BROADCAST_EVERY:-60s}
BROADCAST_CHANNELS=${BROADCAST_CHANNELS:-$((N / 10))}
STEADY_SHARE=${STEADY_SHARE:-80}
CHURN_FRACTION=${CHURN_FRACTION:-0.05}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
PING_SECS=${PING_SECS:-300}
POLL_TIMEOUT=${POLL_TIMEOUT:-120}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-30s}
WORKER_ARGS=${WORKER_ARGS:-}
LOADGEN_WS_BYTES=${LOADGEN_WS_BYTES:-1000}
LOADGEN_SSE_BYTES=${LOADGEN_SSE_BYTES:-1000}
LOADGEN_POLL_BYTES=${LOADGEN_POLL_BYTES:-1000}
LOADGEN_CLIENT_BYTES=${LOADGEN_CLIENT_BYTES:-}
KERNEL_SOCKET_BYTES=${KERNEL_SOCKET_BYTES:-4200}
MEMORY_RESERVE_MB=${MEMORY_RESERVE_MB:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_SET_BY_USER=${BIN:+1}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
OUT=${OUT:-$ROOT/benches/out/million-$N-$(date -u +%Y%m%d-%H%M%S)}
# Sources from 127.1.0.1 on: apart from the gateway (127.0.0.1) and the workers
# (127.0.j.2 and up).
SOURCE_BASE=127.1.0.1
# Connections per worker by role, from deploy/sysctl-pushgate.conf's capacity line and
# benches/RESULTS.md; used by the memory estimate only.
WORKER_CONN_BYTES=150
GATEWAY_CHANNEL_BYTES=450
# A retained message in the memory store (64 B payload, its entry and per-message overhead).
RETAINED_MESSAGE_BYTES=250
# A process before its first client: a worker, a loadgen process (measured: 24 MB), the
# gateway.
WORKER_BASE_BYTES=$((8 << 20))
LOADGEN_BASE_BYTES=$((24 << 20))
GATEWAY_BASE_BYTES=$((64 << 20))

say() { echo "million.sh: $*" >&2; }
die() { say "$*"; exit 3; }
now_ms() { date +%s%3N; }

# "10m", "30s", "1h", "500ms" or bare seconds -> whole seconds (at least 1).
secs_of() {
  local v=$1
  case $v in
    *ms) v=$(((${v%ms} + 999) / 1000)) ;;
    *s) v=${v%s} ;;
    *m) v=$((${v%m} * 60)) ;;
    *h) v=$((${v%h} * 3600)) ;;
  esac
  [[ $v =~ ^[0-9]+$ ]] || die "bad duration '$1' (use 30s, 10m, 1h)"
  [ "$v" -ge 1 ] || v=1
  echo "$v"
}
# "6000/s" or "6000" -> 6000.
per_sec() {
  local v=${1%/s}
  [[ $v =~ ^[0-9]+$ ]] && [ "$v" -gt 0 ] || die "bad rate '$1' (use a whole number per second: 6000/s)"
  echo "$v"
}
ceil_div() { echo $((($1 + $2 - 1) / $2)); }
gib() { awk -v b="$1" 'BEGIN { printf "%.2f GiB", b / 1073741824 }'; }
meminfo() { awk -v k="$1:" '$1 == k { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }

# --- 1. Prerequisites -----------------------------------------------------------------

check_tools() {
  local t missing=()
  for t in curl python3 setsid awk ps; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] || die "needs ${missing[*]} on PATH"
}

check_binaries() {
  if ! [ -x "$BIN/gateway" ] || ! [ -x "$BIN/loadgen" ]; then
    [ -z "$BIN_SET_BY_USER" ] || die "BIN=$BIN has no gateway and loadgen binaries"
    say "no release binaries in $BIN: building them"
    (cd "$ROOT" && cargo build --release -q -p gateway -p worker -p loadgen) || die "cargo build failed"
    [ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || die "no gateway and loadgen binaries in $BIN after the build"
  fi
  # The flag this run depends on; an older loadgen has an equal three-way mix only.
  "$BIN/loadgen" churn --help | grep -q -- --churn-after ||
    die "$BIN/loadgen has no churn --churn-after: rebuild it (cargo build --release -p loadgen)"
}

# Workers and loadgen processes from the per-process open-file limit: every client is one
# open file in a worker and one in loadgen.
plan_processes() {
  local hard
  hard=$(ulimit -Hn)
  [ "$hard" != unlimited ] || hard=$(cat /proc/sys/fs/nr_open)
  ulimit -n "$hard" || die "cannot raise the open-file soft limit to the hard one ($hard)"
  NOFILE=$hard
  [ "$NOFILE" -ge 2000 ] || die "the open-file hard limit (ulimit -Hn) is $NOFILE: too low for a worker (see deploy/limits-pushgate.conf)"
  PER_WORKER=${PER_WORKER:-$((NOFILE - 500))}
  [ "$PER_WORKER" -le $((NOFILE - 64)) ] || die "PER_WORKER=$PER_WORKER is above a worker's capacity at this open-file limit ($((NOFILE - 64)))"
  WORKERS=$(ceil_div "$N" "$PER_WORKER")
  # loadgen: the limit minus 200 minus its 16 assign and 8 publish connections.
  PER_SHARD=${PER_SHARD:-$((NOFILE - 224))}
  [ "$PER_SHARD" -ge 1 ] && [ "$PER_SHARD" -le $((NOFILE - 224)) ] || die "PER_SHARD=$PER_SHARD must be 1..$((NOFILE - 224)) at this open-file limit"
  SHARDS=$(ceil_div "$N" "$PER_SHARD")
  # Worker i listens on 127.0.j.(2 + i): the last octet bounds the count.
  [ "$WORKERS" -le 254 ] || die "$WORKERS workers do not fit on 127.0.0.2-127.0.0.255 (raise the open-file limit or PER_WORKER)"
  [ "$IPS_PER_WORKER" -ge 1 ] && [ "$IPS_PER_WORKER" -le 100 ] || die "IPS_PER_WORKER must be 1..100"
}

# The source IPs: at least 40, two per loadgen process, and enough that every source
# address keeps within half of the host's local port range over all its connections (so
# the run needs no wider range; the kernel picks a port per 4-tuple anyway, loadgen binds
# with IP_BIND_ADDRESS_NO_PORT).
plan_ports() {
  local lo hi
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
  PORTS_BEFORE="$lo-$hi"
  local width=$((hi - lo + 1))
  local s=40
  [ $((2 * SHARDS)) -le "$s" ] || s=$((2 * SHARDS))
  local by_ports
  by_ports=$(ceil_div $((2 * N)) "$width")
  [ "$by_ports" -le "$s" ] || s=$by_ports
  SOURCE_IPS=${SOURCE_IPS:-$s}
  [ "$SOURCE_IPS" -ge 1 ] && [ "$SOURCE_IPS" -le 65000 ] || die "SOURCE_IPS must be 1..65000"
  SRC_RANGE="$SOURCE_BASE-$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]) + int(sys.argv[2]) - 1)' "$SOURCE_BASE" "$SOURCE_IPS")"
  # Connections on one (source IP, destination IP, port): the spread of loadgen's
  # round-robin over sources and of assign over workers and their IPs.
  PER_TUPLE=$(ceil_div "$N" $((SOURCE_IPS * WORKERS * IPS_PER_WORKER)))
  PER_SOURCE=$(ceil_div "$N" "$SOURCE_IPS")
  [ "$PER_TUPLE" -lt "$width" ] || die "$PER_TUPLE connections per (source IP, destination IP, port) exceed the $width local ports: raise SOURCE_IPS"
}

# Kernel settings for the run, raised only where the host's value is lower. "required":
# the run fails without it; "recommended": deploy/sysctl-pushgate.conf's value, for the
# ramp's bursts (whether the accept queues overflowed is in the summary: ListenOverflows).
# Without root the recommended ones are skipped (said so); a required one stops the run.
SYSCTL_KEYS=()
SYSCTL_WANT=()
SYSCTL_WHY=()
SYSCTL_REQUIRED=()
want_sysctl() { # key value required|recommended why
  local key=$1 value=$2 file=/proc/sys/${1//.//}
  [ -e "$file" ] || return 0
  local now
  now=$(tr '\t' ' ' <"$file")
  if [ "$key" = net.ipv4.ip_local_port_range ]; then
    local lo hi want_lo want_hi
    read -r lo hi <<<"$now"
    read -r want_lo want_hi <<<"$value"
    [ "$lo" -gt "$want_lo" ] || [ "$hi" -lt "$want_hi" ] || return 0
  else
    [ "$now" -lt "$value" ] || return 0
  fi
  SYSCTL_KEYS+=("$key")
  SYSCTL_WANT+=("$value")
  SYSCTL_WHY+=("$4 (now $now)")
  [ "$3" != required ] || SYSCTL_REQUIRED+=("$key = $value")
}

check_kernel() {
  local file_max nr_open count
  file_max=$(cat /proc/sys/fs/file-max)
  nr_open=$(cat /proc/sys/fs/nr_open)
  # Two open files per client (loadgen's and the worker's), plus the processes' own.
  want_sysctl fs.file-max $((2 * N + 200000)) required "two open files per client"
  [ "$nr_open" -ge "$NOFILE" ] || die "fs.nr_open $nr_open is below the open-file limit $NOFILE"
  want_sysctl net.ipv4.ip_local_port_range "10240 65535" recommended "more ports per source IP"
  # Accept bursts of the ramp: listen backlogs are capped at somaxconn.
  want_sysctl net.core.somaxconn 65535 recommended "accept bursts during the ramp"
  want_sysctl net.ipv4.tcp_max_syn_backlog 65535 recommended "half-open connections during the ramp"
  CONNTRACK=none
  if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
    count=$(cat /proc/sys/net/netfilter/nf_conntrack_count)
    CONNTRACK="loaded, max $(cat /proc/sys/net/netfilter/nf_conntrack_max), $count tracked now"
    # One entry per connection when a rule tracks loopback, and a full table drops new
    # connections. Nothing tracked now: most likely no rule tracks at all.
    local level=recommended
    [ "$count" -eq 0 ] || level=required
    want_sysctl net.netfilter.nf_conntrack_max $((N + N / 4 + 65536)) "$level" "one entry per tracked connection"
  fi
  say "open files: ulimit -Hn $NOFILE (per process) -> $WORKERS workers x $PER_WORKER, $SHARDS loadgen processes x $PER_SHARD; fs.file-max $file_max, fs.nr_open $nr_open"
  say "nf_conntrack: $CONNTRACK; local ports $PORTS_BEFORE; somaxconn $(cat /proc/sys/net/core/somaxconn), tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)"
  say "sources: $SOURCE_IPS ($SRC_RANGE), ~$PER_SOURCE connections each, ~$PER_TUPLE per (source IP, destination IP, port)"
  local i
  [ ${#SYSCTL_KEYS[@]} -gt 0 ] || return 0
  for i in "${!SYSCTL_KEYS[@]}"; do
    say "for the run: ${SYSCTL_KEYS[$i]} = ${SYSCTL_WANT[$i]}: ${SYSCTL_WHY[$i]}"
  done
  if [ "$(id -u)" -ne 0 ] || ! [ -w /proc/sys/net/core/somaxconn ]; then
    [ ${#SYSCTL_REQUIRED[@]} -eq 0 ] ||
      die "needs root to set ${SYSCTL_REQUIRED[*]} (or apply deploy/sysctl-pushgate.conf first)"
    say "not root: running with the host's values instead of the recommended ones above"
    SYSCTL_KEYS=()
  fi
}

# What N costs, against MemAvailable: refuse with the estimate when it does not fit.
check_memory() {
  local duration_s rate kernel workers gateway loadgen total avail need retained
  duration_s=$(secs_of "$DURATION")
  rate=$(per_sec "$RATE")
  # The store retains each message for 10 minutes (--retention-secs 600).
  retained=$((rate * (duration_s < 600 ? duration_s : 600) * RETAINED_MESSAGE_BYTES))
  kernel=$((N * 2 * KERNEL_SOCKET_BYTES))
  workers=$((N * WORKER_CONN_BYTES + WORKERS * WORKER_BASE_BYTES))
  gateway=$((N * GATEWAY_CHANNEL_BYTES + retained + GATEWAY_BASE_BYTES))
  local per_client=$LOADGEN_CLIENT_BYTES
  [ -n "$per_client" ] || per_client=$(mix_weighted "$LOADGEN_WS_BYTES" "$LOADGEN_SSE_BYTES" "$LOADGEN_POLL_BYTES")
  loadgen=$((N * per_client + SHARDS * LOADGEN_BASE_BYTES))
  total=$((kernel + workers + gateway + loadgen))
  avail=$(meminfo MemAvailable)
  need=$((total + (MEMORY_RESERVE_MB << 20)))
  ESTIMATE="~$(gib $total): kernel $(gib $kernel) ($KERNEL_SOCKET_BYTES B x 2 sockets per client), workers $(gib $workers), gateway $(gib $gateway), loadgen $(gib $loadgen) ($per_client B per client)"
  say "memory for $N clients: $ESTIMATE; MemAvailable $(gib "$avail")"
  if [ "$avail" -lt "$need" ]; then
    # What fits: the same sums per client and per process, solved for N.
    local per=$((2 * KERNEL_SOCKET_BYTES + WORKER_CONN_BYTES + GATEWAY_CHANNEL_BYTES + per_client))
    local fixed=$((need - N * per))
    die "not enough memory: needs $(gib $need) ($ESTIMATE, + ${MEMORY_RESERVE_MB} MiB reserve), MemAvailable is $(gib "$avail"); about $(((avail - fixed) / per)) clients would fit"
  fi
  ESTIMATE_BYTES=$total
}

# ws sse poll byte figures -> the MIX-weighted figure per client.
mix_weighted() {
  python3 - "$MIX" "$@" <<'PY' || die "bad MIX '$MIX' (try ws=80,sse=10,poll=10)"
import sys
mix, ws, sse, poll = sys.argv[1], *map(int, sys.argv[2:])
w = dict((k.strip(), int(v)) for k, v in (p.split("=") for p in mix.split(",") if p.strip()))
assert set(w) <= {"ws", "sse", "poll"} and sum(w.values()) > 0
cost = {"ws": ws, "sse": sse, "poll": poll}
print(sum(cost[k] * v for k, v in w.items()) // sum(w.values()))
PY
}

# --- 2. Kernel settings for the run, restored at exit --------------------------------

SYSCTL_SAVED=()
apply_sysctls() {
  local i key file
  [ ${#SYSCTL_KEYS[@]} -gt 0 ] || return 0
  : >"$OUT/sysctl-restore.conf"
  for i in "${!SYSCTL_KEYS[@]}"; do
    key=${SYSCTL_KEYS[$i]}
    file=/proc/sys/${key//.//}
    SYSCTL_SAVED[i]=$(tr '\t' ' ' <"$file")
    echo "$key = ${SYSCTL_SAVED[$i]}" >>"$OUT/sysctl-restore.conf"
    echo "${SYSCTL_WANT[$i]}" >"$file" || die "cannot set $key = ${SYSCTL_WANT[$i]}"
  done
}

restore_sysctls() {
  local i key
  for i in "${!SYSCTL_SAVED[@]}"; do
    key=${SYSCTL_KEYS[$i]}
    echo "${SYSCTL_SAVED[$i]}" >"/proc/sys/${key//.//}" 2>/dev/null || say "could not restore $key = ${SYSCTL_SAVED[$i]}"
  done
  if [ ${#SYSCTL_SAVED[@]} -gt 0 ]; then
    say "restored ${SYSCTL_KEYS[*]}"
    SYSCTL_SAVED=()
    rm -f "$OUT/sysctl-restore.conf"
  fi
}

# --- Processes: each role in its own process group, stopped by group -------------------

GW=
LG=
# Does process group $1 have a member that is not a zombie (the leader stays one until
# this shell waits for it)?
group_alive() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'; }
stop_group() { # pid grace-seconds: SIGTERM to its group, SIGKILL after the grace
  local pid=$1 grace=$2 i
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  # A stopped member (SIGSTOP, a debugger let go) acts on the TERM only once continued.
  kill -CONT -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    group_alive "$pid" || break
    sleep 0.2
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # loadgen first: it closes its clients; then the gateway, which stops its workers.
  stop_group "$LG" 30
  stop_group "$GW" 15
  LG='' GW=''
  restore_sysctls
  [ -z "${OUT_READY:-}" ] || say "results in $OUT"
  exit "$rc"
}

# setsid runs the command in a new session and process group of its own pid, unless the
# shell made the background job a group leader (job control, `bash -m`): then setsid
# forks and $! is not the group. Stopping by group needs the former.
own_group() { # pid role
  local pgid
  pgid=$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ' || true)
  [ -z "$pgid" ] || [ "$pgid" = "$1" ] || die "the $2 is not in a process group of its own (run this script without job control)"
}

# The pids of a role: the gateway's children are its workers, loadgen's its shards.
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }
worker_pids() { [ -z "$GW" ] || children "$GW"; }
loadgen_pids() {
  [ -n "$LG" ] && [ -e "/proc/$LG" ] || return 0
  echo "$LG"
  children "$LG"
}
rss_bytes() { # summed VmRSS of the given pids
  local p t=0 v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    t=$((t + ${v:-0} * 1024))
  done
  echo $t
}
cpu_ticks() { # summed utime + stime of the given pids (clock ticks)
  local p t=0 v
  for p in "$@"; do
    # Fields after the command name (which may hold spaces): utime and stime are 12 and 13.
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
    t=$((t + ${v:-0}))
  done
  echo $t
}
answer_secs() { # url: how long a 200 answer took (s), or -1
  local t
  t=$(curl -fs -o /dev/null -m 10 -w '%{time_total}' "$1") || t=-1
  echo "$t"
}
workers_json() { curl -fs -m 2 "$GWURL/v1/workers" 2>/dev/null || true; }
connected_now() {
  workers_json | python3 -c 'import json,sys
try: print(sum(w["connections"] for w in json.load(sys.stdin)["workers"]))
except Exception: print(0)'
}

# One reading of the machine and the roles, as one JSON line (the summary reads them).
snapshot() { # name
  local wp lp
  wp=$(worker_pids | tr '\n' ' ')
  lp=$(loadgen_pids | tr '\n' ' ')
  # shellcheck disable=SC2086 # pid lists
  python3 - "$1" "$(now_ms)" "$(rss_bytes ${GW:-})" "$(rss_bytes $wp)" "$(rss_bytes $lp)" \
    "$(echo $wp | wc -w)" "$(echo $lp | wc -w)" >>"$OUT/snapshots.jsonl" <<'PY'
import json, sys
name, at, gw, wk, lg, nw, nl = sys.argv[1:]
mem = {}
for line in open("/proc/meminfo"):
    k, v = line.split(":", 1)
    mem[k] = int(v.split()[0]) * 1024
sock = {}
for line in open("/proc/net/sockstat"):
    proto, rest = line.split(":", 1)
    f = rest.split()
    sock[proto] = {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
net = {}
lines = open("/proc/net/netstat").read().splitlines()
for h, v in zip(lines[::2], lines[1::2]):
    keys, vals = h.split()[1:], v.split()[1:]
    if h.startswith("TcpExt:"):
        net = {k: int(x) for k, x in zip(keys, vals) if k in ("ListenOverflows", "ListenDrops", "TCPAbortOnMemory", "TCPMemoryPressures")}
ct = None
try:
    ct = int(open("/proc/sys/net/netfilter/nf_conntrack_count").read())
except OSError:
    pass
print(json.dumps({
    "name": name, "at_ms": int(at),
    "mem_used": mem["MemTotal"] - mem["MemAvailable"], "mem_total": mem["MemTotal"],
    "mem_available": mem["MemAvailable"], "slab": mem["Slab"], "slab_unreclaimable": mem["SUnreclaim"],
    "sockstat": sock, "tcp_ext": net, "conntrack_count": ct,
    "rss": {"gateway": int(gw), "workers": int(wk), "loadgen": int(lg)},
    "processes": {"workers": int(nw), "loadgen": int(nl)},
}))
PY
}

cpu_now() { # utime + stime of each role now, as the fields of one JSON object
  local wp lp
  wp=$(worker_pids | tr '\n' ' ')
  lp=$(loadgen_pids | tr '\n' ' ')
  # shellcheck disable=SC2086 # pid lists
  echo "\"at_ms\":$(now_ms),\"gateway\":$(cpu_ticks ${GW:-}),\"workers\":$(cpu_ticks $wp),\"loadgen\":$(cpu_ticks $lp)"
}
cpu_mark() { echo "{\"name\":\"$1\",$2}" >>"$OUT/cpu.jsonl"; } # name cpu_now-fields
published_now() {
  curl -fs -m 2 "$GWURL/metrics" 2>/dev/null | awk '$1 == "pushgate_publish_total" { print $2; found = 1 } END { if (!found) print 0 }'
}

sample() { # t connected: one line of samples.csv
  local wp lp
  wp=$(worker_pids | tr '\n' ' ')
  lp=$(loadgen_pids | tr '\n' ' ')
  # shellcheck disable=SC2086 # pid lists
  echo "$1,$2,$(($(meminfo MemTotal) - $(meminfo MemAvailable))),$(meminfo Slab),$(awk '/^TCP:/ { print $3 }' /proc/net/sockstat),$(rss_bytes ${GW:-}),$(rss_bytes $wp),$(rss_bytes $lp),$(cpu_ticks ${GW:-}),$(cpu_ticks $wp),$(cpu_ticks $lp)" >>"$OUT/samples.csv"
}

# --- 3. The run --------------------------------------------------------------------------

start_gateway() {
  local port=${PORT:-} args=() w
  [ -n "$port" ] || port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  GWURL=http://127.0.0.1:$port
  args+=("--local-worker-arg=--ping-interval-secs=$PING_SECS")
  for w in $WORKER_ARGS; do args+=("--local-worker-arg=$w"); done
  # The gateway's own binary runs the workers (`gateway worker ...`): one binary to build.
  RUST_LOG=${RUST_LOG:-warn} setsid "$BIN/gateway" --listen "127.0.0.1:$port" \
    --local-workers "$WORKERS" --local-worker-ips "$IPS_PER_WORKER" ${args[@]+"${args[@]}"} \
    >"$OUT/gateway.log" 2>&1 &
  GW=$!
  own_group "$GW" gateway
  # Every worker linked and reporting load ("healthy"), as deploy/local-cluster.sh waits.
  local t0 healthy=0 limit=$((30 + WORKERS))
  t0=$(now_ms)
  while [ $(($(now_ms) - t0)) -lt $((limit * 1000)) ]; do
    kill -0 "$GW" 2>/dev/null || { tail -n 20 "$OUT/gateway.log" >&2; die "the gateway stopped at start"; }
    healthy=$(workers_json | grep -o '"state":"healthy"' | wc -l || true)
    [ "$healthy" -lt "$WORKERS" ] || break
    sleep 0.2
  done
  [ "$healthy" -ge "$WORKERS" ] || { tail -n 20 "$OUT/gateway.log" >&2; die "only $healthy of $WORKERS workers linked in ${limit} s"; }
  WORKERS_UP_S=$(awk -v a="$(now_ms)" -v b="$t0" 'BEGIN { printf "%.2f", (a - b) / 1000 }')
  say "gateway $GWURL (pid $GW), $WORKERS workers linked in ${WORKERS_UP_S} s"
}

start_loadgen() {
  local extra=()
  read -r -a extra <<<"$LOADGEN_ARGS" || true
  # The steady phase, then the churn phase: CHURN_FRACTION of the clients each dropping
  # about once, spread over what is left of DURATION.
  local steady_s=$((DURATION_S * STEADY_SHARE / 100))
  local churn_s=$((DURATION_S - steady_s))
  [ "$churn_s" -ge 1 ] || churn_s=1
  local churn_rate
  churn_rate=$(awk -v n="$N" -v f="$CHURN_FRACTION" -v s="$churn_s" 'BEGIN { r = n * f / s; printf "%.1f", (r < 1 ? 1 : r) }')
  local bcast=()
  if [ "$BROADCAST_EVERY" != 0 ] && [ "$BROADCAST_CHANNELS" -gt 0 ]; then
    bcast=(--broadcast-every "$BROADCAST_EVERY" --broadcast-channels "$BROADCAST_CHANNELS")
  fi
  STEADY_S=$steady_s
  # --allow-drops: a connection the server ends (a replaced subscription, say) is reported
  # by kind and resumed, not an error; loss, duplicates, reordering and gaps still fail.
  LG_CMD=("$BIN/loadgen" churn --gateway "$GWURL" --clients "$N" --transport mixed
    --transport-mix "$MIX" --ramp "$RAMP_RATE/s" --rate "$RATE" --pattern random --duration "$DURATION"
    --fraction "$CHURN_FRACTION" --churn-rate "$churn_rate/s" --churn-after "${steady_s}s"
    --allow-drops ${bcast[@]+"${bcast[@]}"} --poll-timeout "$POLL_TIMEOUT"
    --connect-timeout "$CONNECT_TIMEOUT"
    --source-ips "$SRC_RANGE" --max-per-process "$PER_SHARD" --max-duration "${LG_MAX_S}s"
    --json "$OUT/loadgen.json" --report "$OUT/report.html" ${extra[@]+"${extra[@]}"})
  printf '%q ' "${LG_CMD[@]}" >"$OUT/loadgen-command.txt"
  echo >>"$OUT/loadgen-command.txt"
  setsid "${LG_CMD[@]}" >"$OUT/loadgen.log" 2>&1 &
  LG=$!
  own_group "$LG" loadgen
}

# Until loadgen ends (or the deadline): a sample every 5 s; when all N are connected; the
# steady window, from 3 s after the first publish the gateway counts (loadgen publishes once
# every first connect is done and memory is read) to 3 s before DURATION ends, with the
# CPU of each role at both ends and the memory read at its start and every 10 s in it
# (the last reading counts). The CPU and memory readings are taken while loadgen is still
# running: when it ends early, the window ends at its last reading.
watch_run() {
  local t0 now t conn=0 last_sample=-5 last_reading=0 cpu margin
  local steady_from='' steady_to='' in_window=''
  t0=$(now_ms)
  margin=$((DURATION_S >= 12 ? 3 : DURATION_S / 4))
  echo "t_secs,connected,mem_used,slab,tcp_inuse,rss_gateway,rss_workers,rss_loadgen,cpu_gateway,cpu_workers,cpu_loadgen" >"$OUT/samples.csv"
  while kill -0 "$LG" 2>/dev/null; do
    now=$(now_ms)
    t=$(((now - t0) / 1000))
    if [ "$(date +%s)" -ge "$DEADLINE" ]; then
      say "deadline passed ($(date -u -d "@$DEADLINE" +%H:%M:%S) UTC): stopping everything"
      LG_RC=124
      break
    fi
    cpu=$(cpu_now)
    if [ -z "$CONNECTED_MS" ]; then
      conn=$(connected_now)
      if [ "$conn" -ge "$N" ]; then
        CONNECTED_MS=$now
        say "all $N connected after $t s"
      fi
    fi
    if [ -z "$PUBLISH_MS" ] && [ "$(published_now)" != 0 ]; then
      PUBLISH_MS=$now
      [ -n "$CONNECTED_MS" ] || say "publishing began with $(connected_now) of $N connected (loadgen says why the others are not)"
      steady_from=$((now + margin * 1000))
      steady_to=$((now + (STEADY_S - margin) * 1000))
    fi
    if [ -n "$steady_from" ] && [ "$now" -ge "$steady_from" ]; then
      cpu_mark steady_start "$cpu"
      snapshot connected
      # The admin answers at full load: /v1/stats reads every worker's /metrics.
      API_TIMES="$(answer_secs "$GWURL/v1/workers") $(answer_secs "$GWURL/v1/stats")"
      steady_from=
      in_window=1
      last_reading=$now
    fi
    if [ -n "$in_window" ] && [ "$now" -ge "$steady_to" ]; then
      cpu_mark steady_end "$cpu"
      snapshot steady
      in_window=
    elif [ -n "$in_window" ] && [ $((now - last_reading)) -ge 10000 ]; then
      snapshot steady
      last_reading=$now
    fi
    if [ $((t - last_sample)) -ge 5 ]; then
      # Before the mark, conn was read this second.
      [ -z "$CONNECTED_MS" ] || conn=$(connected_now)
      sample "$t" "$conn"
      last_sample=$t
    fi
    sleep 1
  done
  [ -z "$in_window" ] || cpu_mark steady_end "$cpu"
  if [ -z "${LG_RC:-}" ]; then
    LG_RC=0
    wait "$LG" || LG_RC=$?
    LG=
  fi
}

# --- 4. Summary ---------------------------------------------------------------------------

summarize() {
  python3 - "$OUT" "$N" "$WORKERS" "$SHARDS" "$SOURCE_IPS" "$IPS_PER_WORKER" "$PER_WORKER" \
    "$RAMP_RATE" "$RATE" "$DURATION" "$MIX" "$LG_RC" "$START_MS" "$(now_ms)" "$LOADGEN_ARGS" \
    "$ESTIMATE_BYTES" "$(getconf CLK_TCK)" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(uname -r)" "$(nproc)" "$WORKERS_UP_S" "${CONNECTED_MS:-0}" "$LG_START_MS" "${API_TIMES:--1 -1}" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, os, sys
(out, n, workers, shards, src, ips, per_worker, ramp, rate, duration, mix, rc, start_ms, end_ms,
 lg_args, estimate, hz, commit, kernel, cpus, workers_up, connected_ms, lg_start_ms, api, loadavg) = sys.argv[1:]
api_workers, api_stats = (float(x) for x in api.split())
n, rc, hz = int(n), int(rc), int(hz)
snaps = {}
if os.path.exists(f"{out}/snapshots.jsonl"):
    for line in open(f"{out}/snapshots.jsonl"):
        s = json.loads(line)
        snaps[s["name"]] = s
cpu = {}
if os.path.exists(f"{out}/cpu.jsonl"):
    for line in open(f"{out}/cpu.jsonl"):
        c = json.loads(line)
        cpu[c["name"]] = c
lg = {}
try:
    lg = json.load(open(f"{out}/loadgen.json"))
except (OSError, ValueError):
    pass
conn = lg.get("connect", {})
pub = lg.get("publish", {})
dlv = lg.get("delivery", {})
check = dlv.get("check") or {}
clients = conn.get("connected_at_ready") or n
before, idle, steady = snaps.get("before"), snaps.get("idle"), snaps.get("steady") or snaps.get("connected")

def per(x, k):
    return round(x / k, 1) if k else None

memory = {}
if before and steady:
    memory["machine_used_before"] = before["mem_used"]
    memory["machine_used_steady"] = steady["mem_used"]
    memory["machine_used_delta"] = steady["mem_used"] - before["mem_used"]
    memory["machine_bytes_per_client"] = per(steady["mem_used"] - before["mem_used"], clients)
    memory["slab_before"], memory["slab_steady"] = before["slab"], steady["slab"]
    memory["slab_bytes_per_socket"] = per(steady["slab"] - before["slab"], 2 * clients)
    memory["sockstat_before"], memory["sockstat_steady"] = before["sockstat"], steady["sockstat"]
    memory["tcp_ext_before"], memory["tcp_ext_steady"] = before["tcp_ext"], steady["tcp_ext"]
    memory["conntrack_count_steady"] = steady["conntrack_count"]
    memory["mem_total"] = steady["mem_total"]
rss = {}
if steady:
    base = idle or {"rss": {"gateway": 0, "workers": 0, "loadgen": 0}}
    r, b = steady["rss"], base["rss"]
    rss = {
        "gateway": r["gateway"], "gateway_idle": b["gateway"],
        "gateway_bytes_per_channel": per(r["gateway"] - b["gateway"], clients),
        "workers": r["workers"], "workers_idle": b["workers"],
        "worker_bytes_per_connection": per(r["workers"] - b["workers"], clients),
        "worker_processes": steady["processes"]["workers"],
        "loadgen": r["loadgen"], "loadgen_bytes_per_client": per(r["loadgen"], clients),
        "loadgen_processes": steady["processes"]["loadgen"],
    }
cpu_out = {}
a, z = cpu.get("steady_start"), cpu.get("steady_end")
if a and z:
    secs = (z["at_ms"] - a["at_ms"]) / 1000
    cpu_out["window_secs"] = round(secs, 1)
    for role in ("gateway", "workers", "loadgen"):
        used = (z[role] - a[role]) / hz
        cpu_out[role + "_cpu_secs"] = round(used, 2)
        cpu_out[role + "_cores"] = round(used / secs, 3) if secs > 0 else None
lat = dlv.get("latency_us", {})
summary = {
    "bench": "million",
    "passed": bool(lg.get("passed")) and rc == 0,
    "loadgen_exit": rc,
    "clients": n,
    "duration": duration,
    "ramp_per_sec": int(ramp),
    "publish_rate": rate,
    "transport_mix": mix,
    "workers": int(workers), "ips_per_worker": int(ips), "per_worker": int(per_worker),
    "loadgen_processes": int(shards), "source_ips": int(src),
    "loadgen_args": lg_args,
    "code": commit, "kernel": kernel, "cpus": int(cpus),
    "started_unix_ms": int(start_ms), "wall_secs": round((int(end_ms) - int(start_ms)) / 1000, 1),
    "workers_linked_secs": float(workers_up),
    "all_connected_secs": round((int(connected_ms) - int(lg_start_ms)) / 1000, 1) if int(connected_ms) else None,
    "estimate_bytes": int(estimate),
    "load_average_at_end": loadavg,
    "admin_answer_secs": {"v1_workers": api_workers, "v1_stats": api_stats},
    "connect": {
        "first_ok": conn.get("first_ok"), "first_failed": conn.get("first_failed"),
        "phase_secs": conn.get("phase_secs"), "rate_per_sec": conn.get("rate_per_sec"),
        "time_us": conn.get("time_us"), "assign_us": conn.get("assign_us"),
        "per_worker": conn.get("per_worker"), "reconnects": conn.get("reconnects"),
    },
    "publish": {k: pub.get(k) for k in ("messages_attempted", "messages_accepted", "rate_per_sec", "by_status")},
    "delivery": {"received": dlv.get("received"), "latency_us": lat, "check": check,
                 "steady_latency_us": dlv.get("steady_latency_us"),
                 "broadcast_latency_us": dlv.get("broadcast_latency_us")},
    "broadcasts": lg.get("broadcasts"),
    "churn": {"dropped_on_purpose": conn.get("dropped_on_purpose"), "reconnects": conn.get("reconnects"),
              "drops": conn.get("drops"), "drops_by_kind": conn.get("drops_by_kind")},
    "errors": lg.get("errors"),
    "stopped_by": lg.get("stopped_by"),
    "memory": memory, "rss": rss, "cpu": cpu_out,
    "loadgen_memory": lg.get("memory"),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)

def f(v, unit="", d=0):
    return "-" if v is None else f"{v:,.{d}f}{unit}"

def ms(block, key):
    v = (block or {}).get(key)
    return f(v / 1000, " ms", 2) if v is not None else "-"

G = 1 << 30
lines = [
    f"== benches/million.sh: {n:,} clients ({mix}), {workers} workers x {ips} IPs, {shards} loadgen processes, {src} source IPs; code {commit}, kernel {kernel}, {cpus} CPUs",
    f"verdict      {'PASSED' if summary['passed'] else 'FAILED'} (loadgen exit {rc}, stopped by {lg.get('stopped_by')})",
    f"connect      {f(conn.get('first_ok'))} of {n:,} on the first attempt ({f(conn.get('first_failed'))} failed) in {f(conn.get('phase_secs'), ' s', 1)} at {f(conn.get('rate_per_sec'), '/s')}; connect p50 {ms(conn.get('time_us'), 'p50')}, p99 {ms(conn.get('time_us'), 'p99')}, max {ms(conn.get('time_us'), 'max')}",
    f"publish      {f(pub.get('messages_accepted'))} accepted of {f(pub.get('messages_attempted'))} at {f(pub.get('rate_per_sec'), '/s')}; received {f(dlv.get('received'))}",
    f"check        lost {check.get('lost')}, duplicated {check.get('duplicated')}, out of order {check.get('out_of_order')}, gaps {check.get('gaps')}; errors {(lg.get('errors') or {}).get('total')}",
    f"latency      publish -> receive p50 {ms(lat, 'p50')}, p90 {ms(lat, 'p90')}, p99 {ms(lat, 'p99')}, p99.9 {ms(lat, 'p999')}, max {ms(lat, 'max')}",
]
sl, bl = dlv.get("steady_latency_us"), dlv.get("broadcast_latency_us")
if sl:
    lines.append(f"  steady     single publishes p50 {ms(sl, 'p50')}, p99 {ms(sl, 'p99')}, p99.9 {ms(sl, 'p999')}, max {ms(sl, 'max')} ({f(sl.get('count'))} deliveries)")
if bl and bl.get("count"):
    each = (lg.get("broadcasts") or {}).get("each") or []
    last = [b.get("to_last_client_ms") for b in each if b.get("to_last_client_ms") is not None]
    lines.append(f"  broadcast  p50 {ms(bl, 'p50')}, p99 {ms(bl, 'p99')}, p99.9 {ms(bl, 'p999')}, max {ms(bl, 'max')} ({f(bl.get('count'))} deliveries, {len(each)} broadcasts; to the last client {', '.join(f(x, ' ms') for x in last)})")
lines.append(f"churn        {f(conn.get('dropped_on_purpose'))} dropped on purpose, {f(conn.get('reconnects'))} reconnects with since; other drops {f(conn.get('drops'))} {conn.get('drops_by_kind') or ''}")
if memory:
    lines.append(f"machine      used {memory['machine_used_before'] / G:.2f} -> {memory['machine_used_steady'] / G:.2f} GiB of {memory['mem_total'] / G:.2f} (+{memory['machine_used_delta'] / G:.2f} GiB, {f(memory['machine_bytes_per_client'], ' B')} per client); Slab {memory['slab_before'] / G:.2f} -> {memory['slab_steady'] / G:.2f} GiB ({f(memory['slab_bytes_per_socket'], ' B')} per socket); estimate was {int(estimate) / G:.2f} GiB")
    ts = memory["sockstat_steady"].get("TCP", {})
    lines.append(f"sockets      TCP inuse {ts.get('inuse')}, orphan {ts.get('orphan')}, tw {ts.get('tw')}, mem {ts.get('mem')} pages; conntrack {memory['conntrack_count_steady']}; ListenOverflows +{memory['tcp_ext_steady'].get('ListenOverflows', 0) - memory['tcp_ext_before'].get('ListenOverflows', 0)}")
if rss:
    lines.append(f"RSS          gateway {rss['gateway'] / G:.2f} GiB ({f(rss['gateway_bytes_per_channel'], ' B')} per channel); workers {rss['workers'] / G:.2f} GiB over {rss['worker_processes']} processes ({f(rss['worker_bytes_per_connection'], ' B')} per connection); loadgen {rss['loadgen'] / G:.2f} GiB over {rss['loadgen_processes']} processes ({f(rss['loadgen_bytes_per_client'], ' B')} per client)")
if cpu_out:
    lines.append(f"CPU          over {cpu_out['window_secs']} s steady: gateway {cpu_out['gateway_cores']} cores, workers {cpu_out['workers_cores']}, loadgen {cpu_out['loadgen_cores']} ({cpu_out['gateway_cpu_secs']} / {cpu_out['workers_cpu_secs']} / {cpu_out['loadgen_cpu_secs']} s)")
lines.append(f"admin        /v1/workers {api_workers * 1000:.1f} ms, /v1/stats {api_stats * 1000:.1f} ms (at the start of the steady window); load average at the end {loadavg}")
lines.append(f"wall         {summary['wall_secs']} s in all (workers linked in {workers_up} s, all connected {f(summary['all_connected_secs'], ' s', 1)} after loadgen started)")
print("\n".join(lines))
PY
}

main() {
  START_MS=$(now_ms)
  check_tools
  check_binaries
  plan_processes
  plan_ports
  check_kernel
  check_memory
  DURATION_S=$(secs_of "$DURATION")
  RAMP_RATE=$(per_sec "$RAMP")
  per_sec "$RATE" >/dev/null
  RAMP_S=$(ceil_div "$N" "$RAMP_RATE")
  # loadgen's own bound: the ramp (three times its nominal length), the settle and memory
  # reading, DURATION, the drain and the close, with a minute to spare.
  LG_MAX_S=$((RAMP_S * 3 + 30 + DURATION_S + 60))
  mkdir -p "$OUT"
  OUT_READY=1
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  apply_sysctls
  snapshot before
  start_gateway
  snapshot idle
  # Past this everything is killed: loadgen's bound plus a minute for it to stop and report.
  DEADLINE=$(($(date +%s) + LG_MAX_S + 60))
  say "loadgen: $N clients at $RAMP_RATE/s (~$RAMP_S s), $RATE for $DURATION; deadline $(date -u -d "@$DEADLINE" +%H:%M:%S) UTC"
  CONNECTED_MS=
  PUBLISH_MS=
  API_TIMES=
  LG_RC=
  LG_START_MS=$(now_ms)
  start_loadgen
  watch_run
  snapshot end
  # Everything stops before the summary (past the deadline loadgen is still running), so
  # the wall time includes the stop.
  stop_group "$LG" 30
  stop_group "$GW" 15
  LG='' GW=''
  summarize | tee "$OUT/summary.txt"
  if [ "$LG_RC" -eq 124 ]; then
    say "stopped at the deadline; the end of $OUT/loadgen.log:"
    tail -n 30 "$OUT/loadgen.log" >&2
  elif [ "$LG_RC" -ne 0 ]; then
    say "loadgen exit $LG_RC; the end of $OUT/loadgen.log:"
    tail -n 30 "$OUT/loadgen.log" >&2
  fi
  return "$LG_RC"
}

main "$@"
