//! Policies that fail: a `deny` rule whose body raises a built-in error, `approval`
//! rules that conflict next to a broad `allow`. Evaluation errors must end in a
//! `policy_error` deny; before the fix the failing rule was treated as undefined and
//! the broad `allow` forwarded the call. The tool server here logs every byte it gets.

use std::path::PathBuf;

use crate::harness::{NaiveUpstream, RawUpstream, gate_with, mcp_post, raw_exchange, tools_call};

fn policy_dir(rego: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        dir.join("policy.rego"),
        format!("package ciba_gate\n\nimport rego.v1\n\n{rego}\n"),
    )
    .unwrap();
    dir
}

fn upstream(addr: std::net::SocketAddr) -> String {
    format!("  - {{name: tools, kind: mcp, mount: /mcp, url: \"http://{addr}/mcp\"}}")
}

/// Sends one `tools/call` per argument object; every answer must be the
/// `policy_error` deny and the tool server must see none of them.
async fn assert_every_call_denied_as_policy_error(rego: &str, calls: &[(&str, &str)]) {
    let (addr, up) = RawUpstream::start().await;
    let dir = policy_dir(rego);
    let gate = gate_with(&upstream(addr), "", dir.to_str().unwrap()).await;
    for (i, (tool, args)) in calls.iter().enumerate() {
        let body = tools_call(i as u32 + 1, tool, args);
        let answers = raw_exchange(gate.addr, mcp_post(&body).as_bytes()).await;
        assert_eq!(answers.len(), 1, "{body}");
        let v = answers[0].json();
        assert_eq!(answers[0].status, 200, "{body}: {v}");
        assert_eq!(v["result"]["isError"], true, "{body}: {v}");
        assert_eq!(v["result"]["_meta"]["ciba-gate/decision"], "deny", "{v}");
        assert_eq!(
            v["result"]["_meta"]["ciba-gate/reason"], "policy_error",
            "{body}: {v}"
        );
        let text = v["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(text.contains("policy evaluation failed"), "{text}");
    }
    let evidence = gate.evidence(calls.len()).await;
    assert_eq!(evidence.len(), calls.len());
    for r in &evidence {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["reason"], "policy_error", "{r}");
        assert_eq!(r["outcome"], "blocked", "{r}");
    }
    assert!(
        up.all().is_empty(),
        "the tool server received {} request(s) a failing policy never allowed",
        up.all().len()
    );
    // The agent's argument values never reach the evidence through error text.
    let text = gate.evidence_text();
    assert!(!text.contains("prod-secret-env"), "{text}");
}

#[tokio::test]
async fn a_deny_rule_that_fails_at_run_time_never_lets_the_call_through() {
    let rego = r#"
allow := true

deny contains "risky amount" if {
	to_number(input.tool.arguments.env) > 10
}

deny contains "ratio" if {
	100 / input.tool.arguments.count > 1
}

deny contains "concat" if {
	x := input.tool.arguments.env + 1
	x > 0
}
"#;
    assert_every_call_denied_as_policy_error(
        rego,
        &[
            ("deploy_service", r#"{"env":"prod-secret-env","count":1}"#),
            ("deploy_service", r#"{"env":"12","count":0}"#),
            ("deploy_service", r#"{"env":"5","count":2}"#),
        ],
    )
    .await;
}

#[tokio::test]
async fn conflicting_approval_rules_never_switch_the_approval_off() {
    let rego = r#"
allow := true

approval := {"action": "deploy", "binding_message": "Deploy to prod", "scope": "openid"} if {
	input.tool.name == "deploy_service"
}

approval := {"action": "deploy", "binding_message": "Deploy somewhere", "scope": "openid"} if {
	input.tool.arguments.env == "prod"
}
"#;
    assert_every_call_denied_as_policy_error(rego, &[("deploy_service", r#"{"env":"prod"}"#)])
        .await;
}

#[tokio::test]
async fn a_conflicting_helper_of_deny_never_lets_the_call_through() {
    let rego = r#"
allow := true

risky := true if input.tool.name == "deploy_service"

risky := false if input.tool.arguments.env == "prod"

deny contains "risky" if risky
"#;
    assert_every_call_denied_as_policy_error(rego, &[("deploy_service", r#"{"env":"prod"}"#)])
        .await;
}

#[tokio::test]
async fn a_failing_rule_never_shows_a_tool_in_tools_list() {
    let up = NaiveUpstream::start("last");
    // list_deployments is listed; for deploy_service the deny rule fails (a built-in
    // error on the tool's name); delete_repository is denied outright.
    let dir = policy_dir(
        r#"
allow if input.mcp.method == "tools/list"

allow if input.phase == "list"

deny contains "bad" if {
	input.phase == "list"
	input.tool.name == "deploy_service"
	to_number(input.tool.name) > 1
}

deny contains "never" if input.tool.name == "delete_repository"
"#,
    );
    let gate = gate_with(&upstream(up.addr), "", dir.to_str().unwrap()).await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let answers = raw_exchange(gate.addr, mcp_post(body).as_bytes()).await;
    assert_eq!(answers.len(), 1);
    let v = answers[0].json();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {v}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["list_deployments"], "{v}");
}
