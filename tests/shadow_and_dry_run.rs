//! Rolling a policy out safely: a shadow policy set decided beside the enforcing one
//! and never enforced (differences in the evidence and a metric, summarised by
//! `policy diff`), and `policy.dry_run`, which records every decision and enforces
//! none — explicit, and loud in `/readyz`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::gateway::Gate;
use support::recording_upstream::RecordingUpstream;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// The bundled policies with `list_deployments` reclassified as destructive and
/// `prod` no longer a deploy target: the change a rollout would want to see first.
fn stricter_policies() -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    for entry in std::fs::read_dir(bundled()).unwrap() {
        let e = entry.unwrap();
        if e.file_type().unwrap().is_dir() {
            let sub = dir.join(e.file_name());
            std::fs::create_dir_all(&sub).unwrap();
            for f in std::fs::read_dir(e.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), sub.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let data = std::fs::read_to_string(dir.join("data.yaml")).unwrap();
    let data = data
        .replace(
            "  read_only:\n    - list_deployments\n",
            "  read_only: []\n",
        )
        .replace(
            "  destructive:\n    - delete_repository\n",
            "  destructive:\n    - delete_repository\n    - list_deployments\n",
        );
    assert!(data.contains("- list_deployments\n") && data.contains("read_only: []"));
    std::fs::write(dir.join("data.yaml"), data).unwrap();
    dir
}

fn call(tool: &str, args: Value, id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

async fn post(gate: &Gate, body: &Value) -> Value {
    support::post_mcp(gate.addr, body).await
}

async fn admin(gate: &Gate, path: &str) -> String {
    reqwest::get(format!("http://{}{path}", gate.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn gate_with(policy: &str, upstream: std::net::SocketAddr) -> Gate {
    let dir = tempfile::tempdir().unwrap().keep();
    let yaml = format!(
        "agent: {{id: billing-agent}}\n\
         policy: {policy}\n\
         upstreams:\n  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{upstream}/mcp\"}}\n"
    );
    Gate::start(&dir, &yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_policy_is_decided_beside_and_never_enforced() {
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let policy = format!(
        "{{dir: {:?}, reload_interval: 0s, shadow: {{dir: {:?}}}}}",
        bundled(),
        stricter_policies()
    );
    let gate = gate_with(&policy, up_addr).await;

    // Enforced: allowed and forwarded, although the shadow would deny it.
    let a = post(&gate, &call("list_deployments", json!({}), 1)).await;
    assert_eq!(a["result"]["content"][0]["text"], "done", "{a}");
    // Enforced: denied (destructive) in both: no difference recorded.
    let b = post(&gate, &call("delete_repository", json!({"repo": "x"}), 2)).await;
    assert_eq!(b["result"]["isError"], true, "{b}");
    assert_eq!(upstream.tool_calls().len(), 1, "the shadow never enforces");

    let ev = gate.evidence(2).await;
    let list = ev.iter().find(|e| e["tool"] == "list_deployments").unwrap();
    assert_eq!(list["decision"], "allow");
    assert_eq!(list["outcome"], "forwarded");
    assert_eq!(list["shadow"]["phase"], "request", "{list}");
    assert_eq!(list["shadow"]["decision"], "deny", "{list}");
    assert_eq!(list["shadow"]["reason"], "destructive_tool", "{list}");
    assert!(
        list["shadow"]["revision"]
            .as_str()
            .is_some_and(|r| r != list["policy_revision"])
    );
    let del = ev
        .iter()
        .find(|e| e["tool"] == "delete_repository")
        .unwrap();
    assert!(
        del.get("shadow").is_none(),
        "same decision, no shadow field: {del}"
    );

    let metrics = admin(&gate, "/metrics").await;
    assert!(
        metrics
            .contains("ciba_gate_shadow_differences_total{enforced=\"allow\",shadow=\"deny\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // `policy diff` over the evidence file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evidence.jsonl");
    std::fs::write(&file, gate.evidence_text()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
        .args(["policy", "diff", "--evidence"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("2 decisions, 1 decided differently"),
        "{text}"
    );
    assert!(
        text.contains("allow→deny: 1 (tools: list_deployments 1; reasons: destructive_tool 1)"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
        .args(["policy", "diff", "--format", "json", "--evidence"])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["differences"], 1);
    assert_eq!(v["pairs"][0]["enforced"], "allow");
    assert_eq!(v["pairs"][0]["shadow"], "deny");
}

/// The shadow set decides phase `list` too: the enforced list still shows what the
/// enforcing policy shows, and the `tools/list` record names the tools the shadow
/// would show or hide differently (counted by effect pair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_policy_decides_which_tools_a_list_would_show() {
    let tools = ciba_gate::devop::demo_tools::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let policy = format!(
        "{{dir: {:?}, reload_interval: 0s, shadow: {{dir: {:?}}}}}",
        bundled(),
        stricter_policies()
    );
    let gate = gate_with(&policy, tools).await;
    let list = post(
        &gate,
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}),
    )
    .await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"list_deployments"),
        "enforced, not shadow: {names:?}"
    );

    let ev = gate.evidence(1).await;
    let rec = ev.iter().find(|e| e["mcp_method"] == "tools/list").unwrap();
    assert_eq!(rec["shadow"]["phase"], "list", "{rec}");
    assert_eq!(rec["shadow"]["decision"], "deny", "{rec}");
    assert_eq!(rec["shadow"]["tools"], json!(["list_deployments"]), "{rec}");
    let metrics = admin(&gate, "/metrics").await;
    assert!(
        metrics
            .contains("ciba_gate_shadow_differences_total{enforced=\"allow\",shadow=\"deny\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_forwards_what_policy_would_stop_and_says_so_everywhere() {
    let (up_addr, upstream) = RecordingUpstream::start().await;
    let policy = format!(
        "{{dir: {:?}, reload_interval: 0s, dry_run: true}}",
        bundled()
    );
    let gate = gate_with(&policy, up_addr).await;

    let a = post(&gate, &call("delete_repository", json!({"repo": "x"}), 1)).await;
    assert_eq!(a["result"]["content"][0]["text"], "done", "forwarded: {a}");
    assert_eq!(upstream.tool_calls().len(), 1);
    let ev = gate.evidence(1).await;
    let e = &ev[0];
    assert_eq!(
        e["decision"], "deny",
        "the policy's decision is recorded: {e}"
    );
    assert_eq!(e["dry_run"], "destructive_tool", "{e}");
    assert_eq!(e["outcome"], "forwarded");

    let ready: Value = serde_json::from_str(&admin(&gate, "/readyz").await).unwrap();
    assert_eq!(ready["dry_run"], true, "{ready}");
    assert_eq!(ready["checks"]["enforcing"]["dry_run"], true, "{ready}");

    // Not the default: the same call without dry_run is blocked.
    let (up2, upstream2) = RecordingUpstream::start().await;
    let enforcing = gate_with(
        &format!("{{dir: {:?}, reload_interval: 0s}}", bundled()),
        up2,
    )
    .await;
    let b = post(
        &enforcing,
        &call("delete_repository", json!({"repo": "x"}), 1),
    )
    .await;
    assert_eq!(b["result"]["isError"], true, "{b}");
    assert!(upstream2.tool_calls().is_empty());
    let ready: Value = serde_json::from_str(&admin(&enforcing, "/readyz").await).unwrap();
    assert_eq!(ready["dry_run"], false);
}
