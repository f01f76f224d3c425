//! `ciba-gate policy test` and `ciba-gate policy eval`: the offline policy tools, with
//! the flags a security engineer knows from `opa test` and `opa eval`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::policy::query::{self, QueryOutput};
use crate::policy::testing::{self, TestOptions};
use crate::policy::{self, Decision, PolicyEngine};

/// Output format of the policy tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable.
    Pretty,
    /// One JSON document.
    Json,
    /// `eval` only: each result's value, strings unquoted, one per line.
    Raw,
}

/// What `policy test` is asked to do.
pub struct TestArgs {
    pub dir: PathBuf,
    pub verbose: bool,
    pub run: Option<String>,
    pub format: Format,
    pub coverage: bool,
    /// Minimum coverage of the policy files, in percent (implies coverage).
    pub threshold: Option<f64>,
    pub explain: Option<ExplainMode>,
}

/// `--explain`: which tests get an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainMode {
    /// Failing tests.
    Fails,
    /// Every test.
    Full,
}

/// Exit codes: 0 every test passed (and coverage met the threshold); 1 a test failed
/// or errored, or coverage is below the threshold; 2 no test matched.
pub fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    if args.format == Format::Raw {
        anyhow::bail!("--format raw is for policy eval; policy test prints pretty or json");
    }
    let run = args
        .run
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--run is not a valid regular expression")?;
    let options = TestOptions {
        run,
        coverage: args.coverage || args.threshold.is_some(),
        explain: args.explain.map(|m| match m {
            ExplainMode::Fails => testing::Explain::Fails,
            ExplainMode::Full => testing::Explain::Full,
        }),
    };
    let report = testing::run_tests_with(&args.dir, &options)?;
    if report.results.is_empty() {
        eprintln!(
            "no tests found in {}{} (tests are rules named test_* in .rego files)",
            args.dir.display(),
            args.run
                .as_deref()
                .map(|r| format!(" matching --run {r:?}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(2));
    }
    let below = match (&report.coverage, args.threshold) {
        (Some(c), Some(t)) if c.percent < t => Some((c.percent, t)),
        _ => None,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Pretty | Format::Raw => {
            if let Ok(engine) = PolicyEngine::load(&args.dir) {
                println!("{}", policy::evaluator_note(&engine));
            }
            print!("{}", report.render_with(args.verbose));
        }
    }
    if let Some((got, want)) = below {
        eprintln!("coverage {got:.2}% is below the threshold of {want}%");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `policy eval` is asked to do.
pub struct EvalArgs {
    /// `None`: the gateway decision.
    pub query: Option<String>,
    pub policies: PathBuf,
    pub input: Option<PathBuf>,
    pub data: Vec<PathBuf>,
    pub format: Format,
    /// Exit 1 when the query is undefined.
    pub fail: bool,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let input = match &args.input {
        Some(path) => Some(read_input(path)?),
        None => None,
    };
    match &args.query {
        None => {
            let input = input.context(
                "--input is required for the gateway decision (or give a query, e.g. data.ciba_gate.deny)",
            )?;
            let engine = PolicyEngine::load_extra(&args.policies, &args.data)?;
            let decision = engine.decide(&input);
            for line in query::prints_of_decision(&args.policies, &args.data, &input) {
                eprintln!("{line}");
            }
            print!("{}", render_decision(&decision, args.format)?);
            Ok(if args.fail && decision.effect != policy::Effect::Allow {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(q) => {
            let out = query::eval_query(&args.policies, &args.data, input.as_ref(), q)?;
            for line in &out.prints {
                eprintln!("{line}");
            }
            print!("{}", render_query(&out, args.format)?);
            Ok(if args.fail && out.is_undefined() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn read_input(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn render_decision(d: &Decision, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(d)?),
        Format::Raw => format!("{}\n", effect_name(d)),
        Format::Pretty => {
            let mut out = format!("effect: {}\n", effect_name(d));
            for r in &d.reasons {
                let _ = writeln!(out, "reason: {}: {}", r.code, r.message);
            }
            if let Some(a) = &d.approval {
                let _ = writeln!(out, "approval: {}", serde_json::to_string_pretty(a)?);
            }
            out
        }
    })
}

fn effect_name(d: &Decision) -> String {
    serde_json::to_value(d.effect)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn render_query(out: &QueryOutput, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&out.results)?),
        Format::Pretty => {
            if out.is_undefined() {
                return Ok("undefined\n".into());
            }
            let mut s = String::new();
            for v in out.values() {
                let _ = writeln!(s, "{}", serde_json::to_string_pretty(v)?);
            }
            s
        }
        Format::Raw => {
            let mut s = String::new();
            for v in out.values() {
                match v {
                    serde_json::Value::String(text) => s.push_str(text),
                    other => s.push_str(&serde_json::to_string(other)?),
                }
                s.push('\n');
            }
            s
        }
    })
}

/// One effect pair in `policy diff`.
#[derive(Debug, Default, serde::Serialize)]
pub struct PairSummary {
    pub enforced: String,
    pub shadow: String,
    pub count: u64,
    /// Calls by tool (or MCP method, or `-`).
    pub tools: std::collections::BTreeMap<String, u64>,
    /// Calls by the shadow's reason (deny code or approval action).
    pub reasons: std::collections::BTreeMap<String, u64>,
}

/// What `policy diff` found in evidence files.
#[derive(Debug, Default, serde::Serialize)]
pub struct DiffSummary {
    pub decisions: u64,
    pub differences: u64,
    pub pairs: Vec<PairSummary>,
}

/// Summarises the shadow differences recorded in evidence files.
pub fn diff_summary(texts: &[String]) -> DiffSummary {
    let mut out = DiffSummary::default();
    let mut pairs: std::collections::BTreeMap<(String, String), PairSummary> = Default::default();
    for line in texts.iter().flat_map(|t| t.lines()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(decision) = v.get("decision").and_then(|d| d.as_str()) else {
            continue; // a checkpoint, or not a record
        };
        out.decisions += 1;
        let Some(shadow) = v.get("shadow") else {
            continue;
        };
        out.differences += 1;
        let theirs = shadow["decision"].as_str().unwrap_or("?").to_string();
        let p = pairs
            .entry((decision.to_string(), theirs.clone()))
            .or_insert_with(|| PairSummary {
                enforced: decision.to_string(),
                shadow: theirs,
                ..PairSummary::default()
            });
        p.count += 1;
        let tool = v["tool"]
            .as_str()
            .or(v["mcp_method"].as_str())
            .unwrap_or("-")
            .to_string();
        *p.tools.entry(tool).or_default() += 1;
        if let Some(r) = shadow["reason"].as_str() {
            *p.reasons.entry(r.to_string()).or_default() += 1;
        }
    }
    out.pairs = pairs.into_values().collect();
    out.pairs.sort_by_key(|p| std::cmp::Reverse(p.count));
    out
}

/// `policy diff --evidence FILE…`: how the shadow policy set would have decided
/// differently. Exit 0 (differences are information, not failure).
pub fn diff(files: &[PathBuf], format: Format) -> anyhow::Result<ExitCode> {
    let mut texts = Vec::new();
    for f in files {
        texts.push(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?);
    }
    let s = diff_summary(&texts);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Format::Pretty | Format::Raw => {
            let pct = if s.decisions == 0 {
                0.0
            } else {
                100.0 * s.differences as f64 / s.decisions as f64
            };
            println!(
                "{} decisions, {} decided differently by the shadow policy ({pct:.2}%)",
                s.decisions, s.differences
            );
            for p in &s.pairs {
                let list = |m: &std::collections::BTreeMap<String, u64>| {
                    m.iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                print!(
                    "  {}→{}: {} (tools: {}",
                    p.enforced,
                    p.shadow,
                    p.count,
                    list(&p.tools)
                );
                if !p.reasons.is_empty() {
                    print!("; reasons: {}", list(&p.reasons));
                }
                println!(")");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
