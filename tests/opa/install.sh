#!/usr/bin/env bash
# Installs real OPA (embedded in the PyPI package opa-golib-python-bindings, OPA 1.20)
# into target/opa-py for the differential test. Idempotent: does nothing when present.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${OPA_PY_DIR:-$root/target/opa-py}"
version="0.4.4"
marker="$dest/.installed-$version"
if [ -f "$marker" ]; then
  exit 0
fi
# Tests run in parallel processes: one installs, the others wait for it.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [ -f "$marker" ]; then
  exit 0
fi
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "install.sh: $python not found; the OPA differential test needs Python 3" >&2
  exit 1
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "install.sh: pip is not available for $python (try: apt-get install python3-pip)" >&2
  exit 1
fi
rm -rf "$dest.tmp"
# The package declares Python >= 3.14 but works on older interpreters (ctypes only).
"$python" -m pip install --quiet --disable-pip-version-check --ignore-requires-python \
  --no-deps --target "$dest.tmp" "opa-golib-python-bindings==$version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
touch "$marker"
