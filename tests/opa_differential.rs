//! Differential test: the bundled policies evaluated by real OPA (1.20, embedded in
//! the PyPI package `opa-golib-python-bindings`) and by this engine must give the
//! same `deny` sets, `approval` objects and `allow` values on varied inputs, and so
//! the same decisions.
//!
//! `tests/opa/install.sh` installs OPA into `target/opa-py` (once). If Python, pip or
//! the package cannot be had, this test FAILS: it never passes without OPA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ciba_gate::policy::testing::bundled_examples;
use ciba_gate::policy::{Decision, Effect, EvalPath, PolicyEngine, RuleValues, SAMPLE_SUFFIX};
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
        "installing real OPA for the differential test failed (needs python3, pip and \
         access to PyPI for opa-golib-python-bindings==0.4.4):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Modules and data documents of a policy directory, as the engine loads them
/// (no `*_test.rego`, no `*.sample.json` inputs; every data file's top-level object).
fn policy_sources(dir: &Path) -> (Vec<Value>, Vec<Value>) {
    let mut modules = Vec::new();
    let mut data = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with("_test.rego") || name.ends_with(SAMPLE_SUFFIX) {
                continue;
            } else if name.ends_with(".rego") {
                modules.push(json!({"name": rel, "source": text}));
            } else if name.ends_with(".json") {
                data.push(serde_json::from_str::<Value>(&text).unwrap());
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                data.push(serde_yaml_ng::from_str::<Value>(&text).unwrap());
            }
        }
    }
    (modules, data)
}

fn run_opa(dir: &Path, inputs: &[Value]) -> Vec<Value> {
    install_opa();
    let (modules, data) = policy_sources(dir);
    let request = json!({"modules": modules, "data": data, "rules": RULES, "inputs": inputs});
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root().join("tests/opa/eval.py"))
        .env("PYTHONPATH", opa_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 for the OPA differential test: {e}"));
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
    let results = reply["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), inputs.len());
    results
}

/// Sets come back as arrays in an order of the evaluator's choosing: compare sorted.
fn normalize_set(v: Option<&Value>) -> Option<Vec<String>> {
    v.map(|v| {
        let mut items: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_else(|| vec![v.to_string()]);
        items.sort();
        items
    })
}

/// The decision the gateway takes from raw rule values (CONTRACT.md).
fn decide_from(values: &RuleValues, input: &Value) -> (Effect, Option<Value>) {
    let denied = values
        .deny
        .as_ref()
        .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()) || d == &json!(true));
    if denied {
        return (Effect::Deny, None);
    }
    if input["phase"] != "approved"
        && let Some(a) = &values.approval
    {
        return (Effect::Approve, Some(a.clone()));
    }
    if values.allow == Some(json!(true)) {
        (Effect::Allow, None)
    } else {
        (Effect::Deny, None)
    }
}

fn inputs() -> Vec<Value> {
    let mut inputs: Vec<Value> = bundled_examples()
        .unwrap()
        .into_iter()
        .map(|e| e.input)
        .collect();
    let deploy = inputs
        .iter()
        .find(|i| i["tool"]["name"] == "deploy_service" && i["phase"] == "request")
        .unwrap()
        .clone();
    // Argument values the examples do not cover.
    for (service, env) in [
        (json!("checkout"), json!("dev")),
        (json!("search"), json!("qa")),
        (json!("PAYMENTS"), json!("prod")),
        (json!(null), json!("prod")),
        (json!(["payments"]), json!("prod")),
        (json!({"name": "payments"}), json!("dev")),
        (json!("payments"), json!(1.5)),
        (json!("payments"), json!(true)),
        (json!("billing"), json!(" prod")),
        (json!("payments\u{0000}"), json!("prod")),
    ] {
        let mut i = deploy.clone();
        i["tool"]["arguments"] = json!({"service": service, "env": env});
        inputs.push(i);
    }
    let mut i = deploy.clone();
    i["tool"]["annotations"] = json!({"destructiveHint": true});
    inputs.push(i);
    let mut i = deploy.clone();
    i["tool"]["arguments"] = json!("service=payments");
    inputs.push(i);
    let mut i = deploy.clone();
    i["mcp"] = json!("tools/call");
    inputs.push(i);
    let mut i = deploy.clone();
    i["phase"] = json!("other");
    inputs.push(i);
    let mut i = deploy;
    i["phase"] = json!("approved");
    i["approval"] = json!({"subject_hash": 7, "binding_message": "Deploy payments to prod"});
    inputs.push(i);
    inputs.push(json!({"phase": "request", "mcp": {"method": 5, "kind": "notification"}}));
    inputs.push(json!({"phase": "request", "upstream": {"kind": "mcp"}, "request": {"method": "GET"}, "mcp": {}}));
    inputs.push(json!({"phase": "request", "upstream": {"kind": "http"}, "tool": {"name": "delete_issue", "arguments": {"project": "a-b.c_d", "id": 12}}}));
    inputs.push(json!({"phase": "request", "upstream": {"kind": "http"}, "tool": {"name": "delete_issue", "arguments": {"project": "x".repeat(33), "id": "1"}}}));
    inputs.push(json!({"phase": "request", "upstream": {"kind": "http"}, "tool": {"name": "delete_issue", "arguments": {"project": "web", "id": "12345678901"}}}));
    inputs
}

#[test]
fn bundled_policies_match_real_opa() {
    let dir = root().join("policies");
    let engine = PolicyEngine::load(&dir).expect("bundled policies load");
    let inputs = inputs();
    assert!(inputs.len() >= 40, "only {} inputs", inputs.len());
    let opa = run_opa(&dir, &inputs);

    let mut mismatches = Vec::new();
    let mut effects = std::collections::BTreeMap::<String, usize>::new();
    for (input, opa_out) in inputs.iter().zip(&opa) {
        assert!(
            opa_out.get("error").is_none(),
            "OPA failed to evaluate {input}: {opa_out}"
        );
        let opa_values = RuleValues {
            deny: opa_out.get(RULES[0]).cloned(),
            approval: opa_out.get(RULES[1]).cloned(),
            allow: opa_out.get(RULES[2]).cloned(),
        };
        for path in [EvalPath::Rvm, EvalPath::Interpreter] {
            let ours = engine.evaluate(input, path).expect("engine evaluates");
            let same = normalize_set(ours.deny.as_ref()) == normalize_set(opa_values.deny.as_ref())
                && ours.approval == opa_values.approval
                && ours.allow == opa_values.allow;
            if !same {
                mismatches.push(format!(
                    "{path:?} input {input}\n  ours: {ours:?}\n  opa:  {opa_values:?}"
                ));
                continue;
            }
            let decision: Decision = engine.decide_on(input, path);
            let (opa_effect, opa_approval) = decide_from(&opa_values, input);
            if decision.effect != opa_effect || decision.approval != opa_approval {
                mismatches.push(format!(
                    "{path:?} decision for {input}: ours {:?} {:?}, from OPA values {opa_effect:?} {opa_approval:?}",
                    decision.effect, decision.approval
                ));
            }
            if path == EvalPath::Rvm {
                *effects.entry(format!("{:?}", decision.effect)).or_default() += 1;
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The inputs exercise every outcome.
    for effect in ["Allow", "Deny", "Approve"] {
        assert!(
            effects.get(effect).copied().unwrap_or(0) >= 3,
            "{effects:?}"
        );
    }
    eprintln!(
        "OPA and ciba-gate agree on {} inputs: {effects:?}",
        inputs.len()
    );
}
