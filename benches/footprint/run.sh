#!/usr/bin/env bash
# Sidecar footprint: time from process start to /readyz 200, and resident memory once
# ready and idle, for `ciba-gate serve` with the bundled policies in front of the demo
# tool server (no approvals: readiness is the policy, the store and the evidence sink;
# and with approvals against `ciba-gate dev-op`, which adds the OP's discovery).
#
# Usage: benches/footprint/run.sh    (needs curl; builds target/release/ciba-gate unless SKIP_BUILD=1)
# Knobs: RUNS=5 (starts per variant; the median is reported)  IDLE=2 (seconds idle before RSS)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release/ciba-gate"
RUNS=${RUNS:-5}
IDLE=${IDLE:-2}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release --bin ciba-gate >&2)
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

"$BIN" demo-tools --listen 127.0.0.1:19280 >"$TMP/tools.log" 2>&1 & PIDS+=("$!")
"$BIN" dev-op --listen 127.0.0.1:19281 --client "gate:footprint-secret:poll" --user demo@example.com >"$TMP/op.log" 2>&1 & PIDS+=("$!")
echo footprint-secret >"$TMP/op-secret"
sleep 1

config() { # approvals(0|1)
    cat <<YAML
listen: "127.0.0.1:19282"
admin: {listen: "127.0.0.1:19283"}
agent: {id: footprint-agent}
policy: {dir: $ROOT/policies, reload_interval: 0s}
evidence: {sink: file, path: $TMP/evidence.jsonl}
upstreams:
  - {name: tools, kind: mcp, mount: /mcp, url: "http://127.0.0.1:19280/mcp"}
YAML
    if [ "$1" = 1 ]; then
        cat <<YAML
approvals:
  op: {issuer: "http://127.0.0.1:19281", client_id: gate, delivery: poll, allow_insecure_http: true,
       client_auth: {method: client_secret_basic, secret: {file: $TMP/op-secret}}}
  user: {value: demo@example.com}
  binding_message_profile: ciba-gate-dev
YAML
    fi
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| variant | start → /readyz 200, ms (median of $RUNS; min–max) | RSS idle after ${IDLE} s, MiB (median; min–max) |"
echo "|---|---:|---:|"
for approvals in 0 1; do
    config "$approvals" >"$TMP/gate.yaml"
    : >"$TMP/ms"; : >"$TMP/rss"
    for _ in $(seq 1 "$RUNS"); do
        t0=$(date +%s%N)
        "$BIN" serve --config "$TMP/gate.yaml" >"$TMP/gate.log" 2>&1 &
        pid=$!
        until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19283/readyz 2>/dev/null)" = 200 ]; do
            kill -0 "$pid" 2>/dev/null || { cat "$TMP/gate.log" >&2; exit 1; }
            sleep 0.002
        done
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000000 )) >>"$TMP/ms"
        sleep "$IDLE"
        awk '/^VmRSS/ {printf "%.1f\n", $2/1024}' "/proc/$pid/status" >>"$TMP/rss"
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
    name=$([ "$approvals" = 1 ] && echo "bundled policies + approvals (dev OP discovery)" || echo "bundled policies, no approvals")
    printf '| %s | %s (%s–%s) | %s (%s–%s) |\n' "$name" \
        "$(median <"$TMP/ms")" "$(sort -n "$TMP/ms" | head -1)" "$(sort -n "$TMP/ms" | tail -1)" \
        "$(median <"$TMP/rss")" "$(sort -n "$TMP/rss" | head -1)" "$(sort -n "$TMP/rss" | tail -1)"
done
