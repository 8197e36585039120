#!/usr/bin/env bash
# Runs the examples of the documentation against the real binaries, so that none can drift
# from what pushgate does. CI runs it (.ci/run); run it yourself after editing a page:
#
#   bash docs/check.sh                      # README.md ("Try it") and every docs/*.md page
#   bash docs/check.sh docs/api.md          # one page
#
# What runs, per page, in order:
#   ```sh (or ```bash)     a block run with `bash -euo pipefail`, its own process, at most
#                          $TIMEOUT seconds (60), stdin empty, in the page's scratch directory
#                          (which links every top-level entry of the repository, so
#                          `deploy/...` and `target/...` resolve)
#   ```python, ```js,      shown, not run (```text and ```console are for output and for
#   ```text, ```console    commands that cannot run here)
#   <!-- save: NAME -->    before a block (any language): the block is written to NAME in
#                          the scratch directory instead (a script a later block runs)
#   <!-- same-as: PATH --> before a block: the block must be the repository file PATH,
#                          byte for byte (a later block builds or runs it)
#   # → EXPECTED           in a run block: some line of the block's stdout must match
#                          EXPECTED; each line serves one expectation; order is free (a
#                          background subscriber prints while the publisher does).
#                          JSON is compared as JSON (key order free); `…` stands for
#                          anything: a whole value (`…` or "…"), part of a string
#                          ("ws://127.0.0.…"), the rest of an array (last element `…`) or
#                          of an object (a key "…"). Several JSON values on one line
#                          (`curl` prints no newline) count as several lines, and so does
#                          text after them (and, for `{...} 400`, each value with the rest
#                          of its line). Other text is compared whole, `…` a wildcard.
#   127.0.0.1:8080,        the page's gateway: a fresh `gateway --local-workers 2` per page
#   localhost:8080         on a free loopback port, written into the blocks in place of 8080
#   127.0.0.1:808N/909N    (any other N; also after localhost:, 0.0.0.0:, --port, -p) free
#                          ports, the same one for the same N within a page, for the
#                          processes a page starts itself (redis-server --port 9091 ...);
#                          whatever a block leaves running is killed at the end of its page
# Links: every relative link of the pages ([x](file.md#heading)) must reach a file and,
# with an anchor, a heading of it (GitHub's anchors).
# README.md: only the blocks of its "Try it" section. docs/deploy.md is not run: its
# commands install system services and images (deploy/check.sh checks its files).
#
# Needs curl, jq, python3 with venv, ss, promtool, node, redis-server, openssl and cargo
# (Debian: curl jq python3-venv iproute2 prometheus nodejs redis-server openssl); the
# Python recipes' `websockets` (pinned below) is installed into a venv under
# ${TMPDIR:-/tmp} when missing. Binaries: $BIN (default target/debug) must hold gateway,
# worker, pushgate and loadgen (`cargo build -p gateway -p worker -p pushgate-cli -p
# loadgen`). KEEP=1 keeps the scratch directories (blocks, outputs, logs). Exits 1 naming
# each failed block.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WEBSOCKETS_VERSION=15.0.1
TIMEOUT=${TIMEOUT:-60}
BIN=$(cd "${BIN:-target/debug}" 2>/dev/null && pwd) || {
  echo "docs/check.sh: ${BIN:-target/debug} does not exist; cargo build -p gateway -p worker -p pushgate-cli" >&2
  exit 1
}
for b in gateway worker pushgate loadgen; do
  if [ ! -x "$BIN/$b" ]; then
    echo "docs/check.sh: $BIN/$b is missing; cargo build -p gateway -p worker -p pushgate-cli -p loadgen" >&2
    exit 1
  fi
done
for tool in curl jq python3 timeout ss promtool node redis-server redis-cli openssl cargo; do
  if ! command -v "$tool" >/dev/null; then
    echo "docs/check.sh: $tool is missing (Debian: apt-get install curl jq python3-venv iproute2 prometheus nodejs redis-server openssl)" >&2
    exit 1
  fi
done

if [ $# -gt 0 ]; then
  PAGES=("$@")
else
  PAGES=(README.md)
  for f in docs/*.md; do
    [ "$f" = docs/deploy.md ] || PAGES+=("$f")
  done
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pushgate-docs.XXXXXX")
VENV=${TMPDIR:-/tmp}/pushgate-docs-venv-$WEBSOCKETS_VERSION
GROUPS_TO_KILL=()
GATEWAY_PID=

cleanup() {
  local g
  for g in "${GROUPS_TO_KILL[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  if [ -n "$GATEWAY_PID" ]; then kill -KILL "$GATEWAY_PID" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "docs/check.sh: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# The Python recipes' one dependency, in a venv of its own.
if ! "$VENV/bin/python3" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
fi

# The blocks see the binaries and the venv's python3 first, the gateway of the command line
# client by default, plain errors (no backtraces) and the default log level.
export PATH="$BIN:$VENV/bin:$PATH"
unset RUST_BACKTRACE RUST_LOG PUSHGATE_GATEWAY PUSHGATE_PUBLISHER_KEY PUSHGATE_TOKEN
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

cat >"$WORK/blocks.py" <<'PY'
"""Extracts a page's blocks (extract) and matches a block's output (match)."""
import json, os, re, socket, sys

PORT_RE = re.compile(r"(?:\b(?:127\.0\.0\.1|localhost|0\.0\.0\.0):|--port |\s-p )(80[89]\d|909\d)\b")
MARK_RE = re.compile(r"^<!--\s*(save|same-as):\s*(\S+)\s*-->\s*$")
FENCE_RE = re.compile(r"^(\s*)(`{3,})\s*([^\s`]*)")
EXPECT_RE = re.compile(r"#\s*→\s?(.*)$")
ELLIPSIS = "…"


HANDED_OUT = set()


def free_port():
    """A free loopback port not handed out before in this run: ports are bound later by the
    blocks, so the kernel may offer the same one twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in HANDED_OUT:
            HANDED_OUT.add(port)
            return port


def blocks(path):
    """(line, info, marker, text) of each fenced block; README: only "## Try it"."""
    lines = open(path, encoding="utf-8").read().split("\n")
    readme = os.path.basename(path) == "README.md"
    section, marker, i, out = None, None, 0, []
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = MARK_RE.match(line)
        if m:
            marker = (m.group(1), m.group(2))
            i += 1
            continue
        f = FENCE_RE.match(line)
        if f:
            indent, fence, info = f.groups()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            if not readme or section == "Try it":
                out.append((start, info, marker, "\n".join(body) + "\n"))
            marker = None
        elif line.strip():
            marker = None
        i += 1
    return out


def extract(page, outdir):
    """Writes NNN.sh / NNN.save / NNN.same (+ .meta) per block and ports.txt."""
    ports = {"8080": free_port()}
    def sub(text):
        def one(m):
            p = m.group(1)
            if p not in ports:
                ports[p] = free_port()
            return m.group(0)[: -len(p)] + str(ports[p])
        return PORT_RE.sub(one, text)
    n = 0
    for line, info, marker, text in blocks(page):
        kind = None
        if marker and marker[0] == "same-as":
            kind, text_out = "same", text
        elif marker and marker[0] == "save":
            kind, text_out = "save", sub(text)
        elif info in ("sh", "bash"):
            kind, text_out = "sh", sub(text)
        if kind is None:
            continue
        n += 1
        base = os.path.join(outdir, "%03d" % n)
        with open(base + "." + kind, "w", encoding="utf-8") as f:
            f.write(text_out)
        meta = {"line": line, "target": marker[1] if marker else None}
        if kind == "sh":
            meta["expect"] = [m.group(1).strip() for l in text.split("\n")
                              for m in [EXPECT_RE.search(l)] if m]
        with open(base + ".meta", "w", encoding="utf-8") as f:
            json.dump(meta, f)
    with open(os.path.join(outdir, "ports.txt"), "w") as f:
        for k, v in ports.items():
            f.write("%s %d\n" % (k, v))


def parse_pattern(s):
    """An expectation as JSON, its bare … read as "…"; None if it is not JSON."""
    out, in_str, esc = [], False, False
    for ch in s:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif ch == ELLIPSIS:
            out.append('"%s"' % ELLIPSIS)
        else:
            out.append(ch)
    try:
        return json.loads("".join(out))
    except ValueError:
        return None


def glob(pat, s):
    parts = [re.escape(p) for p in pat.split(ELLIPSIS)]
    return re.fullmatch(".*".join(parts), s, re.S) is not None


def same(pat, got):
    if pat == ELLIPSIS:
        return True
    if isinstance(pat, dict):
        if not isinstance(got, dict):
            return False
        rest = ELLIPSIS in pat
        keys = set(pat) - {ELLIPSIS}
        if not keys <= set(got) or (not rest and set(got) != keys):
            return False
        return all(same(pat[k], got[k]) for k in keys)
    if isinstance(pat, list):
        if not isinstance(got, list):
            return False
        if pat and pat[-1] == ELLIPSIS:
            pat = pat[:-1]
            if len(got) < len(pat):
                return False
            got = got[:len(pat)]
        return len(pat) == len(got) and all(same(p, g) for p, g in zip(pat, got))
    if isinstance(pat, str):
        return isinstance(got, str) and glob(pat, got)
    if isinstance(pat, bool) or isinstance(got, bool):
        return pat is got
    return pat == got


def items(text):
    """Output lines; JSON objects and arrays at the start of a line are one item each
    (`curl` prints no newline), and so is text after them; each suffix of the line from
    one of them on is one more (for `{...} 400`)."""
    dec = json.JSONDecoder()
    out = []
    for line in text.split("\n"):
        s, pos, starts = line.strip(), 0, []
        while pos < len(s) and s[pos] in "{[":
            try:
                v, end = dec.raw_decode(s, pos)
            except ValueError:
                break
            starts.append(pos)
            out.append(("json", v, json.dumps(v, ensure_ascii=False, separators=(",", ":"))))
            pos = end
            while pos < len(s) and s[pos].isspace():
                pos += 1
        if pos == 0:
            out.append(("text", line.rstrip(), line.rstrip()))
        elif pos < len(s):
            out.append(("text", s[pos:], s[pos:]))
            out.extend(("text", s[k:], s[k:]) for k in starts)
    return out


def match(meta_path, out_path):
    expect = json.load(open(meta_path, encoding="utf-8"))["expect"]
    got = items(open(out_path, encoding="utf-8", errors="replace").read())
    used, missing = set(), []
    for e in expect:
        pat = parse_pattern(e)
        for i, (kind, val, _) in enumerate(got):
            if i in used:
                continue
            ok = same(pat, val) if (pat is not None and kind == "json") else glob(e, val if kind == "text" else _)
            if ok:
                used.add(i)
                break
        else:
            missing.append(e)
    for e in missing:
        print("  expected, not in the output: " + e)
    return 1 if missing else 0


def slugs(path):
    """The anchors GitHub gives a page's headings."""
    out, seen, fence = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else "%s-%d" % (slug, n))
    return out


def links(pages):
    """Relative links of the pages that point at no file or no heading; 1 if any."""
    bad = 0
    for page in pages:
        text = open(page, encoding="utf-8").read()
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(file):
                print("FAIL  %s: link to %s: no such file" % (page, target))
                bad = 1
            elif anchor and file.endswith(".md") and anchor not in slugs(file):
                print("FAIL  %s: link to %s: no such heading" % (page, target))
                bad = 1
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "links":
        sys.exit(links(sys.argv[2:]))
    if sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    else:
        sys.exit(match(sys.argv[2], sys.argv[3]))
PY

# start_gateway PORT DIR: the page's gateway with two local workers, up once both are healthy.
start_gateway() {
  local port=$1 dir=$2 i
  gateway --listen "127.0.0.1:$port" --local-workers 2 >"$dir/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  for i in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/v1/workers" 2>/dev/null |
      jq -e '[.workers[] | select(.state == "healthy")] | length == 2' >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "FAIL  the page's gateway (127.0.0.1:$port) did not come up with two healthy workers:" >&2
  tail -n 20 "$dir/gateway.log" >&2
  return 1
}

stop_gateway() {
  local i
  [ -n "$GATEWAY_PID" ] || return 0
  kill -TERM "$GATEWAY_PID" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$GATEWAY_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=
}

# show FILE: the end of a file, indented.
show() {
  tail -n "${2:-40}" "$1" | sed 's/^/      /'
  echo
}

total_failed=0
summary=()
# Every relative link of the pages must reach a file, and its #anchor a heading there.
if python3 "$WORK/blocks.py" links "${PAGES[@]}"; then
  summary+=("ok    links: every relative link of ${#PAGES[@]} pages reaches its file and heading")
else
  total_failed=$((total_failed + 1))
  summary+=("FAIL  links (above)")
fi
start_all=$(date +%s)
for page in "${PAGES[@]}"; do
  name=$(echo "$page" | tr '/.' '__')
  dir=$WORK/$name         # the blocks' working directory
  meta_dir=$WORK/$name.d  # the blocks, their output, the page gateway's log
  mkdir -p "$dir" "$meta_dir"
  for e in "$ROOT"/* "$ROOT"/.ci; do ln -s "$e" "$dir/$(basename "$e")"; done
  python3 "$WORK/blocks.py" extract "$page" "$meta_dir"
  gw_port=$(awk '$1 == 8080 {print $2}' "$meta_dir/ports.txt")
  page_start=$(date +%s)
  ran=0 saved=0 same_as=0 failed=0 k=0
  if ! ls "$meta_dir"/*.meta >/dev/null 2>&1; then
    summary+=("ok    $page: no runnable blocks")
    continue
  fi
  echo "== $page (gateway 127.0.0.1:$gw_port)"
  if ! start_gateway "$gw_port" "$meta_dir"; then
    total_failed=$((total_failed + 1))
    summary+=("FAIL  $page: its gateway did not start")
    stop_gateway
    continue
  fi
  for meta in "$meta_dir"/*.meta; do
    [ -e "$meta" ] || continue
    b=${meta%.meta}
    k=$((k + 1))
    line=$(jq -r .line "$meta")
    target=$(jq -r '.target // empty' "$meta")
    where="$page:$line (block $k)"
    if [ -e "$b.same" ]; then
      if cmp -s "$b.same" "$ROOT/$target"; then
        same_as=$((same_as + 1))
        echo "ok    $where is $target"
      else
        failed=$((failed + 1))
        echo "FAIL  $where differs from $target:"
        diff -u "$ROOT/$target" "$b.same" | sed 's/^/      /' || true
        break
      fi
      continue
    fi
    if [ -e "$b.save" ]; then
      cp "$b.save" "$dir/$target"
      saved=$((saved + 1))
      echo "ok    $where saved as $target"
      continue
    fi
    t0=$(date +%s.%N)
    rc=0
    (cd "$dir" && exec timeout -k 5 "$TIMEOUT" bash -euo pipefail "$b.sh" <"/dev/null" >"$b.out" 2>"$b.err") &
    pid=$!
    GROUPS_TO_KILL+=("$pid")
    wait "$pid" || rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    ran=$((ran + 1))
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      failed=$((failed + 1))
      echo "FAIL  $where: still running after ${TIMEOUT} s"
    elif [ "$rc" -ne 0 ]; then
      failed=$((failed + 1))
      echo "FAIL  $where: exit status $rc"
    elif ! python3 "$WORK/blocks.py" match "$meta" "$b.out" >"$b.mismatch"; then
      failed=$((failed + 1))
      echo "FAIL  $where: the output does not match"
      cat "$b.mismatch"
    else
      echo "ok    $where ($(jq '.expect | length' "$meta") outputs checked, $secs s)"
      continue
    fi
    echo "    the block:"
    sed 's/^/      /' "$b.sh"
    echo "    its stdout:"
    show "$b.out"
    echo "    its stderr:"
    show "$b.err"
    echo "    the page's gateway log:"
    show "$meta_dir/gateway.log" 20
    break
  done
  stop_gateway
  for g in "${GROUPS_TO_KILL[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  GROUPS_TO_KILL=()
  secs=$(($(date +%s) - page_start))
  if [ "$failed" -gt 0 ]; then
    total_failed=$((total_failed + 1))
    summary+=("FAIL  $page: block $k failed (above)")
  else
    summary+=("ok    $page: blocks: $ran run, $saved saved, $same_as compared with their files; ${secs} s")
  fi
done

echo
echo "== docs/check.sh: $(($(date +%s) - start_all)) s"
printf '%s\n' "${summary[@]}"
if [ "$total_failed" -gt 0 ]; then
  echo "docs/check.sh: $total_failed page(s) FAILED" >&2
  exit 1
fi
