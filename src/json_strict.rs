//! Placeholder with the strict parser's API (replaced by the strict parser).
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
}

impl Limits {
    pub const DEPTH_CEILING: usize = 127;
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StrictJsonError(String);

impl StrictJsonError {
    pub fn reason(&self) -> &'static str {
        "syntax"
    }
    pub fn is_parse_error(&self) -> bool {
        true
    }
}

pub fn parse(bytes: &[u8], _limits: Limits) -> Result<Value, StrictJsonError> {
    serde_json::from_slice(bytes).map_err(|e| StrictJsonError(e.to_string()))
}
