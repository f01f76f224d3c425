//! Approvals end to end, in one process over real sockets: the gateway, the
//! development OpenID Provider (poll, ping, push, `interval`, `slow_down`), a
//! recording upstream, and the callback listener. Each test states one behaviour;
//! every test also checks that nothing is forwarded without a granted approval.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ciba_gate::devop::op::{DeliveryMode, DevClient, DevOp, DevOpConfig};
use ciba_gate::proxy::Gateway;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::recording_upstream::RecordingUpstream as Upstream;
use tokio::net::TcpListener;

const CLIENT_SECRET: &str = "dev-client-secret-5b1e0c";
const USER: &str = "alice@example.com";
/// A second person: the owner a policy may name as the approver.
const OWNER: &str = "owner@example.com";
/// Two more people, for the two-person rule.
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

// --- the setup -------------------------------------------------------------------------

struct Setup {
    gw_addr: SocketAddr,
    op: DevOp,
    upstream: Upstream,
    evidence: Arc<Mutex<Vec<String>>>,
    gateway: Arc<Gateway>,
    /// Where the OP sends ping/push notifications.
    callback: String,
}

struct Opts {
    delivery: DeliveryMode,
    mode: &'static str,
    interval: Option<u64>,
    slow_down_polls: u32,
    max_wait: &'static str,
    extra: &'static str,
    /// Added to the `tools` upstream's mapping (e.g. `, approval_token: {}`).
    tools_extra: &'static str,
    policies: Option<std::path::PathBuf>,
    /// `policy.shadow.dir`.
    shadow: Option<std::path::PathBuf>,
    profile: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            delivery: DeliveryMode::Poll,
            mode: "hold",
            interval: Some(1),
            slow_down_polls: 0,
            max_wait: "30s",
            extra: "",
            tools_extra: "",
            policies: None,
            shadow: None,
            profile: "ciba-gate-dev",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup(o: Opts) -> Setup {
    let (up_addr, upstream) = Upstream::start().await;
    let callback_port = free_port();
    let callback_url = format!("http://127.0.0.1:{callback_port}/ciba/callback");
    let op = DevOp::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        DevOpConfig {
            clients: vec![DevClient {
                client_id: "gate".into(),
                secret: CLIENT_SECRET.into(),
                delivery: o.delivery,
                notification_endpoint: (o.delivery != DeliveryMode::Poll)
                    .then(|| callback_url.clone()),
            }],
            users: vec![USER.into(), OWNER.into(), BOB.into(), CAROL.into()],
            interval: o.interval,
            slow_down_polls: o.slow_down_polls,
            default_expiry: 60,
            ..DevOpConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("secret"), CLIENT_SECRET).unwrap();
    let policies = o.policies.clone().unwrap_or_else(|| {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
    });
    let callback = if o.delivery == DeliveryMode::Poll {
        String::new()
    } else {
        format!("  callback: {{listen: \"127.0.0.1:{callback_port}\", insecure_http: true}}\n")
    };
    let yaml = format!(
        r#"
agent: {{id: billing-agent, namespace: agents}}
policy: {{dir: {policies:?}, reload_interval: 0s{shadow}}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{up_addr}/mcp"{tools_extra}}}
  - name: tickets
    kind: http
    mount: /tickets
    url: "http://{up_addr}/api"
    routes:
      - {{method: DELETE, path: "/projects/{{project}}/issues/{{id}}", tool: delete_issue}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: {delivery}
    allow_insecure_http: true
  user: {{value: "{USER}"}}
  binding_message_profile: {profile}
  mode: {mode}
  max_wait: {max_wait}
  keepalive: 1s
  progress_interval: 1s
  park_retry_after: 1s
  ping_fallback_poll: 60s
{callback}{extra}"#,
        issuer = op.issuer(),
        delivery = o.delivery.as_str(),
        mode = o.mode,
        max_wait = o.max_wait,
        profile = o.profile,
        extra = o.extra,
        tools_extra = o.tools_extra,
        shadow = o
            .shadow
            .as_ref()
            .map(|d| format!(", shadow: {{dir: {d:?}}}"))
            .unwrap_or_default(),
    );
    let gate = support::gateway::Gate::start(&dir, &yaml).await;
    gate.approvals_ready().await;
    let gw_addr = gate.addr;
    let evidence = gate.evidence.clone();
    let gateway = gate.running.gateway.clone();
    std::mem::forget(gate);
    Setup {
        gw_addr,
        op,
        upstream,
        evidence,
        gateway,
        callback: callback_url,
    }
}

// --- calling --------------------------------------------------------------------------

fn deploy(id: i64, service: &str, env: &str, progress: bool) -> Value {
    let mut params =
        json!({"name": "deploy_service", "arguments": {"service": service, "env": env}});
    if progress {
        params["_meta"] = json!({"progressToken": format!("p{id}")});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// What the agent got: headers, the SSE events (if any) and the final JSON-RPC response.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    events: Vec<Value>,
    comments: usize,
    result: Value,
}

async fn call_mcp(addr: SocketAddr, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(30))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let is_sse = headers
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    if !is_sse {
        let result = serde_json::from_str(&text).unwrap_or(Value::Null);
        return Answer {
            status,
            headers,
            events: vec![],
            comments: 0,
            result,
        };
    }
    let mut events = Vec::new();
    let mut comments = 0;
    for block in text.split("\n\n") {
        if block.starts_with(':') {
            comments += 1;
        }
        if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
            events.push(serde_json::from_str::<Value>(data).unwrap());
        }
    }
    let result = events
        .iter()
        .rev()
        .find(|e| e.get("id").is_some())
        .cloned()
        .unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        events,
        comments,
        result,
    }
}

/// Waits until the OP shows `n` pending requests and returns them.
async fn pending(op: &DevOp, n: usize) -> Vec<ciba_gate::devop::op::PendingView> {
    for _ in 0..300 {
        let p = op.pending();
        if p.len() >= n {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the OP never saw {n} pending request(s)");
}

async fn answer_on_phone(op: &DevOp, approve: bool) {
    let p = pending(op, 1).await;
    op.decide(&p[0].id, approve).await.unwrap();
}

async fn evidence(s: &Setup, at_least: usize) -> Vec<Value> {
    for _ in 0..300 {
        let lines = s.evidence.lock().unwrap().clone();
        if lines.len() >= at_least {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {at_least} evidence records");
}

fn tool_text(result: &Value) -> String {
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn reason(result: &Value) -> String {
    result["result"]["_meta"]["ciba-gate/reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_no_secrets(s: &Setup) {
    let all = s.evidence.lock().unwrap().join("\n");
    assert!(!all.contains(CLIENT_SECRET), "client secret in evidence");
    assert!(!all.contains(USER), "raw user hint in evidence");
    assert!(!all.to_lowercase().contains("eyj"), "a JWT in evidence");
}

// --- the tests --------------------------------------------------------------------------

#[tokio::test]
async fn approved_call_is_held_over_sse_with_progress_then_forwarded_once_poll_mode() {
    let s = setup(Opts::default()).await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(1, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 1).await;
    assert_eq!(
        p[0].binding_message.as_deref(),
        Some("Deploy payments to prod")
    );
    assert!(
        s.upstream.tool_calls().is_empty(),
        "nothing forwarded before the answer"
    );
    s.op.decide(&p[0].id, true).await.unwrap();
    let a = call.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["x-ciba-gate-binding-message"],
        "Deploy payments to prod"
    );
    assert_eq!(a.result["id"], 1);
    assert_eq!(tool_text(&a.result), "done");
    let progress = &a.events[0];
    assert_eq!(progress["method"], "notifications/progress");
    assert_eq!(progress["params"]["progressToken"], "p1");
    assert!(
        progress["params"]["message"]
            .as_str()
            .unwrap()
            .contains("Deploy payments to prod")
    );
    assert_eq!(s.upstream.tool_calls().len(), 1);

    let ev = evidence(&s, 1).await;
    let e = ev.iter().find(|e| e["tool"] == "deploy_service").unwrap();
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["reason"], "approved");
    assert_eq!(e["outcome"], "forwarded");
    assert_eq!(e["upstream_status"], 200);
    let ap = &e["approval"];
    assert_eq!(ap["op_issuer"], s.op.issuer());
    assert_eq!(ap["client_id"], "gate");
    assert_eq!(ap["delivery_mode"], "poll");
    assert_eq!(ap["hint_type"], "login_hint");
    assert_eq!(ap["binding_message"], "Deploy payments to prod");
    assert_eq!(ap["user_decision"], "approved");
    assert_eq!(ap["token_outcome"], "granted");
    assert_eq!(ap["interval"], 1);
    assert_eq!(ap["delivered_via"], "poll", "the token endpoint, polled");
    assert_eq!(
        ap["backchannel_endpoint"],
        format!("{}/backchannel", s.op.issuer())
    );
    assert!(
        ap["approver_subject_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 32)
    );
    assert_no_secrets(&s);
}

#[tokio::test]
async fn denied_on_the_phone_blocks_the_call_ping_mode() {
    let s = setup(Opts {
        delivery: DeliveryMode::Ping,
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(2, "billing", "staging", true),
        &[],
    ));
    answer_on_phone(&s.op, false).await;
    let a = call.await.unwrap();
    assert_eq!(a.result["result"]["isError"], true);
    assert_eq!(reason(&a.result), "approval_denied");
    assert_eq!(a.result["result"]["_meta"]["ciba-gate/decision"], "approve");
    assert!(s.upstream.tool_calls().is_empty());
    let ev = evidence(&s, 1).await;
    assert_eq!(ev[0]["approval"]["user_decision"], "denied");
    assert_eq!(ev[0]["approval"]["token_outcome"], "access_denied");
    assert_eq!(ev[0]["approval"]["delivery_mode"], "ping");
    assert_eq!(ev[0]["outcome"], "blocked");
}

#[tokio::test]
async fn ping_wakes_the_held_call_without_waiting_for_a_poll() {
    let s = setup(Opts {
        delivery: DeliveryMode::Ping,
        interval: Some(30),
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(s.gw_addr, deploy(3, "search", "dev", true), &[]));
    answer_on_phone(&s.op, true).await;
    // The OP's interval is 30 s and the fallback poll 60 s: only the ping can be this quick.
    let a = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("ping did not wake the call")
        .unwrap();
    assert_eq!(tool_text(&a.result), "done");
    assert_eq!(s.upstream.tool_calls().len(), 1);
    let ev = evidence(&s, 1).await;
    assert_eq!(
        ev[0]["approval"]["delivered_via"], "ping",
        "the callback brought the answer, not the fallback poll"
    );
}

#[tokio::test]
async fn push_delivers_a_validated_approval() {
    let s = setup(Opts {
        delivery: DeliveryMode::Push,
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(4, "checkout", "prod", true),
        &[],
    ));
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done");
    let ev = evidence(&s, 1).await;
    assert_eq!(ev[0]["approval"]["delivery_mode"], "push");
    assert_eq!(ev[0]["approval"]["delivered_via"], "push");
    assert_eq!(ev[0]["approval"]["acr"], "urn:ciba-gate:dev:phone");
    assert_no_secrets(&s);
}

#[tokio::test]
async fn slow_down_and_interval_from_the_op_are_respected() {
    let s = setup(Opts {
        interval: Some(1),
        slow_down_polls: 1,
        ..Opts::default()
    })
    .await;
    let started = std::time::Instant::now();
    let call = tokio::spawn(call_mcp(s.gw_addr, deploy(5, "payments", "dev", true), &[]));
    // Still pending at the first poll (1 s), which the OP answers with slow_down.
    pending(&s.op, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done");
    // The interval grows from 1 s to 6 s: the second poll comes at about 7 s.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "slow_down was not honoured: {:?}",
        started.elapsed()
    );
    assert!(a.comments >= 1, "SSE keep-alives were sent while holding");
}

#[tokio::test]
async fn identical_concurrent_calls_share_one_prompt_and_one_forward() {
    let s = setup(Opts::default()).await;
    let calls: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(call_mcp(
                s.gw_addr,
                deploy(100 + i, "payments", "prod", true),
                &[],
            ))
        })
        .collect();
    let p = pending(&s.op, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.op.pending().len(),
        1,
        "one CIBA request for identical calls"
    );
    s.op.decide(&p[0].id, true).await.unwrap();
    let mut ran = 0;
    let mut used = 0;
    for c in calls {
        let a = c.await.unwrap();
        if tool_text(&a.result) == "done" {
            ran += 1;
        } else {
            assert_eq!(reason(&a.result), "approval_already_used");
            used += 1;
        }
    }
    assert_eq!((ran, used), (1, 4));
    assert_eq!(s.upstream.tool_calls().len(), 1, "exactly one forward");
    let ev = evidence(&s, 5).await;
    assert_eq!(
        ev.iter()
            .filter(|e| e["approval"]["joined"] == false)
            .count(),
        1
    );
}

#[tokio::test]
async fn an_approval_is_used_once_and_a_later_identical_call_asks_again() {
    let s = setup(Opts::default()).await;
    let call = tokio::spawn(call_mcp(s.gw_addr, deploy(6, "search", "prod", true), &[]));
    answer_on_phone(&s.op, true).await;
    assert_eq!(tool_text(&call.await.unwrap().result), "done");
    let again = tokio::spawn(call_mcp(s.gw_addr, deploy(7, "search", "prod", true), &[]));
    let p = pending(&s.op, 1).await;
    assert_eq!(p.len(), 1, "a new prompt for the new call");
    s.op.decide(&p[0].id, false).await.unwrap();
    assert_eq!(reason(&again.await.unwrap().result), "approval_denied");
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

#[tokio::test]
async fn parked_mcp_call_answers_pending_and_the_identical_retry_runs_after_approval() {
    let s = setup(Opts {
        mode: "park",
        ..Opts::default()
    })
    .await;
    let first = call_mcp(s.gw_addr, deploy(8, "payments", "prod", false), &[]).await;
    assert_eq!(reason(&first.result), "approval_pending");
    assert_eq!(first.result["result"]["isError"], true);
    assert!(tool_text(&first.result).contains("Deploy payments to prod"));
    assert_eq!(first.headers["x-ciba-gate-approval"], "pending");
    // A retry before the answer is still pending and asks nobody again.
    let second = call_mcp(s.gw_addr, deploy(9, "payments", "prod", false), &[]).await;
    assert_eq!(reason(&second.result), "approval_pending");
    assert_eq!(s.op.pending().len(), 1);
    answer_on_phone(&s.op, true).await;
    let mut done = None;
    for i in 0..50 {
        let a = call_mcp(s.gw_addr, deploy(10 + i, "payments", "prod", false), &[]).await;
        if reason(&a.result) != "approval_pending" {
            done = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = done.expect("the retry never picked up the approval");
    assert_eq!(tool_text(&done.result), "done");
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

/// A 2026-07-28 `tools/call` as the official SDKs send it: the revision and the
/// client's capabilities in `_meta` (`elicitation` only when it answers input requests).
fn deploy_2026(id: i64, service: &str, env: &str, elicitation: bool) -> Value {
    let mut v = deploy(id, service, env, false);
    let caps = if elicitation {
        json!({"elicitation": {"form": {}}})
    } else {
        json!({})
    };
    v["params"]["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": caps,
    });
    v
}

const HEADERS_2026: [(&str, &str); 3] = [
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "deploy_service"),
];

#[tokio::test]
async fn stateless_clients_get_input_required_with_a_sealed_request_state() {
    let s = setup(Opts {
        mode: "park",
        ..Opts::default()
    })
    .await;
    let h = HEADERS_2026;
    let first = call_mcp(s.gw_addr, deploy_2026(20, "billing", "prod", true), &h).await;
    let r = &first.result["result"];
    assert_eq!(r["resultType"], "input_required");
    let state = r["requestState"].as_str().unwrap().to_string();
    assert!(r["inputRequests"].is_object());
    // A tampered state is refused.
    let mut tampered = deploy_2026(21, "billing", "prod", true);
    tampered["params"]["requestState"] = json!(format!("{state}x"));
    let bad = call_mcp(s.gw_addr, tampered, &h).await;
    assert_eq!(bad.result["error"]["code"], -32602);
    // State issued for one call does not open another.
    let mut other = deploy_2026(22, "billing", "staging", true);
    other["params"]["requestState"] = json!(state.clone());
    let bad = call_mcp(s.gw_addr, other, &h).await;
    assert_eq!(
        bad.result["error"]["data"]["reason"],
        "invalid_request_state"
    );
    answer_on_phone(&s.op, true).await;
    // The retry as an SDK sends it: the state, and the answer to the input request.
    let mut retry = deploy_2026(23, "billing", "prod", true);
    retry["params"]["requestState"] = json!(state);
    retry["params"]["inputResponses"] =
        json!({"ciba-gate/approval": {"action": "accept", "content": {}}});
    let mut done = None;
    for _ in 0..50 {
        let a = call_mcp(s.gw_addr, retry.clone(), &h).await;
        if a.result["result"]["resultType"] != "input_required" {
            done = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tool_text(&done.unwrap().result), "done");
    // The tool server got the agent's call without the gateway's own members.
    let calls = s.upstream.tool_calls();
    assert_eq!(calls.len(), 1);
    let params = &calls[0]["params"];
    assert_eq!(
        *params,
        deploy_2026(23, "billing", "prod", true)["params"],
        "forwarded params"
    );
}

#[tokio::test]
async fn stateless_client_that_cannot_answer_input_requests_is_parked_with_a_tool_result() {
    let s = setup(Opts {
        mode: "park",
        ..Opts::default()
    })
    .await;
    let first = call_mcp(
        s.gw_addr,
        deploy_2026(30, "billing", "prod", false),
        &HEADERS_2026,
    )
    .await;
    let r = &first.result["result"];
    assert_eq!(r["resultType"], "complete", "{r}");
    assert_eq!(r["isError"], true);
    assert_eq!(reason(&first.result), "approval_pending");
    assert!(r.get("inputRequests").is_none() && r.get("requestState").is_none());
    assert!(tool_text(&first.result).contains("Deploy billing to prod"));
    answer_on_phone(&s.op, true).await;
    let mut done = None;
    for i in 0..50 {
        let a = call_mcp(
            s.gw_addr,
            deploy_2026(31 + i, "billing", "prod", false),
            &HEADERS_2026,
        )
        .await;
        if reason(&a.result) != "approval_pending" {
            done = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tool_text(&done.unwrap().result), "done");
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

#[tokio::test]
async fn a_client_that_accepts_sse_is_held_without_a_progress_token_past_max_plain_wait() {
    let s = setup(Opts {
        extra: "  max_plain_wait: 1s\n",
        ..Opts::default()
    })
    .await;
    // No progressToken; the deadline (30 s) is past max_plain_wait (1 s): still held.
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(40, "payments", "prod", false),
        &[],
    ));
    pending(&s.op, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(
        a.headers["content-type"], "text/event-stream",
        "held over SSE"
    );
    assert_eq!(tool_text(&a.result), "done");
    assert!(a.comments >= 1, "keep-alives while held");
    assert!(
        a.events
            .iter()
            .all(|e| e["method"] != "notifications/progress"),
        "no progress without a progressToken: {:?}",
        a.events
    );
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

#[tokio::test]
async fn a_client_that_takes_only_json_is_parked_when_the_wait_passes_max_plain_wait() {
    let s = setup(Opts {
        extra: "  max_plain_wait: 1s\n",
        ..Opts::default()
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/mcp", s.gw_addr))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(deploy(41, "payments", "prod", true).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(reason(&v), "approval_pending", "{v}");
    assert!(tool_text(&v).contains("again"), "{v}");
    assert!(s.upstream.tool_calls().is_empty());
}

#[tokio::test]
async fn parked_http_call_gets_202_with_retry_after() {
    let s = setup(Opts {
        mode: "park",
        ..Opts::default()
    })
    .await;
    let url = format!("http://{}/tickets/projects/web/issues/42", s.gw_addr);
    let c = reqwest::Client::new();
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.headers()["x-ciba-gate-binding-message"],
        "Delete issue #42 in web"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "approval_pending");
    answer_on_phone(&s.op, true).await;
    let mut status = 0;
    for _ in 0..50 {
        let r = c.delete(&url).send().await.unwrap();
        status = r.status().as_u16();
        if status != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

#[tokio::test]
async fn policy_rechecks_after_approval_and_can_still_block() {
    // The same policies, but deploys now need an authentication context the OP does not give.
    let dir = policies_with_data(
        "acr_values: {}",
        "acr_values:\n    deploy_service: \"urn:example:acr:mfa\"",
    );
    let s = setup(Opts {
        policies: Some(dir),
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(30, "payments", "prod", true),
        &[],
    ));
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(a.result["result"]["isError"], true);
    assert_eq!(a.result["result"]["_meta"]["ciba-gate/decision"], "deny");
    assert!(
        s.upstream.tool_calls().is_empty(),
        "approved but not allowed: not forwarded"
    );
}

/// A policy's `requested_expiry` too large to count in milliseconds is capped at
/// `max_wait`, not wrapped: the person is asked and the approved call runs.
#[tokio::test]
async fn a_huge_requested_expiry_is_capped_at_max_wait() {
    let dir = policies_with_data("deploy_service: 300", "deploy_service: 100000000000000000");
    let s = setup(Opts {
        policies: Some(dir),
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(31, "payments", "prod", true),
        &[],
    ));
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        s.upstream.tool_calls().len(),
        1,
        "approved and forwarded once"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let e = entry.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_answer_after_the_deadline_forwards_nothing() {
    let s = setup(Opts {
        max_wait: "2s",
        ..Opts::default()
    })
    .await;
    let a = call_mcp(s.gw_addr, deploy(40, "payments", "prod", true), &[]).await;
    assert_eq!(reason(&a.result), "approval_expired");
    // The user answers late: nothing happens.
    if let Some(p) = s.op.pending().first() {
        let _ = s.op.decide(&p.id, true).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.upstream.tool_calls().is_empty());
}

#[tokio::test]
async fn a_binding_message_the_op_cannot_take_is_refused_before_anyone_is_asked() {
    // An OP of 8 characters: the bundled policies have no templates for it.
    let s = setup(Opts {
        profile: "{max_chars: 8}",
        ..Opts::default()
    })
    .await;
    let a = call_mcp(s.gw_addr, deploy(50, "payments", "prod", true), &[]).await;
    assert_eq!(reason(&a.result), "invalid_binding_message");
    assert!(s.op.pending().is_empty());
    assert!(s.upstream.tool_calls().is_empty());
}

#[tokio::test]
async fn throttling_and_denial_cool_down_stop_prompt_spam() {
    let s = setup(Opts {
        extra: "  throttle: {per_agent: {limit: 1, window: 1m}, denial_cooldown: 1m}\n",
        ..Opts::default()
    })
    .await;
    let first = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(60, "payments", "prod", true),
        &[],
    ));
    pending(&s.op, 1).await;
    // A different call: over the per-agent limit.
    let second = call_mcp(s.gw_addr, deploy(61, "search", "prod", true), &[]).await;
    assert_eq!(reason(&second.result), "approval_rate_limited");
    answer_on_phone(&s.op, false).await;
    assert_eq!(reason(&first.await.unwrap().result), "approval_denied");
    let third = call_mcp(s.gw_addr, deploy(62, "billing", "prod", true), &[]).await;
    assert_eq!(reason(&third.result), "denial_cooldown");
    assert!(s.upstream.tool_calls().is_empty());
}

#[tokio::test]
async fn shutdown_while_holding_answers_retry_and_forwards_nothing() {
    let s = setup(Opts::default()).await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(70, "payments", "prod", true),
        &[],
    ));
    pending(&s.op, 1).await;
    s.gateway.abandon_holds();
    let a = call.await.unwrap();
    assert_eq!(reason(&a.result), "shutting_down");
    // The approval request stays; approving it now forwards nothing by itself.
    answer_on_phone(&s.op, true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.upstream.tool_calls().is_empty());
}

// --- callbacks that must change nothing ------------------------------------------------

#[tokio::test]
async fn forged_unknown_and_late_notifications_are_refused_and_change_nothing() {
    let s = setup(Opts {
        delivery: DeliveryMode::Push,
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(80, "payments", "prod", true),
        &[],
    ));
    pending(&s.op, 1).await;
    let callback = s.callback.clone();
    let c = reqwest::Client::new();
    // No token, a wrong token, a forged push with a made-up ID token.
    let r = c
        .post(&callback)
        .json(&json!({"auth_req_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&callback)
        .bearer_auth("forged-token-forged-token-forged")
        .json(&json!({"auth_req_id": "x", "access_token": "a", "token_type": "Bearer", "id_token": "e.y.z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(s.upstream.tool_calls().is_empty());
    assert_eq!(
        s.op.pending().len(),
        1,
        "still pending after forged callbacks"
    );
    answer_on_phone(&s.op, true).await;
    assert_eq!(tool_text(&call.await.unwrap().result), "done");
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

// --- an OP that fails ---------------------------------------------------------------------

/// A minimal OP whose discovery works but whose backchannel endpoint misbehaves.
async fn broken_op(backchannel: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = format!("http://{addr}");
    let dead = free_port();
    let iss = issuer.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let iss = iss.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let iss = iss.clone();
                    async move {
                        let bc = if backchannel == "unreachable" {
                            format!("http://127.0.0.1:{dead}/backchannel")
                        } else {
                            format!("{iss}/backchannel")
                        };
                        let (status, ctype, body) = match req.uri().path() {
                            "/.well-known/openid-configuration" => (200, "application/json", json!({
                                "issuer": iss,
                                "backchannel_authentication_endpoint": bc,
                                "token_endpoint": format!("{iss}/token"),
                                "jwks_uri": format!("{iss}/jwks"),
                                "backchannel_token_delivery_modes_supported": ["poll"],
                                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                                "grant_types_supported": ["urn:openid:params:grant-type:ciba"],
                                "id_token_signing_alg_values_supported": ["ES256"],
                            }).to_string()),
                            "/jwks" => (200, "application/json", json!({"keys": []}).to_string()),
                            _ if backchannel == "500" => (500, "application/json", json!({"error": "server_error"}).to_string()),
                            _ => (200, "text/html", "<html>hello</html>".to_string()),
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", ctype)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    issuer
}

async fn gateway_against(issuer: &str) -> (SocketAddr, Upstream, Arc<Mutex<Vec<String>>>) {
    let (up_addr, upstream) = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("secret"), CLIENT_SECRET).unwrap();
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let yaml = format!(
        r#"
agent: {{id: billing-agent}}
policy: {{dir: "{policies}", reload_interval: 0s}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{up_addr}/mcp"}}
approvals:
  op: {{issuer: "{issuer}", client_id: gate, client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}, delivery: poll, allow_insecure_http: true, http_timeout: 2s}}
  user: {{value: "{USER}"}}
  binding_message_profile: ciba-gate-dev
"#
    );
    let gate = support::gateway::Gate::start(&dir, &yaml).await;
    // An OP that never answers discovery leaves approvals unavailable: wait a little only.
    for _ in 0..200 {
        if gate.running.approvals().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = gate.addr;
    let evidence = gate.evidence.clone();
    std::mem::forget(gate);
    (addr, upstream, evidence)
}

#[tokio::test]
async fn an_op_that_is_unreachable_errs_or_talks_garbage_fails_closed() {
    for (kind, code) in [
        ("unreachable", "op_unreachable"),
        ("500", "op_unavailable"),
        ("garbage", "op_bad_response"),
    ] {
        let issuer = broken_op(kind).await;
        let (addr, upstream, evidence) = gateway_against(&issuer).await;
        let a = call_mcp(addr, deploy(90, "payments", "prod", true), &[]).await;
        assert_eq!(a.result["result"]["isError"], true, "{kind}");
        assert_eq!(reason(&a.result), code, "{kind}");
        assert!(upstream.tool_calls().is_empty(), "{kind}");
        // Calls that need no approval keep flowing while the OP is broken.
        let ok = call_mcp(addr, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_deployments", "arguments": {}}}), &[]).await;
        assert_eq!(tool_text(&ok.result), "done", "{kind}");
        let lines = evidence.lock().unwrap().clone();
        assert!(
            lines.iter().any(|l| l.contains(code)),
            "{kind}: evidence names the failure"
        );
    }
}

#[tokio::test]
async fn without_op_metadata_sensitive_calls_are_blocked_but_others_flow() {
    // Discovery never succeeds (nothing listens there).
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let (addr, upstream, _) = gateway_against(&issuer).await;
    let a = call_mcp(addr, deploy(91, "payments", "prod", true), &[]).await;
    assert_eq!(reason(&a.result), "op_unavailable");
    let ok = call_mcp(addr, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_deployments", "arguments": {}}}), &[]).await;
    assert_eq!(tool_text(&ok.result), "done");
    assert_eq!(upstream.tool_calls().len(), 1);
}

/// The bundled policies with `data.approvals.approvers` naming `approvers` (YAML flow).
fn policies_with_approvers(approvers: &str) -> std::path::PathBuf {
    policies_with_data("approvers: {}", &format!("approvers: {approvers}"))
}

/// A copy of the bundled policies whose `data.yaml` has `from` replaced by `to`.
fn policies_with_data(from: &str, to: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    copy_dir(src, &dir);
    let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap();
    assert!(data.contains(from), "data.yaml has no {from:?}");
    std::fs::write(dir.join("data.yaml"), data.replace(from, to)).unwrap();
    dir
}

/// The policy names who approves (`approval.user`): that person's phone is asked,
/// the configured user's is not, and the evidence names the approver only by keyed
/// hash. The same call for the configured user is a separate approval.
#[tokio::test]
async fn the_approver_the_policy_names_is_asked_and_recorded_by_hash() {
    let s = with_deploy_approvers(&format!("\"{OWNER}\"")).await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(90, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 1).await;
    assert_eq!(p.len(), 1);
    assert!(
        p[0].user.starts_with('o'),
        "the owner is asked: {}",
        p[0].user
    );
    s.op.decide(&p[0].id, true).await.unwrap();
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done", "{}", a.result);
    assert_eq!(s.upstream.tool_calls().len(), 1);

    // A tool the data names nobody for: the configured user is asked.
    let other = tokio::spawn(delete_issue(s.gw_addr, "web", "91"));
    let p = pending(&s.op, 1).await;
    assert!(
        p[0].user.starts_with('a'),
        "the configured user: {}",
        p[0].user
    );
    s.op.decide(&p[0].id, false).await.unwrap();
    assert_eq!(other.await.unwrap(), "approval_denied");

    let ev = evidence(&s, 2).await;
    let owner = ev
        .iter()
        .find(|e| e["tool"] == "deploy_service")
        .expect("deploy evidence");
    let configured = ev
        .iter()
        .find(|e| e["tool"] == "delete_issue")
        .expect("delete_issue evidence");
    assert_eq!(owner["approval"]["hint_type"], "login_hint");
    let (h1, h2) = (
        owner["approval"]["approver_hint_hash"].as_str().unwrap(),
        configured["approval"]["approver_hint_hash"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(h1.len(), 32);
    assert_ne!(h1, h2, "two approvers, two hashes");
    let all = s.evidence.lock().unwrap().join("\n");
    assert!(!all.contains(OWNER), "raw approver hint in evidence");
    assert_no_secrets(&s);
}

/// A malformed approver from policy blocks the call before anyone is asked; it never
/// falls back to the configured user.
#[tokio::test]
async fn a_malformed_approver_from_policy_blocks_and_asks_nobody() {
    for bad in [
        "{deploy_service: \"\"}",
        "{deploy_service: 42}",
        "{deploy_service: {hint_type: login_hint}}",
        "{deploy_service: []}",
        "{deploy_service: [\"bob@example.com\", \"bob@example.com\"]}",
        "{deploy_service: {from: [\"bob@example.com\", \"owner@example.com\"], count: 3}}",
        "{deploy_service: {from: [\"bob@example.com\", \"owner@example.com\"], count: 0}}",
        "{deploy_service: [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\", \"k\"]}",
    ] {
        let s = setup(Opts {
            policies: Some(policies_with_approvers(bad)),
            ..Opts::default()
        })
        .await;
        let a = call_mcp(s.gw_addr, deploy(92, "payments", "prod", true), &[]).await;
        assert_eq!(
            reason(&a.result),
            "approval_misconfigured",
            "{bad}: {}",
            a.result
        );
        assert!(s.op.pending().is_empty(), "{bad}: nobody is asked");
        assert!(s.upstream.tool_calls().is_empty());
    }
}

/// Throttles key on the person asked: the configured user's limit does not stop a
/// prompt to the owner.
#[tokio::test]
async fn throttles_count_per_approver() {
    let s = setup(Opts {
        policies: Some(policies_with_approvers(&format!(
            "{{deploy_service: \"{OWNER}\"}}"
        ))),
        extra: "  throttle: {per_user: {limit: 1, window: 1m}}\n",
        ..Opts::default()
    })
    .await;
    let first = tokio::spawn(delete_issue(s.gw_addr, "web", "93"));
    pending(&s.op, 1).await;
    // Over the configured user's limit, but asked of the owner: allowed to prompt.
    let second = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(94, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 2).await;
    assert_eq!(p.len(), 2);
    // A second prompt to the configured user: throttled.
    let third = delete_issue(s.gw_addr, "api", "95").await;
    assert_eq!(third, "approval_rate_limited");
    for v in s.op.pending() {
        s.op.decide(&v.id, false).await.unwrap();
    }
    assert_eq!(first.await.unwrap(), "approval_denied");
    assert_eq!(reason(&second.await.unwrap().result), "approval_denied");
}

/// A two-person approval asks nobody unless everyone it needs may be asked: with the
/// second person over their limit, the first gets no prompt for a call that is refused.
#[tokio::test]
async fn a_throttled_second_approver_means_no_one_is_asked() {
    let s = setup(Opts {
        policies: Some(policies_with_approvers(&format!(
            "{{delete_issue: \"{BOB}\", deploy_service: [\"{OWNER}\", \"{BOB}\"]}}"
        ))),
        extra: "  throttle: {per_user: {limit: 1, window: 1m}}\n",
        ..Opts::default()
    })
    .await;
    // Bob's one prompt this minute.
    let first = tokio::spawn(delete_issue(s.gw_addr, "web", "96"));
    let p = pending(&s.op, 1).await;
    asked_of(&p, 'b');
    let a = call_mcp(s.gw_addr, deploy(97, "payments", "prod", true), &[]).await;
    assert_eq!(reason(&a.result), "approval_rate_limited", "{}", a.result);
    // The answer says when to try again: in `_meta` and as `Retry-After` (the window).
    assert_eq!(
        a.result["result"]["_meta"]["ciba-gate/retry_after_seconds"], 60,
        "{}",
        a.result
    );
    assert_eq!(a.headers["retry-after"], "60");
    // A plain HTTP tool call over the limit: the same, as JSON and a header.
    let r = reqwest::Client::new()
        .delete(format!(
            "http://{}/tickets/projects/api/issues/98",
            s.gw_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "approval_rate_limited");
    assert_eq!(body["retry_after_seconds"], 60);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = s.op.pending();
    assert_eq!(p.len(), 1, "only Bob's earlier prompt: {p:?}");
    assert!(
        !p.iter().any(|v| v.user.starts_with('o')),
        "the owner was asked"
    );
    s.op.decide(&p[0].id, false).await.unwrap();
    assert_eq!(first.await.unwrap(), "approval_denied");
    assert!(s.upstream.tool_calls().is_empty(), "nothing forwarded");
}

/// `DELETE /tickets/projects/{project}/issues/{id}` (the HTTP tool `delete_issue`,
/// held): the reason code of a refusal, or "ok".
async fn delete_issue(addr: SocketAddr, project: &str, id: &str) -> String {
    let url = format!("http://{addr}/tickets/projects/{project}/issues/{id}");
    let r = reqwest::Client::new()
        .delete(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    if r.status().is_success() {
        return "ok".into();
    }
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["reason"].as_str().unwrap_or("?").to_string()
}

/// A shadow policy that differs only after approval is recorded with that phase: the
/// call is still forwarded (the shadow never enforces).
#[tokio::test]
async fn a_shadow_difference_after_approval_is_recorded_with_its_phase() {
    let shadow = tempfile::tempdir().unwrap().keep();
    copy_dir(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")),
        &shadow,
    );
    let rego = std::fs::read_to_string(shadow.join("ciba_gate.rego")).unwrap();
    std::fs::write(
        shadow.join("ciba_gate.rego"),
        format!(
            "{rego}\ndeny contains {{\"code\": \"second_look\", \"message\": \"a second look\"}} if input.phase == \"approved\"\n"
        ),
    )
    .unwrap();
    let s = setup(Opts {
        shadow: Some(shadow),
        ..Opts::default()
    })
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(95, "payments", "prod", true),
        &[],
    ));
    answer_on_phone(&s.op, true).await;
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done", "{}", a.result);
    let ev = evidence(&s, 1).await;
    let e = ev.iter().find(|e| e["tool"] == "deploy_service").unwrap();
    assert_eq!(e["outcome"], "forwarded");
    assert_eq!(e["shadow"]["phase"], "approved", "{e}");
    assert_eq!(e["shadow"]["decision"], "deny", "{e}");
    assert_eq!(e["shadow"]["reason"], "second_look", "{e}");
}

// --- the two-person rule ---------------------------------------------------------------

/// The gateway with the bundled policies, `deploy_service` approved by `approvers`
/// (a YAML list, or `{from: [...], count: N}`).
async fn with_deploy_approvers(approvers: &str) -> Setup {
    setup(Opts {
        policies: Some(policies_with_approvers(&format!(
            "{{deploy_service: {approvers}}}"
        ))),
        ..Opts::default()
    })
    .await
}

/// The id of the pending request asked of the person whose hint starts with `first`
/// (the OP masks hints as `o***@example.com`).
fn asked_of(p: &[ciba_gate::devop::op::PendingView], first: char) -> String {
    p.iter()
        .find(|v| v.user.starts_with(first))
        .unwrap_or_else(|| panic!("nobody starting with {first} was asked"))
        .id
        .clone()
}

/// A list of approvers means all of them: each person is asked on their own phone, the
/// call waits while only one has approved, and runs once when both have: one forward,
/// one evidence record naming both people by keyed hash.
#[tokio::test]
async fn two_people_must_approve_and_the_call_runs_once_when_both_have() {
    let s = with_deploy_approvers(&format!("[\"{OWNER}\", \"{BOB}\"]")).await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(120, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 2).await;
    assert_eq!(p.len(), 2, "one request per person");
    assert!(p.iter().all(|v| v.binding_message == p[0].binding_message));
    s.op.decide(&asked_of(&p, 'o'), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "one approval of two is not enough");
    assert!(s.upstream.tool_calls().is_empty());
    s.op.decide(&asked_of(&p, 'b'), true).await.unwrap();
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done", "{}", a.result);
    assert_eq!(s.upstream.tool_calls().len(), 1, "exactly one forward");

    let ev = evidence(&s, 1).await;
    let approval = &ev[0]["approval"];
    assert_eq!(approval["user_decision"], "approved");
    let q = &approval["quorum"];
    assert_eq!(
        (q["required"].as_u64(), q["asked"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(q["granted"], 2);
    let people = q["approvers"].as_array().unwrap();
    assert!(people.iter().all(|m| m["user_decision"] == "approved"
        && m["token_outcome"] == "granted"
        && m["joined"] == false));
    assert_ne!(
        people[0]["approver_subject_hash"], people[1]["approver_subject_hash"],
        "two distinct people"
    );
    let all = s.evidence.lock().unwrap().join("\n");
    assert!(
        !all.contains(OWNER) && !all.contains(BOB),
        "raw hints in evidence"
    );
    assert_no_secrets(&s);

    // Used once: the identical call asks both people again.
    let again = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(121, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 2).await;
    for v in &p {
        s.op.decide(&v.id, false).await.unwrap();
    }
    assert_eq!(reason(&again.await.unwrap().result), "approval_denied");
    assert_eq!(s.upstream.tool_calls().len(), 1);
}

/// One person's denial ends the approval for everyone: the call is blocked at once,
/// whatever the others answer later.
#[tokio::test]
async fn one_denial_blocks_a_two_person_approval() {
    let s = with_deploy_approvers(&format!("[\"{OWNER}\", \"{BOB}\"]")).await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(122, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 2).await;
    s.op.decide(&asked_of(&p, 'b'), false).await.unwrap();
    let a = call.await.unwrap();
    assert_eq!(reason(&a.result), "approval_denied", "{}", a.result);
    s.op.decide(&asked_of(&p, 'o'), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.upstream.tool_calls().is_empty(), "nothing forwarded");
    let ev = evidence(&s, 1).await;
    assert_eq!(ev[0]["approval"]["user_decision"], "denied");
    assert_eq!(ev[0]["approval"]["quorum"]["granted"], 0);
}

/// `{from: [...], count: N}` asks everyone listed and runs the call once N distinct
/// people approved; a later answer from the rest changes nothing.
#[tokio::test]
async fn any_two_of_three_approvers_suffice() {
    let s = with_deploy_approvers(&format!(
        "{{from: [\"{OWNER}\", \"{BOB}\", \"{CAROL}\"], count: 2}}"
    ))
    .await;
    let call = tokio::spawn(call_mcp(
        s.gw_addr,
        deploy(123, "payments", "prod", true),
        &[],
    ));
    let p = pending(&s.op, 3).await;
    s.op.decide(&asked_of(&p, 'c'), true).await.unwrap();
    s.op.decide(&asked_of(&p, 'o'), true).await.unwrap();
    let a = call.await.unwrap();
    assert_eq!(tool_text(&a.result), "done", "{}", a.result);
    s.op.decide(&asked_of(&p, 'b'), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.upstream.tool_calls().len(), 1, "exactly one forward");
    let ev = evidence(&s, 1).await;
    let q = &ev[0]["approval"]["quorum"];
    assert_eq!(
        (q["required"].as_u64(), q["asked"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(q["granted"], 2);
}

/// Identical calls racing for one two-person approval share the two prompts, and only
/// one of them runs.
#[tokio::test]
async fn identical_calls_share_a_two_person_approval_and_one_runs() {
    let s = with_deploy_approvers(&format!("[\"{OWNER}\", \"{BOB}\"]")).await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(call_mcp(
                s.gw_addr,
                deploy(130 + i, "payments", "prod", true),
                &[],
            ))
        })
        .collect();
    let p = pending(&s.op, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.op.pending().len(),
        2,
        "one request per person, not per call"
    );
    for v in &p {
        s.op.decide(&v.id, true).await.unwrap();
    }
    let mut ran = 0;
    for c in calls {
        let a = c.await.unwrap();
        if tool_text(&a.result) == "done" {
            ran += 1;
        } else {
            assert_eq!(reason(&a.result), "approval_already_used", "{}", a.result);
        }
    }
    assert_eq!(ran, 1);
    assert_eq!(s.upstream.tool_calls().len(), 1, "exactly one forward");
}

// --- the end user's identity -------------------------------------------------------

/// `x-ciba-gate-identity` is refused, never ignored: when the gateway does not accept
/// identities (the default), when it is sent twice, and when it does not verify.
/// Each is HTTP 401 with a JSON-RPC error `identity_refused` for the message's id;
/// no one is asked, nothing is forwarded, and the token is in no evidence record.
#[tokio::test]
async fn identities_the_gateway_cannot_use_are_refused_before_anyone_is_asked() {
    let unsigned = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvd25lciJ9.c2lnbmF0dXJl";
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: [(&str, Headers, &str); 3] = [
        (
            "",
            vec![("x-ciba-gate-identity", unsigned)],
            "accept_identity is off",
        ),
        (
            "  accept_identity: true\n",
            vec![
                ("x-ciba-gate-identity", unsigned),
                ("x-ciba-gate-identity", unsigned),
            ],
            "more than once",
        ),
        (
            "  accept_identity: true\n",
            vec![("x-ciba-gate-identity", unsigned)],
            "not valid",
        ),
    ];
    for (i, (extra, headers, why)) in cases.into_iter().enumerate() {
        let s = setup(Opts {
            extra,
            ..Opts::default()
        })
        .await;
        let id = 140 + i as i64;
        let a = call_mcp(s.gw_addr, deploy(id, "payments", "prod", true), &headers).await;
        assert_eq!(a.status, 401, "{}", a.result);
        assert_eq!(a.result["id"], id, "{}", a.result);
        assert_eq!(a.result["error"]["data"]["reason"], "identity_refused");
        let message = a.result["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        assert!(s.op.pending().is_empty(), "no one was asked");
        assert!(s.upstream.tool_calls().is_empty());
        let records = evidence(&s, 1).await;
        assert_eq!(records[0]["reason"], "identity_refused", "{records:?}");
        assert_eq!(records[0]["outcome"], "rejected", "{records:?}");
        let text = s.evidence.lock().unwrap().join("\n");
        assert!(!text.contains(unsigned), "{text}");
    }
}

// --- the approver's token ---------------------------------------------------------

/// An upstream with `approval_token` gets the approver's access token from the CIBA
/// grant with each call a person approved — in place of its static credential, never
/// with an allowed call, never the agent's own token, and not to the other upstream.
/// Each approval brings its own token; the evidence says it was forwarded and never
/// holds it.
#[tokio::test]
async fn an_approved_call_carries_the_approvers_token_to_the_upstream_that_asks() {
    let s = setup(Opts {
        tools_extra: ", credential: {header: authorization, prefix: \"Static \", file: secret}, approval_token: {}",
        ..Opts::default()
    })
    .await;
    const AGENT: &[(&str, &str)] = &[("authorization", "Bearer agent-own-token")];
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "list_deployments", "arguments": {}}});
    let a = call_mcp(s.gw_addr, list, AGENT).await;
    assert_eq!(a.status, 200);
    let static_credential = format!("Static {CLIENT_SECRET}");
    assert_eq!(
        s.upstream.authorization_of("list_deployments"),
        vec![Some(static_credential.clone())],
        "an allowed call carries the static credential only"
    );

    let mut tokens = Vec::new();
    for id in [150, 151] {
        let call = tokio::spawn(call_mcp(
            s.gw_addr,
            deploy(id, "payments", "prod", true),
            AGENT,
        ));
        answer_on_phone(&s.op, true).await;
        assert_eq!(call.await.unwrap().status, 200);
        let seen = s.upstream.authorization_of("deploy_service");
        let token = seen.last().cloned().flatten().expect("a token");
        let bearer = token.strip_prefix("Bearer ").expect("a bearer token");
        assert!(!bearer.is_empty() && bearer != "agent-own-token", "{token}");
        tokens.push(bearer.to_string());
    }
    assert_ne!(tokens[0], tokens[1], "each approval brings its own token");

    // The HTTP upstream does not ask: its approved call carries no token.
    let del = tokio::spawn(delete_issue(s.gw_addr, "web", "95"));
    answer_on_phone(&s.op, true).await;
    assert_eq!(del.await.unwrap(), "ok");
    let auth = s.upstream.authorizations.lock().unwrap().clone();
    assert_eq!(auth.last().cloned().flatten(), None, "{auth:?}");

    let records = evidence(&s, 4).await;
    let deploys: Vec<&Value> = records
        .iter()
        .filter(|r| r["tool"] == "deploy_service")
        .collect();
    assert_eq!(deploys.len(), 2);
    assert!(
        deploys
            .iter()
            .all(|r| r["approval"]["token_forwarded"] == true)
    );
    let other = records
        .iter()
        .find(|r| r["tool"] == "delete_issue")
        .unwrap();
    assert!(
        other["approval"].get("token_forwarded").is_none(),
        "{other}"
    );
    let text = s.evidence.lock().unwrap().join("\n");
    for t in &tokens {
        assert!(!text.contains(t.as_str()), "a token in the evidence");
    }
}
