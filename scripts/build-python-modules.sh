#!/usr/bin/env bash
# Builds the Python conformance modules with the Python guest SDK (guest-sdk/python):
#   modules/wordcount-py -> target/wasm32-wasip2/release/wordcount_py.wasm
#   modules/probe-py     -> target/wasm32-wasip2/release/probe_py.wasm
#
# Idempotent and incremental:
#  1. a venv in target/tools/python with componentize-py, pinned and hash-checked by
#     guest-sdk/python/requirements.txt (reinstalled only when that file changes);
#  2. the Python bindings of wit/ in target/python/bindings (for editors, type checkers and the
#     SDK's tests against the real generated types; componentize-py generates its own copy into
#     each component, so nothing generated is committed);
#  3. each module, only when a hash of its inputs (the WIT, the SDK, the module's sources, the
#     tool's requirements and flags) differs from the one recorded beside the .wasm.
# Modules are built as componentize-py builds by default (no --stub-wasi): its runtime imports
# wasi:filesystem and wasi:sockets, which the host links without authority (SECURITY.md), and
# real clocks and randomness, which --stub-wasi would turn into traps.
#
# Usage: scripts/build-python-modules.sh [--force]   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PYTHON=${PYTHON:-python3}
# The interpreter itself, not a launcher (a pyenv shim costs 0.2 s a call).
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
SDK=guest-sdk/python
REQS=$SDK/requirements.txt
TOOLS=target/tools/python
CPY=$TOOLS/bin/componentize-py
OUT=target/wasm32-wasip2/release
STAMPS=target/python/stamps
BINDINGS=target/python/bindings
FLAGS=()
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-python-modules: $*" >&2; }

# Hash of the contents of the given files and directories (sorted; bytecode caches left out),
# plus the first argument.
inputs_hash() {
  "$PYTHON" -S - "$@" <<'PY'
import hashlib, os, sys
h = hashlib.sha256(sys.argv[1].encode())
files = []
for top in sys.argv[2:]:
    for d, dirs, names in os.walk(top):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        files += [os.path.join(d, n) for n in names if not n.endswith(".pyc")]
for f in sorted(files):
    h.update(f.encode() + b"\0")
    with open(f, "rb") as fh:
        h.update(hashlib.sha256(fh.read()).digest())
print(h.hexdigest())
PY
}

# 1. The tool.
if [ ! -x "$CPY" ] || ! cmp -s "$REQS" "$TOOLS/requirements.txt"; then
  log "installing componentize-py into $TOOLS"
  rm -rf "$TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --require-hashes -r "$REQS"
  cp "$REQS" "$TOOLS/requirements.txt"
fi
TOOL_ID="$(cat "$REQS") ${FLAGS[*]}"

mkdir -p "$OUT" "$STAMPS"

# 2. The bindings (regenerated when the WIT or the tool changes).
h=$(inputs_hash "$TOOL_ID" wit)
if [ "$FORCE" = 1 ] || [ ! -d "$BINDINGS" ] || [ "$(cat "$STAMPS/bindings" 2>/dev/null)" != "$h" ]; then
  rm -rf "$BINDINGS"
  "$CPY" -q -d wit -w module bindings "$BINDINGS"
  echo "$h" >"$STAMPS/bindings"
fi

# The SDK's unit tests against the real bindings (a second), when the SDK or the WIT changed:
# the plain `python3 -m unittest discover -s guest-sdk/python/tests` uses a stand-in for them.
h=$(inputs_hash "$TOOL_ID" wit "$SDK/sluice" "$SDK/tests" modules/wordcount-py modules/probe-py)
if [ "$FORCE" = 1 ] || [ "$(cat "$STAMPS/sdk-tests" 2>/dev/null)" != "$h" ]; then
  if ! out=$(SLUICE_PY_BINDINGS="$ROOT/$BINDINGS" "$PYTHON" -m unittest discover -q \
      -s "$SDK/tests" 2>&1); then
    echo "$out" >&2
    log "the SDK's tests fail against the generated bindings"
    exit 1
  fi
  echo "$h" >"$STAMPS/sdk-tests"
fi

# 3. The modules.
build() {
  local dir=$1 app=$2 wasm=$OUT/$3.wasm
  local h
  h=$(inputs_hash "$TOOL_ID" wit "$SDK/sluice" "$dir")
  if [ "$FORCE" = 0 ] && [ -f "$wasm" ] && [ "$(cat "$STAMPS/$3" 2>/dev/null)" = "$h" ]; then
    log "$wasm is up to date"
    return
  fi
  log "building $wasm"
  local start=$SECONDS
  # componentize-py puts the site-packages of an active venv on the module path: keep it out.
  env -u VIRTUAL_ENV "$CPY" -q -d wit -w module componentize "${FLAGS[@]}" \
    -p "$dir" -p "$SDK" "$app" -o "$wasm.tmp"
  "$PYTHON" "$SDK/tools/component_imports.py" --check "$wasm.tmp"
  mv "$wasm.tmp" "$wasm"
  echo "$h" >"$STAMPS/$3"
  log "built $wasm ($(($(wc -c <"$wasm") / 1024)) KiB) in $((SECONDS - start)) s"
}

build modules/wordcount-py wordcount wordcount_py
build modules/probe-py probe probe_py
