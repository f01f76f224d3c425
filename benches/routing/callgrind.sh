#!/usr/bin/env bash
# What routing through a virtual server costs per call, in instructions (callgrind
# counts instructions, not time: the same binary and inputs give the same count
# whatever else the machine does). One gateway at a time runs under callgrind with
# instrumentation off; after warm-up calls it is switched on for CALLS allowed
# `tools/call`s sent one after another on one keep-alive connection, then off again.
# Every thread of the gateway process is counted (request path, evidence writer).
#
#   (a) direct:  the demo tool server on a direct MCP mount
#   (b) virtual: the same server behind a virtual server (`servers:`), in one session
#   (c) stdio:   the official TypeScript SDK server (tests/interop/mcp-server.mjs
#                --stdio) behind a virtual server, spoken to over stdin/stdout
#
# Usage: benches/routing/callgrind.sh        (needs valgrind, python3; node for (c))
# Knobs: CALLS=200 WARMUP=20 SKIP_BUILD=0 KEEP_TMP=0 PORT_UPSTREAM=19280 PORT_GATEWAY=19282
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release/ciba-gate"
CALLS=${CALLS:-200}
WARMUP=${WARMUP:-20}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
PORT_UPSTREAM=${PORT_UPSTREAM:-19280}
PORT_GATEWAY=${PORT_GATEWAY:-19282}

log() { printf '[routing] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

TMP=$(mktemp -d /tmp/ciba-gate-routing.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT

if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --bin ciba-gate) || die "release build failed"
fi
[ -x "$BIN" ] || die "$BIN missing"

"$BIN" demo-tools --listen "127.0.0.1:$PORT_UPSTREAM" >"$TMP/upstream.log" 2>&1 &
PIDS+=("$!")

# The client: WARMUP + CALLS tools/call on one connection (in a session when the
# endpoint opens one), collection switched on around the last CALLS by the caller.
cat >"$TMP/client.py" <<'PY'
import http.client, json, subprocess, sys
port, pid, warmup, calls = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2025-06-18"}
def post(body):
    conn.request("POST", "/mcp", json.dumps(body), headers)
    r = conn.getresponse()
    return r, r.read()
r, _ = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "callgrind", "version": "1"}}})
session = r.getheader("mcp-session-id")
if session:
    headers["mcp-session-id"] = session
def call(i):
    r, body = post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "list_deployments", "arguments": {"env": "prod" if i % 2 else "dev"}}})
    if r.status != 200 or b'"result"' not in body or b'"isError":true' in body:
        sys.exit(f"call {i} failed: {r.status} {body[:300]!r}")
for i in range(1, warmup + 1):
    call(i)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
for i in range(warmup + 1, warmup + calls + 1):
    call(i)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY

config() { # name upstreams-yaml
    cat <<YAML
listen: "127.0.0.1:$PORT_GATEWAY"
admin: {listen: "127.0.0.1:0"}
agent: {id: bench-agent, namespace: agents}
policy: {dir: $ROOT/policies, reload_interval: 0s}
evidence: {sink: file, path: $TMP/evidence-$1.jsonl}
upstreams:
$2
YAML
}
DEMO="  - {name: tools, kind: mcp, url: \"http://127.0.0.1:$PORT_UPSTREAM/mcp\"}"
config direct "  - {name: tools, kind: mcp, mount: /mcp, url: \"http://127.0.0.1:$PORT_UPSTREAM/mcp\"}" >"$TMP/direct.yaml"
config virtual "  - {name: mcp, kind: mcp, mount: /mcp, servers: [{upstream: tools}]}
$DEMO" >"$TMP/virtual.yaml"
TARGETS="direct virtual"
if command -v node >/dev/null && [ -d "$ROOT/tests/interop/node_modules" ]; then
    config stdio "  - {name: mcp, kind: mcp, mount: /mcp, servers: [{upstream: tools}]}
  - {name: tools, kind: mcp, command: [node, \"$ROOT/tests/interop/mcp-server.mjs\", --stdio]}" >"$TMP/stdio.yaml"
    TARGETS="$TARGETS stdio"
else
    log "no node peers (tests/interop/node_modules): skipping (c) stdio"
fi

printf '| target | instructions per call | vs direct |\n|---|---:|---:|\n' >"$TMP/table.md"
DIRECT=
for t in $TARGETS; do
    log "$t: gateway under callgrind"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.$t" \
        "$BIN" serve --config "$TMP/$t.yaml" >"$TMP/gateway-$t.log" 2>&1 &
    GW=$!; PIDS+=("$GW")
    for _ in $(seq 1 600); do
        grep -q "ciba-gate listening" "$TMP/gateway-$t.log" && break
        kill -0 "$GW" 2>/dev/null || die "$t: the gateway exited ($TMP/gateway-$t.log)"
        sleep 0.1
    done
    python3 "$TMP/client.py" "$PORT_GATEWAY" "$GW" "$WARMUP" "$CALLS" || die "$t: the client failed"
    kill -TERM "$GW"; wait "$GW" || true
    total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$TMP/cg.$t" | head -1)
    [ -n "$total" ] || total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$TMP/cg.$t" | head -1)
    [ -n "$total" ] || die "$t: no totals in $TMP/cg.$t"
    per=$((total / CALLS))
    [ -z "$DIRECT" ] && DIRECT=$per
    ratio=$(python3 -c "print(f'{$per / $DIRECT:.2f}x')")
    log "$t: $per instructions per call"
    printf '| %s | %s | %s |\n' "$t" "$per" "$ratio" >>"$TMP/table.md"
done
cat "$TMP/table.md"
