#!/usr/bin/env bash
# A reconnect storm of TLS clients on one worker: N WebSocket clients over TLS (wss://)
# connected through /v1/assign to one local worker; then the worker is killed with -9, the
# gateway starts it again, and every client comes back (assign again, resume with since).
# Run twice: clients that offer their TLS tickets (resumed: the new worker process opens
# them with the fleet's keys, which come from the gateway) and clients that never do (full
# handshakes). Prints, for each: the time from the kill until all N are connected again,
# the handshakes the clients made, and the CPU the new worker process used.
#
#   benches/tls-storm.sh [N=18000]
#
# Environment: OUT=benches/out. Needs a Rust toolchain, openssl, curl, python3 and an
# open-file hard limit above N + 500.
set -euo pipefail
N=${1:-18000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
OUT=${OUT:-$ROOT/benches/out}
mkdir -p "$OUT/tls"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $N connections" >&2
  exit 3
fi
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=pushgate-bench -addext "subjectAltName=IP:127.0.0.2,DNS:localhost" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
  -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>/dev/null

gw=
lg=
trap '[ -n "$lg" ] && kill $lg 2>/dev/null; [ -n "$gw" ] && kill $gw 2>/dev/null; true' EXIT

cpu_ns() { # CPU time of every thread of pid $1 (ns)
  local t=0 v
  for f in /proc/"$1"/task/*/schedstat; do
    read -r v _ < "$f" || continue
    t=$((t + v))
  done
  echo $t
}

for mode in resumed full; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/gateway" --listen 127.0.0.1:$port --local-workers 1 --local-worker-ips 1 \
    "--local-worker-arg=--listen-tls=127.0.0.2:0,--tls-cert=$OUT/tls/cert.pem,--tls-key=$OUT/tls/key.pem" \
    >"$OUT/storm-gateway-$mode.log" 2>&1 &
  gw=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v1/workers" | grep -q healthy && break
    sleep 0.1
  done
  extra=()
  [ $mode = full ] && extra=(--tls-no-resume)
  "$BIN/loadgen" run --gateway "http://127.0.0.1:$port" --clients "$N" --transport ws \
    --tls --ca "$OUT/tls/cert.pem" "${extra[@]}" --ramp 5000/s --rate 1/s --duration 45s \
    --allow-drops --source-ips 127.0.1.1-127.0.1.40 --json "$OUT/storm-$mode.json" --quiet \
    >"$OUT/storm-$mode.txt" 2>&1 &
  lg=$!
  # Once all are connected and settled: kill the worker.
  for _ in $(seq 300); do
    n=$(curl -fs "http://127.0.0.1:$port/v1/workers" | python3 -c 'import json,sys; print(sum(w["connections"] for w in json.load(sys.stdin)["workers"]))' 2>/dev/null || echo 0)
    [ "$n" -ge "$N" ] && break
    sleep 0.1
  done
  sleep 3
  old=$(cat /proc/$gw/task/*/children | tr ' ' '\n' | grep . | head -1)
  kill_ms=$(date +%s%3N)
  kill -9 "$old"
  # The new worker process, and its CPU until every client is back.
  new=
  for _ in $(seq 200); do
    new=$(cat /proc/$gw/task/*/children 2>/dev/null | tr ' ' '\n' | grep . | grep -v "^$old$" | head -1 || true)
    [ -n "$new" ] && break
    sleep 0.05
  done
  # Its plain address once it is healthy, then its own count of open WebSockets.
  waddr=
  for _ in $(seq 400); do
    waddr=$(curl -fs "http://127.0.0.1:$port/v1/workers" | python3 -c 'import json,sys; w=[w for w in json.load(sys.stdin)["workers"] if w["state"]=="healthy"]; print(w[0]["addresses"][0] if w else "")' 2>/dev/null || true)
    [ -n "$waddr" ] && break
    sleep 0.05
  done
  back_ms=
  for _ in $(seq 2400); do
    n=$(curl -fs "http://$waddr/metrics" | awk '/^pushgate_connections_open\{transport="ws"\}/ {print $2}' || echo 0)
    if [ "${n:-0}" -ge "$N" ]; then back_ms=$(date +%s%3N); break; fi
    sleep 0.05
  done
  cpu=$(cpu_ns "$new")
  wait $lg || true
  lg=
  kill $gw; wait $gw 2>/dev/null || true
  gw=
  python3 - "$OUT/storm-$mode.json" "$mode" "$N" "$kill_ms" "${back_ms:-0}" "$cpu" <<'PY'
import json, sys
path, mode, n, kill_ms, back_ms, cpu = sys.argv[1:]
r = json.load(open(path))
t = r.get("tls") or {}
k = r["delivery"].get("check") or {}
back = (int(back_ms) - int(kill_ms)) / 1000 if int(back_ms) else None
print(f'{mode:8} clients={n} all back after {back if back is not None else "never"} s; '
      f'new worker CPU until then {int(cpu)/1e9:.2f} s ({int(cpu)/1e3/int(n):.0f} us per client); '
      f'handshakes full={t.get("full")} resumed={t.get("resumed")}; '
      f'reconnects={r["connect"]["reconnects"]} lost={k.get("lost")} passed={r["passed"]}')
PY
done
