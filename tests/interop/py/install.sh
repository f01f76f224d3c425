#!/usr/bin/env bash
# Installs the official MCP Python SDK (PyPI `mcp`, which speaks protocol revision
# 2026-07-28) into a virtual environment at target/mcp-py for tests/mcp_sdk_interop.rs.
# Idempotent: does nothing when that version is there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
dest="${MCP_PY_DIR:-$root/target/mcp-py}"
version="2.3.0"
marker="$dest/.installed-$version"
if [ -f "$marker" ]; then
  exit 0
fi
# Tests run in parallel: one installs, the others wait for it.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [ -f "$marker" ]; then
  exit 0
fi
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "install.sh: $python not found; the MCP Python SDK interop tests need Python 3.10+" >&2
  exit 1
fi
rm -rf "$dest.tmp"
if ! "$python" -m venv "$dest.tmp" >/dev/null 2>&1; then
  echo "install.sh: '$python -m venv' failed (try: apt-get install python3-venv)" >&2
  exit 1
fi
"$dest.tmp/bin/python" -m pip install --quiet --disable-pip-version-check \
  "mcp==$version" "mcp-types==$version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
# A venv records its own path: recreate the entry points for the final location.
"$dest/bin/python" -c 'import mcp' 2>/dev/null || {
  rm -rf "$dest"
  echo "install.sh: the venv does not work after the move" >&2
  exit 1
}
touch "$marker"
