//! The gateway over real sockets: a real hyper upstream that records what reaches it,
//! the bundled policies, and an HTTP client in front. Each test states one behaviour.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use support::gateway::Gate;

const UPSTREAM_TOKEN: &str = "upstream-secret-7f3a9c";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// How the upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers every request like an MCP server, as application/json.
    Json,
    /// Answers as an SSE stream: a progress event, then (after the test releases it) the result.
    Sse,
    /// Never answers (for timeouts).
    Silent,
}

struct Upstream {
    addr: SocketAddr,
    seen: SeenLog,
    /// Releases the held second SSE event.
    release: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

fn mcp_answer(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?.clone();
    let method = msg.get("method")?.as_str()?;
    let result = match method {
        "tools/list" => json!({"tools": [
            {"name": "list_deployments", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
            {"name": "deploy_service", "inputSchema": {"type": "object"}},
            {"name": "delete_repository", "inputSchema": {"type": "object"}, "annotations": {"destructiveHint": true}},
            {"name": "mystery_tool", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            json!({"content": [{"type": "text", "text": format!("ran {}", msg["params"]["name"])}], "isError": false})
        }
        _ => json!({}),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn start_upstream(mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenLog = Arc::default();
    let (tx, rx) = oneshot::channel();
    let release_rx = Arc::new(Mutex::new(Some(rx)));
    let up = Upstream {
        addr,
        seen: seen.clone(),
        release: Arc::new(Mutex::new(Some(tx))),
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let release_rx = release_rx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let release_rx = release_rx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        seen.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts.headers.clone(),
                            body: body.clone(),
                        });
                        if mode == Mode::Silent {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let answer = match &body {
                            Value::Array(items) => {
                                let a: Vec<Value> = items.iter().filter_map(mcp_answer).collect();
                                (!a.is_empty()).then_some(Value::Array(a))
                            }
                            one => mcp_answer(one),
                        };
                        let resp = match (mode, answer) {
                            (_, None) if parts.method == "POST" => Response::builder()
                                .status(202)
                                .body(body_of(Bytes::new()))
                                .unwrap(),
                            (_, None) => Response::builder()
                                .header("content-type", "text/event-stream")
                                .header("x-ciba-gate-decision", "allow")
                                .body(body_of(Bytes::from_static(b": stream open\n\n")))
                                .unwrap(),
                            (Mode::Sse, Some(a)) => {
                                let rx = release_rx.lock().unwrap().take();
                                let first = Bytes::from(
                                    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n",
                                );
                                let second = Bytes::from(format!("event: message\ndata: {a}\n\n"));
                                let stream =
                                    futures_util::stream::unfold((0u8, rx), move |(n, rx)| {
                                        let first = first.clone();
                                        let second = second.clone();
                                        async move {
                                            match n {
                                                0 => Some((
                                                    Ok::<_, Infallible>(Frame::data(first)),
                                                    (1, rx),
                                                )),
                                                1 => {
                                                    // Held until the test has seen the first event.
                                                    if let Some(rx) = rx {
                                                        let _ = rx.await;
                                                    }
                                                    Some((Ok(Frame::data(second)), (2, None)))
                                                }
                                                _ => None,
                                            }
                                        }
                                    });
                                Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(StreamBody::new(stream).boxed_unsync())
                                    .unwrap()
                            }
                            (_, Some(a)) => Response::builder()
                                .header("content-type", "application/json")
                                .header("x-ciba-gate-approved", "yes")
                                .body(body_of(Bytes::from(a.to_string())))
                                .unwrap(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn body_of(b: Bytes) -> TestBody {
    Full::new(b).boxed_unsync()
}

fn config_text(upstream: SocketAddr, extra_upstream: &str) -> String {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    format!(
        r#"
agent: {{id: test-agent, namespace: agents}}
policy: {{dir: "{policies}", reload_interval: 0s}}
limits: {{max_body_bytes: 4096, max_json_depth: 16}}
upstreams:
  - name: tools
    kind: mcp
    mount: /mcp
    url: http://{upstream}/mcp
    connect_timeout: 1s
    response_timeout: 1s
    credential: {{header: authorization, prefix: "Bearer ", env: PROXY_TEST_UPSTREAM_TOKEN}}
  - name: tickets
    kind: http
    mount: /tickets
    url: http://{upstream}/api
    response_timeout: 1s
    credential: {{header: x-api-key, env: PROXY_TEST_UPSTREAM_TOKEN}}
    routes:
      - {{method: POST, path: "/projects/{{project}}/issues", tool: create_issue}}
      - {{method: DELETE, path: "/projects/{{project}}/issues/{{id}}", tool: delete_issue}}
{extra_upstream}"#
    )
}

async fn start_gateway_with(upstream: SocketAddr, extra_upstream: &str) -> Gate {
    // SAFETY of the test: every test sets the same value.
    unsafe { std::env::set_var("PROXY_TEST_UPSTREAM_TOKEN", UPSTREAM_TOKEN) };
    let dir = tempfile::tempdir().unwrap().keep();
    Gate::start(&dir, &config_text(upstream, extra_upstream)).await
}

async fn start_gateway(upstream: SocketAddr) -> Gate {
    start_gateway_with(upstream, "").await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn rpc(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn call(id: i64, tool: &str, args: Value) -> Value {
    rpc(
        json!(id),
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
}

async fn post_mcp(gw: &Gate, body: &Value) -> (u16, http::HeaderMap, Value) {
    post_raw(
        gw,
        "/mcp",
        "application/json",
        body.to_string().into_bytes(),
        &[],
    )
    .await
}

async fn post_raw(
    gw: &Gate,
    path: &str,
    ctype: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Value) {
    let mut req = client()
        .post(format!("http://{}{path}", gw.addr))
        .header("content-type", ctype)
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => Value::String(text),
    };
    (status, headers, value)
}

fn tool_names(list_result: &Value) -> Vec<String> {
    list_result["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

async fn evidence_lines(gw: &Gate, at_least: usize) -> Vec<Value> {
    for _ in 0..100 {
        let lines = gw.evidence.lock().unwrap().clone();
        if lines.len() >= at_least {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {at_least} evidence records");
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn allowed_call_is_forwarded_with_the_upstream_credential_and_clean_headers() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let (status, headers, body) = post_raw(
        &gw,
        "/mcp",
        "application/json",
        call(1, "list_deployments", json!({"env": "prod"}))
            .to_string()
            .into_bytes(),
        &[
            ("authorization", "Bearer agent-own-token"),
            ("x-ciba-gate-decision", "allow"),
            ("x-ciba-gate-approved", "yes"),
            ("mcp-session-id", "session-123"),
            ("mcp-protocol-version", "2025-11-25"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], 1);
    assert_eq!(
        body["result"]["content"][0]["text"],
        "ran \"list_deployments\""
    );
    assert!(
        headers.get("x-ciba-gate-approved").is_none(),
        "upstream cannot fake gateway headers either"
    );
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(
        h["authorization"],
        format!("Bearer {UPSTREAM_TOKEN}").as_str()
    );
    assert_eq!(h["mcp-session-id"], "session-123");
    assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(h.get("x-ciba-gate-decision").is_none());
    assert!(h.get("x-ciba-gate-approved").is_none());
    assert!(h.get("x-secret-hop").is_none());
    assert_eq!(
        seen[0].body,
        call(1, "list_deployments", json!({"env": "prod"}))
    );

    let ev = evidence_lines(&gw, 1).await;
    assert_eq!(ev[0]["decision"], "allow");
    assert_eq!(ev[0]["tool"], "list_deployments");
    assert_eq!(ev[0]["outcome"], "forwarded");
    assert_eq!(ev[0]["upstream_status"], 200);
    assert_eq!(ev[0]["agent"], "test-agent");
    assert_eq!(ev[0]["args_fingerprint"].as_str().unwrap().len(), 64);
    assert!(
        ev[0]["policy_revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let all = gw.evidence.lock().unwrap().join("\n");
    assert!(
        !all.contains(UPSTREAM_TOKEN) && !all.contains("agent-own-token") && !all.contains("prod")
    );
}

#[tokio::test]
async fn denied_call_never_reaches_the_tool_and_the_agent_gets_a_readable_tool_error() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let (status, _, body) =
        post_mcp(&gw, &call(42, "delete_repository", json!({"repo": "core"}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    assert_eq!(body["result"]["isError"], true);
    assert_eq!(body["result"]["_meta"]["ciba-gate/decision"], "deny");
    assert_eq!(
        body["result"]["_meta"]["ciba-gate/reason"],
        "destructive_tool"
    );
    assert!(
        body["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("destructive")
    );
    assert!(up.seen.lock().unwrap().is_empty());
    let ev = evidence_lines(&gw, 1).await;
    assert_eq!(ev[0]["decision"], "deny");
    assert_eq!(ev[0]["reason"], "destructive_tool");
    assert_eq!(ev[0]["outcome"], "blocked");
}

#[tokio::test]
async fn call_needing_approval_is_blocked_while_no_approval_provider_is_configured() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let (_, _, body) = post_mcp(
        &gw,
        &call(
            7,
            "deploy_service",
            json!({"service": "payments", "env": "prod"}),
        ),
    )
    .await;
    assert_eq!(body["id"], 7);
    assert_eq!(body["result"]["isError"], true);
    assert_eq!(body["result"]["_meta"]["ciba-gate/decision"], "approve");
    assert_eq!(
        body["result"]["_meta"]["ciba-gate/reason"],
        "approval_not_configured"
    );
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_tools_and_unlisted_methods_are_denied() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let (_, _, body) = post_mcp(&gw, &call(1, "mystery_tool", json!({}))).await;
    assert_eq!(
        body["result"]["_meta"]["ciba-gate/reason"],
        "no_matching_rule"
    );
    let (_, _, body) = post_mcp(
        &gw,
        &rpc(
            json!("r1"),
            "resources/read",
            json!({"uri": "file:///etc/passwd"}),
        ),
    )
    .await;
    assert_eq!(body["id"], "r1");
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["error"]["data"]["reason"], "no_matching_rule");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn tools_list_hides_denied_and_unknown_tools_in_json_answers() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let (status, _, body) = post_mcp(&gw, &rpc(json!(3), "tools/list", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        tool_names(&body),
        vec!["list_deployments", "deploy_service"]
    );
    let ev = evidence_lines(&gw, 1).await;
    assert_eq!(ev[0]["mcp_method"], "tools/list");
    assert_eq!(
        ev[0]["hidden_tools"], 2,
        "delete_repository and mystery_tool"
    );
    assert_eq!(ev[0]["http_method"], "POST");
}

#[tokio::test]
async fn sse_answers_stream_event_by_event_and_tools_list_is_filtered_in_them() {
    let up = start_upstream(Mode::Sse).await;
    let gw = start_gateway(up.addr).await;
    let mut resp = client()
        .post(format!("http://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            rpc(
                json!(9),
                "tools/list",
                json!({"_meta": {"progressToken": 1}}),
            )
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The first event arrives while the upstream still holds the second one back.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
    let _ = up.release.lock().unwrap().take().map(|tx| tx.send(()));
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    let data = rest.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["id"], 9);
    assert_eq!(tool_names(&v), vec!["list_deployments", "deploy_service"]);
}

#[tokio::test]
async fn batch_forwards_only_allowed_members_and_answers_every_request() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let batch = json!([
        call(1, "list_deployments", json!({})),
        call(2, "delete_repository", json!({"repo": "x"})),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 4, "method": 5},
        rpc(json!(5), "tools/list", json!({})),
    ]);
    let (status, _, body) = post_raw(
        &gw,
        "/mcp",
        "application/json",
        batch.to_string().into_bytes(),
        &[("mcp-protocol-version", "2025-03-26")],
    )
    .await;
    assert_eq!(status, 200);
    let answers = body.as_array().unwrap();
    let by_id = |id: i64| answers.iter().find(|a| a["id"] == id).cloned().unwrap();
    assert_eq!(by_id(1)["result"]["isError"], false);
    assert_eq!(
        by_id(2)["result"]["_meta"]["ciba-gate/reason"],
        "destructive_tool"
    );
    assert_eq!(by_id(4)["error"]["code"], -32600);
    assert_eq!(
        tool_names(&by_id(5)),
        vec!["list_deployments", "deploy_service"]
    );
    assert_eq!(answers.len(), 4);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let forwarded: Vec<Value> = seen[0].body.as_array().unwrap().clone();
    assert_eq!(
        forwarded.len(),
        3,
        "list_deployments, the notification and tools/list"
    );
    assert!(!seen[0].body.to_string().contains("delete_repository"));
}

#[tokio::test]
async fn batches_are_refused_for_revisions_that_removed_them() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let batch = json!([call(1, "list_deployments", json!({}))]);
    let (status, _, body) = post_raw(
        &gw,
        "/mcp",
        "application/json",
        batch.to_string().into_bytes(),
        &[("mcp-protocol-version", "2025-06-18")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["data"]["reason"], "batch_not_allowed");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn stateless_revision_headers_must_match_the_body() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let body = call(5, "list_deployments", json!({}))
        .to_string()
        .into_bytes();
    let lying = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "deploy_service"),
    ];
    let (status, _, ans) = post_raw(&gw, "/mcp", "application/json", body.clone(), &lying).await;
    assert_eq!(status, 400);
    assert_eq!(ans["id"], 5);
    assert_eq!(ans["error"]["code"], -32020);
    let missing = [("mcp-protocol-version", "2026-07-28")];
    let (status, _, _) = post_raw(&gw, "/mcp", "application/json", body.clone(), &missing).await;
    assert_eq!(status, 400);
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "a mismatched request is never forwarded"
    );

    let honest = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "list_deployments"),
    ];
    let (status, _, ans) = post_raw(&gw, "/mcp", "application/json", body, &honest).await;
    assert_eq!(status, 200);
    assert_eq!(ans["result"]["isError"], false);
    // A blocked call in this revision carries resultType.
    let denied = call(6, "delete_repository", json!({"repo": "x"}))
        .to_string()
        .into_bytes();
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "delete_repository"),
    ];
    let (_, _, ans) = post_raw(&gw, "/mcp", "application/json", denied, &h).await;
    assert_eq!(ans["result"]["resultType"], "complete");
    assert_eq!(up.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn get_stream_and_session_delete_pass_through() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let resp = client()
        .get(format!("http://{}/mcp", gw.addr))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "s-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("x-ciba-gate-decision").is_none());
    assert_eq!(resp.text().await.unwrap(), ": stream open\n\n");
    let resp = client()
        .delete(format!("http://{}/mcp", gw.addr))
        .header("mcp-session-id", "s-1")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(),
        vec!["GET", "DELETE"]
    );
    assert!(seen.iter().all(|s| s.headers["mcp-session-id"] == "s-1"));
}

// --- bad input ----------------------------------------------------------------------

#[tokio::test]
async fn malformed_bodies_get_typed_json_rpc_errors_and_nothing_is_forwarded() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"list_deployments\",\"arguments\":{{\"a\":{}1{}}}}}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    // (what, content type, body, HTTP status, JSON-RPC code, reason)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, i64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"jsonrpc\":".to_vec(),
            400,
            -32700,
            "parse_error",
        ),
        (
            "not UTF-8",
            "application/json",
            vec![b'"', 0xff, 0xfe, b'"'],
            400,
            -32700,
            "parse_error",
        ),
        (
            "not JSON-RPC",
            "application/json",
            br#"{"hello":"world"}"#.to_vec(),
            400,
            -32600,
            "invalid_request",
        ),
        (
            "wrong version",
            "application/json",
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(),
            400,
            -32600,
            "invalid_request",
        ),
        (
            "deep nesting",
            "application/json",
            deep.into_bytes(),
            400,
            -32600,
            "json_too_deep",
        ),
        (
            "empty batch",
            "application/json",
            b"[]".to_vec(),
            400,
            -32600,
            "empty_batch",
        ),
        (
            "wrong content type",
            "text/plain",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec(),
            415,
            -32600,
            "unsupported_media_type",
        ),
        (
            "form content type",
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
            415,
            -32600,
            "unsupported_media_type",
        ),
        (
            "oversize body",
            "application/json",
            vec![b' '; 10_000],
            413,
            -32600,
            "body_too_large",
        ),
    ];
    for (what, ctype, body, status, code, reason) in cases {
        let (got_status, headers, ans) = post_raw(&gw, "/mcp", ctype, body, &[]).await;
        assert_eq!(got_status, status, "{what}");
        assert_eq!(headers["content-type"], "application/json", "{what}");
        assert_eq!(ans["jsonrpc"], "2.0", "{what}");
        assert_eq!(ans["error"]["code"], code, "{what}");
        assert_eq!(ans["error"]["data"]["reason"], reason, "{what}");
    }
    let (status, _, ans) = post_mcp(&gw, &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "list_deployments", "arguments": [1]}})).await;
    assert_eq!(status, 200);
    assert_eq!(ans["id"], 9);
    assert_eq!(ans["error"]["code"], -32602);
    assert!(up.seen.lock().unwrap().is_empty());
}

/// Sends one request exactly as written (clients normalise paths; attackers do not).
async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn path_tricks_are_refused_before_routing() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let body = call(1, "list_deployments", json!({}))
        .to_string()
        .into_bytes();
    for path in [
        "/mcp/../mcp",
        "/tickets/../mcp",
        "/mcp/%2e%2e/admin",
        "/mcp/./",
        "//mcp",
        "/mcp%2Fadmin",
        "/tickets/projects/a%2fb/issues",
        "/tickets/projects/x/./issues",
        "/tickets/projects/x//issues",
        "/mcp/%00",
        "/tickets/projects/a%5Cb/issues",
        "/tickets/projects/a\\b/issues",
    ] {
        let (status, ans) = raw_request(gw.addr, &format!("POST {path} HTTP/1.1"), &body).await;
        assert_eq!(status, 400, "{path}");
        assert!(ans.is_object(), "{path}: JSON answer");
        assert!(
            ans["reason"] == "bad_path" || ans["error"]["data"]["reason"] == "bad_path",
            "{path}: {ans}"
        );
    }
    let (status, ans) = raw_request(gw.addr, "POST /mcp/sub HTTP/1.1", &body).await;
    assert_eq!(status, 404);
    assert_eq!(ans["jsonrpc"], "2.0");
    let (status, _) = raw_request(gw.addr, "POST /elsewhere HTTP/1.1", &body).await;
    assert_eq!(status, 404);
    assert!(up.seen.lock().unwrap().is_empty());
    // The same call on the clean path goes through.
    let (status, _) = raw_request(gw.addr, "POST /mcp HTTP/1.1", &body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn header_abuse_is_refused_with_a_clear_answer() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let body = call(1, "list_deployments", json!({})).to_string();
    // Repeated or malformed protocol version.
    let resp = client()
        .post(format!("http://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-protocol-version", "2026-07-28")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _, ans) = post_raw(
        &gw,
        "/mcp",
        "application/json",
        body.clone().into_bytes(),
        &[("mcp-protocol-version", "../../etc")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(ans["error"]["data"]["reason"], "bad_header");
    // A header block far beyond any sane size is refused by the HTTP layer, not forwarded.
    let big = "x".repeat(100_000);
    let resp = client()
        .post(format!("http://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .header("x-big", big)
        .body(body.clone())
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("expected a 431 answer, got {e}"),
    }
    // Non-ASCII mirror header with a 2026 revision.
    let resp = client()
        .post(format!("http://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header(
            "mcp-method",
            http::HeaderValue::from_bytes(b"tools/c\xe4ll").unwrap(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(up.seen.lock().unwrap().is_empty());
}

// --- upstream failures ----------------------------------------------------------------

#[tokio::test]
async fn unreachable_upstream_is_a_502_json_rpc_error() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start_gateway(dead).await;
    let (status, _, ans) = post_mcp(&gw, &call(11, "list_deployments", json!({}))).await;
    assert_eq!(status, 502);
    assert_eq!(ans["id"], 11);
    assert_eq!(ans["error"]["data"]["reason"], "upstream_unreachable");
    let ev = evidence_lines(&gw, 1).await;
    assert_eq!(ev[0]["outcome"], "upstream_failed");
}

#[tokio::test]
async fn silent_upstream_is_a_504_after_the_response_timeout() {
    let up = start_upstream(Mode::Silent).await;
    let gw = start_gateway(up.addr).await;
    let (status, _, ans) = post_mcp(&gw, &call(12, "list_deployments", json!({}))).await;
    assert_eq!(status, 504);
    assert_eq!(ans["id"], 12);
    assert_eq!(ans["error"]["data"]["reason"], "upstream_timeout");
}

// --- plain HTTP tools -----------------------------------------------------------------

#[tokio::test]
async fn http_route_arguments_come_from_path_query_and_body() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let resp = client()
        .post(format!(
            "http://{}/tickets/projects/web/issues?label=bug",
            gw.addr
        ))
        .header("content-type", "application/json")
        .body(r#"{"title":"broken"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "upstream answer passes through");
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/projects/web/issues?label=bug");
    assert_eq!(seen[0].body, json!({"title": "broken"}));
    assert_eq!(seen[0].headers["x-api-key"], UPSTREAM_TOKEN);
    let ev = evidence_lines(&gw, 1).await;
    assert_eq!(ev[0]["tool"], "create_issue");
    assert_eq!(
        ev[0]["args_fingerprint"],
        ciba_gate::fingerprint::of_json(
            &json!({"project": "web", "label": "bug", "title": "broken"})
        )
    );
}

#[tokio::test]
async fn blocked_http_calls_get_403_json_with_a_reason() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let c = client();
    let resp = c
        .delete(format!("http://{}/tickets/projects/web/issues/12", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], "approval_not_configured");
    assert!(v["error"].as_str().unwrap().contains("approval"));
    // Unrouted paths are put to policy with no tool, and nothing matches.
    let resp = c
        .get(format!("http://{}/tickets/admin", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], "no_matching_rule");
    // Bad project name by policy.
    let resp = c
        .post(format!(
            "http://{}/tickets/projects/BAD%20NAME/issues",
            gw.addr
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], "invalid_arguments");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn conflicting_http_arguments_are_refused_as_ambiguous() {
    let up = start_upstream(Mode::Json).await;
    let gw = start_gateway(up.addr).await;
    let resp = client()
        .post(format!(
            "http://{}/tickets/projects/web/issues?project=other",
            gw.addr
        ))
        .header("content-type", "application/json")
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], "ambiguous_arguments");
    let resp = client()
        .post(format!("http://{}/tickets/projects/web/issues", gw.addr))
        .header("content-type", "application/json")
        .body(r#"{"title":"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["reason"], "parse_error");
    assert!(up.seen.lock().unwrap().is_empty());
}
