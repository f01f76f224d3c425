//! A compiled policy set and the decision procedure.
//!
//! Compiled once per revision: the interpreter `Engine` (prepared, cloned once per
//! worker thread) and, for VM-exact policy sets (see `analysis`), an RVM `Program`
//! shared by `Arc` and run by one `RegoVM` per worker thread. Nothing on the decision
//! path parses policy text.
//!
//! Every evaluation error is a `policy_error` deny: built-in errors are strict (as
//! OPA's `--strict-builtin-errors`), two bodies of a complete rule or function giving
//! different values are a conflict error. regorus' VM (0.14) cannot report either (it
//! makes the rule undefined), so it only runs policy sets in which neither can happen;
//! every other set runs on the interpreter, which reports both.

use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine, Value};
use serde::Deserialize;

use super::analysis::{Analysis, analyze};
use super::files::{FileSet, Kind, merge_data};
use super::{
    Decision, Effect, EvalPath, PACKAGE, PolicyError, PolicyOptions, Reason, RuleValues, codes,
};

mod evaluator;
mod messages;
mod reasons;

use evaluator::{Evaluator, drop_thread_caches};
pub(crate) use messages::error_text;
use messages::*;
pub(crate) use reasons::deny_reasons;

/// The three rules the gateway reads, in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    Deny = 0,
    Approval = 1,
    Allow = 2,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::Deny, Rule::Approval, Rule::Allow];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Deny => "deny",
            Rule::Approval => "approval",
            Rule::Allow => "allow",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Rule::Deny => "data.ciba_gate.deny",
            Rule::Approval => "data.ciba_gate.approval",
            Rule::Allow => "data.ciba_gate.allow",
        }
    }
}

/// Evaluates the three rules in one VM run, so helper rules they share are computed
/// once. Each value is wrapped (`{"v": value}`, `{}` when undefined) to keep
/// "undefined" distinct from every value.
const COMBINED_PATH: &str = "data.ciba_gate_internal.decision";
const COMBINED_MODULE: &str = r#"package ciba_gate_internal

import rego.v1

default deny_w := {}

deny_w := {"v": data.ciba_gate.deny}

default approval_w := {}

approval_w := {"v": data.ciba_gate.approval}

default allow_w := {}

allow_w := {"v": data.ciba_gate.allow}

decision := [deny_w, approval_w, allow_w]
"#;

/// Distinguishes compiled policy sets in the per-thread caches.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Rvm {
    program: Arc<Program>,
    policy: CompiledPolicy,
}

struct Ready {
    /// Prepared interpreter (evaluated once, so clones are cheap).
    engine: Engine,
    rvm: Option<Rvm>,
    data: Value,
    /// Which of deny / approval / allow the policy defines.
    defined: [bool; 3],
    options: PolicyOptions,
    /// Why the set is not VM-exact (`None`: it is).
    not_vm_exact: Option<String>,
}

pub(crate) struct Compiled {
    pub revision: Arc<str>,
    /// The content hash of the files it was compiled from (`None`: no policy).
    pub content_hash: Option<String>,
    id: u64,
    ready: Result<Ready, String>,
    /// An evaluation error of this revision was logged (logged once per revision;
    /// every one is counted in `ciba_gate_policy_errors`).
    error_logged: AtomicBool,
}

fn compile_err(name: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Compile {
        path: PathBuf::from(name),
        message: message.into(),
    }
}

fn timer_config(options: &PolicyOptions) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: options.time_limit,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    }
}

/// Builds an interpreter engine holding every policy file (and test file, when the
/// set has them) and the merged data.
pub(crate) fn build_engine(
    set: &FileSet,
    options: &PolicyOptions,
) -> Result<(Engine, Value, [bool; 3], Analysis), PolicyError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    engine.set_execution_timer_config(timer_config(options));
    // Like OPA with `--strict-builtin-errors`: a built-in error (e.g.
    // `to_number("x")`, a division by zero) stops the evaluation with an error,
    // which the gateway answers with a `policy_error` deny. Without it a failing
    // `deny` body would silently not deny.
    engine.set_strict_builtin_errors(true);
    let mut defined = [false; 3];
    let mut any_rego = false;
    for f in &set.files {
        if !matches!(f.kind, Kind::Rego | Kind::Test) {
            continue;
        }
        any_rego = true;
        let package = engine
            .add_policy(f.name.clone(), f.content.clone())
            .map_err(|e| compile_err(&f.name, first_lines(&e.to_string())))?;
        if package == format!("data.{PACKAGE}") {
            for rule in Rule::ALL {
                if engine
                    .has_declared_rule_rooted_at(&f.name, rule.name())
                    .unwrap_or(false)
                {
                    defined[rule as usize] = true;
                }
            }
        }
    }
    if !any_rego {
        return Err(PolicyError::Compile {
            path: set.dir.clone(),
            message: "no .rego files".to_string(),
        });
    }
    let data_json = merge_data(set)?;
    let analysis = analyze(set, &data_json)?;
    let data = Value::from(data_json);
    engine
        .add_data(data.clone())
        .map_err(|e| compile_err("data", first_lines(&e.to_string())))?;
    Ok((engine, data, defined, analysis))
}

impl Compiled {
    pub fn build(set: &FileSet, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let (mut engine, data, defined, analysis) = build_engine(set, options)?;
        if !defined.iter().any(|d| *d) {
            return Err(PolicyError::Compile {
                path: set.dir.clone(),
                message: format!("no rule deny, approval or allow in package {PACKAGE}"),
            });
        }
        let entry_points: Vec<&str> = Rule::ALL
            .iter()
            .filter(|r| defined[**r as usize])
            .map(|r| r.path())
            .collect();

        engine
            .add_policy(
                "<ciba-gate>/decision.rego".to_string(),
                COMBINED_MODULE.to_string(),
            )
            .map_err(|e| compile_err("<ciba-gate>/decision.rego", e.to_string()))?;
        // Type-check: bad references and the like fail here, with the file name in
        // the message.
        let first = regorus::Rc::from(entry_points[0]);
        let policy = engine.compile_with_entrypoint(&first).map_err(|e| {
            let msg = e.to_string();
            compile_err(&locate(&msg, set), first_lines(&msg))
        })?;
        // Evaluate once so per-thread clones of the engine are cheap. An input-dependent
        // error here is not a load error: decisions report it.
        engine.set_input(Value::new_object());
        let _ = engine.eval_rule(COMBINED_PATH.to_string());
        for ep in &entry_points {
            let _ = engine.eval_rule((*ep).to_string());
        }
        engine.set_input(Value::Null);

        let revision: Arc<str> = Arc::from(set.revision());
        // The VM compiler is also the only place that rejects calls to unknown
        // functions up front (the interpreter finds them at evaluation time), so it
        // runs even when the VM is not wanted.
        let rvm = match compile_rvm(policy, &[COMBINED_PATH]) {
            Ok(rvm) => Some(rvm),
            Err(e) if e.contains("Unknown function") => {
                return Err(compile_err(&locate(&e, set), first_lines(&e)));
            }
            Err(e) => {
                if options.prefer_rvm {
                    tracing::warn!(
                        revision = %revision,
                        error = %first_lines(&e),
                        "policy uses constructs the bytecode VM cannot compile; using the interpreter"
                    );
                }
                None
            }
        };
        let not_vm_exact = analysis.not_vm_exact;
        let rvm = rvm.filter(|_| options.prefer_rvm && not_vm_exact.is_none());
        tracing::debug!(
            revision = %revision,
            eval_path = if rvm.is_some() { "rvm" } else { "interpreter" },
            not_vm_exact = not_vm_exact.as_deref().unwrap_or(""),
            "policy compiled"
        );
        Ok(Compiled {
            revision,
            content_hash: Some(set.content_hash()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ready: Ok(Ready {
                engine,
                rvm,
                data,
                defined,
                options: *options,
                not_vm_exact,
            }),
            error_logged: AtomicBool::new(false),
        })
    }

    pub fn unavailable(message: String) -> Self {
        Compiled {
            revision: Arc::from("none"),
            content_hash: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ready: Err(message),
            error_logged: AtomicBool::new(false),
        }
    }

    /// `None` when the policy set is VM-exact, else why not.
    pub fn not_vm_exact(&self) -> Option<&str> {
        match &self.ready {
            Ok(r) => r.not_vm_exact.as_deref(),
            Err(_) => Some("no policy is loaded"),
        }
    }

    /// Counts one evaluation error; logs the first of this revision.
    fn record_error(&self, msg: &str, panicked: bool) {
        crate::telemetry::metrics::policy_error();
        if self.error_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(revision = %self.revision, error = %msg, "policy evaluation failed");
        } else if panicked {
            tracing::error!(revision = %self.revision, "policy evaluation panicked; denying (logged once per revision, counted in ciba_gate_policy_errors)");
        } else {
            tracing::warn!(revision = %self.revision, error = %msg, "policy evaluation failed; denying (logged once per revision, counted in ciba_gate_policy_errors)");
        }
    }

    pub fn eval_path(&self) -> EvalPath {
        match &self.ready {
            Ok(r) if r.rvm.is_some() => EvalPath::Rvm,
            _ => EvalPath::Interpreter,
        }
    }

    pub fn decide(&self, input: &serde_json::Value, path: Option<EvalPath>) -> Decision {
        let ready = match &self.ready {
            Ok(r) => r,
            Err(msg) => {
                return Decision::deny(
                    codes::POLICY_UNAVAILABLE,
                    format!("no policy is loaded: {msg}"),
                    self.revision.clone(),
                );
            }
        };
        let path = self.resolve_path(path);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.decide_ready(ready, input, path)));
        match outcome {
            Ok(Ok(decision)) => decision,
            Ok(Err(msg)) => {
                let msg = scrub(&msg, input);
                self.record_error(&msg, false);
                Decision::deny(
                    codes::POLICY_ERROR,
                    format!("policy evaluation failed: {msg}"),
                    self.revision.clone(),
                )
            }
            Err(_) => {
                // The evaluator's state is unknown after a panic: drop this thread's copies.
                drop_thread_caches(self.id);
                self.record_error("panic", true);
                Decision::deny(
                    codes::POLICY_ERROR,
                    "policy evaluation failed: internal error in the policy engine",
                    self.revision.clone(),
                )
            }
        }
    }

    fn resolve_path(&self, path: Option<EvalPath>) -> EvalPath {
        let available = self.eval_path();
        match path {
            Some(EvalPath::Interpreter) => EvalPath::Interpreter,
            _ => available,
        }
    }

    fn decide_ready(
        &self,
        ready: &Ready,
        input: &serde_json::Value,
        path: EvalPath,
    ) -> Result<Decision, String> {
        let value = to_value(input)?;
        let mut eval = Evaluator::new(self.id, ready, path, value);

        let deny = eval.rule(Rule::Deny)?;
        let reasons = deny_reasons(&deny)?;
        if !reasons.is_empty() {
            return Ok(Decision {
                effect: Effect::Deny,
                reasons,
                approval: None,
                revision: self.revision.clone(),
            });
        }

        let approved_phase = input.get("phase").and_then(|p| p.as_str()) == Some("approved");
        if !approved_phase {
            let approval = eval.rule(Rule::Approval)?;
            match approval {
                Value::Undefined => {}
                Value::Object(_) => {
                    let json = serde_json::to_value(&approval).map_err(|e| e.to_string())?;
                    return Ok(Decision {
                        effect: Effect::Approve,
                        reasons: Vec::new(),
                        approval: Some(json),
                        revision: self.revision.clone(),
                    });
                }
                _ => return Err("rule approval must be an object".to_string()),
            }
        }

        match eval.rule(Rule::Allow)? {
            Value::Bool(true) => Ok(Decision {
                effect: Effect::Allow,
                reasons: Vec::new(),
                approval: None,
                revision: self.revision.clone(),
            }),
            Value::Bool(false) | Value::Undefined => Ok(Decision::deny(
                codes::NO_MATCHING_RULE,
                if approved_phase {
                    "the policy does not allow this call after approval"
                } else {
                    "no policy rule allows this call"
                },
                self.revision.clone(),
            )),
            _ => Err("rule allow must be a boolean".to_string()),
        }
    }

    pub fn evaluate(
        &self,
        input: &serde_json::Value,
        path: EvalPath,
    ) -> Result<RuleValues, PolicyError> {
        let ready = self.ready.as_ref().map_err(|msg| PolicyError::Compile {
            path: PathBuf::from("policy"),
            message: msg.clone(),
        })?;
        let path = self.resolve_path(Some(path));
        let eval_err = |msg: String| PolicyError::Compile {
            path: PathBuf::from(Rule::Deny.path().trim_end_matches(".deny")),
            message: msg,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<RuleValues, String> {
            let value = to_value(input)?;
            let mut eval = Evaluator::new(self.id, ready, path, value);
            let mut out = [None, None, None];
            for rule in Rule::ALL {
                let v = eval.rule(rule)?;
                if v != Value::Undefined {
                    out[rule as usize] = Some(serde_json::to_value(&v).map_err(|e| e.to_string())?);
                }
            }
            let [deny, approval, allow] = out;
            Ok(RuleValues {
                deny,
                approval,
                allow,
            })
        }));
        match outcome {
            Ok(r) => r.map_err(eval_err),
            Err(_) => {
                drop_thread_caches(self.id);
                Err(eval_err("internal error in the policy engine".to_string()))
            }
        }
    }
}

/// The input document as the engine holds it.
pub(crate) fn to_value(input: &serde_json::Value) -> Result<Value, String> {
    Value::deserialize(input).map_err(|e| format!("input is not a valid document: {e}"))
}

fn compile_rvm(policy: CompiledPolicy, entry_points: &[&str]) -> Result<Rvm, String> {
    let program =
        Compiler::compile_from_policy(&policy, entry_points).map_err(|e| e.to_string())?;
    Ok(Rvm { program, policy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_input_strings() {
        let input =
            serde_json::json!({"tool": {"arguments": {"token": "s3cr3t-value", "n": "ab"}}});
        let out = scrub("bad value s3cr3t-value in arguments near ab", &input);
        assert!(!out.contains("s3cr3t-value"), "{out}");
        assert!(out.contains("<redacted>"));
        // Short strings are left alone (they would mangle the message).
        assert!(out.contains("near ab"));
    }

    #[test]
    fn deny_reasons_shapes() {
        let v =
            Value::from_json_str(r#"["a", {"code": "c", "message": "m"}, {"message": "only"}, 3]"#)
                .unwrap_or(Value::Undefined);
        let r = deny_reasons(&v).unwrap_or_default();
        let codes: Vec<&str> = r.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(
            codes,
            ["policy_denied", "c", "policy_denied", "policy_denied"]
        );
        assert_eq!(r[2].message, "only");
        assert!(deny_reasons(&Value::from("x")).is_err());
        assert!(
            deny_reasons(&Value::Undefined)
                .unwrap_or_default()
                .is_empty()
        );
    }
}
