#!/usr/bin/env bash
# Idle memory per connection on one worker process: starts a fresh gateway with one local
# worker, opens N idle clients of one transport through /v1/assign with loadgen, and
# prints the worker's RSS growth / connections (loadgen's `memory` figures).
#
#   benches/idle-memory.sh [N=10000] [TRANSPORTS="ws poll sse"]
#
# Each transport is measured on its own, freshly started worker. Traffic stays on loopback.
# Needs: a Rust toolchain, curl and python3.
set -euo pipefail
N=${1:-10000}
TRANSPORTS=${2:-"ws poll sse"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
OUT=${OUT:-$ROOT/benches/out}
mkdir -p "$OUT"
# The worker's capacity is its open-file limit: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $N connections (see deploy/limits-pushgate.conf)" >&2
  exit 3
fi
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)

for t in $TRANSPORTS; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/gateway" --listen 127.0.0.1:$port --local-workers 1 --local-worker-ips 4 >"$OUT/gateway-$t.log" 2>&1 &
  gw=$!
  trap 'kill $gw 2>/dev/null || true' EXIT
  healthy=
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v1/workers" | grep -q healthy && { healthy=1; break; }
    sleep 0.1
  done
  if [ -z "$healthy" ]; then
    echo "$t: no healthy worker after 10 s; see $OUT/gateway-$t.log" >&2
    kill $gw; wait $gw 2>/dev/null || true
    continue
  fi
  "$BIN/loadgen" connect --gateway "http://127.0.0.1:$port" --clients "$N" --transport "$t" \
    --ramp 5000/s --hold 3s --source-ips 127.0.1.1-127.0.1.20 --poll-timeout 120 \
    --json "$OUT/idle-$t.json" --quiet >"$OUT/idle-$t.txt" 2>&1 || true
  kill $gw; wait $gw 2>/dev/null || true
  python3 - "$OUT/idle-$t.json" "$t" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f'{sys.argv[2]}: no result ({e}); see the .txt beside it')
m = r.get("memory") or {}; c = r["connect"]
per = m.get("bytes_per_connection")
print(f'{sys.argv[2]:5} clients_ok={c["ok"]:6} rate={c["rate_per_sec"]:8.0f}/s '
      f'worker_rss_growth={m.get("workers_delta_bytes")} '
      f'bytes_per_conn={"n/a" if per is None else f"{per:.1f}"} '
      f'kernel_bytes_per_socket={(m.get("kernel") or {}).get("bytes_per_socket")}')
PY
  [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connect"]["ok"])' "$OUT/idle-$t.json" 2>/dev/null)" = "$N" ] \
    || echo "$t: not every client connected; the figure above is for fewer connections" >&2
done
