//! `policy test` and `policy eval` as someone used to `opa test` and `opa eval` meets
//! them: the same flags doing the same things, failures with file:line, a clear
//! answer when nothing matched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ciba-gate"))
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A policy with one covered and one uncovered rule, and three tests: one passes and
/// prints, one fails, one errors.
fn suite() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\n\nallow if input.x == 1\n\ndeny contains \"big\" if {\n\tinput.x > 100\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package ciba_gate\nimport rego.v1\n\
         test_ok if {\n\tprint(\"checking x\", 1)\n\tallow with input as {\"x\": 1}\n}\n\
         test_bad if allow with input as {\"x\": 2}\n\
         test_errors if to_number(\"many\") == 1\n",
    )
    .unwrap();
    dir
}

fn policy_test(dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(["policy", "test"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn failures_are_listed_with_file_line_and_reason_and_exit_1() {
    let dir = suite();
    let out = policy_test(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL data.ciba_gate.test_bad (p_test.rego:7): undefined"),
        "{text}"
    );
    let errors = text
        .lines()
        .find(|l| l.starts_with("FAIL data.ciba_gate.test_errors (p_test.rego:8)"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(errors.contains("to_number"), "the error text: {errors}");
    assert!(!text.contains("PASS"), "only failures without -v: {text}");
    assert_eq!(text.lines().last(), Some("1 passed, 2 failed"));
}

#[test]
fn verbose_lists_every_test_with_its_duration_and_print_output() {
    let dir = suite();
    let out = policy_test(dir.path(), &["-v"]);
    let text = stdout(&out);
    let ok = text
        .lines()
        .position(|l| l.starts_with("PASS data.ciba_gate.test_ok (p_test.rego:3) "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text.lines().nth(ok).unwrap().ends_with(" ms"), "{text}");
    let printed = text.lines().nth(ok + 1).unwrap();
    assert!(
        printed.starts_with("  print: ") && printed.contains("checking x 1"),
        "{text}"
    );
}

#[test]
fn run_selects_tests_by_regex_and_no_match_is_exit_2_with_a_message() {
    let dir = suite();
    let out = policy_test(dir.path(), &["--run", "test_ok$"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(stdout(&out).lines().last(), Some("1 passed, 0 failed"));

    let out = policy_test(dir.path(), &["-r", "nothing_like_this"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no tests found"), "{}", stderr(&out));

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(
        empty.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\nallow := true\n",
    )
    .unwrap();
    let out = policy_test(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no tests found"), "{}", stderr(&out));
}

#[test]
fn json_format_gives_location_duration_outcome_and_output_per_test() {
    let dir = suite();
    let out = policy_test(dir.path(), &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(2))
    );
    let by = |name: &str| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let ok = by("test_ok");
    assert_eq!(ok["package"], "ciba_gate");
    assert_eq!(
        ok["location"],
        serde_json::json!({"file": "p_test.rego", "row": 3})
    );
    assert_eq!(ok["passed"], true);
    assert!(ok["duration"].as_u64().is_some());
    assert!(ok["output"][0].as_str().unwrap().contains("checking x 1"));
    let errors = by("test_errors");
    assert_eq!(errors["passed"], false);
    assert!(errors["error"].as_str().unwrap().contains("to_number"));
}

#[test]
fn coverage_reports_lines_per_file_and_a_threshold_fails_the_run() {
    let dir = suite();
    let out = policy_test(dir.path(), &["--run", "test_ok", "--coverage"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("coverage: "), "{text}");
    // The deny body (line 7) is never evaluated by test_ok.
    let p = text
        .lines()
        .find(|l| l.trim_start().starts_with("p.rego "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(p.contains("not covered:") && p.contains('7'), "{p}");

    let out = policy_test(dir.path(), &["--run", "test_ok", "--format", "json", "-c"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pct = v["coverage"]["percent"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 100.0, "{pct}");
    let files = v["coverage"]["files"].as_array().unwrap();
    let p = files.iter().find(|f| f["file"] == "p.rego").unwrap();
    assert!(
        p["not_covered"]
            .as_array()
            .unwrap()
            .contains(&Value::from(7))
    );

    let out = policy_test(dir.path(), &["--run", "test_ok", "--threshold", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("below the threshold"),
        "{}",
        stderr(&out)
    );
    let out = policy_test(dir.path(), &["--run", "test_ok", "--threshold", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_bundled_tests_pass_with_coverage() {
    let out = policy_test(&repo("policies"), &["--coverage"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ciba_gate.rego"), "{}", stdout(&out));
}

fn deploy_input(dir: &Path) -> PathBuf {
    let input = dir.join("input.json");
    std::fs::write(
        &input,
        r#"{"phase":"request","agent":{"id":"a"},"upstream":{"name":"tools","kind":"mcp"},
            "mcp":{"method":"tools/call","kind":"request"},
            "tool":{"name":"deploy_service","arguments":{"service":"payments","env":"prod"}}}"#,
    )
    .unwrap();
    input
}

fn policy_eval(args: &[&str]) -> Output {
    bin().args(["policy", "eval"]).args(args).output().unwrap()
}

#[test]
fn eval_runs_any_query_with_input_in_the_opa_eval_shape() {
    let dir = tempfile::tempdir().unwrap();
    let input = deploy_input(dir.path());
    let policies = repo("policies");
    let args = |q: &str, format: &str| {
        vec![
            q.to_string(),
            "-p".into(),
            policies.display().to_string(),
            "-i".into(),
            input.display().to_string(),
            "--format".into(),
            format.into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        policy_eval(&a)
    };
    let out = run(args("data.ciba_gate.approval", "json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let e = &v["result"][0]["expressions"][0];
    assert_eq!(e["text"], "data.ciba_gate.approval");
    assert_eq!(e["value"]["binding_message"], "Deploy payments to prod");

    let out = run(args("data.ciba_gate.approval.binding_message", "raw"));
    assert_eq!(stdout(&out), "Deploy payments to prod\n");

    let out = run(args("count(data.ciba_gate.deny)", "pretty"));
    assert_eq!(stdout(&out), "0\n");

    // Undefined: an empty result; --fail makes it exit 1.
    let out = run(args("data.ciba_gate.no_such_rule", "json"));
    assert!(out.status.success());
    let mut a = args("data.ciba_gate.no_such_rule", "raw");
    a.push("--fail".into());
    assert_eq!(run(a).status.code(), Some(1));

    // No query: the gateway decision, as before.
    let out = policy_eval(&[
        "-p",
        &policies.display().to_string(),
        "-i",
        &input.display().to_string(),
        "--format",
        "raw",
    ]);
    assert_eq!(stdout(&out), "approve\n");
}

#[test]
fn eval_data_files_merge_with_the_policy_data_and_a_clash_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let input = deploy_input(dir.path());
    let extra = dir.path().join("owners.yaml");
    std::fs::write(
        &extra,
        "approvals:\n  approvers:\n    deploy_service: owner@example.com\n",
    )
    .unwrap();
    let policies = repo("policies").display().to_string();
    let out = policy_eval(&[
        "data.ciba_gate.approval.user.value",
        "-p",
        &policies,
        "-i",
        &input.display().to_string(),
        "-d",
        &extra.display().to_string(),
        "--format",
        "raw",
    ]);
    // The bundled data has `approvers: {}`: the extra file adds to it.
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "owner@example.com\n");

    let clash = dir.path().join("clash.json");
    std::fs::write(
        &clash,
        r#"{"approvals": {"requested_expiry": {"deploy_service": 5}}}"#,
    )
    .unwrap();
    let out = policy_eval(&[
        "data.approvals",
        "-p",
        &policies,
        "-d",
        &clash.display().to_string(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("clash.json") && err.contains("data.yaml"),
        "{err}"
    );
}

#[test]
fn print_in_a_policy_sees_the_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\nallow if {\n\tprint(\"env is\", input.tool.arguments.env)\n\tinput.tool.arguments.env == \"prod\"\n}\n",
    )
    .unwrap();
    let input = deploy_input(dir.path());
    for query in [None, Some("data.ciba_gate.allow")] {
        let mut args = vec![
            "-p".to_string(),
            dir.path().display().to_string(),
            "-i".into(),
            input.display().to_string(),
        ];
        if let Some(q) = query {
            args.insert(0, q.into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = policy_eval(&a);
        assert!(out.status.success(), "{query:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("env is prod"),
            "{query:?}: {}",
            stderr(&out)
        );
    }
}

/// `--explain` (OPA's `--explain fails|full`): for a failing test, the line where its
/// body stopped (the condition that did not hold) and every line it evaluated, per
/// file; `full` explains passing tests too; JSON carries the same.
#[test]
fn explain_shows_where_a_failing_test_stopped_and_what_it_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package ciba_gate\nimport rego.v1\n\nallow if {\n\tinput.x > 0\n\tinput.y == \"ok\"\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package ciba_gate\nimport rego.v1\n\
         test_needs_y if {\n\tinput_doc := {\"x\": 1, \"y\": \"no\"}\n\tallow with input as input_doc\n\ttrue\n}\n\
         test_ok if allow with input as {\"x\": 1, \"y\": \"ok\"}\n",
    )
    .unwrap();
    let out = policy_test(dir.path(), &["--explain"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("explain: stopped at p_test.rego:5: allow with input as input_doc"),
        "{text}"
    );
    assert!(text.contains("explain: evaluated p.rego: 5-6"), "{text}");
    assert!(
        !text.contains("test_ok"),
        "fails: only failing tests are explained: {text}"
    );

    let out = policy_test(dir.path(), &["--explain", "full", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let results = v["results"].as_array().unwrap();
    let bad = results
        .iter()
        .find(|r| r["name"] == "test_needs_y")
        .unwrap();
    assert_eq!(bad["explanation"]["stopped_at"]["row"], 5, "{bad}");
    let ok = results.iter().find(|r| r["name"] == "test_ok").unwrap();
    assert!(
        ok["explanation"]["evaluated"].is_array(),
        "full explains passes too: {ok}"
    );
    assert!(ok["explanation"].get("stopped_at").is_none(), "{ok}");
}
