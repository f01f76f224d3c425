//! Interop with the official MCP TypeScript SDK on both sides of the gateway:
//! an SDK `McpServer` (tests/interop/mcp-server.mjs) is the upstream tool server
//! and an SDK `Client` (tests/interop/mcp-client.mjs) is the agent. Everything
//! runs over real sockets with the real `ciba-gate` binary and the bundled
//! policies in `policies/`.
//!
//! Needs Node.js >= 18 and npm; `tests/interop/node_modules` is installed with
//! `npm ci` on first use.
//!
//! The approval tests put the gateway in front of the development OP
//! (`ciba-gate dev-op`), approve through its API, and drive the official SDK
//! clients through every way an agent calls a tool: the TypeScript SDK across
//! every revision it speaks (tests/interop/mcp-approval.mjs), and the Python SDK
//! (PyPI `mcp`, installed into target/mcp-py by tests/interop/py/install.sh),
//! which speaks 2026-07-28, as client and as tool server.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::dev_op::{Approver, Op, approvals_yaml, start_op};
use support::{ChildGuard, ensure_node_peers, free_port, python_sdk, wait_for_port};

const UPSTREAM_TOKEN: &str = "s3cr3t-upstream-token";
const TOKEN_ENV: &str = "TOOLS_API_TOKEN";
/// The agent's own credential: the gateway must not pass it through upstream.
const AGENT_TOKEN: &str = "agent-own-token";

/// An SDK server, the gateway in front of it, and the files they write.
struct Stack {
    dir: tempfile::TempDir,
    interop: PathBuf,
    server: ChildGuard,
    gateway: ChildGuard,
    gateway_port: u16,
    calls_log: PathBuf,
    http_log: PathBuf,
    evidence: PathBuf,
    config: PathBuf,
    client_output: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== diagnostics =====");
            eprintln!("----- gateway config -----\n{}", read(&self.config));
            eprintln!("{}", self.gateway.logs());
            eprintln!("{}", self.server.logs());
            eprintln!("----- upstream http log -----\n{}", read(&self.http_log));
            eprintln!("----- upstream calls log -----\n{}", read(&self.calls_log));
            eprintln!("----- evidence -----\n{}", read(&self.evidence));
            eprintln!("----- client output -----\n{}", self.client_output);
            eprintln!("(temp dir {})", self.dir.path().display());
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn json_lines(p: &Path) -> Vec<Value> {
    read(p)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{} has a line that is not JSON ({e}): {l}", p.display())
            })
        })
        .collect()
}

fn quoted(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("utf-8 path")).unwrap()
}

/// The tool server behind the gateway.
enum Upstream<'a> {
    /// tests/interop/mcp-server.mjs (TypeScript SDK): `json` or `sse`, stateful or not.
    Ts { mode: &'a str, stateful: bool },
    /// tests/interop/py/mcp_server.py (Python SDK, stateless, 2026-07-28 and older).
    Py,
}

impl Stack {
    fn start(mode: &str, stateful: bool) -> Stack {
        Stack::launch(Upstream::Ts { mode, stateful }, "")
    }

    /// The tool server, and the gateway in front of it with `extra` appended to its
    /// config (an `approvals:` section).
    fn launch(upstream: Upstream<'_>, extra: &str) -> Stack {
        let interop = ensure_node_peers();
        let dir = tempfile::tempdir().expect("temp dir");
        let calls_log = dir.path().join("upstream-calls.jsonl");
        let http_log = dir.path().join("upstream-http.jsonl");
        let evidence = dir.path().join("evidence.jsonl");
        let config = dir.path().join("ciba-gate.yaml");

        let (server, server_port) = match upstream {
            Upstream::Ts { mode, stateful } => {
                let mut cmd = Command::new("node");
                cmd.current_dir(&interop)
                    .arg("mcp-server.mjs")
                    .args(["--port", "0", "--mode", mode])
                    .arg("--calls-log")
                    .arg(&calls_log)
                    .arg("--http-log")
                    .arg(&http_log);
                if stateful {
                    cmd.arg("--stateful");
                }
                let mut server = ChildGuard::spawn("mcp-server", cmd, dir.path(), true);
                let ready = server.wait_for_stdout_line("READY ", Duration::from_secs(30));
                let port: u16 = ready["READY ".len()..]
                    .trim()
                    .parse()
                    .expect("port after READY");
                (server, port)
            }
            Upstream::Py => {
                let port = free_port();
                let mut cmd = Command::new(python_sdk());
                cmd.current_dir(interop.join("py"))
                    .arg("mcp_server.py")
                    .args(["--port", &port.to_string()])
                    .arg("--calls-log")
                    .arg(&calls_log)
                    .arg("--bodies-log")
                    .arg(&http_log);
                let mut server = ChildGuard::spawn("py-mcp-server", cmd, dir.path(), true);
                server.wait_for_stdout_line("READY ", Duration::from_secs(60));
                (server, port)
            }
        };

        let gateway_port = free_port();
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let yaml = format!(
            r#"listen: "127.0.0.1:{gateway_port}"
agent: {{id: billing-agent, namespace: agents}}
policy: {{dir: {policies}, reload_interval: 2s}}
limits: {{max_body_bytes: 1048576, max_json_depth: 64}}
evidence: {{sink: file, path: {evidence}}}
admin: {{listen: "127.0.0.1:0"}}
upstreams:
  - name: tools
    kind: mcp
    mount: /mcp
    url: "http://127.0.0.1:{server_port}/mcp"
    connect_timeout: 2s
    response_timeout: 30s
    credential: {{header: authorization, prefix: "Bearer ", env: {TOKEN_ENV}}}
{extra}"#,
            policies = quoted(&policies),
            evidence = quoted(&evidence),
        );
        std::fs::write(&config, yaml).expect("write gateway config");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env(TOKEN_ENV, UPSTREAM_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut gateway = ChildGuard::spawn("ciba-gate", cmd, dir.path(), false);
        wait_for_port(gateway_port, Duration::from_secs(30), Some(&mut gateway));

        Stack {
            dir,
            interop,
            server,
            gateway,
            gateway_port,
            calls_log,
            http_log,
            evidence,
            config,
            client_output: String::new(),
        }
    }

    /// Run the SDK client scenario against the gateway and return its report.
    fn run_client(&mut self, extra_args: &[&str]) -> Value {
        let mut args = vec!["--agent-token", AGENT_TOKEN];
        args.extend_from_slice(extra_args);
        let interop = self.interop.clone();
        self.run_peer(Path::new("node"), &interop, "mcp-client.mjs", &args)
    }

    /// Runs an SDK client `script` (in `cwd`, with `program`) against the gateway's
    /// MCP endpoint (`--url`) and returns the JSON object it prints last.
    fn run_peer(&mut self, program: &Path, cwd: &Path, script: &str, args: &[&str]) -> Value {
        let url = format!("http://127.0.0.1:{}/mcp", self.gateway_port);
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd)
            .arg(script)
            .args(["--url", &url])
            .args(args)
            // the agent side never holds the upstream credential
            .env_remove(TOKEN_ENV);
        let mut client = ChildGuard::spawn(script, cmd, self.dir.path(), false);
        let status = client.wait_timeout(Duration::from_secs(240));
        self.client_output = client.logs();
        let status = status.unwrap_or_else(|| panic!("SDK client did not finish within 240 s"));
        assert!(status.success(), "SDK client exited with {status}");
        let stdout = client.stdout_text();
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("SDK client printed nothing"));
        let out: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("SDK client output is not JSON ({e}): {line}"));
        assert!(
            !line.contains(UPSTREAM_TOKEN),
            "the upstream credential leaked to the agent: {line}"
        );
        out
    }

    /// Evidence is written off the request path; wait (briefly) until a
    /// tools/call line for each of `tools` is there.
    fn evidence_lines(&self, tools: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = json_lines(&self.evidence);
            let complete = tools.iter().all(|t| {
                lines
                    .iter()
                    .any(|l| l["mcp_method"] == "tools/call" && evidence_tool(l) == Some(*t))
            });
            if complete || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tool_names(out: &Value) -> Vec<String> {
    out["tools"]
        .as_array()
        .expect("tools array in client output")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn first_text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or("")
}

fn assert_connected(out: &Value) {
    assert!(
        out["errors"].get("connect").is_none(),
        "SDK client could not connect through the gateway: {}",
        out["errors"]
    );
    assert_eq!(
        out["serverInfo"]["name"], "interop-tools",
        "initialize answer (serverInfo) must come from the upstream server"
    );
    assert!(
        out["errors"].get("tools/list").is_none(),
        "tools/list failed: {}",
        out["errors"]
    );
}

fn assert_only_policy_visible_tools(out: &Value) {
    let tools = tool_names(out);
    for visible in ["list_deployments", "deploy_service"] {
        assert!(
            tools.iter().any(|t| t == visible),
            "{visible} missing from tools/list: {tools:?}"
        );
    }
    for hidden in ["delete_repository", "hidden_unknown_tool"] {
        assert!(
            !tools.iter().any(|t| t == hidden),
            "{hidden} must be filtered from tools/list: {tools:?}"
        );
    }
    assert_eq!(
        out["toolAnnotations"]["list_deployments"]["readOnlyHint"], true,
        "tool annotations must survive the gateway's tools/list filtering"
    );
}

fn assert_list_deployments_forwarded(out: &Value) {
    assert!(
        out["errors"].get("list_deployments").is_none(),
        "list_deployments failed: {}",
        out["errors"]
    );
    let res = &out["calls"]["list_deployments"];
    assert_ne!(
        res["isError"], true,
        "list_deployments came back as an error: {res}"
    );
    let text = first_text(res);
    assert!(
        text.starts_with("deployments:") && text.contains("payments prod v1.42.0"),
        "list_deployments must carry the upstream server's content, got: {res}"
    );
}

/// A blocked tools/call is a tool result (not a JSON-RPC error) the model can read.
fn assert_blocked(out: &Value, tool: &str, decision: &str, reason: Option<&str>) {
    assert!(
        out["errors"].get(tool).is_none(),
        "{tool}: expected a tool result with isError, got a protocol error: {}",
        out["errors"][tool]
    );
    let res = &out["calls"][tool];
    assert_eq!(
        res["isError"], true,
        "{tool}: expected isError: true, got {res}"
    );
    assert_eq!(
        res["_meta"]["ciba-gate/decision"], decision,
        "{tool}: decision in {res}"
    );
    if let Some(reason) = reason {
        assert_eq!(
            res["_meta"]["ciba-gate/reason"], reason,
            "{tool}: reason in {res}"
        );
    }
    assert!(
        !first_text(res).is_empty(),
        "{tool}: the model needs a sentence, got {res}"
    );
}

/// The upstream saw exactly the allowed call, with the gateway's credential.
fn assert_upstream_saw_only_allowed_calls(stack: &Stack) {
    let calls = json_lines(&stack.calls_log);
    let tools: Vec<&str> = calls
        .iter()
        .map(|c| c["tool"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        tools,
        ["list_deployments"],
        "tools/call requests that reached the upstream"
    );
    let expected_auth = format!("Bearer {UPSTREAM_TOKEN}");
    for c in &calls {
        assert_eq!(
            c["authorization"],
            expected_auth.as_str(),
            "credential injected by the gateway: {c}"
        );
    }
    // Every request the gateway forwarded carries the upstream credential, not
    // only tools/call.
    // The agent's own Authorization header is replaced, never passed through.
    assert!(
        !read(&stack.http_log).contains(AGENT_TOKEN),
        "the agent's credential reached the upstream (token passthrough)"
    );
    let http = json_lines(&stack.http_log);
    assert!(!http.is_empty(), "upstream received no HTTP request at all");
    for r in &http {
        assert_eq!(
            r["authorization"],
            expected_auth.as_str(),
            "forwarded request without the upstream credential: {r}"
        );
    }
}

fn evidence_tool(line: &Value) -> Option<&str> {
    match &line["tool"] {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("name").and_then(Value::as_str),
        _ => None,
    }
}

fn assert_evidence(stack: &Stack) {
    let lines = stack.evidence_lines(&[
        "list_deployments",
        "deploy_service",
        "delete_repository",
        "hidden_unknown_tool",
    ]);
    assert!(
        !lines.is_empty(),
        "no evidence written to {}",
        stack.evidence.display()
    );
    for l in &lines {
        assert!(
            l.get("decision").is_some(),
            "evidence line without decision: {l}"
        );
    }
    let raw = read(&stack.evidence);
    assert!(
        !raw.contains(UPSTREAM_TOKEN),
        "evidence contains the upstream credential"
    );

    let calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["mcp_method"] == "tools/call")
        .collect();
    let one = |tool: &str| -> &Value {
        let matching: Vec<&&Value> = calls
            .iter()
            .filter(|l| evidence_tool(l) == Some(tool))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one tools/call evidence line for {tool}, got {matching:?}"
        );
        matching[0]
    };
    let del = one("delete_repository");
    assert_eq!(del["decision"], "deny", "{del}");
    assert_eq!(del["reason"], "destructive_tool", "{del}");
    let dep = one("deploy_service");
    assert_eq!(dep["decision"], "approve", "{dep}");
    assert!(
        del["upstream_status"].is_null(),
        "a denied call has no upstream status: {del}"
    );
    let list = one("list_deployments");
    assert_eq!(list["decision"], "allow", "{list}");
    assert_eq!(list["upstream_status"], 200, "{list}");
    let hidden = one("hidden_unknown_tool");
    assert_eq!(hidden["decision"], "deny", "{hidden}");
}

fn check_policy_enforced_through_gateway(mode: &str) -> (Stack, Value) {
    let mut stack = Stack::start(mode, false);
    let out = stack.run_client(&[]);
    assert_connected(&out);
    assert_only_policy_visible_tools(&out);
    assert_list_deployments_forwarded(&out);
    assert_blocked(&out, "delete_repository", "deny", Some("destructive_tool"));
    assert_blocked(
        &out,
        "deploy_service",
        "approve",
        Some("approval_not_configured"),
    );
    assert_blocked(&out, "hidden_unknown_tool", "deny", None);
    assert_upstream_saw_only_allowed_calls(&stack);
    assert_evidence(&stack);
    (stack, out)
}

#[test]
fn sdk_client_through_gateway_sees_allowed_tools_only_json_mode() {
    check_policy_enforced_through_gateway("json");
}

#[test]
fn sdk_client_through_gateway_sees_allowed_tools_only_sse_mode() {
    let (_stack, out) = check_policy_enforced_through_gateway("sse");
    // The server sends one progress notification, then waits 500 ms before the
    // result: the client must get the notification as its own event, early.
    let progress = out["progress"].as_array().expect("progress array");
    assert_eq!(
        progress.len(),
        1,
        "progress notifications through the gateway: {progress:?}"
    );
    assert_eq!(progress[0]["message"], "reading deployments");
    let at = progress[0]["atMs"].as_f64().unwrap();
    let done = out["listDeploymentsDoneMs"].as_f64().unwrap();
    assert!(
        done - at >= 250.0,
        "progress arrived at {at} ms and the result at {done} ms: the SSE stream was buffered, not streamed"
    );
}

#[test]
fn sdk_client_session_and_event_stream_pass_through_gateway_and_delete_is_forwarded() {
    let mut stack = Stack::start("sse", true);
    let out = stack.run_client(&["--wait-list-changed", "--terminate"]);
    assert_connected(&out);
    assert_only_policy_visible_tools(&out);
    assert_list_deployments_forwarded(&out);
    assert_blocked(&out, "delete_repository", "deny", Some("destructive_tool"));
    assert_upstream_saw_only_allowed_calls(&stack);

    let session = out["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("client got no Mcp-Session-Id through the gateway: {out}"))
        .to_string();
    assert!(
        out["errors"].get("terminate").is_none(),
        "terminateSession failed: {}",
        out["errors"]
    );
    assert_eq!(out["terminated"], true);

    let http = json_lines(&stack.http_log);
    assert_eq!(
        http[0]["rpc"][0], "initialize",
        "first upstream request: {}",
        http[0]
    );
    assert!(
        http[0]["session"].is_null(),
        "initialize carries no session: {}",
        http[0]
    );
    for r in &http[1..] {
        assert_eq!(
            r["session"],
            session.as_str(),
            "session id must pass through unchanged: {r}"
        );
    }
    // A server-initiated notification on the standalone GET stream reaches the client.
    assert!(
        out["errors"].get("list_changed").is_none(),
        "GET stream: {}",
        out["errors"]
    );
    assert_eq!(
        out["notifications"],
        serde_json::json!(["notifications/tools/list_changed"])
    );

    let deletes: Vec<&Value> = http.iter().filter(|r| r["method"] == "DELETE").collect();
    assert_eq!(
        deletes.len(),
        1,
        "DELETE (session end) forwarded to the upstream: {http:?}"
    );
}

// --- approvals through the official SDKs ------------------------------------------------

/// A gateway with approvals in `mode`, in front of `upstream`, and the approver.
fn approval_stack(upstream: Upstream<'_>, mode: &str) -> (Stack, Op, Approver) {
    let op = start_op();
    let stack = Stack::launch(upstream, &approvals_yaml(&op, mode));
    let approver = Approver::start(&op);
    (stack, op, approver)
}

fn deploy_runs(stack: &Stack) -> usize {
    json_lines(&stack.calls_log)
        .iter()
        .filter(|c| c["tool"] == "deploy_service")
        .count()
}

/// Waits (briefly) for the evidence of `n` forwarded deploy_service calls and returns
/// the deploy_service records.
fn deploy_evidence(stack: &Stack, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = json_lines(&stack.evidence)
            .into_iter()
            .filter(|l| evidence_tool(l) == Some("deploy_service"))
            .collect();
        let forwarded = lines.iter().filter(|l| l["outcome"] == "forwarded").count();
        if forwarded >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The TypeScript SDK's matrix: every revision × default / onprogress / elicitation
/// handler; `parked`: whether each call first gets the readable pending result.
fn ts_matrix(mode: &str, parked: bool) {
    let (mut stack, _op, approver) = approval_stack(
        Upstream::Ts {
            mode: "sse",
            stateful: false,
        },
        mode,
    );
    let interop = stack.interop.clone();
    let out = stack.run_peer(Path::new("node"), &interop, "mcp-approval.mjs", &[]);
    let supported: Vec<&str> = out["supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        supported.len() >= 4,
        "revisions the SDK speaks: {supported:?}"
    );
    let runs = out["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), supported.len() * 3, "{out}");
    for run in runs {
        let label = format!("{} / {}", run["revision"], run["variant"]);
        assert!(run["error"].is_null(), "{label}: {}", run["error"]);
        assert_eq!(
            run["negotiated"], run["revision"],
            "{label}: negotiated revision"
        );
        let res = &run["result"];
        assert_ne!(res["isError"], true, "{label}: {res}");
        assert_eq!(
            first_text(res),
            "deployed payments to prod",
            "{label}: the tool's answer after approval: {res}"
        );
        if parked {
            let p = &run["pending"];
            assert_eq!(p["isError"], true, "{label}: pending result {p}");
            assert_eq!(
                p["_meta"]["ciba-gate/reason"], "approval_pending",
                "{label}"
            );
            assert!(
                first_text(p).contains("Deploy payments to prod")
                    && first_text(p).contains("again"),
                "{label}: the model must read what to do: {p}"
            );
            assert!(run["rounds"].as_u64().unwrap() >= 2, "{label}: {run}");
        } else {
            assert_eq!(run["rounds"], 1, "{label}: held, not parked: {run}");
            assert!(run["pending"].is_null(), "{label}: {run}");
        }
        // No input request reaches a client of a revision without input_required.
        assert_eq!(run["elicitations"], 0, "{label}");
        let progress = run["progress"].as_array().unwrap();
        if run["variant"] == "onprogress" && !parked {
            assert!(
                progress.iter().any(|p| p["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Deploy payments to prod"))),
                "{label}: progress carries the binding message: {progress:?}"
            );
        } else {
            assert!(
                progress.is_empty(),
                "{label}: progress without a token: {progress:?}"
            );
        }
    }
    // Each call ran the tool exactly once, after exactly one approval.
    assert_eq!(deploy_runs(&stack), runs.len(), "tool runs");
    assert_eq!(approver.approved(), runs.len(), "approvals given");
    let ev = deploy_evidence(&stack, runs.len());
    let forwarded: Vec<&Value> = ev.iter().filter(|l| l["outcome"] == "forwarded").collect();
    assert_eq!(forwarded.len(), runs.len(), "forwarded records: {ev:?}");
}

#[test]
fn ts_sdk_matrix_hold_every_revision_and_call_style_ends_with_the_tools_answer() {
    ts_matrix("hold", false);
}

#[test]
fn ts_sdk_matrix_park_gives_a_readable_pending_result_then_the_identical_retry_succeeds() {
    ts_matrix("park", true);
}

/// The Python SDK at 2026-07-28, as client and tool server.
fn py_runs(stack: &mut Stack, variants: &str) -> Vec<Value> {
    let py = python_sdk();
    let cwd = stack.interop.join("py");
    let out = stack.run_peer(&py, &cwd, "mcp_client.py", &["--variants", variants]);
    out["runs"].as_array().expect("runs").clone()
}

fn assert_py_run(run: &Value) {
    let v = &run["variant"];
    assert!(
        run["errors"].as_object().unwrap().is_empty(),
        "{v}: {}",
        run["errors"]
    );
    assert_eq!(run["protocolVersion"], "2026-07-28", "{v}");
    let tools: Vec<&str> = run["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["list_deployments", "deploy_service"],
        "{v}: filtered list"
    );
    let calls = &run["calls"];
    assert!(
        first_text(&calls["list_deployments"]).starts_with("deployments:"),
        "{v}"
    );
    let dep = &calls["deploy_service"];
    assert_eq!(first_text(dep), "deployed payments to prod", "{v}: {dep}");
    assert_eq!(dep["resultType"], "complete", "{v}");
    let del = &calls["delete_repository"];
    assert_eq!(del["isError"], true, "{v}: {del}");
    assert_eq!(del["resultType"], "complete", "{v}: {del}");
    assert_eq!(del["_meta"]["ciba-gate/reason"], "destructive_tool", "{v}");
}

#[test]
fn py_sdk_2026_07_28_held_calls_complete_with_default_options_progress_and_elicitation() {
    let (mut stack, _op, approver) = approval_stack(Upstream::Py, "hold");
    let runs = py_runs(&mut stack, "default,progress,elicit");
    for run in &runs {
        assert_py_run(run);
        let v = &run["variant"];
        assert_eq!(run["rounds"], 1, "{v}: held: {run}");
        // Held, never asked for input: the SDK without a handler cannot answer one.
        assert_eq!(run["elicitations"], serde_json::json!([]), "{v}");
        let progress = run["progress"].as_array().unwrap();
        if run["variant"] == "progress" {
            assert!(!progress.is_empty(), "{v}: progress");
        } else {
            assert!(progress.is_empty(), "{v}: {progress:?}");
        }
    }
    assert_eq!(deploy_runs(&stack), 3);
    assert_eq!(approver.approved(), 3);
}

#[test]
fn py_sdk_2026_07_28_park_retry_with_request_state_runs_the_tool_exactly_once() {
    let (mut stack, _op, approver) = approval_stack(Upstream::Py, "park");
    let runs = py_runs(&mut stack, "elicit,default,progress");
    let elicit = &runs[0];
    assert_py_run(elicit);
    // input_required went to the client that can answer it; its SDK answered the
    // form and retried with requestState and inputResponses.
    let asked = elicit["elicitations"].as_array().unwrap();
    assert!(
        !asked.is_empty(),
        "no input request reached the client: {elicit}"
    );
    assert!(
        asked[0]
            .as_str()
            .unwrap()
            .contains("Deploy payments to prod"),
        "{asked:?}"
    );
    assert_eq!(
        elicit["rounds"], 1,
        "the SDK's own retry loop finished it: {elicit}"
    );
    // Without an elicitation handler (default options, or with progress): a readable
    // pending result, then the identical retry.
    for plain in &runs[1..] {
        assert_py_run(plain);
        assert_eq!(plain["elicitations"], serde_json::json!([]));
        let p = &plain["pending"];
        assert_eq!(p["isError"], true, "{p}");
        assert_eq!(p["resultType"], "complete", "{p}");
        assert_eq!(p["_meta"]["ciba-gate/reason"], "approval_pending", "{p}");
        assert!(
            first_text(p).contains("Deploy payments to prod") && first_text(p).contains("again"),
            "{p}"
        );
        assert!(plain["rounds"].as_u64().unwrap() >= 2, "{plain}");
    }
    // The tool ran once per call, and the tool server never saw the gateway's state.
    assert_eq!(deploy_runs(&stack), 3, "tool runs");
    assert_eq!(approver.approved(), 3, "approvals given");
    let bodies = read(&stack.http_log);
    for (i, line) in json_lines(&stack.http_log).iter().enumerate() {
        let body = line["body"].as_str().unwrap();
        assert!(
            !body.contains("requestState") && !body.contains("ciba-gate/"),
            "request {i} reached the tool server with the gateway's own members: {body}"
        );
    }
    assert!(bodies.contains("deploy_service"), "{bodies}");
    let ev = deploy_evidence(&stack, 3);
    let forwarded: Vec<&Value> = ev.iter().filter(|l| l["outcome"] == "forwarded").collect();
    assert_eq!(forwarded.len(), 3, "{ev:?}");
    for f in forwarded {
        assert_eq!(f["upstream_status"], 200, "{f}");
    }
}

/// `ciba-gate dev` (demo tools, development OP, gateway) on free ports; the Python
/// SDK at 2026-07-28 validates every result: the demo's lists and answers, and the
/// gateway's own filtered list, blocked result and approval path.
#[test]
fn py_sdk_2026_07_28_validates_every_result_of_ciba_gate_dev() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, op_port, cb) = (free_port(), free_port(), free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("dev")
        .args(["--listen", &addr(gw)])
        .args(["--op-listen", &addr(op_port)])
        .args(["--callback-listen", &addr(cb)])
        .args(["--admin-listen", "127.0.0.1:0"]);
    let mut dev = ChildGuard::spawn("ciba-gate-dev", cmd, dir.path(), true);
    wait_for_port(gw, Duration::from_secs(30), Some(&mut dev));
    let op = Op {
        _child: dev,
        issuer: format!("http://127.0.0.1:{op_port}"),
        dir,
    };
    let approver = Approver::start(&op);
    let py = python_sdk();
    let cwd = ensure_node_peers().join("py");
    let mut client = Command::new(&py);
    client
        .current_dir(&cwd)
        .arg("mcp_client.py")
        .args(["--url", &format!("http://127.0.0.1:{gw}/mcp")])
        // As a newcomer runs it: the SDK finds the revision itself (server/discover).
        .args(["--mode", "auto", "--variants", "default,elicit"]);
    let mut client = ChildGuard::spawn("py-client", client, op.dir.path(), false);
    let status = client
        .wait_timeout(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("client did not finish\n{}", client.logs()));
    assert!(status.success(), "{}", client.logs());
    let line = client.stdout_text();
    let out: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("client output ({e}): {line}\n{}", client.logs()));
    for run in out["runs"].as_array().unwrap() {
        let v = &run["variant"];
        assert!(
            run["errors"].as_object().unwrap().is_empty(),
            "{v}: {}",
            run["errors"]
        );
        assert_eq!(run["protocolVersion"], "2026-07-28");
        assert_eq!(
            run["tools"],
            serde_json::json!(["list_deployments", "deploy_service"])
        );
        let calls = &run["calls"];
        assert!(first_text(&calls["list_deployments"]).contains("payments prod"));
        assert_eq!(
            first_text(&calls["deploy_service"]),
            "Deployed payments to prod.",
            "{v}"
        );
        assert_eq!(calls["delete_repository"]["isError"], true);
        assert_eq!(
            calls["delete_repository"]["_meta"]["ciba-gate/reason"],
            "destructive_tool"
        );
        assert_eq!(run["rounds"], 1, "{v}: held");
    }
    assert_eq!(approver.approved(), 2);
}
