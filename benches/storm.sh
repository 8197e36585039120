#!/usr/bin/env bash
# A reconnect storm without TLS: N clients connected through /v1/assign to one worker (A),
# three more workers (B, C, D) joined after them and so holding none, a publisher sending
# to the clients' channels all along; then A is killed with -9 and not started again. Every
# client comes back through /v1/assign (loadgen's reconnect: a jittered wait, exponential
# after a failed attempt) to B, C and D and resumes with `since`. Prints the time from the
# kill until all N are connected again, the CPU the gateway and B+C+D used until then, the
# failed assigns (any `assign_*` drop kind), and loss, duplicates and reordering as
# loadgen's checker counts them (the run fails on any).
#
#   benches/storm.sh [N=18000]
#
# Environment: OUT=benches/out, TRANSPORT=ws (ws, sse, poll or mixed), RATE=200/s.
# Needs a Rust toolchain, curl, python3 and an open-file hard limit above N + 500.
set -euo pipefail
N=${1:-18000}
TRANSPORT=${TRANSPORT:-ws}
RATE=${RATE:-200/s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
OUT=${OUT:-$ROOT/benches/out}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $N connections" >&2
  exit 3
fi
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)
for b in gateway loadgen; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b" >&2; exit 3; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ns() { # CPU time of every thread of the given pids (ns)
  local t=0 v p f
  for p in "$@"; do
    for f in /proc/"$p"/task/*/schedstat; do
      read -r v _ < "$f" 2>/dev/null || continue
      t=$((t + v))
    done
  done
  echo $t
}
workers_json() { curl -fs "http://127.0.0.1:$port/v1/workers"; }
healthy() { workers_json | python3 -c 'import json,sys; print(sum(w["state"]=="healthy" for w in json.load(sys.stdin)["workers"]))' 2>/dev/null || echo 0; }
connected() { workers_json | python3 -c 'import json,sys; print(sum(w["connections"] for w in json.load(sys.stdin)["workers"] if w["state"]=="healthy"))' 2>/dev/null || echo 0; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export PUSHGATE_LINK_KEY=$key
RUST_LOG=warn "$BIN/gateway" --listen 127.0.0.1:$port >"$OUT/storm-gateway.log" 2>&1 &
gw=$!
pids+=($gw)
worker() { # worker IP (run as $(worker IP): the caller adds the pid to pids)
  RUST_LOG=warn "$BIN/gateway" worker --gateway "http://127.0.0.1:$port" --listen "$1:0" \
    >"$OUT/storm-worker-$1.log" 2>&1 &
  echo $!
}
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
a=$(worker 127.0.0.2)
pids+=($a)
for _ in $(seq 100); do [ "$(healthy)" -ge 1 ] && break; sleep 0.1; done

"$BIN/loadgen" run --gateway "http://127.0.0.1:$port" --clients "$N" --transport "$TRANSPORT" \
  --ramp 5000/s --rate "$RATE" --duration 60s --allow-drops --source-ips 127.0.1.1-127.0.1.40 \
  --json "$OUT/storm.json" --quiet >"$OUT/storm.txt" 2>&1 &
lg=$!
pids+=($lg)
for _ in $(seq 600); do [ "$(connected)" -ge "$N" ] && break; sleep 0.1; done
[ "$(connected)" -ge "$N" ] || { echo "only $(connected) of $N connected" >&2; exit 1; }
a_id=$(workers_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][0]["id"])')
b=$(worker 127.0.0.3)
c=$(worker 127.0.0.4)
d=$(worker 127.0.0.5)
pids+=($b $c $d)
for _ in $(seq 100); do [ "$(healthy)" -ge 4 ] && break; sleep 0.1; done
# B, C and D by their plain addresses: their own counts of open connections, not the
# gateway's view (which lags by a load report, and still lists A until its link is gone).
addrs=$(workers_json | python3 -c 'import json,sys; print(" ".join(w["addresses"][0] for w in json.load(sys.stdin)["workers"] if w["id"] != sys.argv[1]))' "$a_id")
open_bcd() {
  local t=0 a v
  for a in $addrs; do
    v=$(curl -fs "http://$a/metrics" | awk '/^pushgate_connections_open\{/ {s += $2} END {print s + 0}' || echo 0)
    t=$((t + ${v:-0}))
  done
  echo $t
}
sleep 3

cpu0=$(cpu_ns "$gw" "$b" "$c" "$d")
kill_ms=$(date +%s%3N)
kill -9 "$a"
back_ms=
for _ in $(seq 1200); do
  if [ "$(open_bcd)" -ge "$N" ]; then back_ms=$(date +%s%3N); break; fi
  sleep 0.05
done
cpu1=$(cpu_ns "$gw" "$b" "$c" "$d")
spread=
for a in $addrs; do
  spread+="$a=$(curl -fs "http://$a/metrics" | awk '/^pushgate_connections_open\{/ {s += $2} END {print s + 0}') "
done
rc=0
wait $lg || rc=$?
python3 - "$OUT/storm.json" "$N" "$kill_ms" "${back_ms:-0}" "$((cpu1 - cpu0))" "$spread" "$rc" <<'PY'
import json, sys
path, n, kill_ms, back_ms, cpu, spread, rc = sys.argv[1:]
r = json.load(open(path))
k = r["delivery"].get("check") or {}
drops = r["connect"].get("drops_by_kind") or {}
failed_assigns = sum(v for kind, v in drops.items() if kind.startswith("assign_"))
back = (int(back_ms) - int(kill_ms)) / 1000 if int(back_ms) else None
print(f'clients={n} all back after {back if back is not None else "never"} s; '
      f'CPU of the gateway and the three workers until then {int(cpu)/1e9:.2f} s '
      f'({int(cpu)/1e3/int(n):.0f} us per client); spread {spread}; '
      f'failed assigns={failed_assigns}; drops={drops}; reconnects={r["connect"]["reconnects"]}; '
      f'lost={k.get("lost")} duplicated={k.get("duplicated")} out_of_order={k.get("out_of_order")}; '
      f'passed={r["passed"]} (loadgen exit {rc})')
sys.exit(0 if r["passed"] and failed_assigns == 0 and back is not None else 1)
PY
