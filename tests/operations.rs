//! Operating the gateway, against the real binary (`ciba-gate dev` on free ports): the
//! admin listener's /metrics (checked with `promtool check metrics`), /healthz and
//! /readyz, and SIGTERM while a call is held.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ChildGuard, free_port, wait_for_port};

struct Dev {
    child: ChildGuard,
    gw: u16,
    op: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

fn start_dev(name: &str, drain: &str) -> Dev {
    let dev = spawn_dev(name, drain, free_port());
    let (mut child, gw, admin) = (dev.child, dev.gw, dev.admin);
    wait_for_port(gw, Duration::from_secs(30), Some(&mut child));
    wait_for_port(admin, Duration::from_secs(10), Some(&mut child));
    Dev { child, ..dev }
}

/// `ciba-gate dev` asked for admin port `admin`, not yet waited for.
fn spawn_dev(name: &str, drain: &str, admin: u16) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let (gw, tools, op, cb) = (free_port(), free_port(), free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ciba-gate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .args(["dev", "--delivery", "poll", "--drain", drain])
        .args(["--listen", &format!("127.0.0.1:{gw}")])
        .args(["--tools-listen", &format!("127.0.0.1:{tools}")])
        .args(["--op-listen", &format!("127.0.0.1:{op}")])
        .args(["--callback-listen", &format!("127.0.0.1:{cb}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
    let child = ChildGuard::spawn(name, cmd, dir.path(), false);
    Dev {
        child,
        gw,
        op,
        admin,
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn call(id: i64, tool: &str, args: Value, progress: bool) -> Value {
    let mut params = json!({"name": tool, "arguments": args});
    if progress {
        params["_meta"] = json!({"progressToken": format!("p{id}")});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// Posts one MCP message; returns the final JSON-RPC response (SSE or plain JSON).
async fn post_mcp(port: u16, body: Value) -> Value {
    let text = client()
        .post(format!("http://127.0.0.1:{port}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::jsonrpc_answer(&text)
}

/// Waits for a pending request at the development OP and returns its id.
/// Waits for `/readyz` to answer 200, as an orchestrator does before sending traffic
/// (until the OP's metadata and keys are in, an approval call is `op_unavailable`);
/// returns its body. Until then it must answer 503.
async fn until_ready(dev: &Dev) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client()
            .get(format!("http://127.0.0.1:{}/readyz", dev.admin))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "never ready: {body}\n{}",
            dev.child.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pending_at_op(op: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = client()
            .get(format!("http://127.0.0.1:{op}/api/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = list
            .as_array()
            .and_then(|a| a.first())
            .and_then(|p| p["id"].as_str())
        {
            return id.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no approval request reached the OP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn promtool() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not installed: it comes with the Debian package `prometheus` \
             (apt-get update && apt-get install -y prometheus)"
        )
    })
}

/// Every label value of every sample in a text exposition.
fn label_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            continue;
        };
        for pair in labels.split("\",") {
            if let Some((_, v)) = pair.split_once("=\"") {
                out.push(v.trim_end_matches('"').to_string());
            }
        }
    }
    out
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_promtool_accepts_and_probes() {
    let promtool = promtool();
    let mut dev = start_dev("dev-metrics", "2s");
    let admin = format!("http://127.0.0.1:{}", dev.admin);

    let health = client()
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = until_ready(&dev).await;
    assert_eq!(ready["status"], "ready");
    for check in ["policy", "store", "op", "accepting"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    let revision = ready["policy_revision"].as_str().unwrap().to_string();
    assert_eq!(revision.len(), 12, "{ready}");

    // Allowed, denied (destructive), and one approved on the "phone".
    let allowed = post_mcp(dev.gw, call(1, "list_deployments", json!({}), false)).await;
    assert_eq!(allowed["result"]["isError"], false, "{allowed}");
    let denied = post_mcp(
        dev.gw,
        call(
            2,
            "delete_repository",
            json!({"repo": "secret-repo-name"}),
            false,
        ),
    )
    .await;
    assert_eq!(
        denied["result"]["_meta"]["ciba-gate/decision"], "deny",
        "{denied}"
    );
    let gw = dev.gw;
    let held = tokio::spawn(post_mcp(
        gw,
        call(
            3,
            "deploy_service",
            json!({"service": "payments", "env": "staging"}),
            true,
        ),
    ));
    let id = pending_at_op(dev.op).await;
    let r = client()
        .post(format!(
            "http://127.0.0.1:{}/api/requests/{id}/approve",
            dev.op
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "approve at the OP: {}", r.status());
    let approved = held.await.unwrap();
    assert_eq!(
        approved["result"]["isError"],
        false,
        "{approved}\n{}",
        dev.child.logs()
    );

    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        text.headers()
    );
    let text = text.text().await.unwrap();
    let file = dev._dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        sample(
            &text,
            r#"ciba_gate_decisions_total{effect="allow",outcome="forwarded",reason="allowed",upstream="demo-tools"}"#
        ),
        1.0
    );
    // The approved call is counted by its own reason.
    assert_eq!(
        sample(
            &text,
            r#"ciba_gate_decisions_total{effect="allow",outcome="forwarded",reason="approved",upstream="demo-tools"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ciba_gate_decisions_total{effect="deny",outcome="blocked",reason="policy",upstream="demo-tools"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ciba_gate_approvals_total{outcome="granted",delivery_mode="poll"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, "ciba_gate_approvals_pending "), 0.0);
    assert_eq!(
        sample(&text, "ciba_gate_approval_duration_seconds_count"),
        1.0
    );
    assert!(sample(&text, "ciba_gate_policy_evaluation_duration_seconds_count") >= 4.0);
    assert_eq!(
        sample(
            &text,
            r#"ciba_gate_upstream_duration_seconds_count{upstream="demo-tools",status_class="2xx"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&text, r#"ciba_gate_policy_reloads_total{result="failure"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"ciba_gate_policy_revision_info{{revision="{revision}"}}"#)
        ),
        1.0
    );
    assert_eq!(sample(&text, "ciba_gate_store_errors_total"), 0.0);

    // Labels are bounded: no argument values, no user hint, no binding message.
    let values = label_values(&text);
    assert!(!values.is_empty());
    for v in &values {
        for secret in [
            "payments",
            "staging",
            "secret-repo-name",
            "demo@example.com",
            "Deploy",
        ] {
            assert!(!v.contains(secret), "label value {v:?} carries {secret:?}");
        }
    }

    // OpenMetrics for Prometheus itself.
    let om = client()
        .get(format!("{admin}/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    dev.child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_held_call_shutting_down_within_the_drain_and_exits_0() {
    let mut dev = start_dev("dev-sigterm", "2s");
    until_ready(&dev).await;
    let gw = dev.gw;
    let held = tokio::spawn(post_mcp(
        gw,
        call(
            7,
            "deploy_service",
            json!({"service": "billing", "env": "prod"}),
            true,
        ),
    ));
    pending_at_op(dev.op).await; // the call is held now
    let admin = format!("http://127.0.0.1:{}", dev.admin);

    let signalled = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &dev.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());

    // Not ready any more, and new connections are refused, while the held call waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["accepting"]["ok"], false, "{body}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw)).is_err(),
        "the agent port still accepts after SIGTERM"
    );
    assert!(
        !held.is_finished(),
        "the held call was answered before the drain deadline"
    );

    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held call never answered")
        .unwrap();
    let waited = signalled.elapsed();
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(
        answer["result"]["_meta"]["ciba-gate/reason"],
        "shutting_down",
        "{answer}\n{}",
        dev.child.logs()
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "answered after {waited:?}, before the 2 s drain"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    let status = dev
        .child
        .wait_timeout(Duration::from_secs(10))
        .expect("the gateway did not exit");
    assert_eq!(status.code(), Some(0), "{}", dev.child.logs());
}

/// Two `ciba-gate dev` asked for the same admin port at the same moment both come up:
/// one serves it, the other says it is taken and serves a free one (the port each
/// announces is the one it holds from the start, so neither can lose it to the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dev_gateways_asked_for_one_admin_port_both_serve_admin_endpoints() {
    let port = free_port();
    let mut devs = [
        spawn_dev("dev-admin-a", "1s", port),
        spawn_dev("dev-admin-b", "1s", port),
    ];
    for dev in &mut devs {
        wait_for_port(dev.gw, Duration::from_secs(30), Some(&mut dev.child));
    }
    let mut announced = Vec::new();
    for dev in &mut devs {
        assert!(dev.child.try_status().is_none(), "{}", dev.child.logs());
        let logs = dev.child.stderr_text();
        let metrics = logs
            .lines()
            .find_map(|l| l.trim().strip_prefix("metrics:"))
            .unwrap_or_else(|| panic!("no metrics line\n{logs}"));
        let url = metrics
            .split_whitespace()
            .next()
            .unwrap()
            .replace("/metrics", "/healthz");
        let status = client().get(&url).send().await.unwrap().status();
        assert_eq!(status, 200, "{url}\n{logs}");
        announced.push(url);
    }
    assert_ne!(announced[0], announced[1]);
    assert!(
        announced.contains(&format!("http://127.0.0.1:{port}/healthz")),
        "{announced:?}"
    );
}
