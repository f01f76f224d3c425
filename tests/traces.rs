//! Traces end to end, in one process over real sockets: the gateway exports OTLP
//! (HTTP/protobuf) to a receiver in this test; an approved call (held over SSE, poll
//! delivery, development OP) must be one trace under the agent's `traceparent`, with
//! the expected spans, the tool server must see the gateway's upstream span as its
//! parent, and no attribute may carry a secret, a hint or an argument. A parked call
//! (JSON-only client) names its session by digest, its request id and revision, and
//! the retry that runs it links to the first attempt's span.
//! (Its own test binary: it installs the process-wide tracing subscriber.)

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
use ciba_gate::telemetry::config::{OtlpProtocol, TelemetryConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const CLIENT_SECRET: &str = "trace-test-secret-8f2a91";
const USER: &str = "carol@example.com";
const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";
/// The traces of a parked call and of its retries.
const PARK_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const RETRY_TRACE: &str = "6df92f3577b34da6a3ce929d0e0e4738";
const SESSION: &str = "session-7f3a2c91d0";

/// A JSON-only MCP call in session `SESSION` under the agent's trace `trace`: the
/// JSON-RPC answer.
async fn json_only_call(gw: SocketAddr, id: i64, trace: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "deploy_service", "arguments": {"service": "search", "env": "prod"}}});
    reqwest::Client::new()
        .post(format!("http://{gw}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", SESSION)
        .header("traceparent", format!("00-{trace}-{AGENT_SPAN}-01"))
        .timeout(Duration::from_secs(30))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Serves `handler` for every request on a fresh loopback port.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// What the tool server got: the `traceparent` header and the JSON-RPC body.
type Seen = (Option<String>, Value);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether attribute `key` of `s` is exported as an OTLP integer.
fn is_int(s: &Span, key: &str) -> bool {
    s.attributes.iter().any(|kv| {
        kv.key == key
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(AnyValue::IntValue(_))
            )
    })
}

fn attr_strings(s: &Span) -> Vec<(String, String)> {
    s.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_is_one_trace_under_the_agents_traceparent() {
    // The OTLP receiver.
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let got = spans.clone();
    let otlp = serve(move |req: Request<Incoming>| {
        let got = got.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.clone())
                    .and_then(|v| v.value);
                assert_eq!(
                    service,
                    Some(AnyValue::StringValue("gate-under-test".into()))
                );
                for ss in rs.scope_spans {
                    got.lock().unwrap().extend(ss.spans);
                }
            }
            Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let telemetry = ciba_gate::telemetry::init(
        "info",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{otlp}")),
            protocol: Some(OtlpProtocol::Http),
            sampling_ratio: Some(1.0),
            service_name: Some("gate-under-test".into()),
        },
    )
    .unwrap();

    // The tool server, recording the trace headers it receives.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rec = seen.clone();
    let upstream = serve(move |req: Request<Incoming>| {
        let rec = rec.clone();
        async move {
            let tp = req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            rec.lock().unwrap().push((tp, v.clone()));
            let answer = json!({"jsonrpc": "2.0", "id": v["id"], "result": {"content": [{"type": "text", "text": "deployed"}], "isError": false}});
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))
                .unwrap()
        }
    })
    .await;

    // The development OP (poll) and the gateway.
    let op = DevOp::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DevOpConfig {
            clients: vec![DevClient {
                client_id: "gate".into(),
                secret: CLIENT_SECRET.into(),
                delivery: DeliveryMode::Poll,
                notification_endpoint: None,
            }],
            users: vec![USER.into()],
            interval: Some(1),
            default_expiry: 60,
            ..DevOpConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), CLIENT_SECRET).unwrap();
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let yaml = format!(
        r#"
agent: {{id: trace-agent}}
policy: {{dir: {policies:?}, reload_interval: 0s}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{upstream}/mcp"}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: poll
    allow_insecure_http: true
  user: {{value: "{USER}"}}
  binding_message_profile: ciba-gate-dev
  mode: hold
  max_wait: 30s
  max_plain_wait: 1s
"#,
        issuer = op.issuer(),
    );
    let gate = support::gateway::Gate::start(dir.path(), &yaml).await;
    gate.approvals_ready().await;
    let gw_addr = gate.addr;

    // The agent's call, held over SSE, approved on the "phone".
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "deploy_service", "arguments": {"service": "payments", "env": "prod"},
        "_meta": {"progressToken": "p1"}}});
    let call = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{gw_addr}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("traceparent", format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01"))
            .timeout(Duration::from_secs(30))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let pending = loop {
        let p = op.pending();
        if !p.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    op.decide(&pending[0].id, true).await.unwrap();
    let answer = call.await.unwrap();
    assert!(answer.contains("deployed"), "{answer}");

    // A client that takes JSON only is parked (the wait is past max_plain_wait); once
    // approved, its identical retry runs the call.
    let parked = json_only_call(gw_addr, 7, PARK_TRACE).await;
    assert_eq!(
        parked["result"]["_meta"]["ciba-gate/reason"], "approval_pending",
        "{parked}"
    );
    let pending = loop {
        let p = op.pending();
        if !p.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    op.decide(&pending[0].id, true).await.unwrap();
    let mut retried = Value::Null;
    for attempt in 0..20 {
        retried = json_only_call(gw_addr, 8 + attempt, RETRY_TRACE).await;
        if retried["result"]["_meta"]["ciba-gate/reason"] != "approval_pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        retried["result"]["content"][0]["text"], "deployed",
        "{retried}"
    );

    // Flush the exporter (blocking: off the runtime's workers).
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();
    let all_spans = spans.lock().unwrap().clone();
    let in_trace = |t: &str| -> Vec<Span> {
        all_spans
            .iter()
            .filter(|s| hex(&s.trace_id) == t)
            .cloned()
            .collect()
    };

    // The parked call's root names the session by digest, its request id and revision;
    // every retry's root links to it.
    let park_roots: Vec<Span> = in_trace(PARK_TRACE)
        .into_iter()
        .filter(|s| s.name == "POST /mcp")
        .collect();
    assert_eq!(
        park_roots.len(),
        1,
        "{:?}",
        in_trace(PARK_TRACE)
            .iter()
            .map(|s| (
                s.name.clone(),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                attr_strings(s)
            ))
            .collect::<Vec<_>>()
    );
    let park_attrs: HashMap<String, String> = attr_strings(&park_roots[0]).into_iter().collect();
    use sha2::Digest;
    assert_eq!(
        park_attrs["mcp.session.id"],
        hex(&sha2::Sha256::digest(SESSION.as_bytes())[..16])
    );
    assert_eq!(park_attrs["jsonrpc.request.id"], "7");
    assert_eq!(park_attrs["mcp.protocol.version"], "2025-06-18");
    let retry_roots: Vec<Span> = in_trace(RETRY_TRACE)
        .into_iter()
        .filter(|s| s.name == "POST /mcp")
        .collect();
    assert!(!retry_roots.is_empty());
    for r in &retry_roots {
        assert!(
            r.links.iter().any(|l| l.trace_id == park_roots[0].trace_id
                && l.span_id == park_roots[0].span_id),
            "a retry's span does not link to the first attempt: {:?}",
            r.links
        );
    }
    for s in &all_spans {
        for (k, v) in attr_strings(s) {
            assert!(
                !v.contains(SESSION),
                "span {} attribute {k} carries the session id",
                s.name
            );
        }
    }

    let spans = in_trace(AGENT_TRACE);
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let get = |n: &str| {
        *by_name
            .get(n)
            .unwrap_or_else(|| panic!("no span {n:?} in {names:?}"))
    };

    // One trace, the agent's: every span of the held call is in it.
    assert!(
        all_spans
            .iter()
            .all(|s| [AGENT_TRACE, PARK_TRACE, RETRY_TRACE].contains(&hex(&s.trace_id).as_str())),
        "a span outside the agents' traces"
    );
    let root = get("POST /mcp");
    assert_eq!(
        hex(&root.parent_span_id),
        AGENT_SPAN,
        "root's parent is the agent's span"
    );
    let root_attrs: HashMap<String, String> = attr_strings(root).into_iter().collect();
    assert_eq!(root_attrs["http.request.method"], "POST");
    assert_eq!(root_attrs["url.path"], "/mcp");
    assert_eq!(root_attrs["http.response.status_code"], "200");
    assert_eq!(root_attrs["mcp.method.name"], "tools/call");
    assert_eq!(root_attrs["gen_ai.tool.name"], "deploy_service");
    for child in [
        "classify",
        "policy.request",
        "approval.request",
        "approval.wait",
        "policy.approved",
        "POST tools",
    ] {
        assert_eq!(
            get(child).parent_span_id,
            root.span_id,
            "{child} is not a child of the call's span"
        );
    }
    let ciba = get("approval.ciba");
    assert_eq!(ciba.parent_span_id, get("approval.request").span_id);
    for child in [
        "ciba.backchannel_authentication",
        "ciba.token",
        "ciba.id_token_validation",
    ] {
        assert_eq!(
            get(child).parent_span_id,
            ciba.span_id,
            "{child} is not below approval.ciba"
        );
    }
    let up = get("POST tools");
    let up_attrs: HashMap<String, String> = attr_strings(up).into_iter().collect();
    assert_eq!(up_attrs["server.address"], "127.0.0.1");
    assert_eq!(up_attrs["http.response.status_code"], "200");
    // Semantic conventions: status codes and ports are integers, not strings.
    for (span, key) in [
        (root, "http.response.status_code"),
        (up, "http.response.status_code"),
        (up, "server.port"),
    ] {
        assert!(is_int(span, key), "{key} is not exported as an integer");
    }
    assert_eq!(up.kind, 3, "upstream span kind is CLIENT");
    assert_eq!(root.kind, 2, "root span kind is SERVER");

    // The tool server saw the gateway's upstream span as parent, not the agent's.
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<_> = seen
        .iter()
        .filter(|(_, v)| v["method"] == "tools/call")
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "the held call, then the parked call's retry"
    );
    let tp = calls[0].0.clone().expect("no traceparent upstream");
    assert_eq!(tp, format!("00-{AGENT_TRACE}-{}-01", hex(&up.span_id)));

    // Nothing secret or user-supplied in any attribute or span name.
    for s in &all_spans {
        for (k, v) in attr_strings(s)
            .into_iter()
            .chain([("name".to_string(), s.name.clone())])
        {
            for bad in [CLIENT_SECRET, USER, "payments", "Deploy", "eyJ", "prod"] {
                assert!(
                    !v.contains(bad),
                    "span {} attribute {k}={v:?} carries {bad:?}",
                    s.name
                );
            }
        }
        assert!(s.events.is_empty(), "span {} exports log events", s.name);
    }
}
