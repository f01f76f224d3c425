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

/// `admin:` — probes and metrics, on their own port (keep it off the agent's network).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

pub fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// How traces are exported (OTLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

/// `telemetry:` — OpenTelemetry traces. Unset keys fall back to the standard `OTEL_*`
/// environment variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector base URL, e.g. `http://otel-collector:4317` (gRPC) or `:4318` (HTTP).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http` (protobuf over HTTP, `/v1/traces`).
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces kept (0.0–1.0); an agent's sampled `traceparent` is honoured.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    #[serde(default)]
    pub service_name: Option<String>,
}

/// `log:` — JSON logs on standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An `EnvFilter` directive: `info`, `debug`, `ciba_gate=debug,info`, …
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
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

/// `store:` — the approval store.
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
    /// Largest upstream JSON answer the gateway rewrites (tools/list filtering, batches,
    /// a held call's answer) and largest single SSE event it rewrites.
    #[serde(default = "default_max_response")]
    pub max_inspected_response_bytes: usize,
    /// Longest time an agent may take to send a request body (408 after it).
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_json_depth: default_max_depth(),
            max_inspected_response_bytes: default_max_response(),
            body_read_timeout: default_body_read_timeout(),
        }
    }
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_depth() -> usize {
    64
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
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
    /// Stream a body that is not JSON through unread (uploads). Policy then sees only
    /// `input.request.body.kind == "opaque"`, and an approval binds the body's digest.
    /// Off: such a body is refused (415), because policy cannot read it.
    #[serde(default)]
    pub opaque_body: bool,
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
        if c.limits.body_read_timeout.is_zero() {
            return Err(self.err("limits.body_read_timeout", "must be greater than 0"));
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
        if let Some(r) = c.telemetry.sampling_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(self.err("telemetry.sampling_ratio", "must be between 0.0 and 1.0"));
        }
        if let Some(e) = &c.telemetry.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(self.err(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
            return Err(self.err(
                "log.level",
                "is not a level or filter directive (e.g. info, debug)",
            ));
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
        self.validate_store()?;
        self.validate_approvals()
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let st = &self.config.store;
        if st.kind == StoreKind::Memory {
            return Ok(());
        }
        match (&st.url, &st.url_env) {
            (Some(u), None) => check_redis_url(u).map_err(|e| self.err("store.url", e))?,
            (None, Some(v)) if !v.is_empty() => {}
            _ => return Err(self.err("store", "give url or url_env (exactly one)")),
        }
        if st.key_prefix.contains(['{', '}']) {
            return Err(self.err("store.key_prefix", "must not contain '{' or '}'"));
        }
        if st.connect_timeout.is_zero() {
            return Err(self.err("store.connect_timeout", "must be greater than 0"));
        }
        if st.response_timeout.is_zero() {
            return Err(self.err("store.response_timeout", "must be greater than 0"));
        }
        Ok(())
    }

    /// The Redis settings (URL read from the environment if so configured); `None` for
    /// the in-memory store.
    pub fn resolve_store(&self) -> Result<Option<crate::store::redis::RedisSettings>, ConfigError> {
        let st = &self.config.store;
        if st.kind == StoreKind::Memory {
            return Ok(None);
        }
        let url = match (&st.url, &st.url_env) {
            (Some(u), _) => u.clone(),
            (None, Some(var)) => {
                let u = std::env::var(var).map_err(|_| {
                    self.err(
                        "store.url_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                check_redis_url(&u).map_err(|e| self.err("store.url_env", e))?;
                u
            }
            (None, None) => return Err(self.err("store", "give url or url_env")),
        };
        let tls_ca_pem = match &st.tls_ca_file {
            Some(f) => {
                let path = self
                    .file
                    .parent()
                    .map(|d| d.join(f))
                    .unwrap_or_else(|| f.clone());
                Some(std::fs::read(&path).map_err(|e| {
                    self.err(
                        "store.tls_ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?)
            }
            None => None,
        };
        Ok(Some(crate::store::redis::RedisSettings {
            url,
            cluster: st.cluster,
            key_prefix: st.key_prefix.clone(),
            connect_timeout: st.connect_timeout,
            response_timeout: st.response_timeout,
            tls_ca_pem,
        }))
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

/// A secret from the environment or a file; never inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretRef {
    fn read(&self, cfg: &LoadedConfig, key: &str) -> Result<Secret, ConfigError> {
        let raw = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                cfg.err(
                    format!("{key}.env"),
                    format!("environment variable {var} is not set"),
                )
            })?,
            (None, Some(path)) => {
                // Relative to the config file, like every path in it.
                let path = match cfg.file.parent() {
                    Some(dir) => dir.join(path),
                    None => path.clone(),
                };
                std::fs::read_to_string(&path).map_err(|e| {
                    cfg.err(
                        format!("{key}.file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
            }
            _ => {
                return Err(cfg.err(
                    key,
                    "give exactly one of `env` or `file` (secrets are never inline)",
                ));
            }
        };
        let v = raw.trim_end_matches(['\r', '\n']).to_string();
        if v.is_empty() {
            return Err(cfg.err(key, "the secret is empty"));
        }
        Ok(Secret(v))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    pub op: OpConfig,
    /// The user this agent acts for: whose phone is asked.
    pub user: UserConfig,
    /// What the OP accepts as a binding message: a shipped profile name
    /// (oidc-provider, okta, keycloak, auth0, curity, ciba-gate-dev) or
    /// `{max_chars, extra_chars}`.
    #[serde(default = "default_profile")]
    pub binding_message_profile: crate::approval::binding::ProfileConfig,
    /// `hold` (default) keeps the call open until the answer; `park` answers "pending" at once.
    #[serde(default = "default_mode")]
    pub mode: crate::approval::Mode,
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Longest hold without a stream for keep-alives; longer waits are parked.
    #[serde(default = "default_plain_wait", with = "humantime_serde")]
    pub max_plain_wait: Duration,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(default = "default_progress", with = "humantime_serde")]
    pub progress_interval: Duration,
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub park_retry_after: Duration,
    /// Ping mode: poll this often anyway, for OPs that never retry a lost ping.
    #[serde(default = "default_fallback_poll", with = "humantime_serde")]
    pub ping_fallback_poll: Duration,
    /// How long a denied / expired / failed answer is kept for the agent's retry.
    #[serde(default = "default_result_ttl", with = "humantime_serde")]
    pub result_ttl: Duration,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Where the OP's ping/push notifications arrive (required for ping and push).
    #[serde(default)]
    pub callback: Option<CallbackConfig>,
    /// Key for requestState MACs and pseudonymous user hashes. Replicas must share it.
    /// Without it a random per-process key is used (single replica only).
    #[serde(default)]
    pub state_key: Option<SecretRef>,
    /// Send RFC 9396 `authorization_details` with the tool and action (e.g. Auth0).
    #[serde(default)]
    pub authorization_details: bool,
}

fn default_profile() -> crate::approval::binding::ProfileConfig {
    crate::approval::binding::ProfileConfig::Named("oidc-provider".into())
}
fn default_mode() -> crate::approval::Mode {
    crate::approval::Mode::Hold
}
fn default_max_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_plain_wait() -> Duration {
    Duration::from_secs(50)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}
fn default_progress() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}
fn default_fallback_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_result_ttl() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpConfig {
    /// The OP's issuer; discovery is fetched from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_auth: ClientAuthConfig,
    pub delivery: crate::ciba::DeliveryMode,
    /// Sign authentication requests (FAPI-CIBA).
    #[serde(default)]
    pub request_signing: Option<KeyConfig>,
    /// Allow an `http://` issuer: development and tests on loopback only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientAuthConfig {
    ClientSecretBasic { secret: SecretRef },
    ClientSecretPost { secret: SecretRef },
    PrivateKeyJwt { key: KeyConfig },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// RS256, PS256 or ES256.
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// PEM private key file. Relative to the config file.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HintType {
    LoginHint,
    IdTokenHint,
    LoginHintToken,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default = "default_hint_type")]
    pub hint_type: HintType,
    /// The hint itself, inline (it identifies the user; it is not a credential).
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The user's CIBA `user_code` (a secret the user chose at the OP), for OPs and
    /// client registrations that require it. Never inline.
    #[serde(default)]
    pub user_code: Option<SecretRef>,
}

fn default_hint_type() -> HintType {
    HintType::LoginHint
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(default)]
    pub per_agent: Option<crate::approval::Limit>,
    #[serde(default)]
    pub per_user: Option<crate::approval::Limit>,
    #[serde(default)]
    pub per_action: Option<crate::approval::Limit>,
    /// After a denial, no new request for the same user for this long.
    #[serde(default, with = "humantime_serde")]
    pub denial_cooldown: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_callback_path")]
    pub path: String,
    /// Certificate and key files (PEM), reloaded when they change.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP. Only for development on loopback or behind a TLS-terminating proxy.
    #[serde(default)]
    pub insecure_http: bool,
}

fn default_callback_path() -> String {
    "/ciba/callback".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Approval settings with their secrets read.
pub struct ResolvedApprovals {
    pub client: crate::ciba::ClientConfig,
    pub hint: crate::ciba::UserHint,
    pub user_code: Option<String>,
    pub profile: crate::approval::binding::Profile,
    pub settings: crate::approval::Settings,
    pub state_key: Vec<u8>,
    pub callback: Option<CallbackConfig>,
}

fn parse_alg(alg: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match alg {
        "RS256" => A::RS256,
        "PS256" => A::PS256,
        "ES256" => A::ES256,
        _ => return None,
    })
}

impl LoadedConfig {
    fn validate_approvals(&self) -> Result<(), ConfigError> {
        let Some(a) = &self.config.approvals else {
            return Ok(());
        };
        if let Err(e) = a.binding_message_profile.resolve() {
            return Err(self.err("approvals.binding_message_profile", e));
        }
        if a.op.client_id.is_empty() {
            return Err(self.err("approvals.op.client_id", "must not be empty"));
        }
        match url::Url::parse(&a.op.issuer) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && a.op.allow_insecure_http => {}
            Ok(_) => {
                return Err(self.err(
                    "approvals.op.issuer",
                    "must be an https:// URL (allow_insecure_http is for development only)",
                ));
            }
            Err(e) => return Err(self.err("approvals.op.issuer", format!("not a URL: {e}"))),
        }
        let key_ok = |k: &KeyConfig, key: &str| -> Result<(), ConfigError> {
            if parse_alg(&k.alg).is_none() {
                return Err(self.err(format!("{key}.alg"), "must be RS256, PS256 or ES256"));
            }
            Ok(())
        };
        if let ClientAuthConfig::PrivateKeyJwt { key } = &a.op.client_auth {
            key_ok(key, "approvals.op.client_auth.key")?;
        }
        if let Some(k) = &a.op.request_signing {
            key_ok(k, "approvals.op.request_signing")?;
        }
        let given = [
            a.user.value.is_some(),
            a.user.env.is_some(),
            a.user.file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(self.err(
                "approvals.user",
                "give exactly one of `value`, `env` or `file`",
            ));
        }
        let needs_callback = !matches!(a.op.delivery, crate::ciba::DeliveryMode::Poll);
        match (&a.callback, needs_callback) {
            (None, true) => {
                return Err(self.err(
                    "approvals.callback",
                    "ping and push delivery need a callback listener",
                ));
            }
            (Some(cb), _) => {
                if !cb.path.starts_with('/') {
                    return Err(self.err("approvals.callback.path", "must start with '/'"));
                }
                match (&cb.tls, cb.insecure_http) {
                    (None, false) => {
                        return Err(self.err(
                            "approvals.callback.tls",
                            "required unless insecure_http: true",
                        ));
                    }
                    (Some(_), true) => {
                        return Err(
                            self.err("approvals.callback", "give tls or insecure_http, not both")
                        );
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if a.max_wait.is_zero() {
            return Err(self.err("approvals.max_wait", "must be greater than 0"));
        }
        // Replicas sharing a store must agree on the key: the sealed requestState of a
        // parked call and the pseudonyms in shared records are made with it.
        if a.state_key.is_none() && self.config.store.kind != StoreKind::Memory {
            return Err(self.err(
                "approvals.state_key",
                "required when the approval store is shared (store.kind: redis): give every replica the same key of at least 32 random bytes",
            ));
        }
        Ok(())
    }

    /// Reads the approval secrets and keys. `None` when approvals are not configured.
    pub fn resolve_approvals(&self) -> Result<Option<ResolvedApprovals>, ConfigError> {
        let Some(a) = &self.config.approvals else {
            return Ok(None);
        };
        let base = self
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let load_key = |k: &KeyConfig, key: &str| -> Result<crate::ciba::SigningKey, ConfigError> {
            let alg = parse_alg(&k.alg)
                .ok_or_else(|| self.err(format!("{key}.alg"), "must be RS256, PS256 or ES256"))?;
            let path = base.join(&k.file);
            let pem = std::fs::read(&path).map_err(|e| {
                self.err(
                    format!("{key}.file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            crate::ciba::SigningKey::from_pem(alg, k.kid.clone(), &pem)
                .map_err(|e| self.err(format!("{key}.file"), e.to_string()))
        };
        let auth = match &a.op.client_auth {
            ClientAuthConfig::ClientSecretBasic { secret } => {
                crate::ciba::ClientAuth::SecretBasic {
                    secret: secret.read(self, "approvals.op.client_auth.secret")?.0,
                }
            }
            ClientAuthConfig::ClientSecretPost { secret } => crate::ciba::ClientAuth::SecretPost {
                secret: secret.read(self, "approvals.op.client_auth.secret")?.0,
            },
            ClientAuthConfig::PrivateKeyJwt { key } => crate::ciba::ClientAuth::PrivateKeyJwt {
                key: load_key(key, "approvals.op.client_auth.key")?,
            },
        };
        let mut client = crate::ciba::ClientConfig::new(
            a.op.issuer.clone(),
            a.op.client_id.clone(),
            auth,
            a.op.delivery,
        );
        client.allow_http = a.op.allow_insecure_http;
        client.clock_skew = a.op.clock_skew;
        client.http_timeout = a.op.http_timeout;
        if let Some(k) = &a.op.request_signing {
            client.request_signing = Some(load_key(k, "approvals.op.request_signing")?);
        }
        let raw_hint = match (&a.user.value, &a.user.env, &a.user.file) {
            (Some(v), None, None) => v.clone(),
            (None, Some(var), None) => std::env::var(var).map_err(|_| {
                self.err(
                    "approvals.user.env",
                    format!("environment variable {var} is not set"),
                )
            })?,
            (None, None, Some(f)) => std::fs::read_to_string(base.join(f))
                .map_err(|e| {
                    self.err(
                        "approvals.user.file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            _ => {
                return Err(self.err(
                    "approvals.user",
                    "give exactly one of `value`, `env` or `file`",
                ));
            }
        };
        if raw_hint.is_empty() {
            return Err(self.err("approvals.user", "the user hint is empty"));
        }
        let hint = match a.user.hint_type {
            HintType::LoginHint => crate::ciba::UserHint::LoginHint(raw_hint),
            HintType::IdTokenHint => crate::ciba::UserHint::IdTokenHint(raw_hint),
            HintType::LoginHintToken => crate::ciba::UserHint::LoginHintToken(raw_hint),
        };
        let profile = a
            .binding_message_profile
            .resolve()
            .map_err(|e| self.err("approvals.binding_message_profile", e))?;
        let state_key = match &a.state_key {
            Some(s) => {
                let key = s.read(self, "approvals.state_key")?.0.into_bytes();
                check_state_key(&key).map_err(|e| self.err("approvals.state_key", e))?;
                key
            }
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let settings = crate::approval::Settings {
            mode: a.mode,
            max_wait: a.max_wait,
            max_plain_wait: a.max_plain_wait,
            keepalive: a.keepalive,
            progress_interval: a.progress_interval,
            park_retry_after: a.park_retry_after,
            ping_fallback_poll: a.ping_fallback_poll,
            result_ttl: a.result_ttl,
            per_agent: a.throttle.per_agent,
            per_user: a.throttle.per_user,
            per_action: a.throttle.per_action,
            denial_cooldown: a.throttle.denial_cooldown.unwrap_or_default(),
            send_authorization_details: a.authorization_details,
        };
        let mut callback = a.callback.clone();
        if let Some(cb) = &mut callback
            && let Some(tls) = &mut cb.tls
        {
            tls.cert_file = base.join(&tls.cert_file);
            tls.key_file = base.join(&tls.key_file);
        }
        let user_code = match &a.user.user_code {
            Some(r) => Some(r.read(self, "approvals.user.user_code")?.0),
            None => None,
        };
        Ok(Some(ResolvedApprovals {
            client,
            hint,
            user_code,
            profile,
            settings,
            state_key,
            callback,
        }))
    }
}

/// Shortest `approvals.state_key` accepted, in bytes.
pub const MIN_STATE_KEY_BYTES: usize = 32;

/// A MAC key must be long and not an obvious pattern (its value is never echoed).
fn check_state_key(key: &[u8]) -> Result<(), String> {
    if key.len() < MIN_STATE_KEY_BYTES {
        return Err(format!(
            "is {} bytes; at least {MIN_STATE_KEY_BYTES} random bytes are required (e.g. `openssl rand -hex 32`)",
            key.len()
        ));
    }
    let distinct = key.iter().collect::<HashSet<_>>().len();
    if distinct < 8 {
        return Err(format!(
            "has only {distinct} distinct bytes; use a random key (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(())
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
