#!/usr/bin/env bash
# Publish -> receive latency with the Redis store and with the memory store, in one run:
# one gateway with one local worker (4 IPs), CLIENTS WebSocket clients, RATE single
# publishes/s spread over their channels, every message checked for loss, duplicates and
# order by loadgen. Alternates memory / redis ROUNDS times.
#
#   benches/redis-latency.sh [CLIENTS=10000] [RATE=10000] [SECONDS=20] [ROUNDS=1]
set -euo pipefail
CLIENTS=${1:-10000}
RATE=${2:-10000}
SECS=${3:-20}
ROUNDS=${4:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || (cd "$ROOT" && cargo build --release -p gateway -p loadgen)
DIR=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$RP" PING >/dev/null 2>&1; do sleep 0.05; done
echo "machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3); $CLIENTS ws clients, $RATE publishes/s, ${SECS}s"

one() { # store
  local gp gw
  gp=$(free_port)
  "$BIN/gateway" --listen "127.0.0.1:$gp" --store "$1" --local-workers 1 --local-worker-ips 4 \
    >"$DIR/gw.log" 2>&1 &
  gw=$!
  pids+=("$gw")
  local t=0
  until curl -sf "http://127.0.0.1:$gp/v1/workers" | grep -q healthy; do
    sleep 0.1; t=$((t + 1))
    [ "$t" -lt 300 ] || { echo "no healthy worker: $(tail -3 "$DIR/gw.log")" >&2; exit 1; }
  done
  "$BIN/loadgen" run --gateway "http://127.0.0.1:$gp" --clients "$CLIENTS" --transport ws \
    --ramp 10000/s --rate "${RATE}/s" --duration "${SECS}s" --batch 1 \
    --source-ips 127.0.1.1-127.0.1.20 --quiet --json "$DIR/run.json" >/dev/null 2>&1 || true
  kill "$gw"; wait "$gw" 2>/dev/null || true
  python3 - "$DIR/run.json" "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
d = j["delivery"]
lat = {k: v / 1000 for k, v in d["latency_us"].items() if k != "count"}
chk = d["check"]
store = "redis" if sys.argv[2].startswith("redis") else "memory"
print(f"{store:6}: delivered {d['received']:,} of {chk['expected']:,}, lost {chk['lost']}, dup {chk['duplicated']}, "
      f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, p99.9 {lat['p999']:.2f} ms, max {lat['max']:.1f} ms, passed {j.get('passed')}")
EOF
}
for _ in $(seq 1 "$ROUNDS"); do
  one memory
  redis-cli -p "$RP" FLUSHALL >/dev/null
  one "redis://127.0.0.1:$RP"
done
