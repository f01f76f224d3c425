//! Differential test of evaluation errors: a corpus of erroring and conflicting
//! policies run through this engine and through real OPA (1.20, strict built-in
//! errors, from the PyPI package `opa-golib-python-bindings`; see tests/opa/).
//!
//! - every case OPA's compiler rejects must be a load error here;
//! - every case OPA evaluates with an error (in `deny`, `approval` or `allow`) must be
//!   a `policy_error` deny here, on every evaluator the engine would use;
//! - every case OPA evaluates without error must decide as OPA's values say.
//!
//! If Python, pip or the package cannot be had, this test FAILS: it never passes
//! without OPA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ciba_gate::policy::{Effect, EvalPath, PolicyEngine};
use serde_json::{Value, json};

const RULES: [&str; 3] = ["ciba_gate.deny", "ciba_gate.approval", "ciba_gate.allow"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opa_dir() -> PathBuf {
    std::env::var_os("OPA_PY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/opa-py"))
}

fn install_opa() {
    let out = Command::new("bash")
        .arg(root().join("tests/opa/install.sh"))
        .env("OPA_PY_DIR", opa_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/opa/install.sh (bash): {e}"));
    assert!(
        out.status.success(),
        "installing real OPA failed (needs python3, pip and PyPI):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One case: a `ciba_gate` module (after `package` and `import rego.v1`) and inputs.
struct Case {
    name: &'static str,
    rego: &'static str,
    inputs: Vec<Value>,
}

fn case(name: &'static str, rego: &'static str, inputs: Vec<Value>) -> Case {
    Case { name, rego, inputs }
}

fn call(args: Value) -> Value {
    json!({"phase": "request", "mcp": {"method": "tools/call", "kind": "request"},
           "tool": {"name": "deploy_service", "arguments": args}})
}

fn corpus() -> Vec<Case> {
    vec![
        // --- built-in errors in `deny` -----------------------------------------------
        case(
            "to_number of a word",
            r#"allow := true
deny contains "big" if to_number(input.tool.arguments.env) > 1"#,
            vec![call(json!({"env": "prod"})), call(json!({"env": "0"}))],
        ),
        case(
            "division by zero",
            r#"allow := true
deny contains "ratio" if 10 / input.tool.arguments.n > 1"#,
            vec![call(json!({"n": 0})), call(json!({"n": 100}))],
        ),
        case(
            "modulo by zero",
            r#"allow := true
deny contains "mod" if 10 % input.tool.arguments.n == 0"#,
            vec![call(json!({"n": 0})), call(json!({"n": 3}))],
        ),
        case(
            "string plus number",
            r#"allow := true
deny contains "plus" if {
	x := input.tool.arguments.env + 1
	x > 0
}"#,
            vec![call(json!({"env": "prod"}))],
        ),
        case(
            "invalid regex pattern from input",
            r#"allow := true
deny contains "re" if regex.match(input.tool.arguments.pattern, "x")"#,
            vec![call(json!({"pattern": "("})), call(json!({"pattern": "y"}))],
        ),
        case(
            "startswith on a number",
            r#"allow := true
deny contains "prefix" if startswith(input.tool.arguments.env, "prod")"#,
            vec![call(json!({"env": 5})), call(json!({"env": "dev"}))],
        ),
        case(
            "count of a number",
            r#"allow := true
deny contains "count" if count(input.tool.arguments.env) > 3"#,
            vec![call(json!({"env": 5})), call(json!({"env": "ab"}))],
        ),
        case(
            "object.get on a string",
            r#"allow := true
deny contains "get" if object.get(input.tool.arguments.env, "a", 1) == 1"#,
            vec![call(json!({"env": "prod"}))],
        ),
        case(
            "json.unmarshal of broken JSON",
            r#"allow := true
deny contains "json" if json.unmarshal(input.tool.arguments.doc).a == 1"#,
            vec![
                call(json!({"doc": "{"})),
                call(json!({"doc": "{\"a\": 2}"})),
            ],
        ),
        case(
            "base64.decode of non-base64",
            r#"allow := true
deny contains "b64" if base64.decode(input.tool.arguments.doc) == "x""#,
            vec![call(json!({"doc": "!!!"}))],
        ),
        case(
            "concat of numbers",
            r#"allow := true
deny contains "concat" if concat(",", input.tool.arguments.list) == "1,2""#,
            vec![call(json!({"list": [1, 2]})), call(json!({"list": ["a"]}))],
        ),
        case(
            "upper of a number",
            r#"allow := true
deny contains "upper" if upper(input.tool.arguments.env) == "PROD""#,
            vec![call(json!({"env": 7}))],
        ),
        case(
            "split of a number",
            r#"allow := true
deny contains "split" if count(split(input.tool.arguments.env, ",")) > 1"#,
            vec![call(json!({"env": 7}))],
        ),
        case(
            "numbers.range with a fraction",
            r#"allow := true
deny contains "range" if count(numbers.range(1, input.tool.arguments.n)) > 1"#,
            vec![call(json!({"n": 1.5})), call(json!({"n": 1}))],
        ),
        case(
            "time.parse_rfc3339_ns of a word",
            r#"allow := true
deny contains "time" if time.parse_rfc3339_ns(input.tool.arguments.at) > 0"#,
            vec![call(json!({"at": "yesterday"}))],
        ),
        case(
            "set union with an array",
            r#"allow := true
deny contains "union" if count(input.tool.arguments.list | {1}) > 0"#,
            vec![call(json!({"list": [1, 2]}))],
        ),
        case(
            "array.concat with a string",
            r#"allow := true
deny contains "arr" if count(array.concat(input.tool.arguments.list, [1])) > 0"#,
            vec![call(json!({"list": "x"}))],
        ),
        // --- conflicts -----------------------------------------------------------
        case(
            "conflicting approval with a broad allow",
            r#"allow := true
approval := {"action": "deploy", "binding_message": "Deploy to prod", "scope": "openid"} if {
	input.tool.name == "deploy_service"
}
approval := {"action": "deploy", "binding_message": "Deploy somewhere", "scope": "openid"} if {
	input.tool.arguments.env == "prod"
}"#,
            vec![call(json!({"env": "prod"})), call(json!({"env": "dev"}))],
        ),
        case(
            "conflicting helper of deny",
            r#"allow := true
risky := true if input.tool.name == "deploy_service"
risky := false if input.tool.arguments.env == "prod"
deny contains "risky" if risky"#,
            vec![call(json!({"env": "prod"})), call(json!({"env": "dev"}))],
        ),
        case(
            "conflicting negated helper of deny",
            r#"allow := true
safe := true if input.tool.arguments.env == "dev"
safe := false if startswith(input.tool.arguments.env, "d")
deny contains "unsafe" if not safe"#,
            vec![call(json!({"env": "dev"})), call(json!({"env": "prod"}))],
        ),
        case(
            "conflicting function",
            r#"allow := true
level(x) := 1 if x > 0
level(x) := 2 if x > 1
deny contains "high" if level(input.tool.arguments.n) == 1"#,
            vec![call(json!({"n": 5})), call(json!({"n": 1}))],
        ),
        case(
            "conflicting allow",
            r#"allow := input.a if input.a
allow := input.b if input.b"#,
            vec![
                json!({"a": "yes", "b": "no"}),
                json!({"a": true, "b": false}),
            ],
        ),
        case(
            "conflicting allow behind a default",
            r#"default allow := false
allow := true if input.a
allow := false if input.b"#,
            vec![json!({"a": true, "b": true}), json!({"a": true})],
        ),
        case(
            "object comprehension key conflict",
            r#"allow := true
deny contains "obj" if {
	o := {k: v | some v in input.tool.arguments.list; k := "same"}
	count(o) > 0
}"#,
            vec![call(json!({"list": [1, 2]})), call(json!({"list": [1]}))],
        ),
        case(
            "several values from one body",
            r#"allow := true
level := x if some x in input.tool.arguments.list
deny contains "one" if level == 1"#,
            vec![call(json!({"list": [1, 2]})), call(json!({"list": [1]}))],
        ),
        // --- guarded and exclusive: these run on the VM ----------------------------
        case(
            "built-ins behind type tests",
            r#"allow := true
deny contains concat("", ["bad ", input.tool.arguments.env]) if {
	is_string(input.tool.arguments.env)
	startswith(input.tool.arguments.env, "prod")
}
deny contains "odd" if {
	is_object(input.tool.arguments)
	object.get(input.tool.arguments, "n", 0) == 1
}"#,
            vec![
                call(json!({"env": 5})),
                call(json!({"env": "prod-1"})),
                call(json!({"env": ["prod"]})),
                call(json!({"env": "dev", "n": 1})),
                json!({"phase": "request", "tool": {"name": "x", "arguments": "flat"}}),
            ],
        ),
        case(
            "approvals in exclusive bodies",
            r#"allow := true
approval := {"action": "deploy", "binding_message": sprintf("Deploy %v", [input.tool.arguments.env])} if {
	input.tool.name == "deploy_service"
}
approval := {"action": "delete", "binding_message": "Delete"} if {
	input.tool.name == "delete_issue"
}"#,
            vec![
                call(json!({"env": "prod"})),
                call(json!({"env": {"nested": true}})),
                json!({"phase": "request", "tool": {"name": "delete_issue", "arguments": {}}}),
            ],
        ),
        // --- where the error sits --------------------------------------------------
        case(
            "error in a list-phase rule",
            r#"allow if input.phase == "list"
deny contains "listed" if {
	input.phase == "list"
	to_number(input.tool.name) > 0
}"#,
            vec![json!({"phase": "list", "tool": {"name": "deploy_service"}})],
        ),
        case(
            "error in an else value",
            r#"allow := true
level := "high" if input.tool.arguments.env == "prod"
else := to_number(input.tool.arguments.env)
deny contains "level" if level == 1"#,
            vec![call(json!({"env": "dev"})), call(json!({"env": "prod"}))],
        ),
        case(
            "error under with",
            r#"allow := true
big if to_number(input.tool.arguments.env) > 1
deny contains "with" if big with input.tool.arguments.env as "prod""#,
            vec![call(json!({"env": "1"}))],
        ),
        case(
            "error in a comprehension",
            r#"allow := true
deny contains "compr" if {
	nums := [n | some v in input.tool.arguments.list; n := to_number(v)]
	count(nums) > 5
}"#,
            vec![
                call(json!({"list": ["1", "x"]})),
                call(json!({"list": ["1"]})),
            ],
        ),
        case(
            "error under every",
            r#"allow := true
deny contains "every" if {
	every v in input.tool.arguments.list { to_number(v) > 0 }
}"#,
            vec![call(json!({"list": ["x"]}))],
        ),
        case(
            "error under some",
            r#"allow := true
deny contains "some" if {
	some v in input.tool.arguments.list
	to_number(v) > 100
}"#,
            vec![call(json!({"list": ["5", "x"]}))],
        ),
        case(
            "error in the approval value",
            r#"allow := true
approval := {"action": "deploy", "binding_message": upper(input.tool.arguments.env), "scope": "openid"} if {
	input.tool.name == "deploy_service"
}"#,
            vec![call(json!({"env": 5})), call(json!({"env": "prod"}))],
        ),
        case(
            "error in an allow body",
            r#"allow if to_number(input.tool.arguments.env) > 0"#,
            vec![call(json!({"env": "prod"})), call(json!({"env": "3"}))],
        ),
        case(
            "error in a helper function",
            r#"allow := true
weight(x) := to_number(x) * 2
deny contains "heavy" if weight(input.tool.arguments.env) > 10"#,
            vec![call(json!({"env": "prod"})), call(json!({"env": "9"}))],
        ),
        case(
            "conflict after approval",
            r#"approval := {"action": "deploy", "binding_message": "Deploy", "scope": "openid"} if input.phase == "request"
allow := true if input.phase == "approved"
allow := false if input.approval.subject_hash == "x""#,
            vec![json!({"phase": "approved", "approval": {"subject_hash": "x"}})],
        ),
        // --- no error: the engine must agree with OPA's values -----------------------
        case(
            "comparison across types is no error",
            r#"allow := true
deny contains "lt" if input.tool.arguments.n < "a""#,
            vec![call(json!({"n": 5})), call(json!({"n": "b"}))],
        ),
        case(
            "guarded built-ins",
            r#"allow := true
deny contains "prod" if {
	is_string(input.tool.arguments.env)
	startswith(input.tool.arguments.env, "prod")
}"#,
            vec![call(json!({"env": 5})), call(json!({"env": "production"}))],
        ),
        case(
            "equal values from two definitions",
            r#"allow if input.a
allow if input.b"#,
            vec![json!({"a": true, "b": true}), json!({})],
        ),
    ]
}

/// Policies OPA's compiler rejects: each must be a load error here.
fn compile_corpus() -> Vec<(&'static str, &'static str)> {
    vec![
        ("unsafe variable", r#"deny contains x if input.y == 1"#),
        ("unsafe variable in a body", r#"allow if { y == 1 }"#),
        ("undefined function", r#"deny contains "x" if nope(1)"#),
        (
            "undefined function in another package",
            r#"deny contains "x" if data.elsewhere.check(1)"#,
        ),
        (
            "conflicting rule kinds",
            r#"deny contains "a" if input.x
deny := {"b"} if input.y"#,
        ),
        ("built-in arity", r#"allow if startswith("a")"#),
        (
            "function arity",
            r#"f(a) := a
allow if f(1, 2, 3)"#,
        ),
        (
            "function defined with two arities",
            r#"f(a) := a
f(a, b) := b
allow if f(1)"#,
        ),
        (
            "a rule called as a function",
            r#"r := 1
allow if r(1)"#,
        ),
        ("string plus number literal", r#"allow if "prod" + 1 > 0"#),
    ]
}

fn module(rego: &str) -> String {
    format!("package ciba_gate\n\nimport rego.v1\n\n{rego}\n")
}

/// OPA's answer per input: `Err(message)` when any of the three rules failed,
/// else the rule values.
fn run_opa(rego: &str, inputs: &[Value]) -> Vec<Result<[Option<Value>; 3], String>> {
    let request = json!({
        "modules": [{"name": "policy.rego", "source": module(rego)}],
        "data": [],
        "rules": RULES,
        "inputs": inputs,
    });
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root().join("tests/opa/eval.py"))
        .env("PYTHONPATH", opa_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/opa/eval.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("eval.py prints JSON");
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match r.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok([
                r.get(RULES[0]).cloned(),
                r.get(RULES[1]).cloned(),
                r.get(RULES[2]).cloned(),
            ]),
        })
        .collect()
}

/// The effect the gateway takes from rule values (docs/policy-contract.md).
fn effect_from(values: &[Option<Value>; 3], input: &Value) -> Effect {
    let denied = values[0]
        .as_ref()
        .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()) || d == &json!(true));
    if denied {
        return Effect::Deny;
    }
    if input["phase"] != "approved" && values[1].is_some() {
        return Effect::Approve;
    }
    if values[2] == Some(json!(true)) {
        Effect::Allow
    } else {
        Effect::Deny
    }
}

fn policy_dir(rego: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.rego"), module(rego)).unwrap();
    dir
}

fn load(dir: &Path) -> Result<PolicyEngine, String> {
    PolicyEngine::load(dir).map_err(|e| e.to_string())
}

#[test]
fn every_policy_error_opa_reports_is_a_policy_error_deny_here() {
    install_opa();
    let corpus = corpus();
    assert!(corpus.len() >= 30, "only {} cases", corpus.len());
    let mut problems = Vec::new();
    let (mut opa_errors, mut agreed) = (0, 0);
    for case in &corpus {
        let dir = policy_dir(case.rego);
        let engine = match load(dir.path()) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: does not load here: {e}", case.name));
                continue;
            }
        };
        let opa = run_opa(case.rego, &case.inputs);
        for (input, opa) in case.inputs.iter().zip(opa) {
            if let Err(e) = &opa
                && e.contains("prepare_error")
            {
                problems.push(format!("{}: OPA does not compile it: {e}", case.name));
                continue;
            }
            for path in [EvalPath::Rvm, EvalPath::Interpreter] {
                let d = engine.decide_on(input, path);
                match &opa {
                    Err(e) => {
                        opa_errors += 1;
                        if d.effect != Effect::Deny || d.reason_code() != Some("policy_error") {
                            problems.push(format!(
                                "{} [{path:?}] {input}: OPA error {e}, here {:?} {:?}",
                                case.name, d.effect, d.reasons
                            ));
                        } else if d.reasons[0]
                            .message
                            .trim_end_matches(':')
                            .ends_with("failed")
                        {
                            problems.push(format!(
                                "{} [{path:?}]: the deny does not say what failed: {:?}",
                                case.name, d.reasons
                            ));
                        }
                    }
                    Ok(values) => {
                        let want = effect_from(values, input);
                        if d.effect != want {
                            problems.push(format!(
                                "{} [{path:?}] {input}: OPA values {values:?} mean {want:?}, here {:?} {:?}",
                                case.name, d.effect, d.reasons
                            ));
                        } else {
                            agreed += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(opa_errors >= 60, "only {opa_errors} erroring evaluations");
    eprintln!(
        "{} cases: {opa_errors} evaluations OPA reports as errors are policy_error denies here; {agreed} error-free evaluations agree",
        corpus.len()
    );
}

/// An object rule next to a rule for one of its keys: OPA reports the clash when it
/// happens; regorus would let one value win, so such a set is refused at load.
#[test]
fn an_object_rule_beside_a_rule_for_one_of_its_keys_is_refused_at_load() {
    install_opa();
    let rego = r#"allow := true
limits[k] := v if some k, v in input.tool.arguments
limits.env := "fixed"
deny contains "limit" if limits.env == "prod""#;
    let opa = run_opa(rego, &[call(json!({"env": "prod"}))]);
    assert!(
        matches!(&opa[0], Err(e) if e.contains("conflict")),
        "OPA: {:?}",
        opa[0]
    );
    let dir = policy_dir(rego);
    let err = load(dir.path()).expect_err("refused at load");
    assert!(err.contains("limits"), "{err}");
}

#[test]
fn every_policy_opa_refuses_to_compile_is_a_load_error_here() {
    install_opa();
    let mut problems = Vec::new();
    for (name, rego) in compile_corpus() {
        let opa = run_opa(rego, &[json!({})]);
        let opa_refuses = matches!(&opa[0], Err(e) if e.contains("prepare_error"));
        if !opa_refuses {
            problems.push(format!("{name}: OPA compiles it ({:?})", opa[0]));
            continue;
        }
        let dir = policy_dir(rego);
        if let Ok(engine) = load(dir.path()) {
            problems.push(format!(
                "{name}: loads here (then decides {:?}) though OPA refuses it: {:?}",
                engine.decide(&json!({})).effect,
                opa[0]
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
