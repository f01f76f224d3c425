//! Where a secret comes from: an environment variable or a file, never the config text.
//! One type for every secret the gateway reads (upstream credentials, the OP client
//! secret, the state key, a user code). The value is a `SecretString`: it never prints.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::validate::{Checked, FieldError};

/// `{env: NAME}` or `{file: PATH}` (relative to the config file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Exactly one of `env` or `file`.
    pub fn validate(&self) -> Checked {
        match (&self.env, &self.file) {
            (Some(v), None) if !v.is_empty() => Ok(()),
            (None, Some(_)) => Ok(()),
            _ => Err(FieldError::new(
                "",
                "give exactly one of `env` or `file` (secrets are never inline)",
            )),
        }
    }

    /// Reads the secret (a file's trailing newline is dropped). `base` is the config
    /// file's directory. Errors name the key below this source (`env` / `file`).
    pub fn read(&self, base: &Path) -> Checked<SecretString> {
        self.read_raw(base).map(SecretString::from)
    }

    /// Like `read`, for values that are identifiers rather than secrets (a user hint).
    pub fn read_raw(&self, base: &Path) -> Checked<String> {
        self.validate()?;
        let raw = match (&self.env, &self.file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                FieldError::new("env", format!("environment variable {var} is not set"))
            })?,
            (None, Some(path)) => {
                let path = base.join(path);
                std::fs::read_to_string(&path).map_err(|e| {
                    FieldError::new("file", format!("cannot read {}: {e}", path.display()))
                })?
            }
            (None, None) => unreachable_source()?,
        };
        let v = raw.trim_end_matches(['\r', '\n']).to_string();
        if v.is_empty() {
            return Err(FieldError::new("", "the secret is empty"));
        }
        Ok(v)
    }
}

fn unreachable_source() -> Checked<String> {
    Err(FieldError::new("", "give exactly one of `env` or `file`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_secret_comes_from_exactly_one_place_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "hunter2\n").unwrap();
        let src = SecretSource {
            env: None,
            file: Some("s".into()),
        };
        let s = src.read(dir.path()).unwrap();
        assert_eq!(s.expose_secret(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(SecretSource::default().validate().is_err());
        let both = SecretSource {
            env: Some("X".into()),
            file: Some("s".into()),
        };
        assert!(both.validate().is_err());
        let missing = SecretSource {
            env: Some("CIBA_GATE_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert_eq!(missing.read(dir.path()).unwrap_err().key, "env");
    }
}
