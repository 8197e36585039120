#!/usr/bin/env bash
# A one-host cluster as separate processes: one gateway and N workers, each worker bound
# to K loopback IPs. (`gateway --local-workers N` does the same from one command; this
# script is for running workers with their own flags, logs and pids.)
#
#   deploy/local-cluster.sh [WORKERS=2] [IPS_PER_WORKER=4] [PORT=9000]
#
# Environment: BIN (directory of the gateway and worker binaries; default
# ${CARGO_TARGET_DIR:-target}/release, built when absent), LOGS (./cluster-logs),
# GATEWAY_LISTEN (127.0.0.1:8080).
# Says it is up only once the gateway answers and every worker has linked; fails (exit 1,
# with the log's last lines) when a binary is missing, a process cannot start or one of
# them stops. Stops everything on Ctrl-C.
set -euo pipefail
WORKERS=${1:-2}
IPS=${2:-4}
PORT=${3:-9000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_SET_BY_USER=${BIN:+1}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
LOGS=${LOGS:-./cluster-logs}
GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}

die() { echo "local-cluster.sh: $*" >&2; exit 1; }
command -v curl >/dev/null || die "needs curl"
if ! [ -x "$BIN/gateway" ] || ! [ -x "$BIN/worker" ]; then
  [ -z "$BIN_SET_BY_USER" ] || die "BIN=$BIN has no gateway and worker binaries"
  (cd "$ROOT" && cargo build --release -p gateway -p worker) || die "cargo build failed"
  [ -x "$BIN/gateway" ] && [ -x "$BIN/worker" ] || die "no gateway and worker binaries in $BIN after the build"
fi
mkdir -p "$LOGS"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# The last lines of a log (without the frames of a RUST_BACKTRACE), then exit 1.
fail() {
  echo "local-cluster.sh: $1; the end of $2:" >&2
  grep -v -E '^ +([0-9]+: | *at )' "$2" | tail -n 20 >&2 || true
  exit 1
}

"$BIN/gateway" --listen "$GATEWAY_LISTEN" >"$LOGS/gateway.log" 2>&1 &
pids+=($!)
up=""
for _ in $(seq 100); do
  kill -0 "${pids[0]}" 2>/dev/null || fail "the gateway stopped at start" "$LOGS/gateway.log"
  curl -fs "http://$GATEWAY_LISTEN/healthz" >/dev/null 2>&1 && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || fail "the gateway does not answer on http://$GATEWAY_LISTEN" "$LOGS/gateway.log"

for w in $(seq 0 $((WORKERS - 1))); do
  args=()
  for j in $(seq 0 $((IPS - 1))); do
    args+=(--listen "127.0.$j.$((w + 2)):$PORT")
  done
  "$BIN/worker" --gateway "http://$GATEWAY_LISTEN" --id "worker-$w" "${args[@]}" >"$LOGS/worker-$w.log" 2>&1 &
  pids+=($!)
done
healthy=0
for _ in $(seq 150); do
  for w in $(seq 0 $((WORKERS - 1))); do
    kill -0 "${pids[$((w + 1))]}" 2>/dev/null || fail "worker-$w stopped at start" "$LOGS/worker-$w.log"
  done
  healthy=$(curl -fs "http://$GATEWAY_LISTEN/v1/workers" 2>/dev/null | grep -o '"state":"healthy"' | wc -l || true)
  [ "$healthy" -ge "$WORKERS" ] && break
  sleep 0.1
done
[ "$healthy" -ge "$WORKERS" ] ||
  fail "only $healthy of $WORKERS workers linked to the gateway in 15 s" "$LOGS/worker-0.log"

echo "gateway http://$GATEWAY_LISTEN, $WORKERS workers x $IPS IPs on port $PORT; logs in $LOGS; Ctrl-C stops"
# The first process to stop ends the cluster, loudly.
set +e
wait -n "${pids[@]}"
rc=$?
set -e
[ "$rc" -eq 130 ] && exit 130
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    if [ "$i" -eq 0 ]; then fail "the gateway stopped (exit $rc)" "$LOGS/gateway.log"; fi
    fail "worker-$((i - 1)) stopped (exit $rc)" "$LOGS/worker-$((i - 1)).log"
  fi
done
exit "$rc"
