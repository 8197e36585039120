#!/usr/bin/env bash
# Soak: a gateway with two local workers under a long loadgen churn run (mixed transports:
# WebSocket, long-poll, SSE in turn; a share of the clients drop and resume with `since`
# all along; every message checked), with bad clients mixed in (benches/soak_bad_clients.py:
# slow readers cut and resuming, slowloris, garbage, broken WebSocket frames, stalled
# publish bodies). The RSS of every process is sampled every 5 s. Passes when loadgen saw
# no loss, duplicate or reordering and no process's RSS grew after the warm-up: the peak
# of the last third of the run is within LIMIT % of the peak of the first third after the
# warm-up. Writes $OUT/soak-rss.csv and the plot $OUT/soak-rss.svg.
#
#   benches/soak.sh [SECONDS=600] [CLIENTS=6000]
#
# Environment: OUT=benches/out, WARMUP=120 (s), LIMIT=10 (%), RATE=300/s, RETENTION=60 (the
# gateway's --retention-secs: the store's steady state must come within the warm-up).
# Needs a Rust toolchain, curl and python3.
set -euo pipefail
SECS=${1:-600}
CLIENTS=${2:-6000}
WARMUP=${WARMUP:-120}
LIMIT=${LIMIT:-10}
RATE=${RATE:-300/s}
RETENTION=${RETENTION:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
OUT=${OUT:-$ROOT/benches/out}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
gwurl=http://127.0.0.1:$port
RUST_LOG=warn "$BIN/gateway" --listen 127.0.0.1:$port --local-workers 2 \
  --retention-secs "$RETENTION" --local-worker-arg=--max-pending-bytes=262144 \
  >"$OUT/soak-gateway.log" 2>&1 &
gw=$!
pids+=($gw)
for _ in $(seq 200); do
  [ "$(curl -fs "$gwurl/v1/workers" | grep -o '"healthy"' | wc -l)" -ge 2 ] && break
  sleep 0.1
done

"$BIN/loadgen" churn --gateway "$gwurl" --clients "$CLIENTS" --transport mixed \
  --ramp 2000/s --rate "$RATE" --duration "${SECS}s" --fraction 0.1 --churn-rate 50/s --backoff 300ms \
  --source-ips 127.0.1.1-127.0.1.20 --max-duration "$((SECS + 180))s" \
  --json "$OUT/soak.json" --quiet >"$OUT/soak.txt" 2>&1 &
lg=$!
pids+=($lg)
python3 "$ROOT/benches/soak_bad_clients.py" "$gwurl" "$SECS" >"$OUT/soak-bad.json" 2>"$OUT/soak-bad.log" &
bad=$!
pids+=($bad)

# Every 5 s: the RSS (KiB) of the gateway, each worker and loadgen (with its shards).
echo "t,role,pid,rss_kib" >"$OUT/soak-rss.csv"
t0=$(date +%s)
while kill -0 "$lg" 2>/dev/null; do
  t=$(($(date +%s) - t0))
  workers=$(cat /proc/$gw/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true)
  shards=$(cat /proc/$lg/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true)
  for p in $gw $workers $lg $shards; do
    role=gateway
    case " $(echo $workers) " in *" $p "*) role=worker ;; esac
    [ "$p" = "$lg" ] && role=loadgen
    case " $(echo $shards) " in *" $p "*) role=loadgen ;; esac
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || true)
    [ -n "$rss" ] && echo "$t,$role,$p,$rss" >>"$OUT/soak-rss.csv"
  done
  sleep 5
done
rc=0
wait $lg || rc=$?
wait $bad || true

python3 - "$OUT" "$WARMUP" "$LIMIT" "$SECS" "$rc" <<'PY'
import csv, json, sys
out, warmup, limit, secs, rc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
series = {}
for row in csv.DictReader(open(f"{out}/soak-rss.csv")):
    series.setdefault((row["role"], row["pid"]), []).append((int(row["t"]), int(row["rss_kib"])))
r = json.load(open(f"{out}/soak.json"))
k = r["delivery"].get("check") or {}
bad = open(f"{out}/soak-bad.json").read().strip()
print(f"loadgen: passed={r['passed']} (exit {rc}) expected={k.get('expected')} lost={k.get('lost')} "
      f"duplicated={k.get('duplicated')} out_of_order={k.get('out_of_order')} "
      f"reconnects={r['connect']['reconnects']}")
print(f"bad clients: {bad}")
flat = True
third = (secs - warmup) / 3
for (role, pid), pts in sorted(series.items()):
    early = [v for t, v in pts if warmup <= t < warmup + third]
    late = [v for t, v in pts if t >= secs - third and t <= secs]
    if not early or not late:
        continue
    growth = (max(late) - max(early)) / max(early) * 100
    ok = growth <= limit
    flat &= ok
    print(f"{role:8} pid {pid:>7}: RSS after warm-up {max(early)/1024:7.1f} MiB, last third "
          f"{max(late)/1024:7.1f} MiB, growth {growth:+5.1f} % {'flat' if ok else 'GREW'}")

# The plot: RSS over time, one line per process, warm-up shaded.
W, H, L, B, T, R = 900, 420, 70, 50, 30, 170
tmax = max(t for pts in series.values() for t, _ in pts) or 1
vmax = max(v for pts in series.values() for _, v in pts) / 1024 * 1.1 or 1
step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000) if vmax / s <= 8)
x = lambda t: L + (W - L - R) * t / tmax
y = lambda v: H - B - (H - B - T) * v / vmax
colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect x="{x(0)}" y="{T}" width="{x(min(warmup, tmax)) - x(0)}" height="{H - B - T}" fill="#eee"/>',
       f'<text x="{x(0) + 4}" y="{T + 14}" fill="#777">warm-up</text>',
       f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#000"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#000"/>',
       f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">time (s)</text>',
       f'<text x="15" y="{(T + H - B) / 2}" transform="rotate(-90 15 {(T + H - B) / 2})" text-anchor="middle">RSS (MiB)</text>']
v = 0
while v <= vmax:
    svg.append(f'<line x1="{L - 4}" y1="{y(v)}" x2="{W - R}" y2="{y(v)}" stroke="#ddd"/>')
    svg.append(f'<text x="{L - 8}" y="{y(v) + 4}" text-anchor="end">{v}</text>')
    v += step
tstep = next(s for s in (10, 30, 60, 120, 300, 600, 1200) if tmax / s <= 10)
t = 0
while t <= tmax:
    svg.append(f'<text x="{x(t)}" y="{H - B + 16}" text-anchor="middle">{t}</text>')
    t += tstep
for i, ((role, pid), pts) in enumerate(sorted(series.items())):
    c = colors[i % len(colors)]
    d = " ".join(f"{x(t):.1f},{y(v / 1024):.1f}" for t, v in pts)
    svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
    svg.append(f'<line x1="{W - R + 10}" y1="{T + 10 + 18 * i}" x2="{W - R + 30}" y2="{T + 10 + 18 * i}" stroke="{c}" stroke-width="3"/>')
    svg.append(f'<text x="{W - R + 36}" y="{T + 14 + 18 * i}">{role} {pid}</text>')
svg.append("</svg>")
open(f"{out}/soak-rss.svg", "w").write("\n".join(svg))
print(f"plot: {out}/soak-rss.svg")
sys.exit(0 if r["passed"] and rc == 0 and flat else 1)
PY
