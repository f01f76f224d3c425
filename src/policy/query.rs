//! `ciba-gate policy eval QUERY`: any query over the policy set, as `opa eval` runs
//! one: the policy directory plus `--data` files, an optional input document, and the
//! values every result gives. `print` output is collected from the same evaluation,
//! so it sees the input.

use std::path::{Path, PathBuf};

use super::engine::{build_engine, error_text, to_value};
use super::files;
use super::{PolicyError, PolicyOptions};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Load(#[from] PolicyError),
    #[error("input: {0}")]
    Input(String),
    #[error("{0}")]
    Eval(String),
}

/// What a query gave.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// `{"result": [{"expressions": [{"value", "text", "location"}], "bindings"}]}`
    /// (the shape of `opa eval --format json`); `{}` when the query is undefined.
    pub results: serde_json::Value,
    /// What `print` wrote, in order.
    pub prints: Vec<String>,
}

impl QueryOutput {
    /// The value of each result's first expression (what `--format raw` prints).
    pub fn values(&self) -> Vec<&serde_json::Value> {
        self.results["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["expressions"].get(0).map(|e| &e["value"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Undefined: no result at all.
    pub fn is_undefined(&self) -> bool {
        self.values().is_empty()
    }
}

/// Evaluates `query` over the policies in `dir` (test files excluded) and the
/// `extra` files (`--data`), with `input` as `input`, on the interpreter with strict
/// built-in errors (an error is reported, not made undefined).
pub fn eval_query(
    dir: &Path,
    extra: &[PathBuf],
    input: Option<&serde_json::Value>,
    query: &str,
) -> Result<QueryOutput, QueryError> {
    let mut set = files::scan(dir, false)?;
    for path in extra {
        files::add_extra(&mut set, path)?;
    }
    let (mut engine, _data, _defined, _analysis) = build_engine(&set, &PolicyOptions::default())?;
    engine.set_gather_prints(true);
    if let Some(input) = input {
        engine.set_input(to_value(input).map_err(QueryError::Input)?);
    }
    let results = engine
        .eval_query(query.to_string(), false)
        .map_err(|e| QueryError::Eval(error_text(&e.to_string())))?;
    let prints = engine.take_prints().unwrap_or_default();
    let results = serde_json::to_value(&results).unwrap_or(serde_json::Value::Null);
    Ok(QueryOutput { results, prints })
}

/// The `print` output of evaluating the whole gateway package with `input` (what the
/// default query, the gateway decision, printed); errors are the decision's to report.
pub fn prints_of_decision(dir: &Path, extra: &[PathBuf], input: &serde_json::Value) -> Vec<String> {
    let query = format!("data.{}", super::PACKAGE);
    eval_query(dir, extra, Some(input), &query)
        .map(|o| o.prints)
        .unwrap_or_default()
}
