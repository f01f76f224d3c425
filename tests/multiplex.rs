//! Several MCP servers behind one endpoint: the gateway as a virtual MCP server in
//! front of official TypeScript SDK servers (one with sessions and SSE answers, one
//! stateless with JSON answers; in one test a first over HTTPS and a third the gateway
//! starts itself and speaks to over stdio), an official SDK client as the agent. One merged,
//! policy-filtered catalogue; each call reaches the server that owns the tool under
//! the server's own name; sessions are the gateway's, one per server behind it; a
//! server that restarts loses nothing the agent sees; a server that is down costs
//! only its own tools.

#![allow(clippy::disallowed_methods)] // waits on real processes in real time

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::dev_op::{Approver, approvals_yaml, start_op};
use support::{ChildGuard, ensure_node_peers, free_port, python_sdk, wait_for_port};

const POLICY: &str = r#"package ciba_gate

import rego.v1

allow if input.mcp.method in {"initialize", "server/discover", "subscriptions/listen", "notifications/initialized", "notifications/cancelled", "ping", "tools/list", "prompts/list", "prompts/get", "resources/list", "resources/read", "resources/subscribe", "resources/unsubscribe", "resources/templates/list", "completion/complete"}

# DELETE (the end of a session) has no method.
allow if input.mcp.method == null

# The servers' own names decide, whatever name the agent sees.
allow if {
	input.mcp.method == "tools/call"
	input.tool.upstream_name in {"list_deployments", "deploy_service"}
}

# Deploying through the second (or the stdio) server needs a person's approval.
approval := {"binding_message": "Deploy now"} if {
	input.upstream.name in {"west", "notes"}
	input.tool.upstream_name == "deploy_service"
	input.op
}

deny contains {"code": "no_deletes", "message": "repositories are not deleted from here"} if {
	input.tool.upstream_name == "delete_repository"
}
"#;

fn json_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// tests/interop/mcp-server.mjs on a fixed port (so it can be restarted there).
struct SdkServer {
    guard: Option<ChildGuard>,
    port: u16,
    args: Vec<String>,
    calls: PathBuf,
    http: PathBuf,
    dir: PathBuf,
}

impl SdkServer {
    fn start(dir: &Path, name: &str, args: &[&str]) -> SdkServer {
        let mut s = SdkServer {
            guard: None,
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            calls: dir.join(format!("{name}-calls.jsonl")),
            http: dir.join(format!("{name}-http.jsonl")),
            dir: dir.to_path_buf(),
        };
        s.launch();
        s
    }

    /// `args` `["py"]`: tests/interop/py/mcp_server.py (Python SDK, stateless,
    /// 2026-07-28 and older) instead.
    fn launch(&mut self) {
        let peers = ensure_node_peers();
        let mut cmd = if self.args.first().is_some_and(|a| a == "py") {
            let mut cmd = Command::new(python_sdk());
            cmd.current_dir(peers.join("py"))
                .arg("mcp_server.py")
                .arg("--bodies-log")
                .arg(&self.http);
            cmd
        } else {
            let mut cmd = Command::new("node");
            cmd.current_dir(peers)
                .arg("mcp-server.mjs")
                .args(&self.args)
                .arg("--http-log")
                .arg(&self.http);
            cmd
        };
        cmd.args(["--port", &self.port.to_string()])
            .arg("--calls-log")
            .arg(&self.calls);
        let mut g = ChildGuard::spawn("mcp-server", cmd, &self.dir, true);
        g.wait_for_stdout_line("READY ", Duration::from_secs(60));
        self.guard = Some(g);
    }

    fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    fn tools_called(&self) -> Vec<String> {
        json_lines(&self.calls)
            .iter()
            .map(|c| c["tool"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

struct Stack {
    dir: tempfile::TempDir,
    east: SdkServer,
    west: SdkServer,
    /// The stdio server's calls log and pid file, when there is one.
    notes: Option<(PathBuf, PathBuf)>,
    gateway: ChildGuard,
    port: u16,
    evidence: PathBuf,
}

/// What runs behind the virtual server: `east` and `west` (`SdkServer::launch` args)
/// with their naming rules, and optionally east over HTTPS and a third server.
struct Layout<'a> {
    east_args: &'a [&'a str],
    west_args: &'a [&'a str],
    east_naming: &'a str,
    west_naming: &'a str,
    /// A policy directory (else `POLICY`).
    policies: Option<PathBuf>,
    /// East serves HTTPS with a certificate from a private CA the gateway is given.
    east_https: bool,
    /// A third server, `notes`, that the gateway starts and speaks to over stdio.
    notes_naming: Option<&'a str>,
}

impl Default for Layout<'_> {
    fn default() -> Self {
        Layout {
            east_args: &["--mode", "sse", "--stateful"],
            west_args: &["--mode", "json"],
            east_naming: "tool_prefix: east_",
            west_naming: "tool_prefix: west_, aliases: {ship: deploy_service}",
            policies: None,
            east_https: false,
            notes_naming: None,
        }
    }
}

impl Stack {
    fn start() -> Stack {
        Stack::start_with(|_| String::new())
    }

    /// `extra`: more of the gateway's config (an `approvals:` section), given the
    /// test's directory.
    fn start_with(extra: impl FnOnce(&Path) -> String) -> Stack {
        Stack::launch(Layout::default(), extra)
    }

    fn launch(layout: Layout<'_>, extra: impl FnOnce(&Path) -> String) -> Stack {
        let Layout {
            east_args,
            west_args,
            east_naming,
            west_naming,
            policies,
            east_https,
            notes_naming,
        } = layout;
        let dir = tempfile::tempdir().unwrap();
        let extra = extra(dir.path());
        let mut east_args = east_args.to_vec();
        let (east_scheme, east_tls) = if east_https {
            let ca = support::ca::Ca::new("private tool CA");
            let (cert, key) = ca.issue(&["localhost"], false);
            std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
            std::fs::write(dir.path().join("east.crt"), cert).unwrap();
            std::fs::write(dir.path().join("east.key"), key).unwrap();
            ("https://localhost", "\n    tls: {ca_file: ca.pem}")
        } else {
            ("http://127.0.0.1", "")
        };
        let tls_files = [dir.path().join("east.crt"), dir.path().join("east.key")];
        let tls_args = [
            "--tls-cert",
            tls_files[0].to_str().unwrap(),
            "--tls-key",
            tls_files[1].to_str().unwrap(),
        ];
        if east_https {
            east_args.extend(tls_args);
        }
        fn with_instance<'a>(args: &[&'a str], name: &'a str) -> Vec<&'a str> {
            let mut a = args.to_vec();
            if a.first() != Some(&"py") {
                a.extend(["--instance", name]);
            }
            a
        }
        let east = SdkServer::start(dir.path(), "east", &with_instance(&east_args, "east"));
        let west = SdkServer::start(dir.path(), "west", &with_instance(west_args, "west"));
        let policies = policies.unwrap_or_else(|| {
            let p = dir.path().join("policies");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("policy.rego"), POLICY).unwrap();
            p
        });
        let evidence = dir.path().join("evidence.jsonl");
        let port = free_port();
        let notes = notes_naming.map(|_| {
            (
                dir.path().join("notes-calls.jsonl"),
                dir.path().join("notes.pid"),
            )
        });
        let (notes_member, notes_upstream) = match (&notes, notes_naming) {
            (Some((calls, pid)), Some(naming)) => {
                let script = ensure_node_peers().join("mcp-server.mjs");
                (
                    format!("\n      - {{upstream: notes, {naming}}}"),
                    format!(
                        "\n  - name: notes\n    kind: mcp\n    command: [node, {script:?}, --stdio, --instance, notes, --calls-log, {calls:?}, --pid-file, {pid:?}]"
                    ),
                )
            }
            _ => (String::new(), String::new()),
        };
        let config = dir.path().join("gate.yaml");
        std::fs::write(
            &config,
            format!(
                r#"listen: "127.0.0.1:{port}"
admin: {{listen: "127.0.0.1:0"}}
agent: {{id: ops-agent}}
policy: {{dir: {policies:?}, reload_interval: 0s}}
evidence: {{sink: file, path: {evidence:?}}}
upstreams:
  - name: tools
    kind: mcp
    mount: /mcp
    servers:
      - {{upstream: east, {east_naming}}}
      - {{upstream: west, {west_naming}}}{notes_member}
  - name: east
    kind: mcp
    url: "{east_scheme}:{east}/mcp"{east_tls}
  - name: west
    kind: mcp
    url: "http://127.0.0.1:{west}/mcp"{notes_upstream}
{extra}
"#,
                east = east.port,
                west = west.port,
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
        cmd.arg("serve").arg("--config").arg(&config);
        let mut gateway = ChildGuard::spawn("ciba-gate", cmd, dir.path(), false);
        wait_for_port(port, Duration::from_secs(30), Some(&mut gateway));
        Stack {
            dir,
            east,
            west,
            notes,
            gateway,
            port,
            evidence,
        }
    }

    /// Runs tests/interop/mcp-multi-client.mjs; returns its report.
    fn client(&self, calls: Value, extra: &[&str]) -> Value {
        let mut cmd = Command::new("node");
        cmd.current_dir(ensure_node_peers())
            .arg("mcp-multi-client.mjs")
            .args(["--url", &format!("http://127.0.0.1:{}/mcp", self.port)])
            .args(["--calls", &calls.to_string()])
            .args(extra);
        // Each run its own log files: two clients may run at once.
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mcp-multi-client-{run}");
        let mut c = ChildGuard::spawn(&name, cmd, self.dir.path(), false);
        let status = c
            .wait_timeout(Duration::from_secs(60))
            .expect("the SDK client finished");
        assert!(status.success(), "client failed: {}", c.logs());
        let out = c.stdout_text();
        let line = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the client printed no report ({e}): {}", c.logs()));
        assert!(
            v.get("error").is_none(),
            "client error: {v:#}\n{}",
            self.gateway.logs()
        );
        v
    }

    fn evidence_for(&self, tool: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = json_lines(&self.evidence)
                .into_iter()
                .find(|r| r["tool"] == tool)
            {
                return r;
            }
            assert!(Instant::now() < deadline, "no evidence for {tool}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends `sig` (`-KILL`, `-TERM`, `-0`) to a process; false when it is gone.
fn signal(sig: &str, pid: &str) -> bool {
    Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success()
}

/// The strings of a JSON array, sorted.
fn sorted_names(list: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    names.sort();
    names
}

fn text(call: &Value) -> &str {
    call["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn one_endpoint_lists_the_tools_of_both_servers_and_routes_each_call_to_its_owner() {
    let stack = Stack::start();
    let out = stack.client(
        json!([
            {"name": "east_list_deployments"},
            {"name": "ship", "arguments": {"service": "payments", "env": "staging"}},
            {"name": "west_delete_repository", "arguments": {"repo": "payments"}},
            {"name": "west_deploy_service", "arguments": {"service": "payments", "env": "prod"}},
            {"name": "nowhere_tool"},
            {"name": "east_deploy_checklist", "prompt": true, "arguments": {"service": "payments"}},
            {"name": "deploy://west/deployments", "resource": true},
            // A URI no list has, from the east server's resource template.
            {"name": "deploy://east/deployments/billing", "resource": true},
            {"name": "completion", "complete": true,
             "ref": {"type": "ref/resource", "uri": "deploy://west/deployments/{service}"},
             "argument": {"name": "service", "value": "pay"}},
        ]),
        &["--terminate", "--await-list-changed", "1"],
    );
    // Resource templates are merged by URI template; a URI one of them expands to is
    // read from that server, and a completion goes to the template's server.
    assert_eq!(
        sorted_names(&out["templates"]),
        [
            "deploy://east/deployments/{service}",
            "deploy://west/deployments/{service}"
        ],
        "{out:#}"
    );
    assert_eq!(
        out["calls"][7]["result"]["contents"][0]["text"], "deployment of billing on east",
        "{out:#}"
    );
    assert_eq!(
        out["calls"][8]["result"]["completion"]["values"],
        json!(["payments"]),
        "{out:#}"
    );
    // The stateful server's list change (sent on its session's event stream) reached
    // the agent's event stream.
    assert_eq!(out["listChanged"], 1, "{out:#}");
    // Prompts are merged and named by the same rules, and reach their own server.
    let prompts = sorted_names(&out["prompts"]);
    assert_eq!(
        prompts,
        ["east_deploy_checklist", "west_deploy_checklist"],
        "{out:#}"
    );
    assert_eq!(
        out["calls"][5]["result"]["messages"][0]["content"]["text"], "checklist for payments",
        "{out:#}"
    );
    // Resources are merged by URI (never renamed) and read from the server that has it.
    let resources = sorted_names(&out["resources"]);
    assert_eq!(
        resources,
        ["deploy://east/deployments", "deploy://west/deployments"],
        "{out:#}"
    );
    assert_eq!(
        out["calls"][6]["result"]["contents"][0]["text"], "deployments of west",
        "{out:#}"
    );
    // One catalogue: prefixed, aliased, filtered by policy on the servers' own names.
    let tools = sorted_names(&out["tools"]);
    assert_eq!(
        tools,
        [
            "east_deploy_service",
            "east_list_deployments",
            "ship",
            "west_list_deployments"
        ],
        "{out:#}"
    );
    assert_eq!(out["serverInfo"]["name"], "tools");
    let calls = out["calls"].as_array().unwrap();
    assert!(text(&calls[0]).contains("deployments:"), "{out:#}");
    assert_eq!(text(&calls[1]), "deployed payments to staging", "{out:#}");
    // Policy blocks by the server's own name; the model reads why.
    assert_eq!(calls[2]["result"]["isError"], true, "{out:#}");
    assert_eq!(
        calls[2]["result"]["_meta"]["ciba-gate/reason"],
        "no_deletes"
    );
    // An aliased tool is reached by its alias only; an unknown name is a typed error.
    assert_eq!(calls[3]["error"]["code"], -32602, "{out:#}");
    assert_eq!(calls[4]["error"]["code"], -32602, "{out:#}");
    assert_eq!(out["terminated"], true);

    // Each server ran only its own tool, under its own name.
    assert_eq!(stack.east.tools_called(), ["list_deployments"]);
    assert_eq!(stack.west.tools_called(), ["deploy_service"]);

    // Evidence names the server and both names of the tool.
    let shipped = stack.evidence_for("ship");
    assert_eq!(shipped["upstream"], "west");
    assert_eq!(shipped["upstream_tool"], "deploy_service");
    assert_eq!(shipped["outcome"], "forwarded");
    let unknown = stack.evidence_for("nowhere_tool");
    assert_eq!(unknown["reason"], "unknown_tool");

    // The agent's session is the gateway's; the stateful server had its own, which the
    // agent's DELETE ended.
    let agent_session = out["sessionId"].as_str().expect("a session id");
    let east_http = json_lines(&stack.east.http);
    let east_sessions: Vec<&str> = east_http
        .iter()
        .filter_map(|r| r["session"].as_str())
        .collect();
    assert!(!east_sessions.is_empty(), "{east_http:#?}");
    assert!(east_sessions.iter().all(|s| *s != agent_session));
    assert!(
        east_http.iter().any(|r| r["method"] == "DELETE"),
        "the server's session was not closed: {east_http:#?}"
    );
    // The stateless server never saw a session.
    assert!(
        json_lines(&stack.west.http)
            .iter()
            .all(|r| r["session"].is_null())
    );
}

#[test]
fn a_person_approves_a_call_to_the_second_server_and_it_runs_there_once() {
    let op = start_op();
    let stack = Stack::start_with(|_| approvals_yaml(&op, "hold"));
    let approver = Approver::start(&op);
    let out = stack.client(
        json!([{"name": "ship", "arguments": {"service": "payments", "env": "prod"}}]),
        &[],
    );
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(text(&calls[0]), "deployed payments to prod", "{out:#}");
    assert_eq!(approver.approved(), 1);
    assert_eq!(stack.west.tools_called(), ["deploy_service"]);
    assert!(stack.east.tools_called().is_empty());
    let record = stack.evidence_for("ship");
    assert_eq!(record["upstream"], "west");
    assert_eq!(record["upstream_tool"], "deploy_service");
    assert_eq!(record["reason"], "approved", "{record:#}");
    assert_eq!(
        record["approval"]["user_decision"], "approved",
        "{record:#}"
    );
    assert_eq!(record["approval"]["binding_message"], "Deploy now");
    assert_eq!(record["outcome"], "forwarded", "{record:#}");
}

/// A 2025-03-26 batch whose members belong to three servers (one answering with an
/// event stream, one with JSON, one over stdio): each member is decided and routed on
/// its own and the answers come back as one array. A member that needs a person is
/// refused (a batch answers at once) and never reaches its server; so is a member
/// that is an `initialize` or not a request at all.
#[test]
fn a_batch_is_answered_member_by_member_by_the_servers_that_own_them() {
    let op = start_op();
    let stack = Stack::launch(
        Layout {
            notes_naming: Some("tool_prefix: notes_"),
            ..Layout::default()
        },
        |_| approvals_yaml(&op, "hold"),
    );
    let url = format!("http://127.0.0.1:{}/mcp", stack.port);
    let http = reqwest::blocking::Client::new();
    let post = |body: Value, session: Option<&str>| {
        let mut req = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send().unwrap()
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "batch-agent", "version": "1"}}}),
        None,
    );
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        init.json::<Value>().unwrap()["result"]["protocolVersion"],
        "2025-03-26"
    );
    let initialized = post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(&session),
    );
    assert_eq!(initialized.status(), 202);
    let call = |id: u64, name: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}})
    };
    let resp = post(
        json!([
            call(1, "east_list_deployments", json!({})),
            call(2, "ship", json!({"service": "payments", "env": "prod"})),
            {"jsonrpc": "2.0", "id": 3, "method": "prompts/get",
             "params": {"name": "notes_deploy_checklist", "arguments": {"service": "search"}}},
            {"jsonrpc": "2.0", "method": "notifications/progress",
             "params": {"progressToken": "t", "progress": 1}},
            call(4, "west_delete_repository", json!({"repo": "payments"})),
            {"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {}},
            {"jsonrpc": "2.0", "id": 6},
        ]),
        Some(&session),
    );
    assert_eq!(resp.status(), 200);
    let answers: Value = resp.json().unwrap();
    let answers = answers.as_array().unwrap();
    let by_id = |id: u64| -> &Value {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {answers:#?}"))
    };
    assert_eq!(answers.len(), 6, "{answers:#?}");
    assert!(text(by_id(1)).contains("deployments:"), "{answers:#?}");
    assert_eq!(
        by_id(2)["result"]["_meta"]["ciba-gate/reason"],
        "approval_unsupported",
        "{answers:#?}"
    );
    assert_eq!(
        by_id(3)["result"]["messages"][0]["content"]["text"],
        "checklist for search"
    );
    assert_eq!(
        by_id(4)["result"]["_meta"]["ciba-gate/reason"],
        "no_deletes"
    );
    for id in [5, 6] {
        assert_eq!(by_id(id)["error"]["code"], -32600, "{answers:#?}");
    }
    assert_eq!(stack.east.tools_called(), ["list_deployments"]);
    assert!(stack.west.tools_called().is_empty(), "a refused member ran");
    assert_eq!(stack.evidence_for("ship")["reason"], "approval_unsupported");
}

/// In 2026-07-28 an agent cancels a call over Streamable HTTP by closing its response
/// stream (no `notifications/cancelled` is sent); a stdio server, which has no stream
/// to close, is told with `notifications/cancelled` under the gateway's id, and the
/// evidence says the call was cancelled.
#[test]
fn a_2026_07_28_agent_that_closes_its_stream_cancels_the_call_at_the_stdio_server() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.jsonl");
    // A stdio server whose one tool never answers; it logs every message it reads.
    let server = dir.path().join("slow.py");
    std::fs::write(
        &server,
        r#"import json, sys
log = open(sys.argv[1], "a")
for line in sys.stdin:
    m = json.loads(line)
    log.write(line); log.flush()
    if m.get("method") == "initialize":
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "slow", "version": "1"}}}), flush=True)
    elif m.get("method") == "tools/list":
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"tools": [{"name": "wait_forever", "inputSchema": {"type": "object"}}]}}), flush=True)
"#,
    )
    .unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("policy.rego"),
        "package ciba_gate\nimport rego.v1\nallow if true\n",
    )
    .unwrap();
    let port = free_port();
    let evidence = dir.path().join("evidence.jsonl");
    let config = dir.path().join("gate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nadmin: {{listen: \"127.0.0.1:0\"}}\nagent: {{id: a}}\n\
             policy: {{dir: {policies:?}, reload_interval: 0s}}\n\
             evidence: {{sink: file, path: {evidence:?}}}\nupstreams:\n\
             \x20 - {{name: tools, kind: mcp, mount: /mcp, servers: [{{upstream: slow}}]}}\n\
             \x20 - {{name: slow, kind: mcp, command: [python3, {server:?}, {seen:?}]}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
    cmd.arg("serve").arg("--config").arg(&config);
    let mut gateway = ChildGuard::spawn("ciba-gate", cmd, dir.path(), false);
    wait_for_port(port, Duration::from_secs(30), Some(&mut gateway));

    let abandoned = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/mcp"))
        .timeout(Duration::from_secs(2))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "wait_forever")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "wait_forever", "arguments": {}}}))
        .send();
    assert!(abandoned.is_err(), "the call was answered: {abandoned:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let (own, cancelled) = loop {
        let lines = json_lines(&seen);
        let own = lines
            .iter()
            .find(|m| m["method"] == "tools/call")
            .map(|m| m["id"].clone());
        let cancelled = lines
            .iter()
            .find(|m| m["method"] == "notifications/cancelled")
            .cloned();
        if let (Some(own), Some(cancelled)) = (own, cancelled) {
            break (own, cancelled);
        }
        assert!(Instant::now() < deadline, "{lines:#?}\n{}", gateway.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cancelled["params"]["requestId"], own);
    assert_ne!(own, 7, "the server saw the agent's id");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = json_lines(&evidence)
            .into_iter()
            .find(|r| r["tool"] == "wait_forever")
        {
            assert_eq!(r["outcome"], "cancelled", "{r:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no evidence for the call");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three servers behind one URL: one over HTTPS (a private CA), one over plain HTTP,
/// and one the gateway starts itself and speaks to over stdio. The agent sees one
/// catalogue, calls a tool of each, a person approves the stdio server's deploy; the
/// stdio server is killed mid-session and the next call starts it again; when the
/// gateway stops, so does the process it started.
#[test]
fn three_servers_one_over_https_and_one_over_stdio_serve_one_catalogue() {
    let op = start_op();
    let stack = Stack::launch(
        Layout {
            east_https: true,
            notes_naming: Some("tool_prefix: notes_"),
            ..Layout::default()
        },
        |_| approvals_yaml(&op, "hold"),
    );
    let approver = Approver::start(&op);
    let (notes_calls, notes_pid) = stack.notes.clone().unwrap();
    let out = stack.client(
        json!([
            {"name": "east_list_deployments"},
            {"name": "west_list_deployments"},
            {"name": "notes_list_deployments"},
            {"name": "notes_deploy_service", "arguments": {"service": "payments", "env": "prod"}},
            {"name": "notes_deploy_checklist", "prompt": true, "arguments": {"service": "search"}},
            {"name": "deploy://notes/deployments", "resource": true},
            {"name": "notes_delete_repository", "arguments": {"repo": "payments"}},
        ]),
        &["--await-list-changed", "2"],
    );
    // Both servers that say their list changed (the HTTPS one on its session's event
    // stream, the stdio one on stdout) are heard on the agent's event stream.
    assert_eq!(out["listChanged"], 2, "{out:#}");
    let tools = sorted_names(&out["tools"]);
    for name in [
        "east_list_deployments",
        "west_list_deployments",
        "notes_list_deployments",
        "notes_deploy_service",
    ] {
        assert!(tools.contains(&name), "{name} missing: {out:#}");
    }
    assert!(
        !tools.iter().any(|t| t.contains("delete_repository")),
        "{out:#}"
    );
    let calls = out["calls"].as_array().unwrap();
    for c in &calls[..3] {
        assert!(text(c).contains("deployments:"), "{out:#}");
    }
    assert_eq!(text(&calls[3]), "deployed payments to prod", "{out:#}");
    assert_eq!(
        calls[4]["result"]["messages"][0]["content"]["text"], "checklist for search",
        "{out:#}"
    );
    assert_eq!(
        calls[5]["result"]["contents"][0]["text"], "deployments of notes",
        "{out:#}"
    );
    assert_eq!(
        calls[6]["result"]["_meta"]["ciba-gate/reason"], "no_deletes",
        "{out:#}"
    );
    assert_eq!(approver.approved(), 1);
    assert_eq!(stack.east.tools_called(), ["list_deployments"]);
    assert_eq!(stack.west.tools_called(), ["list_deployments"]);
    let notes_tools = || -> Vec<String> {
        json_lines(&notes_calls)
            .iter()
            .map(|c| c["tool"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(notes_tools(), ["list_deployments", "deploy_service"]);
    let record = stack.evidence_for("notes_deploy_service");
    assert_eq!(record["upstream"], "notes", "{record:#}");
    assert_eq!(record["upstream_tool"], "deploy_service");
    assert_eq!(record["reason"], "approved", "{record:#}");
    assert_eq!(record["outcome"], "forwarded", "{record:#}");

    // Killed mid-session: the gateway sees it go, and the next call starts it again.
    let pid = std::fs::read_to_string(&notes_pid).unwrap();
    assert!(signal("-KILL", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.gateway.logs().contains("stdio server stopped") {
        assert!(Instant::now() < deadline, "{}", stack.gateway.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = stack.client(
        json!([{"name": "notes_list_deployments"}, {"name": "east_list_deployments"}]),
        &[],
    );
    let calls = out["calls"].as_array().unwrap();
    assert!(
        text(&calls[0]).contains("deployments:"),
        "{out:#}\n{}",
        stack.gateway.logs()
    );
    assert!(text(&calls[1]).contains("deployments:"), "{out:#}");
    assert_eq!(notes_tools().len(), 3);
    let restarted = std::fs::read_to_string(&notes_pid).unwrap();
    assert_ne!(restarted.trim(), pid.trim());

    // SIGTERM: the gateway closes the stdio server's stdin and it exits.
    let mut stack = stack;
    let gateway_pid = stack.gateway.id().to_string();
    assert!(signal("-TERM", &gateway_pid));
    stack
        .gateway
        .wait_timeout(Duration::from_secs(40))
        .expect("the gateway stopped");
    let alive = || signal("-0", restarted.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() {
        assert!(
            Instant::now() < deadline,
            "the stdio server outlived the gateway"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = stack.gateway.logs();
    assert!(logs.contains("stopping stdio server"), "{logs}");
    assert!(
        logs.contains(r#""stderr":"READY stdio""#) || logs.contains("READY stdio"),
        "{logs}"
    );
}

/// Resource subscriptions over one endpoint: each goes to the server that owns the
/// URI (an HTTP server with sessions, a stdio server, a URI only a template of the
/// stdio server matches), and its updates come back on the agent's event stream. The
/// stdio server's one process serves both agents, so the gateway sorts its updates
/// out: each agent hears only of what it subscribed to, and one agent's unsubscribe
/// does not reach the server while the other still follows the resource; the last
/// session that follows it ending does. Progress a stdio server reports reaches the
/// agent that asked for it.
#[test]
fn each_agent_hears_of_updates_to_the_resources_it_subscribed_to_and_to_no_others() {
    let stack = Stack::launch(
        Layout {
            notes_naming: Some("tool_prefix: notes_"),
            ..Layout::default()
        },
        |_| String::new(),
    );
    let (notes_calls, _) = stack.notes.clone().unwrap();
    let billing = "deploy://notes/deployments/billing";
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| {
            // It waits out its 5 s (a third update never comes), then ends its session.
            stack.client(
                json!([{"name": billing, "subscribe": true}]),
                &["--await-updated", "3", "--terminate"],
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let second = stack.client(
            json!([
                {"name": "deploy://east/deployments", "subscribe": true},
                {"name": "deploy://notes/deployments", "subscribe": true},
                {"name": billing, "subscribe": true},
                {"name": billing, "unsubscribe": true},
                {"name": "notes_list_deployments", "progress": true},
            ]),
            &["--await-updated", "2"],
        );
        (first.join().unwrap(), second)
    });
    for c in first["calls"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["calls"].as_array().unwrap())
    {
        assert!(c.get("error").is_none(), "{first:#}\n{second:#}");
    }
    // The first agent hears of billing twice (its own subscription's update, then the
    // second agent's), never of what only the second agent follows.
    assert_eq!(
        first["updated"],
        json!([billing, billing]),
        "{first:#}\n{second:#}"
    );
    let heard: Vec<&str> = second["updated"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for uri in ["deploy://east/deployments", "deploy://notes/deployments"] {
        assert!(heard.contains(&uri), "{uri} not heard: {second:#}");
    }
    // The stdio server's progress reaches the agent that asked, before the result.
    let listed = &second["calls"][4];
    assert_eq!(listed["progress"], 1, "{second:#}");
    assert!(text(listed).contains("deployments:"), "{second:#}");
    let notes: Vec<(String, String)> = json_lines(&notes_calls)
        .iter()
        .filter(|c| {
            c["tool"]
                .as_str()
                .is_some_and(|t| t.starts_with("resources/"))
        })
        .map(|c| {
            (
                c["tool"].as_str().unwrap_or_default().to_string(),
                c["args"]["uri"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // The second agent's unsubscribe ended there (the first still followed billing);
    // the first agent's session ending unsubscribed at the server.
    let at_notes = |what: &str, uri: &str| (format!("resources/{what}"), uri.to_string());
    assert_eq!(
        notes,
        [
            at_notes("subscribe", billing),
            at_notes("subscribe", "deploy://notes/deployments"),
            at_notes("subscribe", billing),
            at_notes("unsubscribe", billing),
        ],
    );
}

/// 2026-07-28 has no sessions: an official Python SDK client that finds the revision
/// itself, in front of two Python SDK servers (one shown as it is, one with a
/// prefix), with the bundled policies and a person's approval. Every result is the
/// SDK's own validated model for that revision.
#[test]
fn a_2026_07_28_client_gets_validated_results_and_an_approved_call() {
    let op = start_op();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let stack = Stack::launch(
        Layout {
            east_args: &["py"],
            west_args: &["py"],
            east_naming: "aliases: {}",
            west_naming: "tool_prefix: b_",
            policies: Some(bundled),
            ..Layout::default()
        },
        |_| approvals_yaml(&op, "hold"),
    );
    let approver = Approver::start(&op);
    let mut cmd = Command::new(python_sdk());
    cmd.current_dir(ensure_node_peers().join("py"))
        .arg("mcp_client.py")
        .args(["--url", &format!("http://127.0.0.1:{}/mcp", stack.port)])
        .args(["--mode", "auto", "--variants", "default"]);
    let mut client = ChildGuard::spawn("py-client", cmd, stack.dir.path(), false);
    let status = client
        .wait_timeout(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("client did not finish\n{}", client.logs()));
    assert!(status.success(), "{}", client.logs());
    let out: Value = serde_json::from_str(client.stdout_text().trim()).unwrap();
    let run = &out["runs"][0];
    assert!(
        run["errors"].as_object().unwrap().is_empty(),
        "{run:#}\n{}",
        stack.gateway.logs()
    );
    assert_eq!(run["protocolVersion"], "2026-07-28");
    // The bundled policy knows the first server's names; the prefixed ones are
    // unknown tools to it, so phase list hides them.
    assert_eq!(
        run["tools"],
        json!(["list_deployments", "deploy_service"]),
        "{run:#}"
    );
    let calls = &run["calls"];
    assert!(text_of(&calls["list_deployments"]).starts_with("deployments:"));
    let deployed = &calls["deploy_service"];
    assert_eq!(text_of(deployed), "deployed payments to prod", "{deployed}");
    assert_eq!(deployed["resultType"], "complete");
    assert_eq!(
        calls["delete_repository"]["_meta"]["ciba-gate/reason"],
        "destructive_tool"
    );
    assert_eq!(approver.approved(), 1);
    assert_eq!(
        stack.east.tools_called(),
        ["list_deployments", "deploy_service"]
    );
    assert!(stack.west.tools_called().is_empty());
    // The second server was asked for its list, statelessly.
    let west_bodies = std::fs::read_to_string(&stack.west.http).unwrap_or_default();
    assert!(west_bodies.contains("tools/list"), "{west_bodies}");
}

/// 2026-07-28 has no sessions and no event stream of its own: an agent opens a
/// `subscriptions/listen` stream instead. An official Python SDK client listens on
/// the virtual server for tool list changes and the updates of a stdio server's
/// resource: the first come from a Python SDK server's own listen stream (the
/// gateway opens one there), the second from the stdio server (which the gateway
/// subscribes to the resource); a resource no server owns is not honored.
#[test]
fn a_2026_07_28_agent_listens_for_changes_from_an_http_and_a_stdio_server() {
    let stack = Stack::launch(
        Layout {
            east_args: &["py"],
            west_args: &["py"],
            east_naming: "aliases: {}",
            west_naming: "tool_prefix: b_",
            notes_naming: Some("tool_prefix: notes_"),
            ..Layout::default()
        },
        |_| String::new(),
    );
    let (notes_calls, _) = stack.notes.clone().unwrap();
    let mut cmd = Command::new(python_sdk());
    cmd.current_dir(ensure_node_peers().join("py"))
        .arg("mcp_listen.py")
        .args(["--url", &format!("http://127.0.0.1:{}/mcp", stack.port)])
        .args(["--resource", "deploy://notes/deployments"])
        .args(["--resource", "deploy://nowhere/else"])
        .args(["--call", "list_deployments"]);
    let mut client = ChildGuard::spawn("py-listen", cmd, stack.dir.path(), false);
    let status = client
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("client did not finish\n{}", client.logs()));
    assert!(status.success(), "{}", client.logs());
    let out: Value = serde_json::from_str(client.stdout_text().trim())
        .unwrap_or_else(|e| panic!("{e}: {}", client.logs()));
    assert!(
        out["errors"].as_object().unwrap().is_empty(),
        "{out:#}\n{}",
        stack.gateway.logs()
    );
    assert_eq!(
        out["honored"],
        json!({"toolsListChanged": true, "resourceSubscriptions": ["deploy://notes/deployments"]}),
        "{out:#}"
    );
    let events = out["events"].as_array().unwrap();
    assert!(events.contains(&json!({"kind": "tools"})), "{out:#}");
    assert!(
        events.contains(&json!({"kind": "updated", "uri": "deploy://notes/deployments"})),
        "{out:#}"
    );
    assert!(text_of(&out["calls"]["list_deployments"]).starts_with("deployments:"));
    // The tool list change came from the HTTP server (the stdio server ran no tool).
    assert_eq!(stack.east.tools_called(), ["list_deployments"]);
    let notes = json_lines(&notes_calls);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[0]["tool"], "resources/subscribe");
    assert_eq!(notes[0]["args"]["uri"], "deploy://notes/deployments");
}

fn text_of(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[test]
fn a_server_that_restarts_or_goes_down_costs_the_agent_only_that_servers_tools() {
    let mut stack = Stack::start();
    let pause = stack.dir.path().join("go-on");
    // The stateful server restarts mid-session and forgets it: the next call still
    // runs (the gateway opens a new session there), and the agent never notices.
    let mut cmd = Command::new("node");
    cmd.current_dir(ensure_node_peers())
        .arg("mcp-multi-client.mjs")
        .args(["--url", &format!("http://127.0.0.1:{}/mcp", stack.port)])
        .args([
            "--calls",
            &json!([{"name": "east_list_deployments"}, {"name": "east_list_deployments"}])
                .to_string(),
        ])
        .arg("--pause-file")
        .arg(&pause);
    let mut client = ChildGuard::spawn("mcp-multi-client", cmd, stack.dir.path(), false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.stderr_text().contains("PAUSED") {
        assert!(
            Instant::now() < deadline,
            "client never paused: {}",
            client.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stack.east.kill();
    stack.east.launch();
    std::fs::write(&pause, "").unwrap();
    client
        .wait_timeout(Duration::from_secs(60))
        .expect("client done");
    let out: Value = serde_json::from_str(
        client
            .stdout_text()
            .lines()
            .rev()
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let calls = out["calls"].as_array().unwrap();
    assert!(text(&calls[0]).contains("deployments:"), "{out:#}");
    assert!(
        text(&calls[1]).contains("deployments:"),
        "{out:#}\n{}",
        stack.gateway.logs()
    );
    assert_eq!(stack.east.tools_called().len(), 2);

    // The stateless server goes down: its tools leave the list (named in _meta), its
    // calls get a typed answer, and the other server's tools keep working.
    stack.west.kill();
    let out = stack.client(
        json!([
            {"name": "ship", "arguments": {"service": "payments", "env": "staging"}},
            {"name": "east_list_deployments"},
        ]),
        &[],
    );
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(tools.iter().all(|t| t.starts_with("east_")), "{out:#}");
    let unavailable = &out["listMeta"]["ciba-gate/unavailable"];
    assert_eq!(unavailable[0]["server"], "west", "{out:#}");
    assert_eq!(unavailable[0]["reason"], "upstream_unreachable");
    // A tool server's failure keeps its HTTP status (502) with a JSON-RPC error body.
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[0]["error"]["code"], 502, "{out:#}");
    let message = calls[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(r#""reason":"upstream_unreachable""#),
        "{out:#}"
    );
    assert!(text(&calls[1]).contains("deployments:"), "{out:#}");
}

#[test]
fn check_refuses_names_two_servers_could_both_claim() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("policy.rego"), POLICY).unwrap();
    for (servers, says) in [
        (
            "[{upstream: a, tool_prefix: git_}, {upstream: b, tool_prefix: git_hub_}]",
            "overlap",
        ),
        (
            "[{upstream: a, aliases: {ship: deploy}}, {upstream: b, aliases: {ship: release}}]",
            "alias of two servers",
        ),
        ("[{upstream: a}, {upstream: a}]", "listed twice"),
        (
            "[{upstream: a}, {upstream: nowhere}]",
            "there is no upstream \"nowhere\"",
        ),
        (
            "[{upstream: a}, {upstream: tools}]",
            "\"tools\" is not a direct MCP upstream",
        ),
    ] {
        let config = dir.path().join("gate.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:0\"\nagent: {{id: a}}\npolicy: {{dir: {policies:?}}}\n\
                 upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, servers: {servers}}}\n\
                 \x20 - {{name: a, kind: mcp, url: \"http://127.0.0.1:1/mcp\"}}\n\
                 \x20 - {{name: b, kind: mcp, url: \"http://127.0.0.1:2/mcp\"}}\n"
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
            .args(["check", "--offline", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{servers}: {text}");
        assert!(text.contains(says), "{servers}: {text}");
        assert!(
            !text.contains("ok "),
            "a failure is never preceded by ok: {text}"
        );
    }
}

/// `check` asks the servers: two servers without a prefix that share tool names are a
/// collision it names; a server that cannot be reached is a problem too; distinct
/// names pass with one verdict.
#[test]
fn check_asks_the_servers_and_names_a_tool_two_of_them_claim() {
    let dir = tempfile::tempdir().unwrap();
    let a = SdkServer::start(dir.path(), "a", &["--mode", "json"]);
    let b = SdkServer::start(dir.path(), "b", &["--mode", "sse", "--stateful"]);
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("policy.rego"), POLICY).unwrap();
    let check = |servers: &str, down: bool| {
        let config = dir.path().join("gate.yaml");
        let b_url = if down {
            format!("http://127.0.0.1:{}/mcp", free_port())
        } else {
            format!("http://127.0.0.1:{}/mcp", b.port)
        };
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:0\"\nagent: {{id: a}}\npolicy: {{dir: {policies:?}}}\n\
                 upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, servers: {servers}}}\n\
                 \x20 - {{name: a, kind: mcp, url: \"http://127.0.0.1:{}/mcp\"}}\n\
                 \x20 - {{name: b, kind: mcp, url: \"{b_url}\"}}\n",
                a.port
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check("[{upstream: a}, {upstream: b}]", false);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(r#"the tool name "list_deployments" is claimed by two servers"#),
        "{text}"
    );
    let (code, text) = check("[{upstream: a}, {upstream: b, tool_prefix: b_}]", true);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("b could not list its tools"), "{text}");
    let (code, text) = check("[{upstream: a}, {upstream: b, tool_prefix: b_}]", false);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("virtual server tools: 8 tools from 2 servers"),
        "{text}"
    );
}

/// A stdio server is a `command` behind a virtual server, with nothing of an HTTP
/// server's settings; `check` refuses anything else naming the key, and without
/// `--offline` starts the server, lists its tools and stops it again.
#[test]
fn check_takes_a_stdio_server_only_behind_a_virtual_server() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("policy.rego"), POLICY).unwrap();
    let script = ensure_node_peers().join("mcp-server.mjs");
    let pid = dir.path().join("notes.pid");
    let check = |notes: &str, offline: bool| {
        let config = dir.path().join("gate.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:0\"\nagent: {{id: a}}\npolicy: {{dir: {policies:?}}}\n\
                 upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, servers: [{{upstream: notes, tool_prefix: n_}}]}}\n\
                 \x20 - {{name: notes, kind: mcp, {notes}}}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
        cmd.arg("check").arg("--config").arg(&config);
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let command = format!("command: [node, {script:?}, --stdio, --pid-file, {pid:?}]");
    for (extra, says) in [
        ("mount: /notes", "upstreams[1].mount"),
        ("url: \"http://127.0.0.1:1/mcp\"", "upstreams[1].url"),
        ("tls: {ca_file: ca.pem}", "upstreams[1].tls"),
        (
            "credential: {header: x-key, env: KEY}",
            "upstreams[1].credential",
        ),
        ("max_pending: 0", "upstreams[1].max_pending"),
        ("env: {\"A=B\": x}", "upstreams[1].env"),
    ] {
        let (code, text) = check(&format!("{command}, {extra}"), true);
        assert_eq!(code, Some(2), "{extra}: {text}");
        assert!(text.contains(says), "{extra}: {text}");
    }
    let (code, text) = check("url: \"http://127.0.0.1:1/mcp\", pass_env: [HOME]", true);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("upstreams[1].pass_env") && text.contains("only for a stdio server"),
        "{text}"
    );
    // A program that cannot start: its server cannot list its tools.
    let (code, text) = check("command: [/nonexistent/mcp-server]", false);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("notes could not list its tools") && text.contains("could not start"),
        "{text}"
    );
    let (code, text) = check(&command, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("virtual server tools: 4 tools from 1 server,"),
        "{text}"
    );
    // The server check started is stopped again.
    let started = std::fs::read_to_string(&pid).unwrap();
    let alive = signal("-0", started.trim());
    assert!(!alive, "check left the stdio server running");
}

/// A cancelled call's `notifications/cancelled` reaches the server the call went to,
/// in that server's session.
#[test]
fn a_cancellation_reaches_the_server_that_runs_the_call() {
    let stack = Stack::start();
    let out = stack.client(
        json!([
            // With progress asked for, the SSE server holds its answer back 500 ms.
            {"name": "east_list_deployments", "progress": true, "abortAfterMs": 150},
            {"name": "west_list_deployments"},
        ]),
        &[],
    );
    let calls = out["calls"].as_array().unwrap();
    assert!(calls[0].get("error").is_some(), "{out:#}");
    assert!(text(&calls[1]).contains("deployments:"), "{out:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let east = json_lines(&stack.east.http);
        let cancel = east
            .iter()
            .find(|r| r["rpc"][0] == "notifications/cancelled");
        if let Some(c) = cancel {
            assert!(c["session"].is_string(), "{c}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the east server never saw the cancellation: {east:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        json_lines(&stack.west.http)
            .iter()
            .all(|r| r["rpc"][0] != "notifications/cancelled")
    );
}
