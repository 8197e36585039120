#!/usr/bin/env bash
# What a publish costs in Redis, in one run on one machine:
#   1. the ceilings: redis-benchmark's plain XADD, the bare pg_publish function and the bare
#      pg_publish_batch with 32 messages a call (called directly, no gateway), as calls/s
#      on one Redis core and Redis µs per call and per message;
#   2. publishes through one gateway (--store redis): single publishes and NDJSON batches,
#      with the CPU Redis and the gateway used, so publishes per Redis core-second;
#   3. the same loadgen runs against a memory-store gateway (the ratio Redis costs).
#
#   benches/redis.sh [SECONDS=5] [CHANNELS=10000]
#   SINGLE_RATE=30000 benches/redis.sh ...   (the rate loadgen aims single publishes at)
#
# Needs redis-server, redis-benchmark, redis-cli (Debian's redis-server / redis-tools) and
# release binaries (built if missing). Prints one line per figure; nothing is kept.
set -euo pipefail
SECS=${1:-5}
CHANNELS=${2:-10000}
SINGLE_RATE=${SINGLE_RATE:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || (cd "$ROOT" && cargo build --release -p gateway -p loadgen)
DIR=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ms() { awk '{print ($14+$15)*10}' "/proc/$1/stat"; }
usec_per_call() { redis-cli -p "$RP" INFO commandstats | tr -d '\r' | sed -n "s/^cmdstat_$1:.*usec_per_call=\([0-9.]*\).*/\1/p"; }

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
pids+=($!)
RPID=$!
until redis-cli -p "$RP" PING >/dev/null 2>&1; do sleep 0.05; done
echo "machine: $(nproc) cores, $(redis-server --version | cut -d' ' -f3), $(uname -r)"

# 1. Ceilings (16 clients, pipelining 16, one Redis core).
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
rb=$(redis-benchmark -p "$RP" -c 16 -P 16 -n 300000 -r 100000 -q XADD 'bench:{__rand_int__}' MAXLEN '~' 100 '*' d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
echo "ceiling XADD: $rb; $(usec_per_call xadd) µs Redis per call"
redis-cli -p "$RP" FLUSHALL >/dev/null

# The function library, loaded by a gateway (the same file the gateway embeds).
redis-cli -p "$RP" -x FUNCTION LOAD REPLACE <"$ROOT/gateway/src/store/redis/pushgate.lua" >/dev/null
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
now=$(($(date +%s) * 1000))
data=$(printf 'x%.0s' $(seq 1 150))
# pg_publish ARGV: data now max_messages max_age_ms max_channel_bytes meta_ttl_ms new_epoch op key strict
rb=$(redis-benchmark -p "$RP" -c 16 -P 16 -n 300000 -r "$CHANNELS" -q FCALL pg_publish 3 'pg:{c__rand_int__}:m' 'pg:{c__rand_int__}:l' 'pg:{c__rand_int__}:i:' "$data" "$now" 100 300000 16777216 2592000000 7 '0000__rand_int__' '' 1 | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
echo "ceiling bare pg_publish: $rb; $(usec_per_call fcall) µs Redis per call"
redis-cli -p "$RP" FLUSHALL >/dev/null
# The same, one call per publish without pipelining (8 clients, as 8 publishers): what
# Redis alone does when every publish is its own round trip, the floor for single publishes.
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
rb=$(redis-benchmark -p "$RP" -c 8 -P 1 -n 200000 -r "$CHANNELS" -q FCALL pg_publish 3 'pg:{c__rand_int__}:m' 'pg:{c__rand_int__}:l' 'pg:{c__rand_int__}:i:' "$data" "$now" 100 300000 16777216 2592000000 7 '0000__rand_int__' '' 1 | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
echo "floor one call per publish (8 clients, no pipelining): $rb; $(usec_per_call fcall) µs Redis per call"
redis-cli -p "$RP" FLUSHALL >/dev/null
# pg_publish_batch ARGV: now max_messages max_age_ms max_channel_bytes meta_ttl_ms new_epoch
# strict, then data key op for each message (KEYS: meta list idem for each).
B=32
keys=(); margs=()
for _ in $(seq "$B"); do
  keys+=('pg:{c__rand_int__}:m' 'pg:{c__rand_int__}:l' 'pg:{c__rand_int__}:i:')
  margs+=("$data" '' '0000__rand_int__')
done
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
rb=$(redis-benchmark -p "$RP" -c 16 -P 4 -n $((300000 / B)) -r "$CHANNELS" -q FCALL pg_publish_batch $((3 * B)) "${keys[@]}" "$now" 100 300000 16777216 2592000000 7 1 "${margs[@]}" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
us=$(usec_per_call fcall)
echo "ceiling bare pg_publish_batch ($B a call): $rb; $us µs Redis per call = $(python3 -c "print(f'{$us / $B:.2f} µs per message, {1e6 * $B / $us:,.0f} messages per Redis core-second')")"
redis-cli -p "$RP" FLUSHALL >/dev/null

# 2./3. Through a gateway, Redis store and memory store.
run() { # name store loadgen-args...
  local name=$1 store=$2; shift 2
  local gp gw
  gp=$(free_port)
  "$BIN/gateway" --listen "127.0.0.1:$gp" --store "$store" >"$DIR/gw-$name.log" 2>&1 &
  gw=$!
  pids+=("$gw")
  until curl -sf "http://127.0.0.1:$gp/healthz" >/dev/null 2>&1; do sleep 0.05; done
  redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
  local r0 g0 r1 g1
  r0=$(cpu_ms "$RPID"); g0=$(cpu_ms "$gw")
  "$BIN/loadgen" publish --gateway "http://127.0.0.1:$gp" --channels "$CHANNELS" --duration "${SECS}s" \
    --quiet --json "$DIR/$name.json" "$@" >/dev/null 2>&1 || true
  r1=$(cpu_ms "$RPID"); g1=$(cpu_ms "$gw")
  kill "$gw"; wait "$gw" 2>/dev/null || true
  python3 - "$DIR/$name.json" "$name" "$store" $((r1 - r0)) $((g1 - g0)) "$SECS" "$(usec_per_call fcall)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
name, store, rms, gms, secs, us = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
p = j.get("publish", j)
acc = p.get("messages_accepted", 0)
secs = p.get("secs") or secs
line = f"{name}: {acc/secs:,.0f} publishes/s accepted ({acc} in {secs:.0f} s), gateway CPU {gms} ms"
if store != "memory":
    per_core = acc / (rms / 1000) if rms else 0
    line += f", Redis CPU {rms} ms = {per_core:,.0f} publishes per Redis core-second ({1000 * rms / max(acc, 1):.1f} µs each), {us or '?'} µs Redis per FCALL"
print(line)
EOF
}
single=(--batch 1 --rate "$SINGLE_RATE/s" --publish-connections 8)
batch=(--batch 100 --rate 200000/s --publish-connections 4)
run redis-single "redis://127.0.0.1:$RP" "${single[@]}"
redis-cli -p "$RP" FLUSHALL >/dev/null
run memory-single memory "${single[@]}"
run redis-ndjson "redis://127.0.0.1:$RP" "${batch[@]}"
redis-cli -p "$RP" FLUSHALL >/dev/null
run memory-ndjson memory "${batch[@]}"
