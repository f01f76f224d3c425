//! The bundled example policies (`policies/`): expected decisions on varied inputs,
//! the bytecode VM and the interpreter agree, and the policies' own tests pass.

use std::path::Path;

use ciba_gate::policy::testing::{bundled_examples, run_tests};
use ciba_gate::policy::{Effect, EvalPath, PolicyEngine};

fn bundled() -> PolicyEngine {
    PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .expect("bundled policies load")
}

/// Every built-in call in the bundled policies is guarded by a type test or takes
/// typed values, and their complete rules give one value: the analysis proves
/// nothing in them can fail, so they run on the bytecode VM.
#[test]
fn bundled_policies_run_on_the_vm() {
    let engine = bundled();
    assert_eq!(engine.not_vm_exact(), None);
    assert_eq!(engine.eval_path(), EvalPath::Rvm);
}

#[test]
fn bundled_examples_decide_as_expected() {
    let engine = bundled();
    let mut failures = Vec::new();
    for ex in bundled_examples().unwrap() {
        for path in [EvalPath::Rvm, EvalPath::Interpreter] {
            let d = engine.decide_on(&ex.input, path);
            let code = match d.effect {
                Effect::Deny => d.reason_code().map(str::to_string),
                Effect::Approve => d
                    .approval
                    .as_ref()
                    .and_then(|a| a["action"].as_str())
                    .map(str::to_string),
                Effect::Allow => None,
            };
            if d.effect != ex.effect || code != ex.code {
                failures.push(format!(
                    "{} [{path:?}]: expected {:?} {:?}, got {:?} {:?} ({:?})",
                    ex.name, ex.effect, ex.code, d.effect, code, d.reasons
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn vm_and_interpreter_agree_on_every_rule_value() {
    let engine = bundled();
    for ex in bundled_examples().unwrap() {
        let rvm = engine.evaluate(&ex.input, EvalPath::Rvm).expect("rvm");
        let interp = engine
            .evaluate(&ex.input, EvalPath::Interpreter)
            .expect("interpreter");
        assert_eq!(rvm, interp, "rule values differ for {}", ex.name);
        let a = engine.decide_on(&ex.input, EvalPath::Rvm);
        let b = engine.decide_on(&ex.input, EvalPath::Interpreter);
        assert_eq!(
            (a.effect, &a.reasons, &a.approval),
            (b.effect, &b.reasons, &b.approval),
            "decisions differ for {}",
            ex.name
        );
    }
}

#[test]
fn approval_objects_are_complete_and_phone_safe() {
    let engine = bundled();
    for ex in bundled_examples().unwrap() {
        let d = engine.decide(&ex.input);
        if d.effect != Effect::Approve {
            continue;
        }
        let a = d.approval.expect("approval object");
        let msg = a["binding_message"].as_str().expect("binding_message");
        assert!(msg.len() <= 64, "{msg}");
        assert!(
            msg.chars()
                .all(|c| c.is_ascii_alphanumeric() || " -._+/!?#,:".contains(c)),
            "{msg}"
        );
        assert_eq!(a["scope"], "openid");
        assert!(a["requested_expiry"].as_u64().is_some());
    }
    let prod = bundled_examples()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "deploy payments prod")
        .expect("the example deploy payments prod");
    let d = engine.decide(&prod.input);
    assert_eq!(
        d.approval.expect("approval")["binding_message"],
        "Deploy payments to prod"
    );
}

#[test]
fn bundled_policy_tests_pass() {
    let report = run_tests(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .expect("policy tests load");
    let out = report.render();
    assert!(report.success(), "{out}");
    assert!(report.passed >= 30, "{out}");
    assert!(
        out.trim_end()
            .ends_with(&format!("{} passed, 0 failed", report.passed))
    );
}

/// With the bundled policies unchanged, every approval message fits the OP it is
/// written for: the policy reads the configured profile (`input.op`) and picks that
/// profile's templates, so strict OPs (oidc-provider's default rule, Okta: 20
/// characters, no spaces) are not refused every prompt.
#[test]
fn bundled_approval_messages_fit_every_shipped_profile() {
    use ciba_gate::approval::binding::{PROFILE_NAMES, Profile, check_samples};
    let engine = bundled();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for name in PROFILE_NAMES {
        let profile = Profile::named(name).unwrap();
        let mut approvals = 0;
        for ex in bundled_examples().unwrap() {
            let mut input = ex.input.clone();
            input["op"] = serde_json::json!({"binding_message_profile": name});
            let d = engine.decide(&input);
            if let Some(a) = d.approval {
                approvals += 1;
                let msg = a["binding_message"].as_str().expect("binding_message");
                assert!(
                    profile.check(msg).is_ok(),
                    "{name}: {msg:?}: {:?}",
                    profile.check(msg)
                );
            }
        }
        assert!(approvals > 0, "{name}: no approval among the examples");
        let (checked, problems) = check_samples(&engine, &dir, &profile).unwrap();
        assert!(checked > 0, "{name}: no sample approval checked");
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
}
