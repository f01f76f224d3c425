//! A configuration problem in one field: the key path (relative to the section that
//! found it) and what is wrong. Sections validate themselves and return these; the
//! config loader prefixes the section's key and names the file.

/// What is wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct FieldError {
    pub key: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same problem under a parent key (`approvals` + `op.issuer`).
    pub fn under(mut self, parent: &str) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_string()
        } else if self.key.starts_with('[') {
            format!("{parent}{}", self.key)
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }
}

/// Shorthand for section validators.
pub type Checked<T = ()> = Result<T, FieldError>;

/// `Err` naming `key` unless `ok`.
pub fn require(ok: bool, key: &str, problem: &str) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(key, problem))
    }
}
