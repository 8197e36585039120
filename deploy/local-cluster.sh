#!/usr/bin/env bash
# A one-host cluster as separate processes: one gateway and N workers, each worker bound
# to K loopback IPs. (`gateway --local-workers N` does the same from one command; this
# script is for running workers with their own flags, logs and pids.)
#
#   deploy/local-cluster.sh [WORKERS=2] [IPS_PER_WORKER=4] [PORT=9000]
#
# Stops everything on Ctrl-C. Logs go to ./cluster-logs/.
set -euo pipefail
WORKERS=${1:-2}
IPS=${2:-4}
PORT=${3:-9000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
LOGS=${LOGS:-./cluster-logs}
GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}

[ -x "$BIN/gateway" ] && [ -x "$BIN/worker" ] || (cd "$ROOT" && cargo build --release -p gateway -p worker)
mkdir -p "$LOGS"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; }
trap cleanup EXIT INT TERM

"$BIN/gateway" --listen "$GATEWAY_LISTEN" >"$LOGS/gateway.log" 2>&1 &
pids+=($!)
for w in $(seq 0 $((WORKERS - 1))); do
  args=()
  for j in $(seq 0 $((IPS - 1))); do
    args+=(--listen "127.0.$j.$((w + 2)):$PORT")
  done
  "$BIN/worker" --gateway "http://$GATEWAY_LISTEN" --id "worker-$w" "${args[@]}" >"$LOGS/worker-$w.log" 2>&1 &
  pids+=($!)
done
echo "gateway http://$GATEWAY_LISTEN, $WORKERS workers x $IPS IPs on port $PORT; logs in $LOGS; Ctrl-C stops"
wait
