#!/usr/bin/env bash
# Single publishes at a sweep of rates, pushgate vs Nchan, in one run: at each rate, a
# freshly started pushgate (gateway --local-workers 1) and a freshly started nginx + Nchan
# (benches/nchan/nginx.conf, one worker process) take the same loadgen command — N
# WebSocket subscribers, each on its own channel, one message per request to random channels
# at RATE/s — one server at a time. Traffic stays on 127.0.0.0/8.
#
#   benches/sweep.sh [N=10000]
#
# At each rate and for each server: server CPU per delivery (Σ utime+stime of the server
# processes from the first publish until everything was delivered, the idle rate
# subtracted, ÷ deliveries), publish -> receive p50/p99/p99.9, deliveries per second
# (received ÷ first publish sent -> last received) and the loss/dup/order check. "max" is
# as fast as loadgen's publish connections go (8 keep-alive connections).
#
# Environment: RATES (default "500 1000 2000 5000 10000 20000 max"), SECS (publishing time
# per rate, default 10; at least MIN_MSGS messages are sent, default 10000), MAX_MSGS
# (messages of the "max" run, default 300000), SERVERS ("pushgate nchan"), PUSHGATE_ARGS
# (extra gateway flags), PUSHGATE_LOADGEN_ARGS (extra loadgen flags of the pushgate runs,
# e.g. --publish-stream), NO_BUILD=1, NO_RECORD=1 (do not append to benches/RESULTS.md nor
# write benches/sweep.svg), OUT (benches/out/sweep).
# Writes $OUT/table.md and the plot $OUT/sweep.svg (copied to benches/sweep.svg when
# recording). Installs nothing; needs what benches/compare.sh needs.
set -euo pipefail

N=${1:-10000}
RATES=${RATES:-500 1000 2000 5000 10000 20000 max}
SECS=${SECS:-10}
MIN_MSGS=${MIN_MSGS:-10000}
MAX_MSGS=${MAX_MSGS:-300000}
SERVERS=${SERVERS:-pushgate nchan}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benches/out/sweep}

ME=sweep.sh
# shellcheck source=benches/servers.sh
source "$ROOT/benches/servers.sh"

: >"$OUT/rc.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "sweep.sh: N=$N RATES=\"$RATES\" SECS=$SECS; logs and JSON in $OUT" >&2
"$BIN/send-floor" --sockets "$(( N < 9000 ? N : 9000 ))" --json >"$OUT/floor.json" 2>"$OUT/floor.stderr" ||
  echo "  send-floor failed (see $OUT/floor.stderr)" >&2
for rate in $RATES; do
  if [ "$rate" = max ]; then
    r=1000000
    dur=$(python3 -c "print(f'{$MAX_MSGS / $r:.3f}s')")
  else
    r=$rate
    dur=$(python3 -c "print(f'{max($SECS, $MIN_MSGS / $r):.3f}s')")
  fi
  for kind in $SERVERS; do
    echo "rate $rate/s for $dur: $kind" >&2
    extra=()
    [ "$kind" = pushgate ] && read -r -a extra <<<"${PUSHGATE_LOADGEN_ARGS:-}"
    run_case "r$rate" "$kind" run --clients "$N" --transport ws --ramp 5000/s \
      --rate "$r/s" --duration "$dur" --drain 30s "${extra[@]}"
  done
done

# ---------------------------------------------------------------- table and plot
TABLE=$OUT/table.md
PYTHONPATH=$ROOT/benches python3 - "$OUT" "$RATES" "$SERVERS" >"$TABLE" <<'PY'
import json, sys
from runs import Runs, lat, check, clean, deliveries_per_sec

out, rates, servers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
R = Runs(out)
f = lambda v, fmt: "n/a" if v is None else fmt.format(v)
ratio = lambda p, q: f"{p / q:.2f}" if p is not None and q else "-"
try:
    floor = json.load(open(f"{out}/floor.json")).get("awake_us_per_send")
except Exception:
    floor = None

points = {s: [] for s in servers}
print("| offered rate | published/s (p / N) | CPU µs per delivery (p / N) | p ÷ N | deliveries/s (p / N) | p ÷ N | p50 ms (p / N) | p99 ms (p / N) | p99.9 ms (p / N) | check (p / N) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for rate in rates:
    cells = {}
    for s in servers:
        name = f"r{rate}-{s}"
        r = R.load(name)
        cpu = R.per_delivery(name, r, True)
        dps = deliveries_per_sec(r) if r else None
        pub = r and r["publish"]["rate_per_sec"]
        cells[s] = dict(pub=pub, cpu=cpu, dps=dps, p50=lat(r, "p50"), p99=lat(r, "p99"),
                        p999=lat(r, "p999"), check=check(r) if r else "n/a",
                        ok=clean(r))
        if r and pub and cpu is not None:
            points[s].append((pub, cpu, lat(r, "p99"), lat(r, "p999")))
    p = cells.get("pushgate", {})
    n = cells.get("nchan", {})
    two = lambda k, fmt: f'{f(p.get(k), fmt)} / {f(n.get(k), fmt)}'
    label = "max (8 publish connections)" if rate == "max" else f"{int(rate):,}/s"
    print(f'| {label} | {two("pub", "{:,.0f}")} | {two("cpu", "{:,.1f}")} | {ratio(p.get("cpu"), n.get("cpu"))} '
          f'| {two("dps", "{:,.0f}")} | {ratio(p.get("dps"), n.get("dps"))} '
          f'| {two("p50", "{:,.3f}")} | {two("p99", "{:,.3f}")} | {two("p999", "{:,.3f}")} '
          f'| {p.get("check", "n/a")} / {n.get("check", "n/a")} |')
if floor is not None:
    print(f"\nFloor (send-floor, one small loopback TCP send to an awake reader, no server): {floor:.2f} µs CPU.")
json.dump(points, open(f"{out}/points.json", "w"))
PY

# The plot: CPU per delivery and p99 against the published rate (log scale), both servers.
python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
points = json.load(open(f"{out}/points.json"))
colors = {"pushgate": "#1f77b4", "nchan": "#d62728"}
W, H, L, R, T, B, GAP = 980, 380, 64, 20, 40, 56, 70
PW = (W - L - R - GAP) // 2
xs = [p[0] for v in points.values() for p in v] or [1, 10]
x0 = 10 ** math.floor(math.log10(min(xs)))
x1 = 10 ** math.ceil(math.log10(max(xs)))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>']

def nice(hi):
    """An axis top and a tick step with round values."""
    hi = hi or 1
    e = 10 ** math.floor(math.log10(hi))
    for m in (1, 2, 2.5, 5, 10):
        if hi <= m * e:
            top = m * e
            break
    step = top / 5
    return top, step

def panel(ox, title, key, unit):
    vals = [p[key] for v in points.values() for p in v if p[key] is not None]
    top, step = nice(max(vals) * 1.05 if vals else 1)
    x = lambda v: ox + (math.log10(v) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * PW
    y = lambda v: T + (1 - v / top) * (H - T - B)
    svg.append(f'<text x="{ox + PW / 2}" y="{T - 16}" text-anchor="middle" font-weight="bold">{title}</text>')
    k = 0
    while k * step <= top + 1e-9:
        v = k * step
        svg.append(f'<line x1="{ox}" y1="{y(v):.1f}" x2="{ox + PW}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
        svg.append(f'<text x="{ox - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        k += 1
    d = x0
    while d <= x1 * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v > x1 * 1.0001:
                break
            svg.append(f'<line x1="{x(v):.1f}" y1="{T}" x2="{x(v):.1f}" y2="{H - B}" stroke="#f0f0f0"/>')
            svg.append(f'<text x="{x(v):.1f}" y="{H - B + 16}" text-anchor="middle">{v:,.0f}</text>')
        d *= 10
    svg.append(f'<text x="{ox + PW / 2}" y="{H - B + 36}" text-anchor="middle">published messages per second (log scale)</text>')
    svg.append(f'<text x="{ox - 46}" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 {ox - 46} {(T + H - B) / 2})">{unit}</text>')
    svg.append(f'<rect x="{ox}" y="{T}" width="{PW}" height="{H - T - B}" fill="none" stroke="#999"/>')
    for i, (server, pts) in enumerate(sorted(points.items())):
        c = colors.get(server, "#555")
        pts = sorted(p for p in pts if p[key] is not None)
        if pts:
            svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(f"{x(p[0]):.1f},{y(p[key]):.1f}" for p in pts)}"/>')
            for p in pts:
                svg.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[key]):.1f}" r="3" fill="{c}"/>')
        lx, ly = ox + 12, T + 16 + 16 * i
        svg.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{c}" stroke-width="3"/>')
        svg.append(f'<text x="{lx + 24}" y="{ly}">{"Nchan" if server == "nchan" else server}</text>')

panel(L, "server CPU per delivery", 1, "µs CPU per delivery")
panel(L + PW + GAP, "publish → receive p99", 2, "ms")
svg.append("</svg>")
open(f"{out}/sweep.svg", "w").write("\n".join(svg))
PY
cat "$TABLE"
echo "loadgen exit codes: $(tr '\n' ' ' <"$OUT/rc.txt")"
echo "plot: $OUT/sweep.svg" >&2

# ---------------------------------------------------------------- record
if [ -z "${NO_RECORD:-}" ]; then
  cp "$OUT/sweep.svg" "$ROOT/benches/sweep.svg"
  RESULTS=$ROOT/benches/RESULTS.md
  HEADING="## Single-publish rate sweep, pushgate vs Nchan (benches/sweep.sh)"
  RUN=$OUT/run.md
  {
    if ! grep -qxF "$HEADING" "$RESULTS" 2>/dev/null; then
      echo "$HEADING"
      echo
      echo "One message per publish request, to random channels, N WebSocket subscribers each on"
      echo "its own channel; each rate against a freshly started server, one server at a time,"
      echo "with the same loadgen command (\`--target nchan\` for Nchan). pushgate: \`gateway"
      echo "--local-workers 1\`; Nchan: \`benches/nchan/nginx.conf\` (one nginx worker process). CPU:"
      echo "Σ utime+stime of all server processes from the first publish until everything was"
      echo "delivered, minus the idle rate, ÷ deliveries. \"p / N\" = pushgate / Nchan. The newest"
      echo "run's plot: [\`sweep.svg\`](sweep.svg)."
      echo
    fi
    echo "### $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`benches/sweep.sh $*\` (N=$N RATES=\"$RATES\" SECS=$SECS MIN_MSGS=$MIN_MSGS MAX_MSGS=$MAX_MSGS${PUSHGATE_ARGS:+ PUSHGATE_ARGS=\"$PUSHGATE_ARGS\"})"
    run_facts
    echo
    cat "$TABLE"
    echo
  } >"$RUN"
  python3 "$ROOT/benches/runs.py" append "$RESULTS" "$RUN" "$HEADING"
  echo "appended to $RESULTS" >&2
fi
