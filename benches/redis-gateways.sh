#!/usr/bin/env bash
# Publish throughput with 1, 2 and 3 gateways over one Redis, in one run: each gateway gets
# its own loadgen publisher (NDJSON batches, CHANNELS channels) for SECONDS, and each
# process's CPU is read from /proc, so the figures say which process is the limit.
#
#   benches/redis-gateways.sh [SECONDS=5] [CHANNELS=10000] [COUNTS="1 2 3"]
#   STORES="node cluster" benches/redis-gateways.sh ...   (also over a 3-master Redis
#                             Cluster, each count on both, alternated; Redis CPU is the sum
#                             of the masters')
#
# Needs redis-server and redis-cli (Debian's redis-server) and release binaries (built if
# missing). Prints one line per gateway count; nothing is kept.
set -euo pipefail
SECS=${1:-5}
CHANNELS=${2:-10000}
COUNTS=${3:-1 2 3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || (cd "$ROOT" && cargo build --release -p gateway -p loadgen)
DIR=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ms() { awk '{print ($14+$15)*10}' "/proc/$1/stat"; }
redis_cpu_ms() { local t=0 p; for p in $RPIDS; do t=$((t + $(cpu_ms "$p"))); done; echo "$t"; }

STORES=${STORES:-node}
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
pids+=($!)
NODE_PIDS=$!
until redis-cli -p "$RP" PING >/dev/null 2>&1; do sleep 0.05; done
CLUSTER_PORTS=(); CLUSTER_PIDS=""
if [[ " $STORES " == *" cluster "* ]]; then
  for i in 1 2 3; do
    p=$(free_port)
    mkdir -p "$DIR/c$i"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR/c$i" \
      --cluster-enabled yes --cluster-config-file "$DIR/c$i/nodes.conf" >"$DIR/c$i/redis.log" 2>&1 &
    pids+=($!); CLUSTER_PIDS+="$! "; CLUSTER_PORTS+=("$p")
    until redis-cli -p "$p" PING >/dev/null 2>&1; do sleep 0.05; done
  done
  redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$DIR/cluster.log" 2>&1
  until redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER INFO | grep -q 'cluster_state:ok'; do sleep 0.1; done
fi
echo "machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3), $(uname -r)"

for n in $COUNTS; do
for store in $STORES; do
  if [ "$store" = cluster ]; then
    URL="redis+cluster://$(printf '127.0.0.1:%s,' "${CLUSTER_PORTS[@]}" | sed 's/,$//')"
    RPIDS=$CLUSTER_PIDS
    for p in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$p" FLUSHALL >/dev/null; done
  else
    URL="redis://127.0.0.1:$RP"
    RPIDS=$NODE_PIDS
    redis-cli -p "$RP" FLUSHALL >/dev/null
  fi
  gws=(); ports=()
  for i in $(seq "$n"); do
    p=$(free_port)
    "$BIN/gateway" --listen "127.0.0.1:$p" --store "$URL" >"$DIR/gw-$n-$i.log" 2>&1 &
    gws+=($!); pids+=($!); ports+=("$p")
  done
  for p in "${ports[@]}"; do
    until curl -sf "http://127.0.0.1:$p/healthz" >/dev/null 2>&1; do sleep 0.05; done
  done
  r0=$(redis_cpu_ms)
  g0=(); for g in "${gws[@]}"; do g0+=("$(cpu_ms "$g")"); done
  lgs=()
  for i in $(seq "$n"); do
    "$BIN/loadgen" publish --gateway "http://127.0.0.1:${ports[$((i - 1))]}" --channels "$CHANNELS" \
      --duration "${SECS}s" --batch 100 --rate 200000/s --publish-connections 4 \
      --quiet --json "$DIR/lg-$n-$i.json" >/dev/null 2>&1 &
    lgs+=($!)
  done
  start=$(date +%s%N)
  for l in "${lgs[@]}"; do wait "$l" || true; done
  wall_ms=$((($(date +%s%N) - start) / 1000000))
  r1=$(redis_cpu_ms)
  gcpu=""; i=0
  for g in "${gws[@]}"; do gcpu+="$(($(cpu_ms "$g") - ${g0[$i]})) "; i=$((i + 1)); kill "$g"; done
  for g in "${gws[@]}"; do wait "$g" 2>/dev/null || true; done
  python3 - "$n" "$wall_ms" $((r1 - r0)) "$gcpu" "$DIR" "$store" <<'EOF'
import glob, json, sys
n, wall, rms, gcpu, d, store = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5], sys.argv[6]
acc = 0
for f in glob.glob(f"{d}/lg-{n}-*.json"):
    j = json.load(open(f))
    acc += j.get("publish", j).get("messages_accepted", 0)
for f in glob.glob(f"{d}/lg-{n}-*.json"):
    import os; os.remove(f)
secs = wall / 1000
print(f"{n} gateway(s), {'3-master cluster' if store == 'cluster' else 'one node'}: {acc / secs:,.0f} publishes/s ({acc} in {secs:.1f} s); Redis CPU {rms} ms "
      f"({rms / wall:.0%} of a core), gateways' CPU {' + '.join(gcpu)} ms, "
      f"{acc / (rms / 1000) if rms else 0:,.0f} publishes per Redis core-second")
EOF
done
done
