//! Rego policy: loads a directory of `*.rego` and data files, decides allow / deny /
//! approve for one input document, reloads on change without ever dropping to "no
//! policy". Knows nothing of HTTP or MCP: it sees only the input document.
//!
//! Public API used by the proxy:
//!   PolicyEngine::load(dir) -> Result<PolicyEngine, PolicyError>
//!   PolicyEngine::decide(&self, input: &serde_json::Value) -> Decision   (never panics, never errors:
//!       a load/eval error or no match is a Deny with a reason code)
//!   PolicyEngine::revision(&self) -> Arc<str>     content hash of the policy set in force
//!   PolicyEngine::spawn_reloader(&self, interval: Duration) -> tokio::task::JoinHandle<()>
//!   PolicyEngine::reload_failures(&self) -> u64 / reloads(&self) -> u64
//!   testing::run_tests(dir) -> Result<TestReport, PolicyError>
//!
//! Evaluation runs on regorus' tree-walking interpreter with strict built-in errors,
//! or, for policy sets the static analysis proves VM-exact (nothing in them can fail
//! at run time), on regorus' bytecode VM (one VM per worker thread, cached in a
//! thread local keyed by the compiled policy). Every evaluation error is a Deny
//! `policy_error`.

mod analysis;
pub mod bundle;
pub mod config;
mod engine;
mod types;
/// For the fuzz targets (`crate::fuzzing`): the input document as the engine holds it.
pub(crate) use engine::to_value as engine_document;
mod files;
pub mod input;
pub use files::SAMPLE_SUFFIX;
pub mod query;
mod reload;
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use engine::Compiled;

/// Package the gateway reads its rules from.
pub const PACKAGE: &str = "ciba_gate";

/// What the gateway does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    Approve,
}

/// One reason for a decision: a stable machine code and a sentence for people and models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// Non-empty for Deny. For Allow/Approve usually empty.
    pub reasons: Vec<Reason>,
    /// The policy's `approval` object, when effect is Approve.
    pub approval: Option<serde_json::Value>,
    /// Content hash of the policy set that made the decision.
    pub revision: Arc<str>,
}

impl Decision {
    /// A Deny with one reason.
    pub fn deny(code: &str, message: impl Into<String>, revision: Arc<str>) -> Self {
        Decision {
            effect: Effect::Deny,
            reasons: vec![Reason {
                code: code.to_string(),
                message: message.into(),
            }],
            approval: None,
            revision,
        }
    }

    /// Code of the first reason (what the gateway reports to the agent), if any.
    pub fn reason_code(&self) -> Option<&str> {
        self.reasons.first().map(|r| r.code.as_str())
    }
}

/// One line for `check` and `policy test`: which evaluator decides, and why.
pub fn evaluator_note(engine: &PolicyEngine) -> String {
    match (engine.not_vm_exact(), engine.eval_path()) {
        (None, EvalPath::Rvm) => "VM-exact: decided on the bytecode VM".to_string(),
        (None, EvalPath::Interpreter) => {
            "VM-exact, decided on the interpreter (the VM is turned off)".to_string()
        }
        (Some(why), _) => format!("not VM-exact ({why}): decided on the interpreter"),
    }
}

/// Reason codes the engine itself produces (policies produce their own).
pub mod codes {
    /// A `deny` element that is a plain string.
    pub const POLICY_DENIED: &str = "policy_denied";
    /// Neither deny, approval nor allow matched.
    pub const NO_MATCHING_RULE: &str = "no_matching_rule";
    /// No policy could be loaded.
    pub const POLICY_UNAVAILABLE: &str = "policy_unavailable";
    /// The policy failed to evaluate (error, limit hit, malformed result).
    pub const POLICY_ERROR: &str = "policy_error";
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Compile { path: PathBuf, message: String },
}

/// Which evaluator runs a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalPath {
    /// regorus' bytecode VM (the fast path).
    Rvm,
    /// regorus' tree-walking interpreter (fallback; also runs `test_` rules).
    Interpreter,
}

/// Limits applied to every evaluation so a bad policy cannot stall a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Maximum number of VM instructions per rule evaluation (fast path).
    pub max_instructions: usize,
    /// Wall-clock limit per rule evaluation (both paths).
    pub time_limit: Duration,
    /// Use the bytecode VM when it can compile the policy set.
    pub prefer_rvm: bool,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            max_instructions: 1_000_000,
            // A backstop: the instruction limit is the guard against runaway policies.
            // A loaded node must not turn an ordinary evaluation into a deny.
            time_limit: Duration::from_secs(1),
            prefer_rvm: true,
        }
    }
}

/// The raw values of the three rules for one input (`None` = undefined), as JSON.
/// Sets come out as arrays in the set's (sorted) order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleValues {
    pub deny: Option<serde_json::Value>,
    pub approval: Option<serde_json::Value>,
    pub allow: Option<serde_json::Value>,
}

struct Shared {
    dir: PathBuf,
    options: PolicyOptions,
    current: ArcSwap<Compiled>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// Why the policy source (a bundle server) last failed; `None` while it is fine.
    source_problem: std::sync::Mutex<Option<String>>,
}

/// The policy set in force. Cheap to clone (all clones share the same policy and
/// see reloads). Readers never block: the compiled policy sits behind an `ArcSwap`.
#[derive(Clone)]
pub struct PolicyEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.shared.dir)
            .field("revision", &self.revision())
            .field("eval_path", &self.eval_path())
            .finish()
    }
}

impl PolicyEngine {
    /// Loads and compiles every `*.rego` (except `*_test.rego`) and data file under `dir`.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        Self::load_with(dir, PolicyOptions::default())
    }

    /// Like [`PolicyEngine::load`] with explicit limits.
    pub fn load_with(dir: &Path, options: PolicyOptions) -> Result<Self, PolicyError> {
        let set = files::scan(dir, false)?;
        let compiled = Compiled::build(&set, &options)?;
        tracing::info!(
            dir = %dir.display(),
            revision = %compiled.revision,
            eval_path = ?compiled.eval_path(),
            files = set.files.len(),
            "policy loaded"
        );
        Ok(Self::from_compiled(dir, options, compiled))
    }

    /// Loads `dir` plus the files named in `extra` (`policy eval --data`): their data
    /// merges with the directory's. Not reloaded.
    pub fn load_extra(dir: &Path, extra: &[PathBuf]) -> Result<Self, PolicyError> {
        let mut set = files::scan(dir, false)?;
        for path in extra {
            files::add_extra(&mut set, path)?;
        }
        let options = PolicyOptions::default();
        let compiled = Compiled::build(&set, &options)?;
        Ok(Self::from_compiled(dir, options, compiled))
    }

    /// Starts without a usable policy when `dir` does not load: every decision is a
    /// Deny `policy_unavailable` until the reloader picks up a good policy set.
    /// Returns the load error (if any) so the caller can report it.
    pub fn load_or_unavailable(dir: &Path, options: PolicyOptions) -> (Self, Option<PolicyError>) {
        match Self::load_with(dir, options) {
            Ok(engine) => (engine, None),
            Err(err) => {
                tracing::error!(dir = %dir.display(), error = %err, "policy failed to load; denying every call until it is fixed");
                let compiled = Compiled::unavailable(err.to_string());
                (Self::from_compiled(dir, options, compiled), Some(err))
            }
        }
    }

    /// An engine for a policy that comes from a bundle server (`source` names it):
    /// every decision is a Deny `policy_unavailable` until the first bundle is in force.
    pub fn awaiting_bundle(source: &str, options: PolicyOptions) -> Self {
        let compiled = Compiled::unavailable(format!("waiting for the first bundle from {source}"));
        Self::from_compiled(Path::new(source), options, compiled)
    }

    /// Compiles `set` and puts it in force; a set that does not compile leaves the
    /// policy in force (counted as a failed reload).
    pub(crate) fn install(&self, set: files::FileSet) -> Result<bool, PolicyError> {
        reload::install(self, &set)
    }

    /// Notes why the policy source last failed (`None`: it is fine again).
    pub(crate) fn set_source_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.shared.source_problem.lock() {
            *p = problem;
        }
    }

    /// Why the policy source (a bundle server) last failed, while it does.
    pub fn source_problem(&self) -> Option<String> {
        self.shared
            .source_problem
            .lock()
            .ok()
            .and_then(|p| p.clone())
    }

    fn from_compiled(dir: &Path, options: PolicyOptions, compiled: Compiled) -> Self {
        PolicyEngine {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                options,
                current: ArcSwap::from_pointee(compiled),
                reloads: AtomicU64::new(0),
                reload_failures: AtomicU64::new(0),
                source_problem: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Decides one input document (see docs/policy-contract.md). Never panics, never errors.
    pub fn decide(&self, input: &serde_json::Value) -> Decision {
        let started = crate::clock::now();
        let decision = self.shared.current.load().decide(input, None);
        crate::telemetry::metrics::policy_evaluation(started.elapsed());
        decision
    }

    /// Decides on a chosen evaluator (for tests and benches). Asking for the VM when the
    /// policy set could not be compiled for it uses the interpreter.
    pub fn decide_on(&self, input: &serde_json::Value, path: EvalPath) -> Decision {
        self.shared.current.load().decide(input, Some(path))
    }

    /// Evaluates `deny`, `approval` and `allow` and returns their raw values
    /// (for `policy eval`, differential tests and debugging).
    pub fn evaluate(
        &self,
        input: &serde_json::Value,
        path: EvalPath,
    ) -> Result<RuleValues, PolicyError> {
        self.shared.current.load().evaluate(input, path)
    }

    /// Content hash of the policy set in force (12 hex digits of SHA-256).
    pub fn revision(&self) -> Arc<str> {
        self.shared.current.load().revision.clone()
    }

    /// The evaluator `decide` uses for the policy set in force.
    pub fn eval_path(&self) -> EvalPath {
        self.shared.current.load().eval_path()
    }

    /// `None` when the policy set in force is VM-exact (it runs on the bytecode VM
    /// unless `prefer_rvm` is off), else why it is not (it runs on the interpreter).
    pub fn not_vm_exact(&self) -> Option<String> {
        self.shared
            .current
            .load()
            .not_vm_exact()
            .map(str::to_string)
    }

    /// The directory the policy is loaded from.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::Relaxed)
    }

    /// Rejected reloads (policy set changed but failed to load) since start.
    pub fn reload_failures(&self) -> u64 {
        self.shared.reload_failures.load(Ordering::Relaxed)
    }

    /// Checks the directory once and swaps in a new policy set if its content changed.
    /// Returns `Ok(true)` when a new policy went into force, `Ok(false)` when nothing
    /// changed, `Err` when the changed set was rejected (the old one stays in force).
    /// The periodic reloader calls this; it is public for tests and a reload endpoint.
    pub fn reload_now(&self) -> Result<bool, PolicyError> {
        reload::check_once(self, &mut reload::ReloadState::default())
    }

    /// Polls the directory every `interval` and reloads on change. Must be called
    /// within a tokio runtime. Abort the handle to stop it.
    pub fn spawn_reloader(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        reload::spawn(self.clone(), interval)
    }
}
