#!/usr/bin/env bash
# pushgate vs Nchan, side by side, in one run. Every workload runs against a freshly
# started pushgate (gateway --local-workers 1) and a freshly started nginx + Nchan
# (benches/nchan/nginx.conf: one worker process), one server at a time, with the same
# loadgen command (loadgen --target nchan for Nchan). Traffic stays on 127.0.0.0/8.
#
#   benches/compare.sh [N=10000]
#
#   (a) N idle WebSockets        -> server user-space bytes per connection (Σ VmRSS growth of
#                                   the server processes ÷ connections; loadgen --server-pid)
#   (b) N held long-polls        -> the same
#   (c) CHANNELS channels x 1 publish each (WebSocket subscribers, RATE/s)
#                                -> server CPU per delivery (Σ utime+stime of the server
#                                   processes over publish + delivery only) and publish->receive
#                                   p50/p99, plus the loss/dup/order check
#   (c2) the same through pushgate's NDJSON batch publish (BATCH messages per request;
#                                   Nchan has no batch publish: pushgate only)
#   (d) FANOUT subscribers, one publish each, sent as one burst -> time to the last one
#                                   (loadgen's span: first publish sent -> last received)
#                                   and the max publish->receive latency; FANOUT=0 skips it;
#                                   pushgate sends it as one POST /v1/broadcast
#   (e) one POST /v1/broadcast to CHANNELS channels (pushgate only) -> time to the last one
#   floor: target/release/send-floor, the kernel's CPU for one small loopback TCP send
#          with no server involved; every delivery costs at least one such send, so
#          "above the floor" = CPU per delivery - floor is what a server's own design costs
#
# Environment: CHANNELS (default N), RATE (2000), FANOUT (1000), BATCH (100), NO_BUILD=1 (use existing
# target/release binaries), NO_RECORD=1 (do not append to benches/RESULTS.md),
# OUT (benches/out/compare: JSON and logs of every run).
# Installs nothing. Needs nginx with the Nchan module (Debian/Ubuntu:
# `apt-get install -y nginx-light libnginx-mod-nchan`), python3 and curl.
set -euo pipefail

N=${1:-10000}
CHANNELS=${CHANNELS:-$N}
RATE=${RATE:-2000}
FANOUT=${FANOUT:-1000}
BATCH=${BATCH:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benches/out/compare}

ME=compare.sh
# shellcheck source=benches/servers.sh
source "$ROOT/benches/servers.sh"

: >"$OUT/rc.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
DUR_C=$(python3 -c "print(f'{$CHANNELS / $RATE:.3f}s')")
CMD_A=(connect --clients "$N" --transport ws --ramp 5000/s --hold 2s)
CMD_B=(connect --clients "$N" --transport poll --ramp 5000/s --hold 2s --poll-timeout 120)
CMD_C=(run --clients "$CHANNELS" --transport ws --ramp 5000/s --rate "$RATE/s"
       --duration "$DUR_C" --drain 30s)
CMD_C2=("${CMD_C[@]}" --batch "$BATCH")
CMD_D=(run --clients "$FANOUT" --transport ws --ramp 5000/s --rate "$((FANOUT * 100))/s"
       --duration 10ms --drain 30s)
# One broadcast request naming every channel: --batch = channels, one request due at t=0.
CMD_D_BC=(run --clients "$FANOUT" --transport ws --ramp 5000/s --rate "$FANOUT/s"
          --duration 1s --batch "$FANOUT" --broadcast --drain 30s)
CMD_E=(run --clients "$CHANNELS" --transport ws --ramp 5000/s --rate "$CHANNELS/s"
       --duration 1s --batch "$CHANNELS" --broadcast --drain 30s)

echo "compare.sh: N=$N CHANNELS=$CHANNELS RATE=$RATE/s FANOUT=$FANOUT BATCH=$BATCH; logs and JSON in $OUT" >&2
echo "floor: one loopback TCP send, no server" >&2
FLOOR_SOCKETS=$(( N < 9000 ? N : 9000 ))
"$BIN/send-floor" --sockets "$FLOOR_SOCKETS" --json >"$OUT/floor.json" 2>"$OUT/floor.stderr" ||
  echo "  send-floor failed (see $OUT/floor.stderr)" >&2
for kind in pushgate nchan; do
  echo "(a) $N idle WebSockets: $kind" >&2
  run_case a "$kind" "${CMD_A[@]}"
done
for kind in pushgate nchan; do
  echo "(b) $N held long-polls: $kind" >&2
  run_case b "$kind" "${CMD_B[@]}"
done
for kind in pushgate nchan; do
  echo "(c) $CHANNELS channels x 1 publish: $kind" >&2
  run_case c "$kind" "${CMD_C[@]}"
done
echo "(c2) $CHANNELS channels x 1 publish, NDJSON batches of $BATCH: pushgate" >&2
run_case c2 pushgate "${CMD_C2[@]}"
if [ "$FANOUT" -gt 0 ]; then
  echo "(d) $FANOUT subscribers, one broadcast: pushgate" >&2
  run_case d pushgate "${CMD_D_BC[@]}"
  echo "(d) $FANOUT subscribers, one burst: nchan" >&2
  run_case d nchan "${CMD_D[@]}"
fi
echo "(e) one broadcast to $CHANNELS channels: pushgate" >&2
run_case e pushgate "${CMD_E[@]}"

# ---------------------------------------------------------------- table
TABLE=$OUT/table.md
PYTHONPATH=$ROOT/benches python3 - "$OUT" "$N" "$CHANNELS" "$RATE" "$FANOUT" "$BATCH" >"$TABLE" <<'PY'
import json, os, sys
out, n, channels, rate, fanout, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])

from runs import Runs, lat, span, check
R = Runs(out)
load, per_delivery = R.load, R.per_delivery

def mem(r):
    m = r and r.get("memory")
    if not m or not m.get("connections"):
        return None
    return m["workers_delta_bytes"] / m["connections"]

def conns(r):
    return r and r["memory"] and r["memory"]["connections"]

rows = []
def row(label, p, q, unit, fmt="{:,.0f}", ratio=True):
    f = lambda v: "n/a" if v is None else (fmt.format(v) if not isinstance(v, str) else v)
    rt = f"{q / p:.2f}" if ratio and isinstance(p, (int, float)) and isinstance(q, (int, float)) and p else "-"
    rows.append(f"| {label} | {f(p)} | {f(q)} | {rt} |" if not unit else f"| {label} ({unit}) | {f(p)} | {f(q)} | {rt} |")

a_p, a_n = load("a-pushgate"), load("a-nchan")
b_p, b_n = load("b-pushgate"), load("b-nchan")
c_p, c_n = load("c-pushgate"), load("c-nchan")
d_p, d_n = load("d-pushgate"), load("d-nchan")
c2_p, e_p = load("c2-pushgate"), load("e-pushgate")
floor = load("floor") or {}
floor_us = floor.get("awake_us_per_send")
def above(v):
    return v - floor_us if v is not None and floor_us is not None else None
print("| workload | pushgate | Nchan | Nchan ÷ pushgate |")
print("|---|---:|---:|---:|")
row(f"floor: one {floor.get('bytes', '?')} B loopback TCP send to an awake reader, no server (send-floor)",
    floor_us, floor_us, "µs CPU", "{:,.2f}", ratio=False)
row(f"floor: the same, nobody waiting", floor.get("idle_us_per_send"), floor.get("idle_us_per_send"), "µs CPU", "{:,.2f}", ratio=False)
row(f"(a) idle WebSockets connected", conns(a_p), conns(a_n), "", ratio=False)
row(f"(a) idle WebSocket, server user space", mem(a_p), mem(a_n), "B/conn")
row(f"(b) held long-polls connected", conns(b_p), conns(b_n), "", ratio=False)
row(f"(b) held long-poll, server user space", mem(b_p), mem(b_n), "B/conn")
row(f"(c) {channels} channels x 1 publish: delivered", check(c_p), check(c_n), "", ratio=False)
row(f"(c) server CPU per delivery", per_delivery("c-pushgate", c_p), per_delivery("c-nchan", c_n), "µs", "{:,.1f}")
row(f"(c) same, idle CPU subtracted", per_delivery("c-pushgate", c_p, True), per_delivery("c-nchan", c_n, True), "µs", "{:,.1f}")
row(f"(c) publish→receive p50", lat(c_p, "p50"), lat(c_n, "p50"), "ms", "{:,.3f}")
row(f"(c) publish→receive p99", lat(c_p, "p99"), lat(c_n, "p99"), "ms", "{:,.3f}")
row(f"(c) CPU per delivery above the floor", above(per_delivery("c-pushgate", c_p, True)), above(per_delivery("c-nchan", c_n, True)), "µs", "{:,.1f}")
row(f"(c2) same in NDJSON batches of {batch}: delivered", check(c2_p), "n/a", "", ratio=False)
row(f"(c2) server CPU per delivery, idle CPU subtracted", per_delivery("c2-pushgate", c2_p, True), per_delivery("c-nchan", c_n, True), "µs", "{:,.1f}")
row(f"(c2) CPU per delivery above the floor", above(per_delivery("c2-pushgate", c2_p, True)), above(per_delivery("c-nchan", c_n, True)), "µs", "{:,.1f}")
row(f"(c2) publish→receive p50", lat(c2_p, "p50"), None, "ms", "{:,.3f}", ratio=False)
row(f"(c2) publish→receive p99", lat(c2_p, "p99"), None, "ms", "{:,.3f}", ratio=False)
if fanout:
    row(f"(d) {fanout} subscribers, 1 broadcast (pushgate) / 1 burst (Nchan): delivered", check(d_p), check(d_n), "", ratio=False)
    row(f"(d) time to the last one (first publish sent → last received)", span(d_p), span(d_n), "ms", "{:,.2f}")
    row(f"(d) max publish→receive latency", lat(d_p, "max"), lat(d_n, "max"), "ms", "{:,.2f}")
    row(f"(d) publish→receive p50", lat(d_p, "p50"), lat(d_n, "p50"), "ms", "{:,.2f}")
row(f"(e) 1 broadcast to {channels} channels: delivered", check(e_p), "n/a", "", ratio=False)
row(f"(e) time to the last one (first publish sent → last received)", span(e_p), None, "ms", "{:,.2f}", ratio=False)
row(f"(e) server CPU per delivery", per_delivery("e-pushgate", e_p), None, "µs", "{:,.1f}", ratio=False)
print("\n".join(rows))

def breakdown(r):
    m = r and r.get("memory")
    if not m or not m.get("connections"):
        return "n/a"
    return ", ".join(f'{w["id"]} {w["delta_bytes"] / m["connections"]:+,.0f}' for w in m["workers"])

print()
print("Per server process, RSS growth ÷ connections in B (first pid = gateway / nginx master):")
for label, p, q in (("(a)", a_p, a_n), ("(b)", b_p, b_n)):
    print(f"{label} pushgate: {breakdown(p)}; Nchan: {breakdown(q)}  ")
PY
cat "$TABLE"
echo "loadgen exit codes: $(tr '\n' ' ' <"$OUT/rc.txt")"

# ---------------------------------------------------------------- record
if [ -z "${NO_RECORD:-}" ]; then
  RESULTS=$ROOT/benches/RESULTS.md
  HEADING="## pushgate vs Nchan (benches/compare.sh)"
  RUN=$OUT/run.md
  {
    if ! grep -qxF "$HEADING" "$RESULTS" 2>/dev/null; then
      echo "$HEADING"
      echo
      echo "Each workload runs on a freshly started server, one server at a time, with the same"
      echo "loadgen command (\`--target nchan\` for Nchan). pushgate: \`gateway --local-workers 1\`"
      echo "(gateway + one worker process); Nchan: nginx 1.x, one worker process,"
      echo "\`benches/nchan/nginx.conf\` (in-memory, buffer 100 messages / 10 min). Memory: Σ VmRSS"
      echo "growth of all server processes ÷ connections. CPU: Σ utime+stime of all server"
      echo "processes from the first publish until every message was delivered (publish handling"
      echo "included, connect and close excluded) ÷ deliveries; \"idle CPU subtracted\" removes"
      echo "the servers' CPU rate while idle with every client connected (the settle time before"
      echo "publishing) × the publish+delivery time. CPU is in clock ticks (10 ms), so small runs"
      echo "are coarse. Latency: publish (loadgen's send time in the payload) → receive, WebSocket"
      echo "subscribers; loadgen runs on the same 2-core machine as the server."
      echo
    fi
    echo "### $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$(cd "$ROOT" && echo "benches/compare.sh $*") \` (N=$N CHANNELS=$CHANNELS RATE=$RATE/s FANOUT=$FANOUT BATCH=$BATCH)"
    run_facts
    echo
    cat "$TABLE"
    echo
  } >"$RUN"
  # The run goes at the end of the section (before the next "## " heading), or starts the
  # section at the end of the file.
  python3 "$ROOT/benches/runs.py" append "$RESULTS" "$RUN" "$HEADING"
  echo "appended to $RESULTS" >&2
fi
