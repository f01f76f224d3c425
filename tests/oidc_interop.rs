//! Approvals against a real OpenID Provider: oidc-provider 9.x (tests/oidc/op.mjs,
//! CIBA poll + ping, with a controller API that plays the user's phone), the real
//! `ciba-gate` binary, and the official MCP SDK tool server (tests/interop/mcp-server.mjs)
//! as the upstream, which logs every tool call it runs. Every test checks the agent's
//! answer, what the upstream received (nothing unless approved), the evidence line, and
//! that no evidence or log line carries a secret, a token, the user code or the raw
//! login hint.
//!
//! oidc-provider sends no `interval`, so the gateway polls every 5 s: a poll-mode
//! approval completes within about 5 s of the decision.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    ChildGuard, ensure_node_deps, ensure_node_peers, free_port, oidc_dir, python_sdk, wait_for_port,
};

const POLL_SECRET: &str = "gate-poll-test-secret-0000000000000000";
const POST_SECRET: &str = "gate-post-test-secret-0000000000000000";
const PING_SECRET: &str = "gate-ping-test-secret-0000000000000000";
const USER: &str = "alice@example.com";
const RIGHT_USER_CODE: &str = "1234";
const WRONG_USER_CODE: &str = "9071";
const SECRET_ENV: &str = "CIBA_CLIENT_SECRET";
const USER_CODE_ENV: &str = "CIBA_USER_CODE";

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Starting Node and oidc-provider on a 2-core box busy with the rest of the suite.
const START_WAIT: Duration = Duration::from_secs(60);

fn quoted(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("utf-8 path")).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- the OpenID Provider

struct Op {
    child: ChildGuard,
    issuer: String,
    control: String,
    _dir: tempfile::TempDir,
}

impl Op {
    /// Starts oidc-provider; ping notifications go to 127.0.0.1:`callback_port`.
    fn start(callback_port: Option<u16>) -> Op {
        let dir = oidc_dir();
        ensure_node_deps(&dir, "oidc-provider");
        let logs = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("op.mjs")
            .args(["--port", "0", "--control-port", "0"]);
        if let Some(p) = callback_port {
            cmd.args(["--callback-port", &p.to_string()]);
        }
        let mut child = ChildGuard::spawn("oidc-provider", cmd, logs.path(), true);
        let lines = child.wait_for_stdout_lines(&["CONTROL ", "READY "], START_WAIT);
        Op {
            control: lines[0]["CONTROL ".len()..].trim().to_string(),
            issuer: lines[1]["READY ".len()..].trim().to_string(),
            child,
            _dir: logs,
        }
    }

    async fn requests(&self, all: bool) -> Vec<Value> {
        let url = format!("{}/requests{}", self.control, if all { "?all" } else { "" });
        http().get(url).send().await.unwrap().json().await.unwrap()
    }

    /// The pending request showing `binding` (waits until the gateway sent it).
    async fn wait_pending(&self, binding: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .requests(false)
                .await
                .into_iter()
                .find(|r| r["binding_message"] == binding)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no pending CIBA request with binding message {binding:?} at the OP\n{}",
                self.child.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// approve | deny | expire, as the user's phone (or the clock) would.
    async fn decide(&self, auth_req_id: &str, action: &str) -> Value {
        let resp = http()
            .post(format!("{}/requests/{auth_req_id}/{action}", self.control))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "controller {action} failed");
        resp.json().await.unwrap()
    }

    async fn pings(&self) -> Vec<Value> {
        http()
            .get(format!("{}/pings", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn endpoint(&self, name: &str) -> String {
        let meta: Value = http()
            .get(format!("{}/.well-known/openid-configuration", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        meta[name].as_str().unwrap().to_string()
    }

    async fn token_endpoint(&self) -> String {
        self.endpoint("token_endpoint").await
    }

    /// An ID token for `login_hint`, issued to `gate-poll` (as the agent's own sign-in
    /// through the gateway's client would give it): one CIBA grant, approved.
    async fn id_token_for(&self, login_hint: &str) -> String {
        let ack: Value = http()
            .post(self.endpoint("backchannel_authentication_endpoint").await)
            .basic_auth("gate-poll", Some(POLL_SECRET))
            .form(&[
                ("scope", "openid"),
                ("login_hint", login_hint),
                ("binding_message", "Sign-in"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = ack["auth_req_id"]
            .as_str()
            .expect("auth_req_id")
            .to_string();
        self.decide(&id, "approve").await;
        let tokens: Value = http()
            .post(self.token_endpoint().await)
            .basic_auth("gate-poll", Some(POLL_SECRET))
            .form(&[
                ("grant_type", "urn:openid:params:grant-type:ciba"),
                ("auth_req_id", id.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no id_token: {tokens}"))
            .to_string()
    }
}

// ---------------------------------------------------------------- the upstream tool server

struct Upstream {
    _child: ChildGuard,
    port: u16,
    calls_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Upstream {
    fn start() -> Upstream {
        Upstream::start_with(&[])
    }

    /// A tool server that runs sensitive tools only with an approval token from
    /// `issuer` for `audience` (mcp-server.mjs `--verify-issuer` / `--verify-audience`).
    fn start_verifying(issuer: &str, audience: &str) -> Upstream {
        Upstream::start_with(&["--verify-issuer", issuer, "--verify-audience", audience])
    }

    fn start_with(extra: &[&str]) -> Upstream {
        let interop = ensure_node_peers();
        let dir = tempfile::tempdir().unwrap();
        let calls_log = dir.path().join("upstream-calls.jsonl");
        let mut cmd = Command::new("node");
        cmd.current_dir(&interop)
            .arg("mcp-server.mjs")
            .args(["--port", "0", "--mode", "json"])
            .arg("--calls-log")
            .arg(&calls_log)
            .args(extra);
        let mut child = ChildGuard::spawn("mcp-server", cmd, dir.path(), true);
        let ready = child.wait_for_stdout_line("READY ", WAIT);
        let port = ready["READY ".len()..]
            .trim()
            .parse()
            .expect("port after READY");
        Upstream {
            _child: child,
            port,
            calls_log,
            _dir: dir,
        }
    }

    /// Every tools/call the upstream ran: `{tool, args, authorization}`.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.calls_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

// ---------------------------------------------------------------- the gateway

struct GwOpts {
    client_id: &'static str,
    /// The `client_auth` mapping (YAML flow style).
    client_auth: String,
    /// Value of the client secret environment variable (if the auth method uses one).
    secret: Option<&'static str>,
    delivery: &'static str,
    user: &'static str,
    user_code: Option<&'static str>,
    profile: &'static str,
    max_wait: &'static str,
    /// ping mode: the callback listener port (also given to the OP).
    callback_port: Option<u16>,
    /// The policy directory, relative to the repository (default: the test policy).
    policies: &'static str,
    /// `approvals.accept_identity`.
    accept_identity: bool,
    /// The tool server's audience: `approval_token: {audience}` on the upstream and
    /// `approvals.authorization_details: true`.
    approval_audience: Option<&'static str>,
    /// `approval_token.exchange`: the token is exchanged for the audience (RFC 8693).
    approval_exchange: bool,
}

impl GwOpts {
    fn poll() -> GwOpts {
        GwOpts {
            client_id: "gate-poll",
            client_auth: format!("{{method: client_secret_basic, secret: {{env: {SECRET_ENV}}}}}"),
            secret: Some(POLL_SECRET),
            delivery: "poll",
            user: USER,
            user_code: None,
            profile: "oidc-provider",
            max_wait: "40s",
            callback_port: None,
            policies: "tests/fixtures/oidc-policies",
            accept_identity: false,
            approval_audience: None,
            approval_exchange: false,
        }
    }
}

struct Gateway {
    child: ChildGuard,
    port: u16,
    evidence: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(op: &Op, upstream: &Upstream, o: GwOpts) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let evidence = dir.path().join("evidence.jsonl");
        let config = dir.path().join("ciba-gate.yaml");
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join(o.policies);
        let user_code = o
            .user_code
            .map(|_| format!(", user_code: {{env: {USER_CODE_ENV}}}"))
            .unwrap_or_default();
        let callback = o
            .callback_port
            .map(|p| format!("  callback: {{listen: \"127.0.0.1:{p}\", insecure_http: true}}\n"))
            .unwrap_or_default();
        let yaml = format!(
            r#"listen: "127.0.0.1:{port}"
agent: {{id: billing-agent, namespace: agents}}
admin: {{listen: "127.0.0.1:0"}}
policy: {{dir: {policies}, reload_interval: 60s}}
evidence: {{sink: file, path: {evidence}}}
upstreams:
  - {{name: tools, kind: mcp, mount: /mcp, url: "http://127.0.0.1:{up}/mcp", response_timeout: 10s{approval_token}}}
approvals:
  op:
    issuer: "{issuer}"
    client_id: {client_id}
    client_auth: {client_auth}
    delivery: {delivery}
    allow_insecure_http: true
  user: {{value: "{user}"{user_code}}}
  binding_message_profile: {profile}
  mode: hold
  max_wait: {max_wait}
  keepalive: 1s
  progress_interval: 10s
  ping_fallback_poll: 60s
  accept_identity: {accept_identity}
  authorization_details: {authorization_details}
{callback}"#,
            policies = quoted(&policies),
            evidence = quoted(&evidence),
            up = upstream.port,
            issuer = op.issuer,
            client_id = o.client_id,
            client_auth = o.client_auth,
            delivery = o.delivery,
            user = o.user,
            profile = o.profile,
            max_wait = o.max_wait,
            accept_identity = o.accept_identity,
            approval_token = o
                .approval_audience
                .map(|a| {
                    format!(
                        ", approval_token: {{audience: \"{a}\", exchange: {}}}",
                        o.approval_exchange
                    )
                })
                .unwrap_or_default(),
            authorization_details = o.approval_audience.is_some(),
        );
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove(SECRET_ENV)
            .env_remove(USER_CODE_ENV)
            // Debug level: the leak checks below then cover the chattiest logs.
            .env(
                "RUST_LOG",
                "debug,hyper=info,reqwest=info,h2=info,rustls=info",
            );
        if let Some(s) = o.secret {
            cmd.env(SECRET_ENV, s);
        }
        if let Some(c) = o.user_code {
            cmd.env(USER_CODE_ENV, c);
        }
        let mut child = ChildGuard::spawn("ciba-gate", cmd, dir.path(), false);
        wait_for_port(port, WAIT, Some(&mut child));
        // OP discovery runs in the background; approvals need it.
        let deadline = Instant::now() + WAIT;
        let want_callback = o.callback_port.is_some();
        loop {
            let log = child.stderr_text();
            if log.contains("OpenID Provider metadata loaded")
                && (!want_callback || log.contains("CIBA callback listener ready"))
            {
                break;
            }
            if let Some(st) = child.try_status() {
                panic!("ciba-gate exited ({st})\n{}", child.logs());
            }
            assert!(
                Instant::now() < deadline,
                "ciba-gate did not load the OP metadata in time\n{}",
                child.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Gateway {
            child,
            port,
            evidence,
            _dir: dir,
        }
    }

    fn evidence(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.evidence)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Evidence lines for `tool` (tools/call decisions).
    fn tool_evidence(&self, tool: &str) -> Vec<Value> {
        self.evidence()
            .into_iter()
            .filter(|e| e["tool"] == tool)
            .collect()
    }

    /// The single evidence line for `tool`, waiting briefly for it to be written.
    async fn one_tool_evidence(&self, tool: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.tool_evidence(tool);
            if !lines.is_empty() {
                assert_eq!(lines.len(), 1, "one evidence line for {tool}: {lines:#?}");
                return lines.into_iter().next().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no evidence line for {tool}\n{}",
                self.child.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// No evidence or log line carries a client secret, a token, the user code or the
    /// raw login hint. `auth_req_ids` may appear (they are opaque handles, not tokens).
    fn assert_no_leaks(&self, secrets: &[&str], auth_req_ids: &[String]) {
        let evidence = std::fs::read_to_string(&self.evidence).unwrap_or_default();
        let log = self.child.stderr_text() + &self.child.stdout_text();
        let token_like = regex::Regex::new(r"[A-Za-z0-9_\-]{32,}").unwrap();
        for (what, text) in [("evidence", &evidence), ("gateway log", &log)] {
            for s in secrets
                .iter()
                .chain([POLL_SECRET, POST_SECRET, PING_SECRET].iter())
            {
                assert!(
                    !text.contains(s),
                    "{what} contains a client secret:\n{text}"
                );
            }
            assert!(
                !text.contains(USER),
                "{what} contains the raw login hint:\n{text}"
            );
            assert!(
                !text.contains("mallory@example.com"),
                "{what} contains the raw login hint:\n{text}"
            );
            assert!(
                !text.contains("eyJ"),
                "{what} contains a JWT (ID token or client assertion):\n{text}"
            );
            for code in [RIGHT_USER_CODE, WRONG_USER_CODE] {
                for shape in [
                    format!("\"{code}\""),
                    format!("={code}"),
                    format!(": {code}"),
                ] {
                    assert!(
                        !text.contains(&shape),
                        "{what} contains the user code:\n{text}"
                    );
                }
            }
            // oidc-provider's access tokens are opaque base64url strings (43 chars): any
            // long mixed-case run that is not a known auth_req_id would be one.
            for m in token_like.find_iter(text) {
                let s = m.as_str();
                let mixed = s.chars().any(|c| c.is_ascii_uppercase());
                assert!(
                    !mixed || auth_req_ids.iter().any(|id| id == s),
                    "{what} contains a token-like value {s:?}:\n{text}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- the agent side

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// Notifications the SSE stream carried before the result.
    events: Vec<Value>,
    /// The final JSON-RPC response.
    result: Value,
}

impl Answer {
    fn reason(&self) -> &str {
        self.result["result"]["_meta"]["ciba-gate/reason"]
            .as_str()
            .unwrap_or("")
    }
    fn is_blocked(&self) -> bool {
        self.result["result"]["isError"] == true
    }
    fn text(&self) -> String {
        self.result["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A `tools/call` through the gateway. The agent accepts JSON and SSE (as MCP
/// requires) and asks for progress when `progress`. A negative `id` stands for an
/// agent that accepts JSON only: its hold is answered with plain JSON (the SDK
/// upstream refuses such requests, so use it only for calls that are never forwarded).
async fn call_tool(port: u16, id: i64, tool: &str, args: Value, progress: bool) -> Answer {
    call_tool_notify(port, id, tool, args, progress, None, None).await
}

/// [`call_tool`], telling `held` once the answer's headers arrived (an SSE hold has begun).
async fn call_tool_notify(
    port: u16,
    id: i64,
    tool: &str,
    args: Value,
    progress: bool,
    held: Option<tokio::sync::mpsc::UnboundedSender<i64>>,
    identity: Option<&str>,
) -> Answer {
    // Negative ids: a JSON-only agent (no SSE; the hold answers with plain JSON).
    let json_only = id < 0;
    let mut params = json!({"name": tool, "arguments": args});
    if progress {
        params["_meta"] = json!({"progressToken": format!("progress-{id}")});
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let mut req = http().post(format!("http://127.0.0.1:{port}/mcp"));
    if let Some(token) = identity {
        req = req.header("x-ciba-gate-identity", token);
    }
    let resp = req
        .header("content-type", "application/json")
        .header(
            "accept",
            if json_only {
                "application/json"
            } else {
                "application/json, text/event-stream"
            },
        )
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .expect("gateway answered");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if let Some(tx) = held {
        let _ = tx.send(id);
    }
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = resp.text().await.expect("answer body");
    if !is_sse {
        let result =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        return Answer {
            status,
            headers,
            events: Vec::new(),
            result,
        };
    }
    let mut events = Vec::new();
    let mut result = Value::Null;
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if data.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&data.join("\n"))
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {block}"));
        if v.get("id") == Some(&json!(id))
            && (v.get("result").is_some() || v.get("error").is_some())
        {
            result = v;
        } else {
            events.push(v);
        }
    }
    assert!(
        !result.is_null(),
        "the SSE stream ended without the JSON-RPC response:\n{text}"
    );
    Answer {
        status,
        headers,
        events,
        result,
    }
}

/// Starts a call in the background (the gateway holds it while the user decides).
fn spawn_call(
    port: u16,
    id: i64,
    tool: &'static str,
    args: Value,
    progress: bool,
) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(async move { call_tool(port, id, tool, args, progress).await })
}

async fn finish(h: tokio::task::JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(WAIT, h)
        .await
        .expect("the held call was answered in time")
        .expect("call task")
}

fn deploy_args(service: &str, env: &str) -> Value {
    json!({"service": service, "env": env})
}

/// The checks every approved-and-forwarded call shares.
fn assert_forwarded(a: &Answer, upstream: &Upstream, service: &str, env: &str) {
    assert_eq!(a.status, 200);
    assert!(!a.is_blocked(), "the approved call must run: {}", a.result);
    assert_eq!(
        a.text(),
        format!("deployed {service} to {env}"),
        "the tool's own answer: {}",
        a.result
    );
    let calls = upstream.calls();
    assert_eq!(calls.len(), 1, "exactly one forward: {calls:#?}");
    assert_eq!(calls[0]["tool"], "deploy_service");
    assert_eq!(calls[0]["args"], deploy_args(service, env));
}

fn assert_approval_evidence(e: &Value, op: &Op, client_id: &str, delivery: &str, decision: &str) {
    let a = &e["approval"];
    assert_eq!(a["op_issuer"], op.issuer.as_str(), "{e}");
    assert_eq!(a["client_id"], client_id, "{e}");
    assert_eq!(a["delivery_mode"], delivery, "{e}");
    assert_eq!(a["user_decision"], decision, "{e}");
    assert_eq!(a["hint_type"], "login_hint", "{e}");
    assert_eq!(a["scope"], "openid", "{e}");
    assert!(
        a["backchannel_endpoint"]
            .as_str()
            .is_some_and(|s| s.starts_with(&op.issuer)),
        "{e}"
    );
}

async fn ids_for(op: &Op, client_id: &str) -> Vec<String> {
    op.requests(true)
        .await
        .into_iter()
        .filter(|r| r["client_id"] == client_id)
        .map(|r| r["auth_req_id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- 1. poll: approve

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_approval_forwards_the_call_once_with_progress_and_binding_header() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    // Allowed without approval: proves the path to the upstream works.
    let listed = call_tool(gw.port, 1, "list_deployments", json!({}), false).await;
    assert!(!listed.is_blocked(), "{}", listed.result);
    assert!(
        listed.text().starts_with("deployments:"),
        "{}",
        listed.result
    );

    let call = spawn_call(
        gw.port,
        2,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_eq!(req["client_id"], "gate-poll");
    assert_eq!(req["login_hint"], USER);
    assert_eq!(req["scope"], "openid");
    assert_eq!(
        upstream.calls().len(),
        1,
        "nothing forwarded while the user has not answered"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let a = finish(call).await;

    assert_eq!(
        a.header("x-ciba-gate-binding-message"),
        Some("Deploy-api-prod")
    );
    assert!(
        a.events
            .iter()
            .any(|ev| ev["method"] == "notifications/progress"
                && ev["params"]["progressToken"] == "progress-2"
                && ev["params"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Deploy-api-prod"))),
        "a progress notification with the binding message: {:#?}",
        a.events
    );
    let calls: Vec<Value> = upstream
        .calls()
        .into_iter()
        .filter(|c| c["tool"] == "deploy_service")
        .collect();
    assert_eq!(calls.len(), 1, "exactly one forward: {calls:#?}");
    assert_eq!(calls[0]["args"], deploy_args("api", "prod"));
    assert_eq!(a.text(), "deployed api to prod");

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-poll", "poll", "approved");
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["reason"], "approved", "{e}");
    assert_eq!(e["outcome"], "forwarded", "{e}");
    assert_eq!(e["approval"]["binding_message"], "Deploy-api-prod");
    assert_eq!(e["approval"]["action"], "deploy");
    assert_eq!(e["approval"]["joined"], false);
    assert_eq!(e["approval"]["acr"], "urn:example:acr:phone");
    assert!(
        e["approval"]["approver_subject_hash"]
            .as_str()
            .is_some_and(|h| !h.is_empty() && h != "alice"),
        "a pseudonymous approver: {e}"
    );
    // The OP's record was redeemed by the gateway.
    let all = op.requests(true).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "redeemed");
    gw.assert_no_leaks(&[], &ids_for(&op, "gate-poll").await);
}

// ------------------------------------- 1b. the bundled policies, unchanged

/// A newcomer's setup: the bundled policies as shipped, the gateway's default
/// binding-message profile, and real oidc-provider with its default
/// `validateBindingMessage` (20 characters, no spaces). The prompt is accepted, the
/// person approves, the tool runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_policies_pass_oidc_providers_default_binding_message_rule() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            policies: "policies",
            ..GwOpts::poll()
        },
    );
    let call = spawn_call(
        gw.port,
        2,
        "deploy_service",
        deploy_args("payments", "prod"),
        true,
    );
    let req = op.wait_pending("payments-to-prod").await;
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let a = finish(call).await;
    assert!(!a.is_blocked(), "{}", a.result);
    assert_eq!(a.text(), "deployed payments to prod");
    let calls: Vec<Value> = upstream
        .calls()
        .into_iter()
        .filter(|c| c["tool"] == "deploy_service")
        .collect();
    assert_eq!(calls.len(), 1, "exactly one forward: {calls:#?}");
    let e = gw.one_tool_evidence("deploy_service").await;
    assert_eq!(e["approval"]["binding_message"], "payments-to-prod", "{e}");
    assert_eq!(e["outcome"], "forwarded", "{e}");
}

// ---------------------------------------------------------------- 2. poll: deny

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_denial_blocks_with_approval_denied_and_forwards_nothing() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    let call = spawn_call(
        gw.port,
        7,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    op.decide(req["auth_req_id"].as_str().unwrap(), "deny")
        .await;
    let a = finish(call).await;

    assert!(a.is_blocked(), "{}", a.result);
    assert_eq!(a.reason(), "approval_denied");
    assert_eq!(a.result["result"]["_meta"]["ciba-gate/decision"], "approve");
    assert!(a.text().contains("Deploy-api-prod"), "{}", a.text());
    assert!(
        upstream.calls().is_empty(),
        "nothing forwarded: {:#?}",
        upstream.calls()
    );

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-poll", "poll", "denied");
    assert_eq!(e["reason"], "approval_denied", "{e}");
    assert_eq!(e["outcome"], "blocked", "{e}");
    assert!(
        e["approval"]
            .get("approver_subject_hash")
            .is_none_or(Value::is_null),
        "{e}"
    );
    gw.assert_no_leaks(&[], &ids_for(&op, "gate-poll").await);
}

// ---------------------------------------------------------------- 3. expiry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_request_blocks_with_approval_expired() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    // (a) The OP expires the request (the user never answered): `expired_token`.
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());
    // (b) The gateway's own max_wait runs out first.
    let short = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            max_wait: "3s",
            ..GwOpts::poll()
        },
    );

    let started = Instant::now();
    let by_op = spawn_call(
        gw.port,
        1,
        "deploy_service",
        deploy_args("api", "dev"),
        true,
    );
    let by_gateway = spawn_call(
        short.port,
        -2,
        "deploy_service",
        deploy_args("web", "dev"),
        false,
    );
    let req = op.wait_pending("Deploy-api-dev").await;
    op.wait_pending("Deploy-web-dev").await;
    op.decide(req["auth_req_id"].as_str().unwrap(), "expire")
        .await;

    let a = finish(by_op).await;
    assert!(a.is_blocked(), "{}", a.result);
    assert_eq!(a.reason(), "approval_expired", "{}", a.result);
    let b = finish(by_gateway).await;
    assert!(b.is_blocked(), "{}", b.result);
    assert_eq!(b.reason(), "approval_expired", "{}", b.result);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "max_wait 3s ends the hold: {:?}",
        started.elapsed()
    );
    assert!(
        upstream.calls().is_empty(),
        "nothing forwarded: {:#?}",
        upstream.calls()
    );

    for g in [&gw, &short] {
        let e = g.one_tool_evidence("deploy_service").await;
        assert_approval_evidence(&e, &op, "gate-poll", "poll", "expired");
        assert_eq!(e["reason"], "approval_expired", "{e}");
        assert_eq!(e["outcome"], "blocked", "{e}");
        g.assert_no_leaks(&[], &ids_for(&op, "gate-poll").await);
    }
}

// ---------------------------------------------------------------- 4. the OP says no

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_rejections_are_reported_with_their_reason_codes() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    // The profile lets "Delete repository x" through; oidc-provider rejects it.
    let lax_profile = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            profile: "curity",
            ..GwOpts::poll()
        },
    );
    let unknown_user = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            user: "mallory@example.com",
            ..GwOpts::poll()
        },
    );
    let wrong_secret = "gate-poll-WRONG-secret-111111111111111";
    let bad_client = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            secret: Some(wrong_secret),
            ..GwOpts::poll()
        },
    );

    let cases = [
        (
            &lax_profile,
            "delete_repository",
            json!({"repo": "x"}),
            "invalid_binding_message",
        ),
        (
            &unknown_user,
            "deploy_service",
            deploy_args("api", "dev"),
            "unknown_user_id",
        ),
        (
            &bad_client,
            "deploy_service",
            deploy_args("api", "dev"),
            "invalid_client",
        ),
    ];
    for (i, (gw, tool, args, code)) in cases.iter().enumerate() {
        // JSON-only agent: a plain hold, answered with JSON.
        let a = tokio::time::timeout(
            WAIT,
            call_tool(gw.port, -(i as i64 + 1), tool, args.clone(), false),
        )
        .await
        .expect("answered in time");
        assert_eq!(a.status, 200);
        assert!(a.is_blocked(), "{code}: {}", a.result);
        assert_eq!(a.reason(), *code, "{}", a.result);
        assert!(a.header("x-ciba-gate-binding-message").is_some());
        assert_eq!(a.header("x-ciba-gate-approval"), Some("failed"));
        let e = gw.one_tool_evidence(tool).await;
        assert_approval_evidence(&e, &op, "gate-poll", "poll", "failed");
        assert_eq!(e["reason"], *code, "{e}");
        assert_eq!(e["approval"]["failure"], *code, "{e}");
        assert_eq!(e["outcome"], "blocked", "{e}");
        gw.assert_no_leaks(&[wrong_secret], &[]);
    }
    assert!(
        op.requests(true).await.is_empty(),
        "the OP accepted none of them"
    );
    assert!(
        upstream.calls().is_empty(),
        "nothing forwarded: {:#?}",
        upstream.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_user_code_is_rejected_and_the_right_one_works() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let wrong = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            user_code: Some(WRONG_USER_CODE),
            ..GwOpts::poll()
        },
    );
    let right = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            user_code: Some(RIGHT_USER_CODE),
            ..GwOpts::poll()
        },
    );

    let a = tokio::time::timeout(
        WAIT,
        call_tool(
            wrong.port,
            1,
            "deploy_service",
            deploy_args("api", "dev"),
            true,
        ),
    )
    .await
    .expect("answered in time");
    assert!(a.is_blocked(), "{}", a.result);
    assert_eq!(a.reason(), "invalid_user_code", "{}", a.result);
    assert!(upstream.calls().is_empty());
    let e = wrong.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-poll", "poll", "failed");
    assert_eq!(e["reason"], "invalid_user_code", "{e}");

    let call = spawn_call(
        right.port,
        2,
        "deploy_service",
        deploy_args("api", "dev"),
        true,
    );
    let req = op.wait_pending("Deploy-api-dev").await;
    assert_eq!(
        req["user_code"], RIGHT_USER_CODE,
        "the OP got the configured user code"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let b = finish(call).await;
    assert_forwarded(&b, &upstream, "api", "dev");
    let e = right.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-poll", "poll", "approved");
    assert_eq!(e["outcome"], "forwarded", "{e}");

    let ids = ids_for(&op, "gate-poll").await;
    wrong.assert_no_leaks(&[], &ids);
    right.assert_no_leaks(&[], &ids);
}

// ---------------------------------------------------------------- 5. client authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_and_private_key_jwt_both_work() {
    let op = Op::start(None);
    let upstream_post = Upstream::start();
    let upstream_jwt = Upstream::start();
    let keys = oidc_dir().join("keys");
    let jwk: Value = serde_json::from_str(
        &std::fs::read_to_string(keys.join("client-es256.pub.jwk.json")).unwrap(),
    )
    .unwrap();
    let kid = jwk["kid"].as_str().unwrap();
    let post = Gateway::start(
        &op,
        &upstream_post,
        GwOpts {
            client_id: "gate-post",
            client_auth: format!("{{method: client_secret_post, secret: {{env: {SECRET_ENV}}}}}"),
            secret: Some(POST_SECRET),
            ..GwOpts::poll()
        },
    );
    let jwt = Gateway::start(
        &op,
        &upstream_jwt,
        GwOpts {
            client_id: "gate-jwt",
            client_auth: format!(
                "{{method: private_key_jwt, key: {{alg: ES256, kid: \"{kid}\", file: {}}}}}",
                quoted(&keys.join("client-es256.pem"))
            ),
            secret: None,
            ..GwOpts::poll()
        },
    );

    let by_post = spawn_call(
        post.port,
        1,
        "deploy_service",
        deploy_args("api", "dev"),
        true,
    );
    let by_jwt = spawn_call(
        jwt.port,
        2,
        "deploy_service",
        deploy_args("web", "dev"),
        true,
    );
    let r1 = op.wait_pending("Deploy-api-dev").await;
    let r2 = op.wait_pending("Deploy-web-dev").await;
    assert_eq!(r1["client_id"], "gate-post");
    assert_eq!(r2["client_id"], "gate-jwt");
    op.decide(r1["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    op.decide(r2["auth_req_id"].as_str().unwrap(), "approve")
        .await;

    let a = finish(by_post).await;
    assert_forwarded(&a, &upstream_post, "api", "dev");
    let b = finish(by_jwt).await;
    assert_forwarded(&b, &upstream_jwt, "web", "dev");

    let e = post.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-post", "poll", "approved");
    assert_eq!(e["outcome"], "forwarded", "{e}");
    let e = jwt.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-jwt", "poll", "approved");
    assert_eq!(e["outcome"], "forwarded", "{e}");
    for r in op.requests(true).await {
        assert_eq!(r["status"], "redeemed", "{r}");
    }
    let ids: Vec<String> = op
        .requests(true)
        .await
        .iter()
        .map(|r| r["auth_req_id"].as_str().unwrap().to_string())
        .collect();
    post.assert_no_leaks(&[], &ids);
    jwt.assert_no_leaks(&[], &ids);
}

// ---------------------------------------------------------------- 6. ping mode

fn ping_opts(callback_port: u16) -> GwOpts {
    GwOpts {
        client_id: "gate-ping",
        secret: Some(PING_SECRET),
        delivery: "ping",
        callback_port: Some(callback_port),
        ..GwOpts::poll()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_approval_completes_the_call_without_waiting_for_the_fallback_poll() {
    let callback_port = free_port();
    let op = Op::start(Some(callback_port));
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, ping_opts(callback_port));

    let call = spawn_call(
        gw.port,
        1,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_eq!(req["delivery_mode"], "ping");
    assert!(upstream.calls().is_empty());
    let decided = Instant::now();
    let out = op
        .decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    assert_eq!(out["ping"], "sent", "{out}");
    let a = finish(call).await;
    // ping_fallback_poll is 60 s: only the ping can have finished it this fast.
    assert!(
        decided.elapsed() < Duration::from_secs(4),
        "answered {:?} after the approval",
        decided.elapsed()
    );
    assert_forwarded(&a, &upstream, "api", "prod");

    let pings = op.pings().await;
    assert_eq!(pings.len(), 1, "{pings:#?}");
    assert_eq!(
        pings[0]["delivered_to"],
        format!("http://127.0.0.1:{callback_port}/ciba/callback")
    );
    let status = pings[0]["status"].as_u64().unwrap_or(0);
    assert!(
        (200..300).contains(&status),
        "the gateway accepted the ping: {pings:#?}"
    );
    assert!(pings[0].get("error").is_none(), "{pings:#?}");

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-ping", "ping", "approved");
    assert_eq!(
        e["approval"]["delivered_via"], "ping",
        "the ping, not the fallback poll: {e}"
    );
    assert_eq!(e["outcome"], "forwarded", "{e}");
    gw.assert_no_leaks(&[], &ids_for(&op, "gate-ping").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_denial_blocks_with_approval_denied() {
    let callback_port = free_port();
    let op = Op::start(Some(callback_port));
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, ping_opts(callback_port));

    let call = spawn_call(
        gw.port,
        1,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    let decided = Instant::now();
    let out = op
        .decide(req["auth_req_id"].as_str().unwrap(), "deny")
        .await;
    assert_eq!(out["ping"], "sent", "{out}");
    let a = finish(call).await;
    assert!(
        decided.elapsed() < Duration::from_secs(4),
        "{:?}",
        decided.elapsed()
    );
    assert!(a.is_blocked(), "{}", a.result);
    assert_eq!(a.reason(), "approval_denied");
    assert!(
        upstream.calls().is_empty(),
        "nothing forwarded: {:#?}",
        upstream.calls()
    );

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-ping", "ping", "denied");
    assert_eq!(e["reason"], "approval_denied", "{e}");
    gw.assert_no_leaks(&[], &ids_for(&op, "gate-ping").await);
}

// ---------------------------------------------------------------- 7. identical concurrent calls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_calls_share_one_ciba_request_and_forward_once() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let calls: Vec<_> = (1..=5)
        .map(|id| {
            let tx = tx.clone();
            let port = gw.port;
            tokio::spawn(async move {
                call_tool_notify(
                    port,
                    id,
                    "deploy_service",
                    deploy_args("api", "prod"),
                    true,
                    Some(tx),
                    None,
                )
                .await
            })
        })
        .collect();
    let req = op.wait_pending("Deploy-api-prod").await;
    // All five are held (each has its SSE answer open, so it has started or joined the
    // approval) before the user answers.
    for _ in 0..5 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("all five calls are held")
            .expect("held notice");
    }
    assert_eq!(
        op.requests(true).await.len(),
        1,
        "exactly one CIBA request at the OP"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;

    let mut answers = Vec::new();
    for c in calls {
        answers.push(finish(c).await);
    }
    let ran: Vec<&Answer> = answers.iter().filter(|a| !a.is_blocked()).collect();
    assert_eq!(
        ran.len(),
        1,
        "exactly one call ran: {:#?}",
        answers.iter().map(|a| &a.result).collect::<Vec<_>>()
    );
    assert_eq!(ran[0].text(), "deployed api to prod");
    for a in answers.iter().filter(|a| a.is_blocked()) {
        assert_eq!(a.reason(), "approval_already_used", "{}", a.result);
    }
    let forwarded: Vec<Value> = upstream.calls();
    assert_eq!(forwarded.len(), 1, "exactly one forward: {forwarded:#?}");
    let all = op.requests(true).await;
    assert_eq!(all.len(), 1, "exactly one CIBA request at the OP: {all:#?}");

    let lines = gw.tool_evidence("deploy_service");
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(
        lines.iter().filter(|e| e["outcome"] == "forwarded").count(),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["reason"] == "approval_already_used")
            .count(),
        4,
        "{lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["approval"]["joined"] == false)
            .count(),
        1,
        "{lines:#?}"
    );
    for e in &lines {
        if e["outcome"] == "forwarded" {
            assert_eq!(e["approval"]["user_decision"], "approved", "{e}");
        } else {
            // A joiner that looks after the winner consumed the approval finds no
            // record any more, so its line cannot name the user's decision.
            let d = e["approval"]["user_decision"].as_str().unwrap_or("");
            assert!(d == "approved" || d == "unknown", "{e}");
            assert_eq!(e["decision"], "approve", "{e}");
            assert_eq!(e["outcome"], "blocked", "{e}");
        }
    }
    gw.assert_no_leaks(&[], &ids_for(&op, "gate-poll").await);
}

// ---------------------------------------------------------------- 8. replayed auth_req_id

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_auth_req_id_gets_invalid_grant_after_the_gateway_redeemed_it() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    let call = spawn_call(
        gw.port,
        1,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    let id = req["auth_req_id"].as_str().unwrap().to_string();
    op.decide(&id, "approve").await;
    let a = finish(call).await;
    assert_forwarded(&a, &upstream, "api", "prod");

    let all = op.requests(true).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["auth_req_id"], id.as_str());
    assert_eq!(all[0]["status"], "redeemed");

    let resp = http()
        .post(op.token_endpoint().await)
        .basic_auth("gate-poll", Some(POLL_SECRET))
        .form(&[
            ("grant_type", "urn:openid:params:grant-type:ciba"),
            ("auth_req_id", id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body.get("access_token").is_none());
    assert_eq!(upstream.calls().len(), 1, "still exactly one forward");
    gw.assert_no_leaks(&[], &[id]);
}

// ---------------------------------------------------------------- the two-person rule

/// The pending requests showing `binding`, once there are `n` of them.
async fn wait_pending_n(op: &Op, binding: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found: Vec<Value> = op
            .requests(false)
            .await
            .into_iter()
            .filter(|r| r["binding_message"] == binding)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} pending CIBA requests for {binding:?} at the OP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The auth_req_id of the request sent for `login_hint`.
fn asked(requests: &[Value], login_hint: &str) -> String {
    requests
        .iter()
        .find(|r| r["login_hint"] == login_hint)
        .unwrap_or_else(|| panic!("{login_hint} was not asked: {requests:#?}"))["auth_req_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A deploy to `vault` needs alice and bob: oidc-provider gets one CIBA request per
/// person, the call waits while only one has approved, and runs once after both;
/// the evidence names two distinct subjects by keyed hash. The next identical call
/// asks again, and bob's denial blocks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_approve_a_vault_deploy_on_a_real_op() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    let call = spawn_call(
        gw.port,
        60,
        "deploy_service",
        deploy_args("api", "vault"),
        true,
    );
    let reqs = wait_pending_n(&op, "Deploy-api-vault", 2).await;
    assert_eq!(reqs.len(), 2, "one request per person: {reqs:#?}");
    op.decide(&asked(&reqs, USER), "approve").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!call.is_finished(), "alice alone is not enough");
    assert!(upstream.calls().is_empty());
    op.decide(&asked(&reqs, "bob@example.com"), "approve").await;
    let a = finish(call).await;
    assert_forwarded(&a, &upstream, "api", "vault");

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_approval_evidence(&e, &op, "gate-poll", "poll", "approved");
    let q = &e["approval"]["quorum"];
    assert_eq!(
        (q["required"].as_u64(), q["granted"].as_u64()),
        (Some(2), Some(2)),
        "{e}"
    );
    let people = q["approvers"].as_array().unwrap();
    assert_eq!(people.len(), 2);
    assert_ne!(
        people[0]["approver_subject_hash"],
        people[1]["approver_subject_hash"]
    );
    assert!(
        people.iter().all(|p| p["token_outcome"] == "granted"),
        "{e}"
    );
    let redeemed = op.requests(true).await;
    assert!(
        redeemed.iter().all(|r| r["status"] == "redeemed"),
        "{redeemed:#?}"
    );

    let again = spawn_call(
        gw.port,
        61,
        "deploy_service",
        deploy_args("api", "vault"),
        true,
    );
    let reqs = wait_pending_n(&op, "Deploy-api-vault", 2).await;
    op.decide(&asked(&reqs, "bob@example.com"), "deny").await;
    let a = finish(again).await;
    assert_eq!(a.reason(), "approval_denied", "{}", a.result);
    assert_eq!(upstream.calls().len(), 1, "still one forward");
    gw.assert_no_leaks(&["bob@example.com"], &ids_for(&op, "gate-poll").await);
}

/// Two hints that the OP resolves to one person (alice and her alias) are one
/// approver, not two: both approve, and the call is blocked with
/// `approvers_not_distinct`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_under_two_hints_is_not_two_approvers() {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(&op, &upstream, GwOpts::poll());

    let call = spawn_call(
        gw.port,
        62,
        "deploy_service",
        deploy_args("api", "mirror"),
        true,
    );
    let reqs = wait_pending_n(&op, "Deploy-api-mirror", 2).await;
    for r in &reqs {
        op.decide(r["auth_req_id"].as_str().unwrap(), "approve")
            .await;
    }
    let a = finish(call).await;
    assert!(a.is_blocked(), "{}", a.result);
    assert_eq!(a.reason(), "approvers_not_distinct", "{}", a.result);
    assert!(upstream.calls().is_empty(), "nothing forwarded");
    let e = gw.one_tool_evidence("deploy_service").await;
    assert_eq!(e["reason"], "approvers_not_distinct", "{e}");
    assert_eq!(e["approval"]["quorum"]["granted"], 1, "{e}");
    gw.assert_no_leaks(&["alice.alt@example.com"], &ids_for(&op, "gate-poll").await);
}

// ---------------------------------------------------------------- the end user's identity

/// oidc-provider, a tool server and a gateway that accepts end-user identities; and an
/// ID token for bob issued to the gateway's client.
async fn accepting_identities() -> (Op, Upstream, Gateway, String) {
    let op = Op::start(None);
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            accept_identity: true,
            ..GwOpts::poll()
        },
    );
    let bob = op.id_token_for("bob@example.com").await;
    (op, upstream, gw, bob)
}

/// The agent proves whom the call is for with an ID token the OP issued to the
/// gateway's client: that person (bob) is asked, by `id_token_hint`, instead of the
/// configured user (alice); the approved call runs once; the evidence names bob by
/// keyed hash and hint type only, and the token appears in no log or record.
#[tokio::test]
async fn the_end_user_the_agent_proves_is_asked_by_id_token_hint() {
    let (op, upstream, gw, bob) = accepting_identities().await;

    let port = gw.port;
    let token = bob.clone();
    let call = tokio::spawn(async move {
        call_tool_notify(
            port,
            70,
            "deploy_service",
            deploy_args("api", "prod"),
            true,
            None,
            Some(&token),
        )
        .await
    });
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_eq!(req["accountId"], "bob", "{req}");
    assert_eq!(req["hint_type"], "id_token_hint", "{req}");
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let a = finish(call).await;
    assert_forwarded(&a, &upstream, "api", "prod");

    let e = gw.one_tool_evidence("deploy_service").await;
    assert_eq!(e["approval"]["hint_type"], "id_token_hint", "{e}");
    assert!(e["approval"]["approver_hint_hash"].is_string(), "{e}");
    assert_eq!(e["approval"]["user_decision"], "approved", "{e}");
    assert_eq!(e["approval"]["token_outcome"], "granted", "{e}");
    // The gateway checked that the approving ID token names the identity's subject
    // (else `approver_mismatch`); the evidence carries only its keyed hash.
    assert!(e["approval"]["approver_subject_hash"].is_string(), "{e}");

    // The policy reads who the call is for (`input.identity`) before anyone is asked.
    let staging = call_tool_notify(
        gw.port,
        72,
        "deploy_service",
        deploy_args("api", "staging"),
        true,
        None,
        Some(&bob),
    )
    .await;
    assert_eq!(staging.reason(), "not_for_end_users", "{}", staging.result);
    assert!(op.requests(false).await.is_empty(), "no one was asked");

    // Two tokens of one person are one approver: identical calls carrying either
    // share one request (throttles and cool-downs count bob once, too).
    let bob_again = op.id_token_for("bob@example.com").await;
    assert_ne!(bob_again, bob);
    let calls: Vec<_> = [(73, bob.clone()), (74, bob_again.clone())]
        .into_iter()
        .map(|(id, token)| {
            tokio::spawn(async move {
                call_tool_notify(
                    port,
                    id,
                    "deploy_service",
                    deploy_args("api", "dev"),
                    true,
                    None,
                    Some(&token),
                )
                .await
            })
        })
        .collect();
    let req = op.wait_pending("Deploy-api-dev").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        op.requests(false).await.len(),
        1,
        "one request for one person"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "deny")
        .await;
    for c in calls {
        assert_eq!(finish(c).await.reason(), "approval_denied");
    }

    // The same person with the same call and no identity is the configured user's
    // approval: a different request, to alice.
    let again = spawn_call(
        gw.port,
        71,
        "deploy_service",
        deploy_args("api", "prod"),
        true,
    );
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_eq!(req["accountId"], "alice", "{req}");
    op.decide(req["auth_req_id"].as_str().unwrap(), "deny")
        .await;
    assert_eq!(finish(again).await.reason(), "approval_denied");
    assert_eq!(upstream.calls().len(), 1);
    gw.assert_no_leaks(
        &[bob.as_str(), "bob@example.com"],
        &ids_for(&op, "gate-poll").await,
    );
}

/// An identity that does not verify (altered signature, another client's audience is
/// covered by the same check, garbage) is refused with `identity_refused` before
/// anyone is asked: nothing reaches the OP or the tool server.
#[tokio::test]
async fn an_identity_that_does_not_verify_is_refused_and_no_one_is_asked() {
    let (op, upstream, gw, bob) = accepting_identities().await;
    let asked_before = op.requests(true).await.len();
    let (head, sig) = bob.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &sig[1..]);
    for (id, token) in [(80, forged.as_str()), (81, "not-a-token")] {
        let a = call_tool_notify(
            gw.port,
            id,
            "deploy_service",
            deploy_args("api", "prod"),
            true,
            None,
            Some(token),
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.result);
        assert_eq!(
            a.result["error"]["data"]["reason"], "identity_refused",
            "{}",
            a.result
        );
        assert_eq!(a.result["id"], id, "the refusal answers the message's id");
    }
    assert_eq!(
        op.requests(true).await.len(),
        asked_before,
        "no one was asked"
    );
    assert!(upstream.calls().is_empty());
    gw.assert_no_leaks(&[bob.as_str()], &ids_for(&op, "gate-poll").await);
}

// ---------------------------------------------------------------- approvals a tool server verifies

const TOOLS_AUDIENCE: &str = "https://tools.test/mcp";

/// A `tools/call` sent straight to the tool server, around the gateway.
async fn call_tool_server(port: u16, id: i64, args: Value, bearer: Option<&str>) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "deploy_service", "arguments": args}});
    let mut req = http()
        .post(format!("http://127.0.0.1:{port}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(b) = bearer {
        req = req.header("authorization", b);
    }
    req.body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `tests/interop/py/verify_approval.py`'s verdict on each call (JSON lines).
fn python_verdicts(issuer: &str, calls: &[String]) -> Vec<String> {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/py/verify_approval.py");
    let mut child = Command::new(python_sdk())
        .arg(script)
        .args([issuer, TOOLS_AUDIENCE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python verifier");
    let mut stdin = child.stdin.take().unwrap();
    for c in calls {
        writeln!(stdin, "{c}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn refusal(answer: &Value) -> String {
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The approved call carries the person's access token, a JWT oidc-provider issued for
/// the tool server's audience with the call's `authorization_details`; the tool server
/// (official TypeScript SDK, verifying with `jose`) runs it. The same token cannot run
/// the call again, cannot run a different call, and a call around the gateway without
/// one is refused: what the person did not approve cannot run there even with the
/// gateway bypassed. The crate's own `verify::Verifier` agrees with the TypeScript one.
#[tokio::test]
async fn a_tool_server_runs_only_the_call_a_person_approved() {
    let op = Op::start(None);
    let upstream = Upstream::start_verifying(&op.issuer, TOOLS_AUDIENCE);
    let gw = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            approval_audience: Some(TOOLS_AUDIENCE),
            ..GwOpts::poll()
        },
    );
    let prod = deploy_args("api", "prod");
    let call = spawn_call(gw.port, 90, "deploy_service", prod.clone(), true);
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_eq!(req["resource"], TOOLS_AUDIENCE, "{req}");
    let detail = &req["authorization_details"][0];
    assert_eq!(detail["type"], ciba_gate::verify::DETAIL_TYPE, "{req}");
    assert_eq!(
        detail["call_digest"],
        ciba_gate::verify::call_digest("deploy_service", &prod),
        "{req}"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let a = finish(call).await;
    assert_forwarded(&a, &upstream, "api", "prod");
    let bearer = upstream.calls()[0]["authorization"]
        .as_str()
        .expect("the approved call carried a token")
        .to_string();
    let e = gw.one_tool_evidence("deploy_service").await;
    assert_eq!(e["approval"]["token_forwarded"], true, "{e}");

    // Around the gateway: no token, the same token again, the token on another call.
    let bypass = call_tool_server(upstream.port, 91, prod.clone(), None).await;
    assert!(refusal(&bypass).contains("no approval token"), "{bypass}");
    let replay = call_tool_server(upstream.port, 92, prod.clone(), Some(&bearer)).await;
    assert!(refusal(&replay).contains("used before"), "{replay}");
    let dev = deploy_args("api", "dev");
    let other = call_tool_server(upstream.port, 93, dev.clone(), Some(&bearer)).await;
    assert!(refusal(&other).contains("different call"), "{other}");
    assert_eq!(upstream.calls().len(), 1, "only the approved call ran");

    // The Python recipe (PyJWT) reads the same token the same way (its own cache).
    let lines: Vec<String> = [
        (Some(bearer.as_str()), &prod),
        (Some(bearer.as_str()), &prod),
        (Some(bearer.as_str()), &dev),
        (None, &prod),
    ]
    .iter()
    .map(|(auth, args)| {
        json!({"authorization": auth, "tool": "deploy_service", "arguments": args}).to_string()
    })
    .collect();
    let verdicts = python_verdicts(&op.issuer, &lines);
    assert_eq!(
        verdicts,
        [
            "ok",
            "refused: the approval token was used before",
            "refused: the approval token approves a different call",
            "refused: no approval token",
        ],
    );

    // The Rust verifier reads the same token the same way (its own replay cache).
    let jwks: jsonwebtoken::jwk::JwkSet = http()
        .get(op.endpoint("jwks_uri").await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifier = ciba_gate::verify::Verifier::new(op.issuer.clone(), TOOLS_AUDIENCE, jwks);
    use ciba_gate::verify::VerifyError;
    assert_eq!(
        verifier.verify(Some(&bearer), "deploy_service", &dev),
        Err(VerifyError::OtherCall)
    );
    let ok = verifier
        .verify(Some(&bearer), "deploy_service", &prod)
        .expect("the approval verifies");
    assert_eq!(ok.subject, "alice");
    assert_eq!(
        verifier.verify(Some(&bearer), "deploy_service", &prod),
        Err(VerifyError::Replayed)
    );
    let token = bearer.trim_start_matches("Bearer ").to_string();
    gw.assert_no_leaks(&[token.as_str()], &ids_for(&op, "gate-poll").await);
}

/// With `approval_token.exchange`, the authentication request asks for no audience;
/// after the approval the gateway exchanges the person's access token at the OP
/// (RFC 8693) for one issued to the tool server, keeping the approved call's details,
/// and the verifying tool server runs the call with it.
#[tokio::test]
async fn an_approval_token_exchanged_for_the_tool_server_runs_the_call() {
    let op = Op::start(None);
    let upstream = Upstream::start_verifying(&op.issuer, TOOLS_AUDIENCE);
    let gw = Gateway::start(
        &op,
        &upstream,
        GwOpts {
            approval_audience: Some(TOOLS_AUDIENCE),
            approval_exchange: true,
            ..GwOpts::poll()
        },
    );
    let prod = deploy_args("api", "prod");
    let call = spawn_call(gw.port, 95, "deploy_service", prod.clone(), true);
    let req = op.wait_pending("Deploy-api-prod").await;
    assert_ne!(
        req["resource"], TOOLS_AUDIENCE,
        "the tool server's is not asked for: {req}"
    );
    op.decide(req["auth_req_id"].as_str().unwrap(), "approve")
        .await;
    let a = finish(call).await;
    assert_forwarded(&a, &upstream, "api", "prod");
    let exchanges: Vec<Value> = http()
        .get(format!("{}/exchanges", op.control))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(exchanges[0]["audience"], TOOLS_AUDIENCE);
    let bearer = upstream.calls()[0]["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    let replay = call_tool_server(upstream.port, 96, prod, Some(&bearer)).await;
    assert!(refusal(&replay).contains("used before"), "{replay}");
    let token = bearer.trim_start_matches("Bearer ").to_string();
    gw.assert_no_leaks(&[token.as_str()], &ids_for(&op, "gate-poll").await);
}
