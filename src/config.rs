//! The one YAML configuration file: typed with serde, validated at start-up with
//! errors that name the file, the key and what is wrong. Secrets are never inline:
//! they are read from environment variables or files when the config is resolved.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::routes::PathTemplate;

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
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.rego` and data files. Relative to the config file.
    pub dir: PathBuf,
    /// How often the directory is checked for changes (0s disables hot reload).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body the gateway reads (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in an inspected body.
    #[serde(default = "default_max_depth")]
    pub max_json_depth: usize,
    /// Largest upstream JSON answer the gateway rewrites (tools/list filtering, batches).
    #[serde(default = "default_max_response")]
    pub max_inspected_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_json_depth: default_max_depth(),
            max_inspected_response_bytes: default_max_response(),
        }
    }
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_depth() -> usize {
    64
}
fn default_max_response() -> usize {
    8 * 1024 * 1024
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    #[serde(default)]
    pub sink: EvidenceSink,
    /// File to append to when `sink: file`. Relative to the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceSink {
    #[default]
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// An MCP Streamable HTTP server: JSON-RPC bodies are parsed and put to policy.
    Mcp,
    /// A plain HTTP tool API: routes map method + path to a tool name.
    Http,
}

impl fmt::Display for UpstreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamKind::Mcp => "mcp",
            UpstreamKind::Http => "http",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    /// Path prefix on the gateway that leads to this upstream.
    pub mount: String,
    /// Base URL of the tool server (http://host:port/path).
    pub url: String,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers (the body may stream longer).
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// The upstream's own credential, injected by the gateway.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Forward the agent's own `Authorization` header (off: no token passthrough).
    #[serde(default)]
    pub forward_agent_authorization: bool,
    /// Plain HTTP routes (kind: http).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Header to set, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Text put before the secret, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the secret (trailing newline trimmed). Relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub method: String,
    /// Path template below the mount, e.g. `/projects/{project}/issues`.
    pub path: String,
    pub tool: String,
}

/// A secret value that never prints itself.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the config came from; used to resolve relative paths and name the file in errors.
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
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            ConfigError::new(file, key, e.inner().to_string())
        })?;
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.policy.dir = base.join(&config.policy.dir);
        if let Some(p) = &config.evidence.path {
            config.evidence.path = Some(base.join(p));
        }
        for u in &mut config.upstreams {
            if let Some(c) = &mut u.credential
                && let Some(f) = &c.file
            {
                c.file = Some(base.join(f));
            }
        }
        let loaded = LoadedConfig {
            file: file.to_path_buf(),
            config,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, key, problem)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.agent.id.trim().is_empty() {
            return Err(self.err("agent.id", "must not be empty"));
        }
        if !c.policy.dir.is_dir() {
            return Err(self.err(
                "policy.dir",
                format!("{} is not a directory", c.policy.dir.display()),
            ));
        }
        if c.limits.max_body_bytes == 0 {
            return Err(self.err("limits.max_body_bytes", "must be greater than 0"));
        }
        if !(2..=512).contains(&c.limits.max_json_depth) {
            return Err(self.err("limits.max_json_depth", "must be between 2 and 512"));
        }
        if c.evidence.sink == EvidenceSink::File && c.evidence.path.is_none() {
            return Err(self.err("evidence.path", "required when evidence.sink is file"));
        }
        if c.upstreams.is_empty() {
            return Err(self.err("upstreams", "at least one upstream is required"));
        }
        let mut names = HashSet::new();
        let mut mounts = HashSet::new();
        for (i, u) in c.upstreams.iter().enumerate() {
            let key = |k: &str| format!("upstreams[{i}].{k}");
            if u.name.is_empty()
                || !u
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(self.err(
                    key("name"),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                ));
            }
            if !names.insert(u.name.as_str()) {
                return Err(self.err(key("name"), format!("duplicate upstream name {:?}", u.name)));
            }
            if !u.mount.starts_with('/') || (u.mount.len() > 1 && u.mount.ends_with('/')) {
                return Err(self.err(key("mount"), "must start with '/' and not end with '/'"));
            }
            if !mounts.insert(u.mount.as_str()) {
                return Err(self.err(key("mount"), format!("duplicate mount {:?}", u.mount)));
            }
            match u.url.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {}
                Ok(uri) if uri.scheme_str() == Some("https") => {
                    return Err(self.err(
                        key("url"),
                        "https upstreams are not supported yet; run the tool server beside the sidecar over http",
                    ));
                }
                _ => return Err(self.err(key("url"), "must be an absolute http:// URL")),
            }
            if u.connect_timeout.is_zero() || u.response_timeout.is_zero() {
                return Err(self.err(key("connect_timeout"), "timeouts must be greater than 0"));
            }
            if let Some(cred) = &u.credential {
                if http::HeaderName::from_bytes(cred.header.as_bytes()).is_err() {
                    return Err(self.err(key("credential.header"), "is not a valid header name"));
                }
                match (&cred.env, &cred.file) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(self.err(
                            key("credential"),
                            "give exactly one of `env` or `file` (secrets are never inline)",
                        ));
                    }
                    _ => {}
                }
            }
            match u.kind {
                UpstreamKind::Mcp if !u.routes.is_empty() => {
                    return Err(self.err(key("routes"), "routes are only for kind: http"));
                }
                UpstreamKind::Http if u.routes.is_empty() => {
                    return Err(self.err(key("routes"), "kind: http needs at least one route"));
                }
                _ => {}
            }
            for (j, r) in u.routes.iter().enumerate() {
                let rkey = |k: &str| format!("upstreams[{i}].routes[{j}].{k}");
                if http::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()).is_err() {
                    return Err(self.err(rkey("method"), "is not an HTTP method"));
                }
                if let Err(e) = PathTemplate::parse(&r.path) {
                    return Err(self.err(rkey("path"), e.to_string()));
                }
                if r.tool.is_empty() {
                    return Err(self.err(rkey("tool"), "must not be empty"));
                }
            }
        }
        Ok(())
    }

    /// Reads every secret the config refers to; a missing one is an error naming its key.
    pub fn resolve_secrets(&self) -> Result<Vec<Option<Secret>>, ConfigError> {
        self.config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let Some(cred) = &u.credential else {
                    return Ok(None);
                };
                let raw = match (&cred.env, &cred.file) {
                    (Some(var), _) => std::env::var(var).map_err(|_| {
                        self.err(
                            format!("upstreams[{i}].credential.env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?,
                    (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                        self.err(
                            format!("upstreams[{i}].credential.file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?,
                    (None, None) => {
                        return Err(self.err(
                            format!("upstreams[{i}].credential"),
                            "give exactly one of `env` or `file`",
                        ));
                    }
                };
                let value = format!("{}{}", cred.prefix, raw.trim_end_matches(['\r', '\n']));
                if http::HeaderValue::from_str(&value).is_err() {
                    return Err(self.err(
                        format!("upstreams[{i}].credential"),
                        "the secret is not a valid header value",
                    ));
                }
                Ok(Some(Secret(value)))
            })
            .collect()
    }
}
