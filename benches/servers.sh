#!/usr/bin/env bash
# Sourced by benches/compare.sh and benches/sweep.sh (not run on its own): prerequisites,
# the build, and one server at a time — pushgate (gateway --local-workers 1) or nginx +
# Nchan (benches/nchan/nginx.conf) — started fresh for each loadgen run and stopped after.
#
# The sourcing script sets ME (its name, for messages), N (clients), ROOT and OUT before
# sourcing. PUSHGATE_ARGS (environment) adds gateway flags to every pushgate start; BIN
# (environment) is where the binaries are (default target/release).
# Sets BIN, TMP, SRC_IPS, NGINX, NCHAN_MODULE; defines start_server, stop_server, run_case.

BIN=${BIN:-$ROOT/target/release}
TEMPLATE=$ROOT/benches/nchan/nginx.conf
SRC_IPS=127.0.1.1-127.0.1.20
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/pushgate-$ME.XXXXXX)

# ---------------------------------------------------------------- prerequisites
missing=()
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
NCHAN_MODULE=""
if command -v dpkg >/dev/null 2>&1; then
  NCHAN_MODULE=$(dpkg -L libnginx-mod-nchan 2>/dev/null | grep 'ngx_nchan_module\.so$' | head -1 || true)
fi
[ -z "$NCHAN_MODULE" ] && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] &&
  NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
# nginx and Nchan are needed only when a run starts Nchan (SERVERS=pushgate does not).
case " ${SERVERS:-nchan} " in
  *" nchan "*)
    [ -z "$NGINX" ] && missing+=("nginx (package nginx-light or nginx)")
    [ -z "$NCHAN_MODULE" ] && missing+=("the Nchan module (package libnginx-mod-nchan)")
    ;;
esac
for tool in python3 curl pgrep; do
  command -v $tool >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "$ME: missing: ${missing[*]}" >&2
  echo "$ME: on Debian/Ubuntu: apt-get install -y nginx-light libnginx-mod-nchan python3 curl procps" >&2
  exit 3
fi

# One process may hold at most this many files here; the servers and loadgen inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((N + 500)) ]; then
  echo "$ME: open-file limit $(ulimit -n) is too low for N=$N" >&2
  exit 2
fi

if [ -z "${NO_BUILD:-}" ]; then
  # One build per target kind: `--bin` would narrow every `-p` to that one binary.
  (cd "$ROOT" && cargo build --release -q -p gateway -p worker -p loadgen &&
    cargo build --release -q -p pushgate-benches --bin send-floor)
fi

# ---------------------------------------------------------------- process handling
SERVER_PIDS=()   # every process we started and have not stopped yet
cleanup() {
  local p
  for p in "${SERVER_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${SERVER_PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sets: PORT, MAIN_PID (the process to stop), PIDS_ARGS (--server-pid ... of every server
# process), TARGET_ARGS (loadgen flags that point at the server).
start_server() {
  local kind=$1 i
  PORT=$(free_port)
  case $kind in
    nchan)
      local d=$TMP/nchan-$PORT
      mkdir -p "$d"
      sed -e "s|\${NCHAN_MODULE}|$NCHAN_MODULE|g" -e "s|\${NCHAN_PORT}|$PORT|g" \
          -e "s|\${NCHAN_DIR}|$d|g" "$TEMPLATE" >"$d/nginx.conf"
      "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" >"$OUT/nginx-$CUR.log" 2>&1 &
      MAIN_PID=$!
      SERVER_PIDS+=("$MAIN_PID")
      TARGET_ARGS=(--target nchan --nchan-url "http://127.0.0.1:$PORT")
      for i in $(seq 100); do
        curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
      done
      ;;
    pushgate)
      # shellcheck disable=SC2086 # PUSHGATE_ARGS is a list of flags
      "$BIN/gateway" --listen "127.0.0.1:$PORT" --local-workers 1 --local-worker-ips 4 \
        ${PUSHGATE_ARGS:-} >"$OUT/gateway-$CUR.log" 2>&1 &
      MAIN_PID=$!
      SERVER_PIDS+=("$MAIN_PID")
      TARGET_ARGS=(--gateway "http://127.0.0.1:$PORT")
      for i in $(seq 100); do
        curl -fs "http://127.0.0.1:$PORT/v1/workers" 2>/dev/null | grep -q healthy && break
        sleep 0.1
      done
      ;;
  esac
  kill -0 "$MAIN_PID" 2>/dev/null || { echo "$ME: $kind did not start (see $OUT)" >&2; exit 2; }
  local children
  children=$(pgrep -P "$MAIN_PID" || true)
  [ -n "$children" ] || { echo "$ME: $kind has no worker process" >&2; exit 2; }
  PIDS_ARGS=(--server-pid "$MAIN_PID")
  for i in $children; do PIDS_ARGS+=(--server-pid "$i"); done
  SERVER_PIDS+=($children)
}

stop_server() {
  kill "$MAIN_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$MAIN_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$MAIN_PID" 2>/dev/null || true
  wait "$MAIN_PID" 2>/dev/null || true
  # Stray children (a worker that outlived its gateway) go too.
  local p
  for p in "${SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  SERVER_PIDS=()
  sleep 1
}

# run_case NAME KIND loadgen-args...: fresh server, one loadgen run, server stopped.
# Writes $OUT/NAME-KIND.json (loadgen --json) and .stderr (with its SERVER_CPU marks);
# appends "NAME-KIND rc=N" to $OUT/rc.txt.
run_case() {
  local name=$1 kind=$2
  shift 2
  CUR=$name-$kind
  start_server "$kind"
  local rc=0
  timeout 600 "$BIN/loadgen" "$@" "${TARGET_ARGS[@]}" "${PIDS_ARGS[@]}" \
    --source-ips "$SRC_IPS" --max-duration 8m --quiet --json "$OUT/$CUR.json" \
    2>"$OUT/$CUR.stderr" || rc=$?
  echo "$CUR rc=$rc" >>"$OUT/rc.txt"
  echo "  $CUR: loadgen exit $rc" >&2
  stop_server
}

# The lines a recorded run starts with: machine, server versions, loadgen exit codes.
run_facts() {
  echo "- machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), kernel $(uname -r), open files $(ulimit -n), load average before the run: ${LOAD_BEFORE:-?}"
  echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), Nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown); pushgate $(git -C "$ROOT" describe --always --dirty)"
  echo "- loadgen exit codes: $(tr '\n' ' ' <"$OUT/rc.txt")"
}
