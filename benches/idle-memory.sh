#!/usr/bin/env bash
# Idle memory per connection on one worker process: starts a fresh gateway with one local
# worker, opens N idle clients of one transport through /v1/assign with loadgen, then
# publishes a burst to every channel (BURST_ROUNDS messages of BURST_BYTES each), waits
# until every message is delivered and the settle time has passed, and prints the worker's
# RSS growth / connections twice: idle before the burst, and idle after it (what the
# worker keeps once the burst has passed: grown buffers must have been released). Long-poll
# clients re-poll after each answer, so "after" counts the re-held polls.
#
#   benches/idle-memory.sh [N=18000] [TRANSPORTS="ws poll sse"]
#
# Environment (defaults): BURST_ROUNDS=4 messages per channel (0 = no burst, idle figure
# only), BURST_BYTES=4096 payload bytes, BURST_RATE=2 rounds per second, BURST_BATCH=50
# messages per NDJSON publish, SETTLE=5s before each memory reading, OUT=benches/out,
# TLS=1: the clients connect over TLS (wss://, https://) to a TLS listener of the worker
# (a throw-away ECDSA P-256 certificate made with openssl; loadgen --tls --ca).
#
# Each transport is measured on its own, freshly started worker. Traffic stays on loopback
# (clients from 127.0.1.1-127.0.1.40). Needs: a Rust toolchain, curl and python3, and an
# open-file hard limit above N + 500 (N must fit in one loadgen process).
set -euo pipefail
N=${1:-18000}
TRANSPORTS=${2:-"ws poll sse"}
BURST_ROUNDS=${BURST_ROUNDS:-4}
BURST_BYTES=${BURST_BYTES:-4096}
BURST_RATE=${BURST_RATE:-2}
BURST_BATCH=${BURST_BATCH:-50}
SETTLE=${SETTLE:-5s}
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
SRC=127.0.1.1-127.0.1.40
TLS=${TLS:-0}
worker_tls=()
lg_tls=()
tag=
if [ "$TLS" = 1 ]; then
  mkdir -p "$OUT/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=pushgate-bench -addext "subjectAltName=IP:127.0.0.2,DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>/dev/null
  chmod 600 "$OUT/tls/key.pem"
  worker_tls=("--local-worker-arg=--listen-tls=127.0.0.2:0,--tls-cert=$OUT/tls/cert.pem,--tls-key=$OUT/tls/key.pem")
  lg_tls=(--tls --ca "$OUT/tls/cert.pem")
  tag=-tls
fi

gw=
trap '[ -n "$gw" ] && kill $gw 2>/dev/null || true' EXIT
for t in $TRANSPORTS; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/gateway" --listen 127.0.0.1:$port --local-workers 1 --local-worker-ips 4 "${worker_tls[@]}" >"$OUT/gateway-$t$tag.log" 2>&1 &
  gw=$!
  healthy=
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v1/workers" | grep -q healthy && { healthy=1; break; }
    sleep 0.1
  done
  if [ -z "$healthy" ]; then
    echo "$t: no healthy worker after 10 s; see $OUT/gateway-$t.log" >&2
    kill $gw; wait $gw 2>/dev/null || true
    gw=
    continue
  fi
  common=(--gateway "http://127.0.0.1:$port" --clients "$N" --transport "$t" --ramp 5000/s
    --source-ips "$SRC" --poll-timeout 120 --settle "$SETTLE" --json "$OUT/idle-$t$tag.json" --quiet
    "${lg_tls[@]}")
  if [ "$BURST_ROUNDS" -gt 0 ]; then
    # --pattern all: --rate counts rounds, each round one message to every channel.
    duration=$(python3 -c "print($BURST_ROUNDS / $BURST_RATE)")
    "$BIN/loadgen" run "${common[@]}" --pattern all --rate "$BURST_RATE/s" --duration "${duration}s" \
      --batch "$BURST_BATCH" --payload-bytes "$BURST_BYTES" --drain 60s --memory-after-drain \
      >"$OUT/idle-$t$tag.txt" 2>&1 || true
  else
    "$BIN/loadgen" connect "${common[@]}" --hold 3s >"$OUT/idle-$t$tag.txt" 2>&1 || true
  fi
  # Writes the sockets did not take whole (per-connection buffers), read before the stop.
  buffered=$(python3 - "http://127.0.0.1:$port" <<'PY' || true
import json, sys, urllib.request
ws = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/workers", timeout=5))["workers"]
m = urllib.request.urlopen("http://" + ws[0]["addresses"][0] + "/metrics", timeout=5).read().decode()
print(next(l.split()[1] for l in m.splitlines() if l.startswith("pushgate_write_buffered_total ")))
PY
)
  kill $gw; wait $gw 2>/dev/null || true
  gw=
  python3 - "$OUT/idle-$t$tag.json" "$t$tag" "$N" "${buffered:-?}" <<'PY'
import json, sys
path, t, n, buffered = sys.argv[1:]
try:
    r = json.load(open(path))
except (OSError, ValueError) as e:
    sys.exit(f'{t}: no result ({e}); see the .txt beside it')
def fig(m):
    m = m or {}
    per = m.get("bytes_per_connection")
    return (f'{"n/a" if per is None else f"{per:.1f}"} B/conn '
            f'(+{m.get("workers_delta_bytes")} B over {m.get("connections")})')
c = r["connect"]
line = f'{t:9} clients_ok={c["ok"]:6} rate={c["rate_per_sec"]:6.0f}/s idle: {fig(r.get("memory"))}'
if r["command"] == "run":
    k = r["delivery"].get("check") or {}
    line += (f' | after burst: {fig(r.get("memory_after_drain"))}'
             f' published={r["publish"]["messages_accepted"]} unique={k.get("unique")}'
             f' lost={k.get("lost")} buffered_writes={buffered}')
if r.get("tls"):
    line += f' tls_full={r["tls"]["full"]} tls_resumed={r["tls"]["resumed"]}'
print(line)
if int(c["ok"]) != int(n):
    print(f'{t}: not every client connected; the figures above are for fewer connections', file=sys.stderr)
if r["command"] == "run" and (not r.get("passed") or r.get("memory_after_drain") is None):
    print(f'{t}: the burst did not pass cleanly (see {path[:-5]}.txt)', file=sys.stderr)
PY
done
