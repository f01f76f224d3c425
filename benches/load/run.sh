#!/usr/bin/env bash
# Load benchmark: MCP `tools/call` of an allowed tool with varied arguments, measured
# in one run against
#   (a) the demo MCP tool server directly,
#   (b) nginx as a plain reverse proxy (HTTP/1.1 keepalive pool to the upstream),
#   (c) ciba-gate (full JSON-RPC parsing + a Rego decision + an evidence record per call),
#   (d) ciba-gate with the Redis approval store (the allow path must not touch it),
#   and, with TLS=1 (default), the added cost of an HTTPS tool server:
#   (e) ciba-gate -> nginx (plain HTTP) -> tool server,
#   (f) ciba-gate -> nginx (HTTPS, HTTP/1.1, private CA) -> tool server,
#   (g) ciba-gate -> nginx (HTTPS, HTTP/2 by ALPN) -> tool server;
#   (f) - (e) and (g) - (e) are what TLS to the tool server adds, in the same run;
#   and, with VIRTUAL=1 (default), the cost of routing through a virtual server:
#   (h) ciba-gate with the tool server behind a virtual server (`servers:`), in one
#       MCP session opened before the run; (h) - (c) is what routing adds per call.
#
# Usage: benches/load/run.sh          (from anywhere; needs cargo, wrk, nginx, curl)
# Knobs (environment):
#   THREADS=2 CONNS=32 DURATION=10s WARMUP=3s   wrk settings, identical for every target
#   ROUNDS=1              repeat direct/nginx/gateway this many times (interleaved)
#   NGINX_WORKERS=$(nproc)  NGINX_KEEPALIVE=64  NGINX_ACCESS_LOG=off (or "on": buffered file log)
#   PORT_UPSTREAM=19180 PORT_NGINX=19181 PORT_GATEWAY=19182   (all on 127.0.0.1)
#   SKIP_BUILD=0          1 = use the existing target/release/ciba-gate
#   BUILD_TIMEOUT=1800    seconds
#   QUIET_WAIT=900        seconds to wait for other cargo/rustc processes to finish first
#   KEEP_TMP=0            1 = keep the temp dir (configs, logs, wrk outputs, evidence)
#   TLS=1                 0 = skip (e)-(g)
#   VIRTUAL=1             0 = skip (h)
#   BIN=target/release/ciba-gate   the gateway measured as (c), (d), ...
#   GATEWAY_POLICIES=policies      the policy directory those gateways load
#   BASELINE_BIN=         another ciba-gate binary (e.g. an earlier commit's release build),
#                         measured as (c0) beside (c) in every round, memory store
#   BASELINE_POLICIES=    the policy directory (c0) loads (default: this checkout's)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LUA="$ROOT/benches/load/tools_call.lua"
BIN=${BIN:-$ROOT/target/release/ciba-gate}
GATEWAY_POLICIES=${GATEWAY_POLICIES:-$ROOT/policies}

THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-$(nproc)}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
NGINX_ACCESS_LOG=${NGINX_ACCESS_LOG:-off}
PORT_UPSTREAM=${PORT_UPSTREAM:-19180}
PORT_NGINX=${PORT_NGINX:-19181}
PORT_GATEWAY=${PORT_GATEWAY:-19182}
SKIP_BUILD=${SKIP_BUILD:-0}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
QUIET_WAIT=${QUIET_WAIT:-900}
KEEP_TMP=${KEEP_TMP:-0}
TLS=${TLS:-1}
VIRTUAL=${VIRTUAL:-1}

log() { printf '[load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in cargo wrk nginx curl ss timeout redis-server openssl; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y wrk nginx-light curl)"
done

# "10s" / "1m" / "10" -> seconds
secs() {
    local v=$1
    case $v in
        *ms) echo 1 ;;
        *s) echo "${v%s}" ;;
        *m) echo $(( ${v%m} * 60 )) ;;
        *) echo "$v" ;;
    esac
}

TMP=$(mktemp -d /tmp/ciba-gate-load.XXXXXX)
chmod 755 "$TMP"   # nginx workers may run as an unprivileged user
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.3
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "$KEEP_TMP" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_quiet() {
    local waited=0
    while pgrep -x 'cargo|rustc' >/dev/null; do
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            log "warning: cargo/rustc still running after ${QUIET_WAIT}s; numbers will be noisy"
            return
        fi
        [ "$waited" = 0 ] && log "waiting for other cargo/rustc processes to finish (max ${QUIET_WAIT}s)"
        sleep 5
        waited=$((waited + 5))
    done
}

for p in "$PORT_UPSTREAM" "$PORT_NGINX" "$PORT_GATEWAY"; do
    if ss -Htln "sport = :$p" | grep -q .; then die "port $p is in use"; fi
done

# --- build --------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release --bin ciba-gate) || die "release build failed"
fi
[ -x "$BIN" ] || die "$BIN missing"

# --- start everything ----------------------------------------------------------------
BODY_OK='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_deployments","arguments":{"env":"prod"}}}'
probe() { # url body -> prints the answer
    curl -sS --max-time 2 -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
        -H 'MCP-Protocol-Version: 2025-06-18' --data "$2" "$1"
}
wait_up() { # name url
    for _ in $(seq 1 100); do
        if probe "$2" "$BODY_OK" 2>/dev/null | grep -q '"isError":false'; then return 0; fi
        sleep 0.1
    done
    die "$1 did not answer a tools/call at $2 within 10s"
}

log "starting demo tool server on 127.0.0.1:$PORT_UPSTREAM"
"$BIN" demo-tools --listen "127.0.0.1:$PORT_UPSTREAM" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_up upstream "http://127.0.0.1:$PORT_UPSTREAM/mcp"

mkdir -p "$TMP/nginx"
# A private CA and a certificate for 127.0.0.1 (ECDSA P-256, as hosted servers commonly
# use); nginx terminates TLS in front of the same tool server for targets (f) and (g).
PORT_NGINX_TLS=${PORT_NGINX_TLS:-19192}
PORT_NGINX_H2=${PORT_NGINX_H2:-19193}
TLS_SERVERS=""
if [ "$TLS" = 1 ]; then
    (
        cd "$TMP" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=bench CA" -keyout ca.key -out ca.pem &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=127.0.0.1" -keyout server.key -out server.csr &&
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.pem
    ) >"$TMP/openssl.log" 2>&1 || die "making the test certificates failed (see $TMP/openssl.log)"
    tls_server() { # port listen-flags
        cat <<TLSBLOCK
    server {
        listen 127.0.0.1:$1 $2;
        ssl_certificate $TMP/server.pem;
        ssl_certificate_key $TMP/server.key;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:tls$1:1m;
        location /mcp {
            proxy_pass http://tools;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
TLSBLOCK
    }
    TLS_SERVERS="$(tls_server "$PORT_NGINX_TLS" ssl)
$(tls_server "$PORT_NGINX_H2" "ssl http2")"
fi
if [ "$NGINX_ACCESS_LOG" = on ]; then
    ACCESS="access_log $TMP/nginx/access.log combined buffer=64k flush=1s;"
else
    ACCESS="access_log off;"
fi
cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes $NGINX_WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 4096;
}
http {
    $ACCESS
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;   # do not make wrk reconnect every 1000 requests
    keepalive_timeout 75s;
    upstream tools {
        server 127.0.0.1:$PORT_UPSTREAM;
        keepalive $NGINX_KEEPALIVE;            # idle keepalive connections per worker
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX;
        location /mcp {
            proxy_pass http://tools;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
$TLS_SERVERS
}
NGINX
log "starting nginx ($NGINX_WORKERS workers, upstream keepalive $NGINX_KEEPALIVE) on 127.0.0.1:$PORT_NGINX"
nginx -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" || die "nginx config test failed"
nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout.log" 2>&1 &
NGX_PID=$!; PIDS+=("$NGX_PID")
wait_up nginx "http://127.0.0.1:$PORT_NGINX/mcp"

# Both gateways have approvals configured (against a development OP) so that the
# store is real; the allowed calls measured here must not touch it. One uses the
# in-memory store, the other Redis (a redis-server started for this run).
PORT_OP=${PORT_OP:-19183}
PORT_GATEWAY_REDIS=${PORT_GATEWAY_REDIS:-19184}
PORT_REDIS=${PORT_REDIS:-19185}
"$BIN" dev-op --listen "127.0.0.1:$PORT_OP" --client "gate:bench-secret:poll" --user demo@example.com >"$TMP/op.log" 2>&1 &
PIDS+=("$!")
redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
echo bench-secret >"$TMP/op-secret"
# A shared store requires a shared state key (>= 32 random bytes).
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/state-key"
gateway_config() { # port store evidence-file admin-port [upstream-url [upstream-tls]]
    local url=${5:-http://127.0.0.1:$PORT_UPSTREAM/mcp} tls=${6:-}
    cat <<YAML
listen: "127.0.0.1:$1"
agent: {id: bench-agent, namespace: agents}
policy: {dir: $GATEWAY_POLICIES, reload_interval: 0s}
evidence: {sink: file, path: $3}
admin: {listen: "127.0.0.1:$4"}
store: $2
upstreams:
  - name: tools
    kind: mcp
    mount: /mcp
    url: $url
$tls
approvals:
  op: {issuer: "http://127.0.0.1:$PORT_OP", client_id: gate, delivery: poll, allow_insecure_http: true,
       client_auth: {method: client_secret_basic, secret: {file: $TMP/op-secret}}}
  user: {value: demo@example.com}
  binding_message_profile: ciba-gate-dev
  state_key: {file: $TMP/state-key}
YAML
}
gateway_config "$PORT_GATEWAY" "{kind: memory}" "$TMP/evidence.jsonl" 19186 >"$TMP/gateway.yaml"
gateway_config "$PORT_GATEWAY_REDIS" "{kind: redis, url: \"redis://127.0.0.1:$PORT_REDIS/0\"}" "$TMP/evidence-redis.jsonl" 19187 >"$TMP/gateway-redis.yaml"
log "starting ciba-gate on 127.0.0.1:$PORT_GATEWAY (memory store) and :$PORT_GATEWAY_REDIS (Redis store)"
"$BIN" serve --config "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
"$BIN" serve --config "$TMP/gateway-redis.yaml" >"$TMP/gateway-redis.log" 2>&1 &
GWR_PID=$!; PIDS+=("$GWR_PID")
wait_up ciba-gate "http://127.0.0.1:$PORT_GATEWAY/mcp"
wait_up ciba-gate-redis "http://127.0.0.1:$PORT_GATEWAY_REDIS/mcp"

BASELINE_BIN=${BASELINE_BIN:-}
PORT_GATEWAY_BASE=${PORT_GATEWAY_BASE:-19202}
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN $BASELINE_BIN is not an executable"
    # The same configuration, without the keys an earlier build may not know.
    gateway_config "$PORT_GATEWAY_BASE" "{kind: memory}" "$TMP/evidence-base.jsonl" 19203 |
        sed -e '/state_key/d' -e "s#dir: $GATEWAY_POLICIES#dir: ${BASELINE_POLICIES:-$GATEWAY_POLICIES}#" \
        >"$TMP/gateway-base.yaml"
    log "starting the baseline ciba-gate ($BASELINE_BIN) on 127.0.0.1:$PORT_GATEWAY_BASE"
    "$BASELINE_BIN" serve --config "$TMP/gateway-base.yaml" >"$TMP/gateway-base.log" 2>&1 &
    GW_BASE_PID=$!; PIDS+=("$GW_BASE_PID")
    wait_up ciba-gate-baseline "http://127.0.0.1:$PORT_GATEWAY_BASE/mcp"
fi

PORT_GATEWAY_VIA=${PORT_GATEWAY_VIA:-19194}
PORT_GATEWAY_TLS=${PORT_GATEWAY_TLS:-19195}
PORT_GATEWAY_H2=${PORT_GATEWAY_H2:-19196}
if [ "$TLS" = 1 ]; then
    PIN="    tls: {ca_file: $TMP/ca.pem, system_roots: false}"
    gateway_config "$PORT_GATEWAY_VIA" "{kind: memory}" "$TMP/evidence-via.jsonl" 19197 \
        "http://127.0.0.1:$PORT_NGINX/mcp" >"$TMP/gateway-via.yaml"
    gateway_config "$PORT_GATEWAY_TLS" "{kind: memory}" "$TMP/evidence-tls.jsonl" 19198 \
        "https://127.0.0.1:$PORT_NGINX_TLS/mcp" "$PIN" >"$TMP/gateway-tls.yaml"
    gateway_config "$PORT_GATEWAY_H2" "{kind: memory}" "$TMP/evidence-h2.jsonl" 19199 \
        "https://127.0.0.1:$PORT_NGINX_H2/mcp" "$PIN" >"$TMP/gateway-h2.yaml"
    log "starting ciba-gate in front of nginx: plain :$PORT_GATEWAY_VIA, https :$PORT_GATEWAY_TLS, https+h2 :$PORT_GATEWAY_H2"
    for v in via tls h2; do
        "$BIN" serve --config "$TMP/gateway-$v.yaml" >"$TMP/gateway-$v.log" 2>&1 &
        PIDS+=("$!")
        eval "GW_${v^^}_PID=$!"
    done
    wait_up ciba-gate-via-nginx "http://127.0.0.1:$PORT_GATEWAY_VIA/mcp"
    wait_up ciba-gate-via-nginx-tls "http://127.0.0.1:$PORT_GATEWAY_TLS/mcp"
    wait_up ciba-gate-via-nginx-h2 "http://127.0.0.1:$PORT_GATEWAY_H2/mcp"
fi

PORT_GATEWAY_VIRTUAL=${PORT_GATEWAY_VIRTUAL:-19200}
if [ "$VIRTUAL" = 1 ]; then
    # The same gateway config, its one upstream behind a virtual server (names as
    # they are, so the load script's calls resolve by the naming rule alone).
    gateway_config "$PORT_GATEWAY_VIRTUAL" "{kind: memory}" "$TMP/evidence-virtual.jsonl" 19201 \
        | sed -e 's|^upstreams:$|upstreams:\n  - {name: mcp, kind: mcp, mount: /mcp, servers: [{upstream: tools}]}|' \
              -e '/^    mount: \/mcp$/d' >"$TMP/gateway-virtual.yaml"
    "$BIN" serve --config "$TMP/gateway-virtual.yaml" >"$TMP/gateway-virtual.log" 2>&1 &
    GW_VIRTUAL_PID=$!; PIDS+=("$GW_VIRTUAL_PID")
    VIRTUAL_SESSION=
    for _ in $(seq 1 100); do
        VIRTUAL_SESSION=$(curl -s -D - -o /dev/null -H 'content-type: application/json' \
            -H 'accept: application/json, text/event-stream' \
            --data '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}' \
            "http://127.0.0.1:$PORT_GATEWAY_VIRTUAL/mcp" 2>/dev/null | tr -d '\r' | sed -n 's/^mcp-session-id: //Ip' || true)
        [ -n "$VIRTUAL_SESSION" ] && break
        sleep 0.1
    done
    [ -n "$VIRTUAL_SESSION" ] || die "the virtual server opened no session ($TMP/gateway-virtual.log)"
    SESSION_OK=$(curl -s -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
        -H 'mcp-protocol-version: 2025-06-18' -H "mcp-session-id: $VIRTUAL_SESSION" --data "$BODY_OK" \
        "http://127.0.0.1:$PORT_GATEWAY_VIRTUAL/mcp")
    echo "$SESSION_OK" | grep -q '"isError":false' || die "the virtual server did not route a call: $SESSION_OK"
    log "virtual server on :$PORT_GATEWAY_VIRTUAL, session opened"
fi

# The gateway really decides: a destructive tool is blocked, the allowed one is not.
DENIED=$(probe "http://127.0.0.1:$PORT_GATEWAY/mcp" \
    '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repository","arguments":{"repo":"x"}}}')
echo "$DENIED" | grep -q '"ciba-gate/decision":"deny"' || die "gateway did not deny delete_repository: $DENIED"
log "policy check: delete_repository denied, list_deployments allowed"

# --- measure -------------------------------------------------------------------------
TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids... -> summed utime+stime of these processes and their children
    local total=0 pid t
    for pid in "$@"; do
        for p in "$pid" $(pgrep -P "$pid" || true); do
            t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
            total=$((total + t))
        done
    done
    echo "$total"
}

DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

run_one() { # name url proxy_pid round [evidence-file]
    local name=$1 url=$2 ppid=$3 out="$TMP/wrk-$1-$4.txt" evf=${5:-$TMP/evidence.jsonl}
    wait_quiet
    log "$name: warm-up $WARMUP"
    timeout $((WARM_S + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" --timeout 5s -s "$LUA" "$url" >/dev/null
    sleep 1
    local up0 px0 up1 px1 ev0 ev1 quiet0=yes
    if pgrep -x 'cargo|rustc' >/dev/null; then quiet0=no; fi
    ev0=$( [ -f "$evf" ] && wc -l <"$evf" || echo 0)
    up0=$(cpu_ticks "$UP_PID"); px0=$( [ -n "$ppid" ] && cpu_ticks $ppid || echo 0)
    log "$name: $DURATION, -t$THREADS -c$CONNS"
    timeout $((DUR_S + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 5s --latency -s "$LUA" "$url" | tee "$out" >&2
    up1=$(cpu_ticks "$UP_PID"); px1=$( [ -n "$ppid" ] && cpu_ticks $ppid || echo 0)
    local quiet=yes
    if [ "$quiet0" != yes ] || pgrep -x 'cargo|rustc' >/dev/null; then quiet=no; fi
    sleep 1
    ev1=$( [ -f "$evf" ] && wc -l <"$evf" || echo 0)
    local line; line=$(grep '^WRK_RESULT' "$out") || die "no WRK_RESULT in $out"
    # shellcheck disable=SC2086
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$line" "$((up1 - up0))" "$((px1 - px0))" "$((ev1 - ev0))" "$4" "$quiet" >>"$RESULTS"
    sleep 1
}

for round in $(seq 1 "$ROUNDS"); do
    run_one direct "http://127.0.0.1:$PORT_UPSTREAM/mcp" "" "$round"
    run_one nginx "http://127.0.0.1:$PORT_NGINX/mcp" "$NGX_PID" "$round"
    run_one ciba-gate "http://127.0.0.1:$PORT_GATEWAY/mcp" "$GW_PID" "$round"
    if [ -n "$BASELINE_BIN" ]; then
        run_one ciba-gate@baseline "http://127.0.0.1:$PORT_GATEWAY_BASE/mcp" "$GW_BASE_PID" "$round" "$TMP/evidence-base.jsonl"
    fi
    run_one ciba-gate+redis "http://127.0.0.1:$PORT_GATEWAY_REDIS/mcp" "$GWR_PID" "$round" "$TMP/evidence-redis.jsonl"
    if [ "$TLS" = 1 ]; then
        run_one ciba-gate→nginx "http://127.0.0.1:$PORT_GATEWAY_VIA/mcp" "$GW_VIA_PID $NGX_PID" "$round" "$TMP/evidence-via.jsonl"
        run_one ciba-gate→nginx-https "http://127.0.0.1:$PORT_GATEWAY_TLS/mcp" "$GW_TLS_PID $NGX_PID" "$round" "$TMP/evidence-tls.jsonl"
        run_one ciba-gate→nginx-https-h2 "http://127.0.0.1:$PORT_GATEWAY_H2/mcp" "$GW_H2_PID $NGX_PID" "$round" "$TMP/evidence-h2.jsonl"
    fi
    if [ "$VIRTUAL" = 1 ]; then
        export MCP_SESSION_ID=$VIRTUAL_SESSION
        run_one ciba-gate-virtual "http://127.0.0.1:$PORT_GATEWAY_VIRTUAL/mcp" "$GW_VIRTUAL_PID" "$round" "$TMP/evidence-virtual.jsonl"
        unset MCP_SESSION_ID
    fi
done

# --- report --------------------------------------------------------------------------
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency (warm-up $WARMUP), $(nproc) CPUs, nginx: $NGINX_WORKERS workers, upstream keepalive $NGINX_KEEPALIVE, access_log $NGINX_ACCESS_LOG"
echo
echo "| round | target | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | proxy CPU µs/req | upstream CPU µs/req | evidence lines | quiet box |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
while IFS=$'\t' read -r name line up_t px_t ev round quiet; do
    req=$(field "$line" req); rps=$(field "$line" rps)
    p50=$(field "$line" p50_us); p90=$(field "$line" p90_us); p99=$(field "$line" p99_us); max=$(field "$line" max_us)
    errs=$(( $(field "$line" non2xx) + $(field "$line" bad_body) + $(field "$line" sock_err) ))
    px="-"; evs="-"
    if [ "$name" != direct ]; then px=$(awk -v t="$px_t" -v r="$req" -v k="$TCK" 'BEGIN{printf "%.1f", t*1e6/k/r}'); fi
    case $name in ciba-gate*) evs=$ev ;; esac
    upc=$(awk -v t="$up_t" -v r="$req" -v k="$TCK" 'BEGIN{printf "%.1f", t*1e6/k/r}')
    awk -v ro="$round" -v n="$name" -v rps="$rps" -v a="$p50" -v b="$p90" -v c="$p99" -v d="$max" -v e="$errs" -v px="$px" -v up="$upc" -v ev="$evs" -v q="$quiet" \
        'BEGIN{printf "| %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %d | %s | %s | %s | %s |\n", ro, n, rps, a/1000, b/1000, c/1000, d/1000, e, px, up, ev, q}'
done <"$RESULTS"
echo
echo "errors = non-2xx + 2xx without a successful tool result + socket errors."
echo "evidence lines = records the gateway wrote during the measured run (one per call, plus records of"
echo "  warm-up requests cut off when the warm-up ended). CPU columns: utime+stime from /proc per request."
echo "quiet box = no cargo/rustc process at the start and end of the measured run."
