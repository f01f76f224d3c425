//! Several gateway processes (`ciba-gate serve`) sharing one Redis, with the development
//! OP as its own process (`ciba-gate dev-op`) and a recording upstream in this process.
//! Replicas are killed with SIGKILL and Redis is killed and restarted empty: no approval
//! is lost, nobody is prompted twice, nothing unapproved is forwarded.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::recording_upstream::RecordingUpstream as Upstream;
use support::{ChildGuard, RedisServer, free_port, wait_for_port};

const SECRET: &str = "replica-client-secret-7f3a";
const USER: &str = "alice@example.com";

// --- processes --------------------------------------------------------------------------

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ciba-gate")
}

fn log_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ciba-gate-replicas-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Op {
    _child: ChildGuard,
    issuer: String,
}

/// `ciba-gate dev-op`; ping/push notifications go to `notify` (a replica's callback).
fn start_op(dir: &Path, mode: &str, notify: Option<&str>) -> Op {
    let client = match notify {
        Some(url) => format!("gate:{SECRET}:{mode}:{url}"),
        None => format!("gate:{SECRET}:{mode}"),
    };
    let mut cmd = Command::new(bin());
    cmd.args([
        "dev-op",
        "--listen",
        "127.0.0.1:0",
        "--client",
        &client,
        "--user",
        USER,
    ])
    .args(["--interval", "1", "--expiry", "120"]);
    let mut child = ChildGuard::spawn("dev-op", cmd, dir, true);
    let line = child.wait_for_stdout_line("READY ", Duration::from_secs(20));
    Op {
        issuer: line.trim_start_matches("READY ").to_string(),
        _child: child,
    }
}

struct Replica {
    child: ChildGuard,
    addr: SocketAddr,
    callback: String,
}

fn start_replica(
    dir: &Path,
    name: &str,
    op: &Op,
    mode: &str,
    redis: &RedisServer,
    upstream: SocketAddr,
    callback_port: u16,
) -> Replica {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    // Every replica shares the key (as a deployment's Secret would give them).
    std::fs::write(
        dir.join("state-key"),
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778",
    )
    .unwrap();
    let port = free_port();
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let callback = if mode == "poll" {
        String::new()
    } else {
        format!("  callback: {{listen: \"127.0.0.1:{callback_port}\", insecure_http: true}}\n")
    };
    let yaml = format!(
        r#"
listen: "127.0.0.1:{port}"
admin: {{listen: "127.0.0.1:{admin}"}}
agent: {{id: billing-agent, namespace: agents}}
policy: {{dir: "{policies}", reload_interval: 0s}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://{upstream}/mcp"}}
store: {{kind: redis, url: "{redis}", key_prefix: "it:", connect_timeout: 500ms, response_timeout: 500ms}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: gate
    client_auth: {{method: client_secret_basic, secret: {{file: secret}}}}
    delivery: {mode}
    allow_insecure_http: true
  user: {{value: "{USER}"}}
  binding_message_profile: ciba-gate-dev
  mode: hold
  max_wait: 60s
  keepalive: 1s
  progress_interval: 1s
  ping_fallback_poll: 60s
  state_key: {{file: state-key}}
{callback}"#,
        redis = redis.url(),
        issuer = op.issuer,
        admin = free_port(),
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config"]).arg(&file);
    cmd.env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn(name, cmd, dir, false);
    wait_for_port(port, Duration::from_secs(20), Some(&mut child));
    Replica {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        callback: format!("http://127.0.0.1:{callback_port}/ciba/callback"),
    }
}

// --- calling ----------------------------------------------------------------------------

fn deploy(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "deploy_service", "arguments": {"service": "payments", "env": "prod"},
                      "_meta": {"progressToken": format!("p{id}")}}})
}

fn list(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "list_deployments", "arguments": {}}})
}

/// The final JSON-RPC response (from a JSON body or the last SSE event with an id).
async fn call(addr: SocketAddr, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(90))
        .body(body.to_string())
        .send()
        .await;
    let Ok(resp) = resp else {
        return json!({"transport_error": true});
    };
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let Ok(text) = resp.text().await else {
        return json!({"transport_error": true});
    };
    if !sse {
        return serde_json::from_str(&text).unwrap_or(Value::Null);
    }
    support::jsonrpc_answer(&text)
}

fn text(r: &Value) -> &str {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

fn reason(r: &Value) -> &str {
    r["result"]["_meta"]["ciba-gate/reason"]
        .as_str()
        .unwrap_or_default()
}

/// The OP's pending requests (as its approval page sees them).
async fn op_pending(op: &Op) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{}/api/requests", op.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

async fn wait_pending(op: &Op, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = op_pending(op).await;
        if p.len() >= n {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the OP never saw {n} pending request(s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn approve(op: &Op, id: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/requests/{id}/approve", op.issuer))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "approve: {}", r.status());
}

/// Waits until the replica has loaded the OP's metadata (a call needing approval no
/// longer answers `op_unavailable`): probes with a harmless allowed call first.
async fn ready(r: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(r.addr, list(1)).await;
        if text(&a) == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica not ready: {a}\n{}",
            r.child.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // OP discovery runs in the background right after start-up.
    tokio::time::sleep(Duration::from_millis(700)).await;
}

// --- the tests --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_received_by_replica_b_completes_the_call_held_on_replica_a() {
    let dir = log_dir("push");
    let redis = RedisServer::start();
    let (up, upstream) = Upstream::start().await;
    let (cb_a, cb_b) = (free_port(), free_port());
    let b_callback = format!("http://127.0.0.1:{cb_b}/ciba/callback");
    let op = start_op(&dir, "push", Some(&b_callback));
    let a = start_replica(&dir, "a", &op, "push", &redis, up, cb_a);
    let b = start_replica(&dir, "b", &op, "push", &redis, up, cb_b);
    assert_eq!(b.callback, b_callback);
    ready(&a).await;
    ready(&b).await;
    let held = tokio::spawn(call(a.addr, deploy(7)));
    let p = wait_pending(&op, 1).await;
    assert_eq!(
        upstream.count("deploy_service"),
        0,
        "nothing before approval"
    );
    approve(&op, p[0]["id"].as_str().unwrap()).await;
    let t = Instant::now();
    let answer = held.await.unwrap();
    assert_eq!(
        text(&answer),
        "done",
        "{answer}\n{}\n{}",
        a.child.logs(),
        b.child.logs()
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "woken promptly: {:?}",
        t.elapsed()
    );
    assert_eq!(upstream.count("deploy_service"), 1);
    assert!(
        b.child.stderr_text().contains("callback") || !b.child.stderr_text().is_empty(),
        "replica B served the callback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_replica_poll_is_taken_over_and_the_retry_gets_the_same_request() {
    let dir = log_dir("kill");
    let redis = RedisServer::start();
    let (up, upstream) = Upstream::start().await;
    let op = start_op(&dir, "poll", None);
    let mut a = start_replica(&dir, "a", &op, "poll", &redis, up, 0);
    let b = start_replica(&dir, "b", &op, "poll", &redis, up, 0);
    ready(&a).await;
    ready(&b).await;
    let held = tokio::spawn(call(a.addr, deploy(1)));
    let p = wait_pending(&op, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.child.kill(); // kill -9 while the call is held
    let lost = held.await.unwrap();
    assert!(lost.get("transport_error").is_some() || text(&lost) != "done");
    // The agent retries the identical call on another replica: it joins the same request.
    let retry = tokio::spawn(call(b.addr, deploy(2)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(op_pending(&op).await.len(), 1, "no second prompt");
    approve(&op, p[0]["id"].as_str().unwrap()).await;
    let answer = retry.await.unwrap();
    assert_eq!(text(&answer), "done", "{answer}\n{}", b.child.logs());
    assert_eq!(upstream.count("deploy_service"), 1, "one forward");
    assert_eq!(op_pending(&op).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answer_given_while_all_replicas_are_down_is_kept() {
    let dir = log_dir("down");
    let redis = RedisServer::start();
    let (up, upstream) = Upstream::start().await;
    let op = start_op(&dir, "poll", None);
    let mut a = start_replica(&dir, "a", &op, "poll", &redis, up, 0);
    ready(&a).await;
    let held = tokio::spawn(call(a.addr, deploy(1)));
    let p = wait_pending(&op, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.child.kill();
    let _ = held.await;
    // The user answers while no gateway runs; a fresh replica picks the request up.
    approve(&op, p[0]["id"].as_str().unwrap()).await;
    let a2 = start_replica(&dir, "a2", &op, "poll", &redis, up, 0);
    ready(&a2).await;
    let answer = call(a2.addr, deploy(2)).await;
    assert_eq!(text(&answer), "done", "{answer}\n{}", a2.child.logs());
    assert_eq!(upstream.count("deploy_service"), 1);
    assert_eq!(op_pending(&op).await.len(), 0, "one prompt in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_identical_calls_across_replicas_make_one_request_and_one_forward() {
    let dir = log_dir("hundred");
    let redis = RedisServer::start();
    let (up, upstream) = Upstream::start().await;
    let op = start_op(&dir, "poll", None);
    let rs: Vec<Replica> = (0..3)
        .map(|i| start_replica(&dir, &format!("r{i}"), &op, "poll", &redis, up, 0))
        .collect();
    for r in &rs {
        ready(r).await;
    }
    let calls: Vec<_> = (0..100)
        .map(|i| tokio::spawn(call(rs[i % 3].addr, deploy(i as i64))))
        .collect();
    let p = wait_pending(&op, 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(op_pending(&op).await.len(), 1, "one CIBA request");
    approve(&op, p[0]["id"].as_str().unwrap()).await;
    let mut done = 0;
    for c in calls {
        let a = c.await.unwrap();
        if text(&a) == "done" {
            done += 1;
        } else {
            assert_eq!(reason(&a), "approval_already_used", "{a}");
        }
    }
    assert_eq!(done, 1, "exactly one call ran");
    assert_eq!(upstream.count("deploy_service"), 1, "exactly one forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_closed_and_allowed_calls_flow_then_restart_empty_blocks_clearly() {
    let dir = log_dir("redis");
    let mut redis = RedisServer::start();
    let (up, upstream) = Upstream::start().await;
    let op = start_op(&dir, "poll", None);
    let a = start_replica(&dir, "a", &op, "poll", &redis, up, 0);
    ready(&a).await;

    // Redis down: sensitive calls fail closed quickly; allowed calls keep flowing.
    redis.kill();
    let t = Instant::now();
    let r = call(a.addr, deploy(1)).await;
    assert_eq!(reason(&r), "store_unavailable", "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t.elapsed()
    );
    assert_eq!(text(&call(a.addr, list(2)).await), "done");
    assert_eq!(upstream.count("deploy_service"), 0);

    // Back (empty): everything recovers by itself.
    redis.restart();
    let held = tokio::spawn(call(a.addr, deploy(3)));
    wait_pending(&op, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis restarted empty while the call waits: blocked clearly, nothing forwarded.
    redis.restart();
    let p = op_pending(&op).await;
    approve(&op, p[0]["id"].as_str().unwrap()).await;
    let r = held.await.unwrap();
    assert_ne!(text(&r), "done", "{r}");
    assert!(
        ["approval_lost", "store_unavailable"].contains(&reason(&r)),
        "clear reason: {r}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        upstream.count("deploy_service"),
        0,
        "nothing forwarded on a guess"
    );
}
