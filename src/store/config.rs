//! The `store:` section: in-memory (one process) or Redis (shared by replicas).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::redis::RedisSettings;
use crate::validate::{Checked, FieldError, require};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub kind: StoreKind,
    /// `redis://host:port/db` or `rediss://…` (TLS). Give `url` or `url_env`.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL (keeps a password out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// The URL names a Redis Cluster node.
    #[serde(default)]
    pub cluster: bool,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// For `rediss://`: a PEM file of the CA to trust instead of the system store.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            url: None,
            url_env: None,
            cluster: false,
            key_prefix: default_key_prefix(),
            connect_timeout: default_store_timeout(),
            response_timeout: default_store_timeout(),
            tls_ca_file: None,
        }
    }
}

fn default_key_prefix() -> String {
    "ciba-gate:".into()
}

fn default_store_timeout() -> Duration {
    Duration::from_secs(2)
}

impl StoreConfig {
    /// True when replicas share the store (the state key must then be shared too).
    pub fn is_shared(&self) -> bool {
        self.kind != StoreKind::Memory
    }

    pub fn validate(&self) -> Checked {
        if self.kind == StoreKind::Memory {
            return Ok(());
        }
        match (&self.url, &self.url_env) {
            (Some(u), None) => check_redis_url(u).map_err(|e| FieldError::new("url", e))?,
            (None, Some(v)) if !v.is_empty() => {}
            _ => return Err(FieldError::new("", "give url or url_env (exactly one)")),
        }
        require(
            !self.key_prefix.contains(['{', '}']),
            "key_prefix",
            "must not contain '{' or '}'",
        )?;
        require(
            !self.connect_timeout.is_zero(),
            "connect_timeout",
            "must be greater than 0",
        )?;
        require(
            !self.response_timeout.is_zero(),
            "response_timeout",
            "must be greater than 0",
        )
    }

    /// The Redis settings (URL read from the environment if so configured); `None` for
    /// the in-memory store. `base` is the config file's directory.
    pub fn resolve(&self, base: &Path) -> Checked<Option<RedisSettings>> {
        if self.kind == StoreKind::Memory {
            return Ok(None);
        }
        let url = match (&self.url, &self.url_env) {
            (Some(u), _) => u.clone(),
            (None, Some(var)) => {
                let u = std::env::var(var).map_err(|_| {
                    FieldError::new("url_env", format!("environment variable {var} is not set"))
                })?;
                check_redis_url(&u).map_err(|e| FieldError::new("url_env", e))?;
                u
            }
            (None, None) => return Err(FieldError::new("", "give url or url_env")),
        };
        let tls_ca_pem = match &self.tls_ca_file {
            Some(f) => {
                let path = base.join(f);
                Some(std::fs::read(&path).map_err(|e| {
                    FieldError::new(
                        "tls_ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?)
            }
            None => None,
        };
        Ok(Some(RedisSettings {
            url,
            cluster: self.cluster,
            key_prefix: self.key_prefix.clone(),
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            tls_ca_pem,
        }))
    }
}

/// A Redis URL's scheme and host (never echoes the URL: it may hold a password).
fn check_redis_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err("must start with redis:// or rediss://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}
