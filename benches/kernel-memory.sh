#!/usr/bin/env bash
# Kernel memory per idle connection, with the kernel's TCP settings as they come and with
# deploy/sysctl-pushgate.conf applied. The host's own settings are never changed: each case
# runs in a fresh network namespace (`ip netns add`); the file's keys are written only
# inside it, and only those a network namespace has its own copy of. The others (fs.*,
# net.ipv4.tcp_mem, net.core.netdev_max_backlog, ...) are host-wide and are listed as
# "not applied"; the script checks after every write that the host's value is unchanged.
#
#   benches/kernel-memory.sh [N=10000] [CASES="default tuned"] [PAYLOAD_BYTES=200]
#
# Per case, everything inside the namespace (loopback only): `gateway --local-workers 1
# --local-worker-ips 4`; `loadgen connect` opens N idle WebSocket clients from
# 127.0.1.1-127.0.1.20 and holds them. Readings:
#   base    gateway and worker up, no clients;
#   idle    N clients connected (only the handshake has crossed each connection);
#   burst   one message of ~PAYLOAD_BYTES published to every client (`loadgen publish
#           --pattern all`), all of them counted delivered by the worker, then 3 s:
#           idle again, but every socket has carried data;
#   closed  after loadgen closed its clients and their TIME-WAIT sockets are gone (ended
#           with `ss -K` where the kernel allows, else waited for): what is left.
#
# What is counted, per socket. On loopback every connection is two sockets, the client's
# and the worker's, both in the namespace; both are counted, and the worker side is also
# shown on its own.
#   - Slab objects. One socket is: a `struct tcp_sock` (cache TCP), a socket inode
#     (sock_inode_cache), a dentry, a struct file (filp), the LSM blobs of the inode and
#     file (lsm_inode_cache, lsm_file_cache), and, as the socket is in an epoll set, an
#     epoll item (eventpoll_epi), its wait-queue hook (eventpoll_pwq) and the file's epoll
#     list head (ep_head). The client side also has bind buckets for its source ports
#     (tcp_bind_bucket, tcp_bind2_bucket). Each object is costed at its share of its slab
#     (pages per slab x page size / objects per slab). The kernel merges small caches of
#     one size into one /proc/slabinfo row (e.g. eventpoll_pwq is counted in the row of
#     another 64-byte cache; /sys/kernel/slab/<name> links name the row): the script
#     reads the rows that hold these caches and prints what each row holds.
#     "measured": growth of those rows from `base` ÷ growth of TCP sockets in use in the
#     namespace (/proc/net/sockstat inuse, per namespace), i.e. the average over both ends;
#     "per worker-side socket": one object of each per-socket cache (no bind buckets), at
#     the sizes this kernel reports; the measured growth per socket of the single-purpose
#     caches (≈ 1.00 each) is what shows that this is the right count.
#   - Buffers: what TCP has charged to each socket: queued receive bytes + queued send
#     bytes + forward allocation + option memory (`ss -m` r + w + f + o), summed over the
#     namespace's established sockets, worker side and client side apart. Exact and per
#     namespace. (/proc/net/sockstat `TCP mem`, which loadgen's `memory.kernel` reads, is
#     printed too: it is host-wide and kept in per-CPU batches, so only a rough check.)
#   Not counted: user space (benches/idle-memory.sh), the fd table slot (8 B per fd),
#   page tables, and conntrack entries (none here: the namespace has no netfilter rules;
#   a host whose firewall tracks client connections adds one nf_conn per connection).
# Kernel bytes per worker-side socket = slab per worker-side socket + its buffers.
#
# /proc/slabinfo is host-wide: sockets opened or closed elsewhere on the host during a case
# distort the "measured" growth. A case in which the TCP, sock_inode_cache or filp row did
# not grow by 1.00 ± 0.03 per socket is marked NOISY and run again (up to TRIES=3 times);
# run on a quiet host. Rows shared with other caches (marked "shared") move with whatever
# else uses objects of their size and are not checked.
#
# Needs: root (ip netns, /proc/slabinfo), iproute2 (ip, ss), curl, python3, a Rust
# toolchain; an open-file hard limit of at least N + 500 (one process holds N sockets).
# Output: benches/out/kmem-<case>/ (readings, logs, summary.txt, result.json).
set -euo pipefail
N=${1:-10000}
CASES=${2:-"default tuned"}
PAYLOAD=${3:-200}
TRIES=${TRIES:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
OUT=${OUT:-$ROOT/benches/out}
CONF=${CONF:-$ROOT/deploy/sysctl-pushgate.conf}
PORT=18090 # inside the fresh namespace nothing else listens
mkdir -p "$OUT"

[ "$(id -u)" = 0 ] || { echo "needs root (ip netns add, /proc/slabinfo)" >&2; exit 3; }
for tool in ip ss curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 3; }
done
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $N connections (see deploy/limits-pushgate.conf)" >&2
  exit 3
fi
(cd "$ROOT" && cargo build --release -q -p gateway -p loadgen)

ns=
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null || true; ns=; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }

# Writes the conf file's keys inside the namespace; lists what could not be applied.
apply_conf() {
  local line key val path host_before host_after got
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    # A leading "-" (ignore failures, sysctl.conf(5)) is not part of the key.
    line=$(printf '%s' "$line" | sed 's/^[[:space:]]*-\{0,1\}//; s/[[:space:]]*$//')
    [ -n "$line" ] || continue
    key=$(printf '%s' "${line%%=*}" | tr -d '[:space:]')
    val=$(printf '%s' "${line#*=}" | sed 's/^[[:space:]]*//')
    path=/proc/sys/${key//.//}
    case $key in
      net.*) ;;
      *) echo "not applied: $key = $val (host-wide, not per network namespace)"; continue ;;
    esac
    if ! in_ns test -e "$path"; then
      echo "not applied: $key = $val (host-wide: no copy in a network namespace)"
      continue
    fi
    host_before=$(cat "$path" 2>/dev/null || echo absent)
    if in_ns sh -c 'printf "%s\n" "$1" > "$2"' _ "$val" "$path" 2>/dev/null; then
      got=$(in_ns cat "$path" | tr -s ' \t' ' ')
      echo "applied:     $key = $got"
    else
      echo "not applied: $key = $val (read-only in a network namespace)"
    fi
    host_after=$(cat "$path" 2>/dev/null || echo absent)
    if [ "$host_before" != "$host_after" ]; then
      echo "host value of $key changed ($host_before -> $host_after): stopping" >&2
      exit 4
    fi
  done <"$CONF"
}

# One reading: sockstat (namespace), slabinfo (host), ss (namespace).
snap() { # dir tag
  in_ns cat /proc/net/sockstat >"$1/$2.sockstat"
  cat /proc/slabinfo >"$1/$2.slab"
  in_ns ss -tanmH >"$1/$2.ss"
}

workers_json() { in_ns curl -fs "http://127.0.0.1:$PORT/v1/workers"; }
connections() {
  workers_json | python3 -c 'import json,sys; print(sum(w.get("connections") or 0 for w in json.load(sys.stdin)["workers"]))' 2>/dev/null || echo 0
}
delivered() { # worker address
  in_ns curl -fs "http://$1/metrics" |
    awk '/^pushgate_messages_delivered_total/ {s += $NF} END {printf "%d\n", s}'
}

# Which /proc/slabinfo row holds each cache of interest (merged caches share a row).
slab_rows() {
  local name row target aliases
  for name in TCP sock_inode_cache dentry filp lsm_inode_cache lsm_file_cache eventpoll_epi \
    eventpoll_pwq ep_head tcp_bind_bucket tcp_bind2_bucket; do
    row=
    if [ -e "/sys/kernel/slab/$name" ]; then
      target=$(readlink -f "/sys/kernel/slab/$name")
      while read -r r _; do
        [ -e "/sys/kernel/slab/$r" ] && [ "$(readlink -f "/sys/kernel/slab/$r")" = "$target" ] && { row=$r; break; }
      done < <(tail -n +3 /proc/slabinfo)
    elif grep -q "^$name " /proc/slabinfo; then
      row=$name
    fi
    aliases=0
    [ -n "$row" ] && [ -r "/sys/kernel/slab/$row/aliases" ] && aliases=$(cat "/sys/kernel/slab/$row/aliases")
    echo "$name ${row:--} $aliases"
  done
}

run_case() { # case dir
  local c=$1 dir=$2 worker lg have before accepted got
  ns=pgkmem-$$-$c
  ip netns add "$ns"
  in_ns ip link set lo up
  {
    echo "case $c, namespace $ns, $N WebSocket clients, kernel $(uname -r)"
    case $c in
      default) echo "sysctls: as a new network namespace starts" ;;
      tuned) echo "sysctls: $CONF, per namespace:"; apply_conf | sed 's/^/  /' ;;
    esac
    for k in net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.ipv4.tcp_moderate_rcvbuf net.core.somaxconn \
      net.ipv4.ip_local_port_range; do
      echo "  in the namespace: $k = $(in_ns cat "/proc/sys/${k//.//}" | tr -s ' \t' ' ')"
    done
    echo "  host-wide: net.ipv4.tcp_mem = $(tr -s ' \t' ' ' </proc/sys/net/ipv4/tcp_mem)"
  } | tee "$dir/sysctl.txt"
  slab_rows >"$dir/slab-rows.txt"

  ip netns exec "$ns" "$BIN/gateway" --listen 127.0.0.1:$PORT --local-workers 1 --local-worker-ips 4 \
    >"$dir/gateway.log" 2>&1 &
  pids+=($!)
  worker=
  for _ in $(seq 100); do
    worker=$(workers_json 2>/dev/null | python3 -c '
import json, sys
ws = [w for w in json.load(sys.stdin)["workers"] if w.get("state") == "healthy"]
print(ws[0]["addresses"][0] if ws else "")' 2>/dev/null || true)
    [ -n "$worker" ] && break
    sleep 0.1
  done
  [ -n "$worker" ] || { echo "$c: no healthy worker after 10 s; see $dir/gateway.log" >&2; return 5; }
  workers_json >"$dir/workers.json"
  sleep 1
  snap "$dir" base

  ip netns exec "$ns" "$BIN/loadgen" connect --gateway "http://127.0.0.1:$PORT" --clients "$N" \
    --transport ws --ramp 5000/s --hold 10m --max-duration 15m --channel-prefix kmem \
    --source-ips 127.0.1.1-127.0.1.20 --json "$dir/connect.json" --quiet >"$dir/connect.txt" 2>&1 &
  lg=$!
  pids+=($lg)
  for _ in $(seq 600); do
    [ "$(connections)" -ge "$N" ] && break
    kill -0 $lg 2>/dev/null || break
    sleep 0.2
  done
  have=$(connections)
  [ "$have" -ge "$N" ] || { echo "$c: only $have of $N clients connected; see $dir/connect.txt" >&2; return 5; }
  sleep 3
  snap "$dir" idle

  before=$(delivered "$worker")
  ip netns exec "$ns" "$BIN/loadgen" publish --gateway "http://127.0.0.1:$PORT" --channel-prefix kmem \
    --channels "$N" --pattern all --rate 1/s --duration 1s --batch $((N < 1000 ? N : 1000)) \
    --payload-bytes "$PAYLOAD" \
    --json "$dir/publish.json" --quiet >"$dir/publish.txt" 2>&1 || true
  accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["publish"]["messages_accepted"])' \
    "$dir/publish.json" 2>/dev/null || echo "$N")
  for _ in $(seq 300); do
    [ $(($(delivered "$worker") - before)) -ge "$accepted" ] && break
    sleep 0.1
  done
  got=$(($(delivered "$worker") - before))
  echo "burst: $accepted messages of ~$PAYLOAD B accepted, $got delivered by the worker" | tee "$dir/burst.txt"
  sleep 3
  snap "$dir" burst

  kill -INT $lg 2>/dev/null || true
  wait $lg 2>/dev/null || true
  # The client sides close first and sit in TIME-WAIT (with their bind buckets) for 60 s:
  # end them (ss -K, where the kernel allows) or wait, so that the closed reading shows
  # what is left and the next case does not see them go.
  in_ns ss -K state time-wait >/dev/null 2>&1 || true
  for _ in $(seq 70); do
    [ "$(in_ns ss -tanH state time-wait | wc -l)" = 0 ] && break
    sleep 1
  done
  sleep 2
  snap "$dir" closed
  cleanup
  analyze "$dir"
}

# Prints the figures of one case and writes them to result.json ("noisy": true when the
# slab growth was disturbed).
analyze() { # dir
  python3 - "$1" "$N" "$(getconf PAGESIZE)" <<'PY'
import json, re, statistics, sys

d, n, page = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PER_SOCKET = ["TCP", "sock_inode_cache", "dentry", "filp", "lsm_inode_cache", "lsm_file_cache",
              "eventpoll_epi", "eventpoll_pwq", "ep_head"]
CLIENT_ONLY = ["tcp_bind_bucket", "tcp_bind2_bucket"]
# Caches that are one object per socket and nothing else on this host: the noise check.
SINGLE = ["TCP", "sock_inode_cache", "filp"]

row_of, shared = {}, {}
for line in open(f"{d}/slab-rows.txt"):
    name, row, aliases = line.split()
    if row != "-":
        row_of[name] = row
        shared[row] = int(aliases) > 0
waddrs = {a for w in json.load(open(f"{d}/workers.json"))["workers"] for a in w["addresses"]}

def sockstat(tag):
    t = open(f"{d}/{tag}.sockstat").read()
    f = re.search(r"^TCP: (.*)$", t, re.M).group(1).split()
    return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}

def slab(tag):
    out = {}
    for line in open(f"{d}/{tag}.slab"):
        if line.startswith(("slabinfo", "#")):
            continue
        f = line.split()
        # name active_objs num_objs objsize objperslab pagesperslab
        out[f[0]] = {"active": int(f[1]), "objsize": int(f[3]),
                     "share": int(f[5]) * page / int(f[4])}
    return out

def ss(tag):
    """skmem of established worker-side and client-side sockets."""
    entries = []
    for line in open(f"{d}/{tag}.ss").read().splitlines():
        if line[:1].isspace():
            if entries:
                entries[-1] += line
        else:
            entries.append(line)
    server, client = [], []
    for e in entries:
        f = e.split()
        m = re.search(r"skmem:\(([^)]*)\)", e)
        if len(f) < 5 or f[0] != "ESTAB" or not m:
            continue
        mem = {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", m.group(1))}
        if f[3] in waddrs:
            server.append(mem)
        elif f[4] in waddrs:
            client.append(mem)
    return server, client

def buffers(socks):
    if not socks:
        return None
    charged = [s.get("r", 0) + s.get("w", 0) + s.get("f", 0) + s.get("o", 0) for s in socks]
    return {"sockets": len(socks), "charged_bytes": sum(charged),
            "per_socket": sum(charged) / len(socks),
            "sockets_holding_memory": sum(1 for c in charged if c > 0),
            "rcvbuf_median": statistics.median(s.get("rb", 0) for s in socks),
            "sndbuf_median": statistics.median(s.get("tb", 0) for s in socks)}

base, sl0 = sockstat("base"), slab("base")
sl_last = slab("burst")
rows = sorted({row_of[c] for c in PER_SOCKET + CLIENT_ONLY if c in row_of}, key=lambda r: shared[r])
holds = {r: [c for c in PER_SOCKET + CLIENT_ONLY if row_of.get(c) == r] for r in rows}
structural = {c: sl_last[row_of[c]]["share"] for c in PER_SOCKET if c in row_of}
per_server_slab = sum(structural.values())
result = {"dir": d, "clients": n, "page_size": page, "slab_rows": holds,
          "slab_rows_shared_with_other_caches": [r for r in rows if shared[r]],
          "slab_per_worker_side_socket": {"bytes": per_server_slab, "objects": structural},
          "readings": {}}
noisy = False
print("slab objects of one worker-side socket: "
      + " + ".join(f"{c} {b:.0f}" for c, b in structural.items()) + f" = {per_server_slab:.0f} B")
print("  rows shared with other caches of the same size: "
      + ("; ".join(f"{r} holds {', '.join(holds[r])} and others" for r in rows if shared[r]) or "none"))
for tag in ["idle", "burst", "closed"]:
    st, sl = sockstat(tag), slab(tag)
    dsock = st["inuse"] - base["inuse"]
    r = {"tcp_inuse_growth": dsock, "sockstat_tcp_mem_pages_growth": st["mem"] - base["mem"]}
    growth = {row: sl[row]["active"] - sl0[row]["active"] for row in rows}
    r["slab_rows_growth"] = growth
    print(f"{tag:6} TCP sockets in the namespace {dsock:+d}")
    if tag == "closed":
        print("         slab rows now vs base: " + ", ".join(f"{row} {g:+d}" for row, g in growth.items()))
    else:
        per = {row: g / dsock for row, g in growth.items()}
        r["slab_rows_growth_per_socket"] = per
        r["slab_measured_bytes_per_socket"] = sum(g * sl[row]["share"] for row, g in growth.items()) / dsock
        bad = [c for c in SINGLE if c in row_of and not shared[row_of[c]]
               and abs(per[row_of[c]] - 1) > 0.03]
        r["noisy"] = bool(bad)
        noisy |= r["noisy"]
        print("         slab rows, growth per socket x bytes per object: "
              + ", ".join(f"{row}{' (shared)' if shared[row] else ''} {per[row]:.2f} x {sl[row]['share']:.0f}"
                          for row in rows))
        line = f"         slab measured over both ends: {r['slab_measured_bytes_per_socket']:.0f} B per socket"
        if bad:
            line += " NOISY (" + ", ".join(f"{c} grew {per[row_of[c]]:.2f} per socket" for c in bad) + ")"
        print(line)
        server, client = ss(tag)
        r["worker_side"], r["client_side"] = buffers(server), buffers(client)
        for side in ["worker_side", "client_side"]:
            b = r[side]
            if b:
                print(f"         {side.replace('_', '-')}: {b['sockets']} sockets, buffers {b['per_socket']:.1f} B per socket "
                      f"({b['sockets_holding_memory']} holding any), rcvbuf median {b['rcvbuf_median']:.0f}, "
                      f"sndbuf median {b['sndbuf_median']:.0f}")
        if r["worker_side"]:
            k = per_server_slab + r["worker_side"]["per_socket"]
            r["kernel_bytes_per_worker_side_socket"] = k
            print(f"         kernel bytes per worker-side socket: {per_server_slab:.0f} slab + "
                  f"{r['worker_side']['per_socket']:.1f} buffers = {k:.0f}")
    print(f"         sockstat TCP mem {r['sockstat_tcp_mem_pages_growth']:+d} pages (host-wide)")
    result["readings"][tag] = r
try:
    result["loadgen_memory_kernel"] = (json.load(open(f"{d}/connect.json")).get("memory") or {}).get("kernel")
except (OSError, ValueError):
    result["loadgen_memory_kernel"] = None
result["noisy"] = noisy
json.dump(result, open(f"{d}/result.json", "w"), indent=1)
PY
}

[ -r /proc/slabinfo ] || { echo "/proc/slabinfo is not readable" >&2; exit 3; }
for c in $CASES; do
  case $c in default | tuned) ;; *) echo "unknown case $c (default|tuned)" >&2; exit 2 ;; esac
  dir=$OUT/kmem-$c
  for try in $(seq "$TRIES"); do
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== $c (try $try of $TRIES)"
    run_case "$c" "$dir" > >(tee "$dir/summary.txt") 2>&1
    sleep 0.2 # let tee finish
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["noisy"] else 1)' \
      "$dir/result.json" || break
    echo "$c: slab growth disturbed by other activity on the host; again in 10 s" >&2
    sleep 10
  done
done
