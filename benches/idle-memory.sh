#!/usr/bin/env bash
# Idle memory per connection on one worker process: starts a fresh gateway with one local
# worker, opens N idle clients of one transport through /v1/assign with loadgen, and
# prints the worker's RSS growth / connections (loadgen's `memory` figures).
#
#   benches/idle-memory.sh [N=10000] [TRANSPORTS="ws poll sse"]
#
# Each transport is measured on its own, freshly started worker. Traffic stays on loopback.
set -euo pipefail
N=${1:-10000}
TRANSPORTS=${2:-"ws poll sse"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
OUT=${OUT:-$ROOT/benches/out}
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)

for t in $TRANSPORTS; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/gateway" --listen 127.0.0.1:$port --local-workers 1 --local-worker-ips 4 >"$OUT/gateway-$t.log" 2>&1 &
  gw=$!
  trap 'kill $gw 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v1/workers" | grep -q healthy && break
    sleep 0.1
  done
  "$BIN/loadgen" connect --gateway "http://127.0.0.1:$port" --clients "$N" --transport "$t" \
    --ramp 5000/s --hold 3s --source-ips 127.0.1.1-127.0.1.20 --poll-timeout 120 \
    --json "$OUT/idle-$t.json" --quiet >"$OUT/idle-$t.txt" 2>&1 || true
  kill $gw; wait $gw 2>/dev/null || true
  python3 - "$OUT/idle-$t.json" "$t" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); m = r["memory"]; c = r["connect"]
print(f'{sys.argv[2]:5} clients_ok={c["ok"]:6} rate={c["rate_per_sec"]:8.0f}/s '
      f'worker_rss_growth={m["workers_delta_bytes"]:10} bytes_per_conn={m["bytes_per_connection"]:7.1f} '
      f'kernel_bytes_per_socket={m["kernel"].get("bytes_per_socket")}')
PY
done
