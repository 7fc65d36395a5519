#!/usr/bin/env bash
# Builds the JavaScript conformance modules (modules/wordcount-js, modules/probe-js) into
# target/wasm32-wasip2/release/{wordcount_js,probe_js}.wasm with the JS guest SDK
# (guest-sdk/js) and jco's QuickJS backend.
#
# Idempotent: installs the pinned tools (guest-sdk/js/package-lock.json) with `npm ci` only
# when guest-sdk/js/node_modules is missing or was installed from another lock, and rebuilds
# a module only when its inputs (its sources, the SDK's sources, the WIT, the lock, this
# script) changed since the last build (a hash stamp beside the .wasm).
#
# Needs node >= 20 and npm (the npm registry, for the first install). Usage:
#   scripts/build-js-modules.sh            # both modules
#   scripts/build-js-modules.sh wordcount  # only modules/wordcount-js
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/guest-sdk/js"
out="$root/target/wasm32-wasip2/release"
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(wordcount probe)

command -v node >/dev/null || { echo "build-js-modules: node (>= 20) is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "build-js-modules: npm is required" >&2; exit 1; }

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# The pinned tools.
lock_hash="$(hash_of "$sdk/package.json" "$sdk/package-lock.json")"
stamp="$sdk/node_modules/.sluice-lock-hash"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ] || [ ! -x "$sdk/node_modules/.bin/jco" ]; then
  echo "build-js-modules: npm ci in guest-sdk/js"
  (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" >"$stamp"
fi
build="$sdk/tools/build.mjs" # the jco invocation and its flags (QuickJS, sync, WASI stubbed)

mkdir -p "$out"
for m in "${modules[@]}"; do
  src="$root/modules/$m-js"
  [ -d "$src" ] || { echo "build-js-modules: no module $src" >&2; exit 1; }
  wasm="$out/${m}_js.wasm"
  inputs_hash="$(
    hash_of "$root/wit/sluice.wit" "$sdk/package-lock.json" "${BASH_SOURCE[0]}" \
      $(find "$sdk/src" "$sdk/tools" "$src" -type f \( -name '*.js' -o -name '*.mjs' -o -name '*.ts' \) | LC_ALL=C sort)
  )"
  if [ -f "$wasm" ] && [ -f "$wasm.stamp" ] && [ "$(cat "$wasm.stamp")" = "$inputs_hash" ]; then
    echo "build-js-modules: ${m}_js.wasm is up to date"
    continue
  fi
  echo "build-js-modules: building ${m}_js.wasm"
  start=$(date +%s%N)
  # The module root is the repository: the module's sources and guest-sdk/js/src are under it.
  node "$build" "$src/index.js" --root "$root" --wit "$root/wit/sluice.wit" -o "$wasm.tmp"
  mv "$wasm.tmp" "$wasm"
  echo "$inputs_hash" >"$wasm.stamp"
  ms=$((($(date +%s%N) - start) / 1000000))
  echo "build-js-modules: ${m}_js.wasm: $(stat -c %s "$wasm") bytes in ${ms} ms"
done
