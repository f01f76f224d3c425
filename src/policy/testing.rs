//! Offline policy tests (`ciba-gate policy test`): every rule named `test_*` in every
//! package, evaluated on the interpreter (test rules use `with`, which the bytecode
//! VM does not support). A test passes iff it evaluates to `true`. The flags follow
//! `opa test`: `-v` (each test, its duration and `print` output), `--run REGEX`,
//! `--format pretty|json`, `--coverage` with a `--threshold`, `--explain fails|full`.
//!
//! regorus has no evaluation trace, so `--explain` is built from coverage of the one
//! test: where a test's body stopped (its last line that was evaluated: the condition
//! that did not hold) and every line the test evaluated, per file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use regorus::{Engine, Value};
use serde::Serialize;

use super::engine::{build_engine, error_text};
use super::files::{self, Kind};
use super::{PolicyError, PolicyOptions};

/// Which tests to run and what to collect.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Only tests whose full name (`data.pkg.test_x`) matches.
    pub run: Option<regex::Regex>,
    /// Collect line coverage over the run.
    pub coverage: bool,
    /// Explain failing tests, or every test.
    pub explain: Option<Explain>,
}

/// Which tests `--explain` explains (OPA's `--explain fails|full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    Fails,
    Full,
}

/// What one test evaluated: where its body stopped, and every line it reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// For a test that was undefined: the last line of its body that was evaluated
    /// (the condition that did not hold, or the one whose value ended the body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Location>,
    /// The source text of that line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// The lines the test evaluated, per file (test files included).
    pub evaluated: Vec<FileLines>,
}

/// Lines of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileLines {
    pub file: String,
    pub lines: Vec<u32>,
}

/// Where a test rule is defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub row: u32,
}

/// One `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// Package without the `data.` prefix, e.g. `ciba_gate_test`.
    pub package: String,
    pub name: String,
    pub location: Location,
    pub passed: bool,
    /// Evaluation error (with its file:line), or why the result did not count as a pass.
    pub error: Option<String>,
    /// Nanoseconds.
    pub duration: u64,
    /// What `print` wrote during the test.
    pub output: Vec<String>,
    /// With `--explain`: what the test evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

/// Line coverage of one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileCoverage {
    pub file: String,
    pub covered: Vec<u32>,
    pub not_covered: Vec<u32>,
    pub percent: f64,
}

/// Line coverage over all tests run. `percent` counts the policy files only (test
/// files are listed, but do not raise the figure).
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub files: Vec<FileCoverage>,
    pub covered_lines: usize,
    pub not_covered_lines: usize,
    pub percent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    pub passed: usize,
    pub failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
}

impl TestReport {
    /// True when there was at least one test and none failed.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }

    /// Human-readable output: failures (every test with `verbose`) with file:line and
    /// the reason, coverage when collected; the last line is exactly
    /// `N passed, M failed`.
    pub fn render(&self) -> String {
        self.render_with(false)
    }

    pub fn render_with(&self, verbose: bool) -> String {
        let mut out = String::new();
        for r in &self.results {
            if r.passed && !verbose && r.explanation.is_none() {
                continue;
            }
            let status = if r.passed { "PASS" } else { "FAIL" };
            let _ = write!(
                out,
                "{status} data.{}.{} ({}:{})",
                r.package, r.name, r.location.file, r.location.row
            );
            if verbose {
                let _ = write!(out, " {:.1} ms", r.duration as f64 / 1e6);
            }
            if let Some(err) = &r.error {
                let _ = write!(out, ": {}", err.lines().next().unwrap_or(""));
            }
            out.push('\n');
            if verbose || !r.passed {
                for line in &r.output {
                    let _ = writeln!(out, "  print: {line}");
                }
            }
            if let Some(x) = &r.explanation {
                if let (Some(at), Some(expr)) = (&x.stopped_at, &x.expression) {
                    let _ = writeln!(out, "  explain: stopped at {}:{}: {expr}", at.file, at.row);
                }
                for f in &x.evaluated {
                    let _ = writeln!(out, "  explain: evaluated {}: {}", f.file, ranges(&f.lines));
                }
            }
        }
        if let Some(c) = &self.coverage {
            let _ = writeln!(
                out,
                "coverage: {:.2}% of policy lines ({} of {})",
                c.percent,
                c.covered_lines,
                c.covered_lines + c.not_covered_lines
            );
            for f in &c.files {
                let _ = write!(out, "  {} {:.2}%", f.file, f.percent);
                if !f.not_covered.is_empty() {
                    let _ = write!(out, ", not covered: {}", ranges(&f.not_covered));
                }
                out.push('\n');
            }
        }
        if !out.is_empty() {
            out.push_str("--------------------------------------------------------------------------------\n");
        }
        let _ = writeln!(out, "{} passed, {} failed", self.passed, self.failed);
        out
    }
}

/// `1, 3-5, 9` for sorted line numbers.
fn ranges(lines: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// Loads every `.rego` (including `*_test.rego`) and data file under `dir` and runs
/// every `test_*` rule.
pub fn run_tests(dir: &Path) -> Result<TestReport, PolicyError> {
    run_tests_with(dir, &TestOptions::default())
}

/// Runs the selected tests, each on its own copy of the engine (no state carries over).
pub fn run_tests_with(dir: &Path, options: &TestOptions) -> Result<TestReport, PolicyError> {
    let set = files::scan(dir, true)?;
    let (engine, _data, _defined, _analysis) = build_engine(&set, &PolicyOptions::default())?;

    // (package, rule, location), in file order, without duplicates (a rule may have
    // several bodies, in one file or several).
    let mut tests: Vec<(String, String, Location)> = Vec::new();
    let mut probe = Engine::new();
    for f in set
        .files
        .iter()
        .filter(|f| matches!(f.kind, Kind::Rego | Kind::Test))
    {
        let package = probe
            .add_policy(f.name.clone(), f.content.clone())
            .map_err(|e| PolicyError::Compile {
                path: f.name.clone().into(),
                message: e.to_string(),
            })?;
        let package = package.trim_start_matches("data.").to_string();
        for (name, row) in test_rule_names(&f.content) {
            // The parser is the authority: skip names that are not rules of this file.
            if probe
                .has_declared_rule_rooted_at(&f.name, &name)
                .unwrap_or(false)
                && !tests.iter().any(|(p, n, _)| p == &package && n == &name)
                && options
                    .run
                    .as_ref()
                    .is_none_or(|re| re.is_match(&format!("data.{package}.{name}")))
            {
                let location = Location {
                    file: f.name.clone(),
                    row,
                };
                tests.push((package.clone(), name, location));
            }
        }
    }

    let mut report = TestReport::default();
    let mut lines: BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)> = BTreeMap::new();
    for (package, name, location) in tests {
        let mut e = engine.clone();
        e.set_input(Value::new_object());
        e.set_gather_prints(true);
        e.set_enable_coverage(options.coverage);
        let started = crate::clock::now();
        let result = e.eval_rule(format!("data.{package}.{name}"));
        let duration = started.elapsed().as_nanos() as u64;
        let (passed, error) = match result {
            Ok(Value::Bool(true)) => (true, None),
            Ok(Value::Undefined) => (false, Some("undefined (a condition did not hold)".into())),
            Ok(other) => (
                false,
                Some(format!(
                    "expected true, got {}",
                    serde_json::to_string(&other).unwrap_or_default()
                )),
            ),
            Err(e) => (false, Some(error_text(&e.to_string()))),
        };
        let output = e.take_prints().unwrap_or_default();
        let explanation = match options.explain {
            Some(Explain::Full) => Some(()),
            Some(Explain::Fails) if !passed => Some(()),
            _ => None,
        }
        .map(|()| {
            let undefined = error.as_deref().is_some_and(|e| e.starts_with("undefined"));
            explain(&engine, &set, &package, &name, &location, undefined)
        });
        if options.coverage
            && let Ok(cov) = e.get_coverage_report()
        {
            for f in cov.files {
                let entry = lines.entry(f.path).or_default();
                entry.0.extend(f.covered);
                entry.1.extend(f.not_covered);
            }
        }
        if passed {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        report.results.push(TestResult {
            package,
            name,
            location,
            passed,
            error,
            duration,
            output,
            explanation,
        });
    }
    if options.coverage {
        report.coverage = Some(coverage_of(lines));
    }
    Ok(report)
}

/// Runs one test again with coverage of it alone and reads what it evaluated.
fn explain(
    engine: &Engine,
    set: &files::FileSet,
    package: &str,
    name: &str,
    location: &Location,
    undefined: bool,
) -> Explanation {
    let mut e = engine.clone();
    e.set_input(Value::new_object());
    e.set_enable_coverage(true);
    let _ = e.eval_rule(format!("data.{package}.{name}"));
    let mut evaluated: Vec<FileLines> = e
        .get_coverage_report()
        .map(|r| r.files)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !f.covered.is_empty())
        .map(|f| {
            let mut lines: Vec<u32> = f.covered.into_iter().collect();
            lines.sort_unstable();
            lines.dedup();
            FileLines {
                file: f.path,
                lines,
            }
        })
        .collect();
    evaluated.sort_by(|a, b| a.file.cmp(&b.file));
    let source = set
        .files
        .iter()
        .find(|f| f.name == location.file)
        .map(|f| f.content.as_str())
        .unwrap_or_default();
    let end = body_end(source, location.row);
    let stopped = undefined
        .then(|| {
            evaluated
                .iter()
                .find(|f| f.file == location.file)
                .and_then(|f| {
                    f.lines
                        .iter()
                        .rev()
                        .find(|l| (location.row..=end).contains(l))
                })
                .copied()
        })
        .flatten();
    Explanation {
        stopped_at: stopped.map(|row| Location {
            file: location.file.clone(),
            row,
        }),
        expression: stopped.and_then(|row| {
            source
                .lines()
                .nth(row as usize - 1)
                .map(|l| l.trim().to_string())
        }),
        evaluated,
    }
}

/// The last line of the rule that starts on `row`: its closing `}` at the start of a
/// line, or `row` itself for a one-line rule.
fn body_end(source: &str, row: u32) -> u32 {
    let lines: Vec<&str> = source.lines().collect();
    let first = lines.get(row as usize - 1).copied().unwrap_or_default();
    if !first.trim_end().ends_with('{') {
        return row;
    }
    for (i, line) in lines.iter().enumerate().skip(row as usize) {
        if line.starts_with('}') {
            return i as u32 + 1;
        }
    }
    lines.len() as u32
}

/// A line any test covered is covered.
fn coverage_of(lines: BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)>) -> Coverage {
    let percent = |c: usize, n: usize| {
        if c + n == 0 {
            100.0
        } else {
            100.0 * c as f64 / (c + n) as f64
        }
    };
    let (mut covered_lines, mut not_covered_lines) = (0, 0);
    let files = lines
        .into_iter()
        .map(|(file, (covered, not_covered))| {
            let not_covered: Vec<u32> = not_covered.difference(&covered).copied().collect();
            let covered: Vec<u32> = covered.into_iter().collect();
            if !file.ends_with("_test.rego") {
                covered_lines += covered.len();
                not_covered_lines += not_covered.len();
            }
            FileCoverage {
                percent: percent(covered.len(), not_covered.len()),
                file,
                covered,
                not_covered,
            }
        })
        .collect();
    Coverage {
        files,
        covered_lines,
        not_covered_lines,
        percent: percent(covered_lines, not_covered_lines),
    }
}

/// Candidate `test_*` rule names with the line of their first definition:
/// identifiers at the start of a line (rules are not indented in idiomatic Rego;
/// indented ones are checked against the parser too).
fn test_rule_names(src: &str) -> Vec<(String, u32)> {
    let mut names: Vec<(String, u32)> = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let line = line.trim_start();
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.iter().any(|(n, _)| *n == name) {
            names.push((name, i as u32 + 1));
        }
    }
    names
}

/// An input document for the bundled example policies and the decision they give.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Example {
    pub name: String,
    pub input: serde_json::Value,
    pub effect: super::Effect,
    /// Reason code for Deny, approval `action` for Approve, `None` for Allow.
    pub code: Option<String>,
}

/// Varied inputs for the bundled policies (`policies/`) with their expected
/// decisions, as data: used by the integration tests, the benchmarks and the OPA
/// differential test. Relative to the repository root.
pub const BUNDLED_EXAMPLES: &str = "tests/fixtures/bundled_examples.json";

/// Reads a JSON list of examples (`{name, input, effect, code}`).
pub fn load_examples(path: &Path) -> std::io::Result<Vec<Example>> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// The bundled policies' examples ([`BUNDLED_EXAMPLES`], read from the working
/// directory: the repository root under `cargo test` and `cargo bench`).
pub fn bundled_examples() -> std::io::Result<Vec<Example>> {
    load_examples(Path::new(BUNDLED_EXAMPLES))
}
