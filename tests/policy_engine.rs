//! Decision semantics of the policy engine, loading rules and limits, on small
//! policies written for each case.
#![allow(clippy::disallowed_methods)] // waits on real processes and sockets in real time

use std::fs;
use std::path::Path;
use std::time::Duration;

use ciba_gate::policy::testing::run_tests;
use ciba_gate::policy::{Effect, EvalPath, PolicyEngine, PolicyError, PolicyOptions};
use serde_json::json;

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A policy directory with one `ciba_gate` module.
fn policy(rego: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policy.rego",
        &format!("package ciba_gate\nimport rego.v1\n{rego}\n"),
    );
    dir
}

fn both(engine: &PolicyEngine, input: &serde_json::Value) -> ciba_gate::policy::Decision {
    let a = engine.decide_on(input, EvalPath::Rvm);
    let b = engine.decide_on(input, EvalPath::Interpreter);
    assert_eq!(
        (a.effect, &a.reasons, &a.approval),
        (b.effect, &b.reasons, &b.approval),
        "vm and interpreter disagree on {input}"
    );
    a
}

const LAYERED: &str = r#"
deny contains "blocked by rule" if input.block
deny contains {"code": "too_big", "message": "amount too big"} if input.amount > 100
approval := {"action": "pay", "binding_message": "Pay", "scope": "openid"} if input.pay
allow if input.ok
"#;

#[test]
fn deny_wins_over_approval_and_allow() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    let d = both(
        &e,
        &json!({"phase": "request", "block": true, "pay": true, "ok": true}),
    );
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("policy_denied"));
    assert_eq!(d.reasons[0].message, "blocked by rule");
    assert!(d.approval.is_none());
}

#[test]
fn approval_wins_over_allow_in_request_and_list() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    for phase in ["request", "list"] {
        let d = both(&e, &json!({"phase": phase, "pay": true, "ok": true}));
        assert_eq!(d.effect, Effect::Approve);
        assert_eq!(d.approval.unwrap()["action"], "pay");
        assert!(d.reasons.is_empty());
    }
}

#[test]
fn approval_is_ignored_in_phase_approved() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    let d = both(&e, &json!({"phase": "approved", "pay": true}));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("no_matching_rule"));
    let d = both(&e, &json!({"phase": "approved", "pay": true, "ok": true}));
    assert_eq!(d.effect, Effect::Allow);
    assert!(d.approval.is_none());
}

#[test]
fn allow_alone_allows() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(
        both(&e, &json!({"phase": "request", "ok": true})).effect,
        Effect::Allow
    );
}

#[test]
fn no_match_is_deny() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    let d = both(&e, &json!({"phase": "request"}));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("no_matching_rule"));
    assert_eq!(d.revision, e.revision());
}

#[test]
fn object_and_string_deny_reasons() {
    let dir = policy(LAYERED);
    let e = PolicyEngine::load(dir.path()).unwrap();
    let d = both(&e, &json!({"block": true, "amount": 500}));
    let mut got: Vec<(String, String)> = d
        .reasons
        .iter()
        .map(|r| (r.code.clone(), r.message.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("policy_denied".to_string(), "blocked by rule".to_string()),
            ("too_big".to_string(), "amount too big".to_string()),
        ]
    );
}

/// Built-in errors are strict (OPA `--strict-builtin-errors`): the evaluation fails
/// and the call is denied `policy_error`, never skipped as undefined.
#[test]
fn builtin_errors_are_policy_error_denies() {
    let dir = policy(
        r#"deny contains x if { x := to_number(input.n) }
allow := true"#,
    );
    let e = PolicyEngine::load(dir.path()).unwrap();
    let d = both(&e, &json!({"n": "abc"}));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("policy_error"));
    // Where and what failed, never the input value.
    let msg = &d.reasons[0].message;
    assert!(msg.contains("policy.rego:3"), "{msg}");
    assert!(msg.contains("to_number"), "{msg}");
    assert!(!msg.contains("abc"), "{msg}");
    assert_eq!(
        both(&e, &json!({"n": "12"})).reason_code(),
        Some("policy_denied")
    );
}

/// Two bodies of a complete rule giving different values: a conflict error, as in
/// OPA, on every evaluator.
#[test]
fn conflicting_allow_is_a_policy_error_on_both_paths() {
    let dir = policy(
        r#"
allow := input.a if input.a
allow := input.b if input.b
"#,
    );
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert!(e.not_vm_exact().is_some());
    assert_eq!(
        both(&e, &json!({"a": true, "b": false})).effect,
        Effect::Allow
    );
    let conflict = json!({"a": "yes", "b": "no"});
    for path in [EvalPath::Rvm, EvalPath::Interpreter] {
        assert_eq!(
            e.decide_on(&conflict, path).reason_code(),
            Some("policy_error"),
            "{path:?}"
        );
    }
}

/// A set with nothing that can fail at run time runs on the VM; one built-in that
/// can fail moves it to the interpreter.
#[test]
fn only_vm_exact_policy_sets_run_on_the_vm() {
    let exact = policy(
        "allow if input.ok == true\nallow if input.also\ndeny contains \"x\" if { some v in input.list; v == 1 }",
    );
    let e = PolicyEngine::load(exact.path()).unwrap();
    assert_eq!(e.not_vm_exact(), None);
    assert_eq!(e.eval_path(), EvalPath::Rvm);
    let inexact = policy("allow if startswith(input.name, \"a\")");
    let e = PolicyEngine::load(inexact.path()).unwrap();
    assert!(
        e.not_vm_exact().is_some_and(|r| r.contains("startswith")),
        "{:?}",
        e.not_vm_exact()
    );
    assert_eq!(e.eval_path(), EvalPath::Interpreter);
}

/// Constructs the analysis proves cannot fail keep a set on the VM: built-ins whose
/// arguments a type test, a literal, the data or a rule's value pins down; bodies that
/// exclude each other; object comprehensions whose keys cannot repeat. Everything
/// else moves the set to the interpreter, which reports errors.
#[test]
fn the_vm_runs_a_set_only_when_nothing_in_it_can_fail() {
    let data = r#"{"classes": {"a": ["x", "y"], "b": ["z"]}, "overlap": {"a": ["x"], "b": ["x"]},
                  "names": ["n1", "n2"], "templates": {"t": "hello {who}"}}"#;
    let exact = [
        (
            "a type test before the call",
            "allow if { is_string(input.m); startswith(input.m, \"a\") }",
        ),
        (
            "an equality before the call",
            "allow if { input.m == \"ab\"; endswith(input.m, \"b\") }",
        ),
        (
            "is_object before object.get",
            "allow if { is_object(input.o); object.get(input.o, \"k\", null) == null }",
        ),
        (
            "a rule whose every body types its value",
            "name := input.n if is_string(input.n)\nallow if startswith(name, \"a\")",
        ),
        (
            "strings from the data",
            "allow if { some n in data.names; startswith(n, \"n\") }",
        ),
        (
            "concat of literals and typed values",
            "deny contains concat(\"\", [\"bad \", input.n]) if is_string(input.n)\nallow := true",
        ),
        (
            "sprintf with %v of anything",
            "deny contains sprintf(\"bad %v\", [input.n]) if input.n\nallow := true",
        ),
        (
            "regex.match with a literal pattern on a string",
            "allow if { is_string(input.p); regex.match(`^[a-z]+$`, input.p) }",
        ),
        (
            "exclusive bodies by equality",
            "approval := {\"a\": 1} if input.t == \"x\"\napproval := {\"a\": 2} if input.t == \"y\"",
        ),
        (
            "exclusive bodies by negation",
            "v := 1 if input.f\nv := 2 if not input.f\nallow if v == 1",
        ),
        (
            "one class per name in the data",
            "class := c if { some c, ns in data.classes; input.n in ns }\nallow if class == \"a\"",
        ),
        (
            "an object comprehension keyed by the iteration key",
            "o := {sprintf(\"{%s}\", [k]): sprintf(\"%v\", [v]) | some k, v in input.args} if is_object(input.args)\n\
             allow if strings.replace_n(o, data.templates.t) == \"hello you\"",
        ),
    ];
    let inexact = [
        (
            "an unguarded built-in",
            "allow if startswith(input.m, \"a\")",
            "startswith",
        ),
        (
            "a guard after the call",
            "allow if { startswith(input.m, \"a\"); is_string(input.m) }",
            "startswith",
        ),
        (
            "a guard under not",
            "allow if { not is_number(input.m); startswith(input.m, \"a\") }",
            "startswith",
        ),
        (
            "sprintf with %d",
            "deny contains sprintf(\"n=%d\", [input.n]) if input.n\nallow := true",
            "sprintf",
        ),
        (
            "sprintf with fewer arguments than verbs",
            "deny contains sprintf(\"%v-%v\", [input.n]) if input.n\nallow := true",
            "sprintf",
        ),
        (
            "a pattern that does not compile",
            "allow if { is_string(input.p); regex.match(\"(\", input.p) }",
            "regex.match",
        ),
        (
            "bodies that can both hold",
            "approval := {\"a\": 1} if input.t == \"x\"\napproval := {\"a\": 2} if input.u == \"y\"",
            "approval",
        ),
        (
            "exclusion on a variable of the body",
            "v := 1 if { some x in input.l; x == 1 }\nv := 2 if { some x in input.l; x == 2 }\nallow if v",
            "data.ciba_gate.v",
        ),
        (
            "several values from one body",
            "v := x if some x in input.l\nallow if v",
            "several values",
        ),
        (
            "a name in two classes",
            "class := c if { some c, ns in data.overlap; input.n in ns }\nallow if class == \"a\"",
            "several values",
        ),
        (
            "object comprehension keys that can repeat",
            "o := {v: k | some k, v in input.args}\nallow if count(o) > 0",
            "object comprehension",
        ),
        ("arithmetic", "allow if input.n / 2 > 1", "arithmetic"),
    ];
    let load = |rego: &str| {
        let dir = policy(rego);
        write(dir.path(), "data.json", data);
        PolicyEngine::load(dir.path()).unwrap_or_else(|e| panic!("{rego}: {e}"))
    };
    for (what, rego) in exact {
        let e = load(rego);
        assert_eq!(e.not_vm_exact(), None, "{what}: {rego}");
        assert_eq!(e.eval_path(), EvalPath::Rvm, "{what}");
    }
    for (what, rego, reason) in inexact {
        let e = load(rego);
        let why = e.not_vm_exact();
        assert!(
            why.as_deref().is_some_and(|r| r.contains(reason)),
            "{what}: {rego}: expected a reason with {reason:?}, got {why:?}"
        );
        assert_eq!(e.eval_path(), EvalPath::Interpreter, "{what}");
    }
}

/// The exact sets above still decide as OPA would when the guarded values have
/// the wrong type: the guard fails the body, nothing errors.
#[test]
fn guarded_built_ins_on_the_vm_decide_like_the_interpreter() {
    let dir = policy(
        "deny contains concat(\"\", [\"bad \", input.n]) if { is_string(input.n); startswith(input.n, \"x\") }\n\
         allow if { is_object(input.o); object.get(input.o, \"k\", 0) == 1 }",
    );
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(e.eval_path(), EvalPath::Rvm);
    for input in [
        json!({"n": 5, "o": {"k": 1}}),
        json!({"n": "xy", "o": {"k": 1}}),
        json!({"n": "ab", "o": "not an object"}),
        json!({"n": ["x"], "o": {"k": 1}}),
    ] {
        both(&e, &input);
    }
    assert_eq!(
        both(&e, &json!({"n": "xy", "o": {"k": 1}})).effect,
        Effect::Deny
    );
    assert_eq!(
        both(&e, &json!({"n": 5, "o": {"k": 1}})).effect,
        Effect::Allow
    );
}

#[test]
fn malformed_rule_values_fail_closed() {
    let dir = policy(
        r#"
approval := "yes" if input.pay
allow := "sure" if input.ok
"#,
    );
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(
        both(&e, &json!({"pay": true})).reason_code(),
        Some("policy_error")
    );
    assert_eq!(
        both(&e, &json!({"ok": true})).reason_code(),
        Some("policy_error")
    );
}

#[test]
fn boolean_deny_is_honoured() {
    let dir = policy("default deny := false\ndeny if input.block\nallow := true");
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(both(&e, &json!({"block": true})).effect, Effect::Deny);
    assert_eq!(both(&e, &json!({})).effect, Effect::Allow);
}

#[test]
fn instruction_limit_is_deny_policy_error() {
    let dir = policy(
        r#"
allow if {
    some i in data.numbers
    i == -1
}
"#,
    );
    let numbers: Vec<u32> = (0..200_000).collect();
    write(
        dir.path(),
        "data.json",
        &json!({ "numbers": numbers }).to_string(),
    );
    let opts = PolicyOptions {
        max_instructions: 10_000,
        time_limit: Duration::from_secs(10),
        prefer_rvm: true,
    };
    let e = PolicyEngine::load_with(dir.path(), opts).unwrap();
    assert_eq!(e.eval_path(), EvalPath::Rvm);
    let d = e.decide(&json!({}));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("policy_error"));
    assert!(
        d.reasons[0].message.contains("instruction"),
        "{}",
        d.reasons[0].message
    );
}

#[test]
fn time_limit_is_deny_policy_error_on_the_interpreter() {
    let dir = policy(
        r#"
allow if {
    some i in numbers.range(1, 3000)
    some j in numbers.range(1, 3000)
    i * j == -1
}
"#,
    );
    let opts = PolicyOptions {
        max_instructions: usize::MAX,
        time_limit: Duration::from_millis(20),
        prefer_rvm: false,
    };
    let e = PolicyEngine::load_with(dir.path(), opts).unwrap();
    assert_eq!(e.eval_path(), EvalPath::Interpreter);
    let start = std::time::Instant::now();
    let d = e.decide(&json!({}));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reason_code(), Some("policy_error"), "{:?}", d.reasons);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn syntax_error_is_a_load_error_naming_the_file() {
    let dir = policy("allow if {");
    write(
        dir.path(),
        "other.rego",
        "package ciba_gate.x\nimport rego.v1\ny := 1\n",
    );
    let err = PolicyEngine::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Compile { .. }));
    assert!(msg.contains("policy.rego"), "{msg}");
}

#[test]
fn unknown_function_is_a_load_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.rego",
        "package ciba_gate\nimport rego.v1\nallow if input.x\n",
    );
    write(
        dir.path(),
        "lib/b.rego",
        "package ciba_gate\nimport rego.v1\ndeny contains x if x := no_such_fn(input.y)\n",
    );
    let msg = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("lib/b.rego"), "{msg}");
}

#[test]
fn empty_directory_and_missing_rules_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(PolicyEngine::load(dir.path()).is_err());
    write(
        dir.path(),
        "x.rego",
        "package other\nimport rego.v1\nallow := true\n",
    );
    let msg = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("no rule deny, approval or allow"), "{msg}");
    assert!(PolicyEngine::load(&dir.path().join("missing")).is_err());
}

#[test]
fn load_or_unavailable_denies_policy_unavailable() {
    let dir = policy("allow if {");
    let (e, err) = PolicyEngine::load_or_unavailable(dir.path(), PolicyOptions::default());
    assert!(err.is_some());
    let d = e.decide(&json!({"phase": "request"}));
    assert_eq!(d.reason_code(), Some("policy_unavailable"));
    // Fixing the file and reloading brings the policy in.
    write(
        dir.path(),
        "policy.rego",
        "package ciba_gate\nimport rego.v1\nallow := true\n",
    );
    assert!(e.reload_now().unwrap());
    assert_eq!(e.decide(&json!({})).effect, Effect::Allow);
}

#[test]
fn test_files_are_not_served() {
    let dir = policy("allow if input.ok");
    // A test file that would break the serving policy if it were loaded with it.
    write(
        dir.path(),
        "policy_test.rego",
        "package ciba_gate\nimport rego.v1\nallow := false\ntest_ok if allow with input as {\"ok\": true}\n",
    );
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(e.decide(&json!({"ok": true})).effect, Effect::Allow);
}

#[test]
fn data_files_merge_without_namespacing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.rego",
        "package ciba_gate\nimport rego.v1\nallow if { input.env in data.envs; input.tool in data.tools.safe; data.limits.max == 3 }\n",
    );
    write(
        dir.path(),
        "data.yaml",
        "envs: [dev, prod]\ntools:\n  safe: [a]\n",
    );
    write(
        dir.path(),
        "sub/more.json",
        r#"{"tools": {"other": ["b"]}, "limits": {"max": 3}}"#,
    );
    write(dir.path(), "notes.txt", "ignored");
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(
        both(&e, &json!({"env": "dev", "tool": "a"})).effect,
        Effect::Allow
    );
    assert_eq!(
        both(&e, &json!({"env": "qa", "tool": "a"})).effect,
        Effect::Deny
    );
}

#[test]
fn conflicting_data_is_a_load_error_naming_both_files() {
    let dir = policy("allow := true");
    write(dir.path(), "a.yaml", "limits:\n  max: 3\n");
    write(dir.path(), "b.json", r#"{"limits": {"max": 4}}"#);
    let msg = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("a.yaml") && msg.contains("b.json"), "{msg}");
    assert!(msg.contains("data.limits.max"), "{msg}");
}

#[test]
fn bad_data_file_is_a_load_error_naming_it() {
    let dir = policy("allow := true");
    write(dir.path(), "broken.json", "{not json");
    let msg = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("broken.json"), "{msg}");
}

#[test]
fn revision_is_a_content_hash() {
    let a = policy("allow := true");
    let b = policy("allow := true");
    let ea = PolicyEngine::load(a.path()).unwrap();
    let eb = PolicyEngine::load(b.path()).unwrap();
    assert_eq!(ea.revision(), eb.revision());
    assert_eq!(ea.revision().len(), 12);
    assert!(ea.revision().chars().all(|c| c.is_ascii_hexdigit()));
    let c = policy("allow := false");
    assert_ne!(
        PolicyEngine::load(c.path()).unwrap().revision(),
        ea.revision()
    );
}

#[test]
fn regex_with_unicode_classes_works() {
    let dir = policy(r#"allow if regex.match(`(?i)^\s*deploy\b\d*`, input.text)"#);
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(
        both(&e, &json!({"text": "  DEPLOY now"})).effect,
        Effect::Allow
    );
    assert_eq!(both(&e, &json!({"text": "nope"})).effect, Effect::Deny);
}

#[test]
fn constructs_the_vm_cannot_compile_fall_back_to_the_interpreter() {
    // `with` in a policy rule: not supported by the bytecode VM compiler.
    let dir = policy("inner if input.x == 1\nallow if inner with input as {\"x\": 1}\n");
    let e = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(e.eval_path(), EvalPath::Interpreter);
    assert_eq!(e.decide(&json!({})).effect, Effect::Allow);
}

#[test]
fn decide_never_panics_on_odd_inputs() {
    let e = PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    let mut deep = json!("x");
    for _ in 0..200 {
        deep = json!({"a": deep});
    }
    for input in [
        json!(null),
        json!(42),
        json!("phase"),
        json!([1, 2, 3]),
        json!({"phase": 1, "tool": [], "mcp": "x"}),
        json!({"phase": "request", "mcp": {"method": "tools/call"}, "tool": {"name": "deploy_service", "arguments": {"service": {"a": 1}, "env": [1]}}}),
        json!({"phase": "request", "tool": deep}),
        json!({"big": 1e308, "neg": -0.0, "u": u64::MAX}),
    ] {
        let d = e.decide(&input);
        assert_eq!(d.effect, Effect::Deny, "{input}");
    }
}

#[test]
fn engine_is_shareable_across_threads() {
    let e = PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    let examples = ciba_gate::policy::testing::bundled_examples().unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for ex in &examples {
                    assert_eq!(e.decide(&ex.input).effect, ex.effect, "{}", ex.name);
                }
            });
        }
    });
}

#[test]
fn test_runner_reports_pass_fail_and_errors() {
    let dir = policy("allow if input.ok");
    write(
        dir.path(),
        "policy_test.rego",
        r#"package ciba_gate_test
import rego.v1
import data.ciba_gate
test_allows if ciba_gate.allow with input as {"ok": true}
test_fails if ciba_gate.allow with input as {"ok": false}
test_errors if to_number("x") == 1
test_not_bool := 5
helper := true
"#,
    );
    let report = run_tests(dir.path()).unwrap();
    let by_name = |n: &str| report.results.iter().find(|r| r.name == n).unwrap();
    assert!(by_name("test_allows").passed);
    assert!(!by_name("test_fails").passed);
    assert!(!by_name("test_errors").passed);
    assert!(by_name("test_errors").error.is_some());
    assert!(!by_name("test_not_bool").passed);
    assert!(!report.results.iter().any(|r| r.name == "helper"));
    assert_eq!((report.passed, report.failed), (1, 3));
    let out = report.render();
    assert_eq!(out.lines().last(), Some("1 passed, 3 failed"), "{out}");
    assert!(!report.success());
}

#[test]
fn test_runner_rejects_broken_test_files() {
    let dir = policy("allow := true");
    write(
        dir.path(),
        "x_test.rego",
        "package t\nimport rego.v1\ntest_x if {",
    );
    let msg = run_tests(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("x_test.rego"), "{msg}");
}
