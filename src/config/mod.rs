//! The one YAML configuration file: the root schema and its loading. Each section's
//! type lives with the subsystem that reads it (`proxy::config`, `approval::config`,
//! `store::config`, `telemetry::config`, ...) and validates itself; this module parses
//! the file, anchors relative paths at the file's directory, and names the file and the
//! key in every error. Nothing here builds runtime objects (`App::build` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::approval::config::ApprovalsConfig;
use crate::audit::EvidenceConfig;
use crate::policy::config::PolicyConfig;
use crate::proxy::config::{AgentConfig, Limits, UpstreamConfig, validate_upstreams};
use crate::store::config::StoreConfig;
use crate::telemetry::config::{LogConfig, TelemetryConfig};
use crate::validate::FieldError;

/// A configuration problem, always naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the agent-facing proxy listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Who this sidecar speaks for. Static: never taken from request headers.
    pub agent: AgentConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub evidence: EvidenceConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// Human approval of sensitive calls (OpenID Connect CIBA). Without it, a policy's
    /// `approve` blocks the call with `approval_not_configured`.
    #[serde(default)]
    pub approvals: Option<ApprovalsConfig>,
    /// Where pending approvals live: `memory` (default, one process) or `redis`
    /// (shared by replicas, survives restarts).
    #[serde(default)]
    pub store: StoreConfig,
    /// `admin:` — the listener for /metrics, /healthz and /readyz.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `telemetry:` — OpenTelemetry traces (off unless an endpoint is configured
    /// here or in `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `log:` — log level (`RUST_LOG` wins when set).
    #[serde(default)]
    pub log: LogConfig,
    /// `shutdown:` — what SIGTERM does.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// A parsed, validated config and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub file: PathBuf,
    pub config: Config,
}

impl LoadedConfig {
    /// Reads, parses and validates the file.
    pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::new(file, "(file)", format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    /// Parses and validates config text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // An unknown top-level key that is the empty string has an empty path
            // (found by fuzzing): name the top level rather than print nothing.
            let key = if key == "." || key.is_empty() {
                "(top level)".to_string()
            } else {
                key
            };
            ConfigError::new(file, key, e.inner().to_string())
        })?;
        let loaded_base = base_dir(file);
        if let Some(dir) = config.policy.dir.as_mut() {
            *dir = loaded_base.join(&*dir);
        }
        if let Some(dir) = config.policy.shadow.as_mut().and_then(|s| s.dir.as_mut()) {
            *dir = loaded_base.join(&*dir);
        }
        if let Some(p) = &config.evidence.path {
            config.evidence.path = Some(loaded_base.join(p));
        }
        let loaded = LoadedConfig {
            file: file.to_path_buf(),
            config,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// The directory relative paths in the file are anchored at.
    pub fn base(&self) -> PathBuf {
        base_dir(&self.file)
    }

    /// `err` for a problem a section found under `section`.
    pub fn field_error(&self, section: &str, e: FieldError) -> ConfigError {
        let e = if section.is_empty() {
            e
        } else {
            e.under(section)
        };
        ConfigError::new(&self.file, e.key, e.problem)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let at = |section: &'static str| move |e: FieldError| self.field_error(section, e);
        c.agent.validate().map_err(at("agent"))?;
        c.policy.validate().map_err(at("policy"))?;
        c.limits.validate().map_err(at("limits"))?;
        c.evidence.validate().map_err(at("evidence"))?;
        c.telemetry.validate().map_err(at("telemetry"))?;
        c.log.validate().map_err(at("log"))?;
        validate_upstreams(&c.upstreams).map_err(at("upstreams"))?;
        c.store.validate().map_err(at("store"))?;
        if let Some(a) = &c.approvals {
            a.validate(c.store.is_shared()).map_err(at("approvals"))?;
        }
        Ok(())
    }
}

fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `shutdown:` — on SIGTERM the gateway stops accepting, lets held calls run until
/// `drain`, then answers the rest "shutting down, retry" and exits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain: default_drain(),
        }
    }
}

fn default_drain() -> Duration {
    Duration::from_secs(20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_empty_top_level_key_is_reported_at_the_top_level() {
        let text = "agent: {id: a}\n\"\": 1\npolicy: {dir: p}\nupstreams: []\n";
        let e = LoadedConfig::parse(Path::new("/etc/ciba-gate/c.yaml"), text).unwrap_err();
        assert_eq!(e.key, "(top level)", "{e}");
        assert!(e.problem.contains("unknown field"), "{e}");
    }
}
