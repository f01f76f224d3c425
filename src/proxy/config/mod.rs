//! The proxy's sections of the config file: who the agent is (`agent`), the tool
//! servers behind the gateway (`upstreams`) and the limits on what it reads (`limits`).
//! Schema and validation only (`validate`: whether the upstreams hold together);
//! `Gateway::new` turns them into mounts.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::SecretSource;
use crate::validate::{Checked, require};

/// `agent:` — who this sidecar speaks for. Static: never taken from request headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

impl AgentConfig {
    pub fn validate(&self) -> Checked {
        require(!self.id.trim().is_empty(), "id", "must not be empty")
    }
}

/// `limits:` — bounds on everything an agent or tool server can make the gateway hold.
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

/// The deepest nesting the strict JSON parser can check.
pub const MAX_JSON_DEPTH: usize = crate::json_strict::Limits::DEPTH_CEILING;

impl Limits {
    pub fn validate(&self) -> Checked {
        require(
            self.max_body_bytes > 0,
            "max_body_bytes",
            "must be greater than 0",
        )?;
        require(
            (2..=MAX_JSON_DEPTH).contains(&self.max_json_depth),
            "max_json_depth",
            &format!("must be between 2 and {MAX_JSON_DEPTH}"),
        )?;
        require(
            self.max_inspected_response_bytes > 0,
            "max_inspected_response_bytes",
            "must be greater than 0",
        )?;
        require(
            !self.body_read_timeout.is_zero(),
            "body_read_timeout",
            "must be greater than 0",
        )
    }
}

fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// An MCP Streamable HTTP server: JSON-RPC bodies are parsed and put to policy.
    Mcp,
    /// A plain HTTP tool API: routes map method + path to a tool name.
    Http,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Mcp => "mcp",
            UpstreamKind::Http => "http",
        }
    }
}

impl fmt::Display for UpstreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `upstreams:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    /// Path prefix on the gateway that leads to this upstream. Absent for a tool server
    /// reached only through a virtual server's `servers`.
    #[serde(default)]
    pub mount: Option<String>,
    /// Base URL of the tool server (http://host:port/path). Absent for a virtual server.
    #[serde(default)]
    pub url: Option<String>,
    /// A stdio MCP server instead of `url`: the program and its arguments (no shell),
    /// started by the gateway and spoken to over stdin/stdout. Only behind a virtual
    /// server.
    #[serde(default)]
    pub command: Vec<String>,
    /// A stdio server's environment variables (it inherits none of the gateway's
    /// besides PATH, HOME, LANG, LC_ALL, TZ, TMPDIR and `pass_env`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The gateway's own variables a stdio server gets.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// A stdio server's working directory (relative to the config file).
    #[serde(default)]
    pub working_dir: Option<std::path::PathBuf>,
    /// Most requests waiting on a stdio server at once; more are answered
    /// `upstream_busy`.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// A virtual MCP server: the gateway answers on `mount` itself, with one catalogue
    /// merged from these MCP upstreams, and routes each call to the one that owns it.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
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
    /// Send the approver's access token (from the CIBA grant) with each call a person
    /// approved, and only with those (off when absent).
    #[serde(default)]
    pub approval_token: Option<ApprovalTokenConfig>,
    /// Plain HTTP routes (kind: http).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// TLS settings for an `https://` url (system roots when absent).
    #[serde(default)]
    pub tls: Option<super::upstream_tls::UpstreamTlsConfig>,
}

fn default_max_pending() -> usize {
    64
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One entry of a virtual server's `servers:`: an MCP upstream and how its names are
/// shown to the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The `name` of an MCP entry of `upstreams` (with a `url`).
    pub upstream: String,
    /// Put before each of its tool and prompt names (e.g. `deploy_`).
    #[serde(default)]
    pub tool_prefix: Option<String>,
    /// Names shown to the agent → the server's own names; these win over the prefix.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
}

/// What a tool name may be made of (MCP 2025-06-18: 1–128 of `[A-Za-z0-9_.-]`).
pub fn is_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// `credential:` — a header the gateway sets from a secret.
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
    pub file: Option<std::path::PathBuf>,
}

impl CredentialConfig {
    /// Where the secret comes from.
    pub fn source(&self) -> SecretSource {
        SecretSource {
            env: self.env.clone(),
            file: self.file.clone(),
        }
    }
}

/// `approval_token:` — where the approver's access token goes on an approved call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalTokenConfig {
    /// Header to set (default `authorization`, replacing the upstream's credential
    /// there on approved calls).
    #[serde(default = "default_approval_token_header")]
    pub header: String,
    /// Text put before the token (default `"Bearer "` for `authorization`, else none).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The tool server's identifier, asked for as the token's audience (RFC 8707
    /// `resource` in the authentication request).
    #[serde(default)]
    pub audience: Option<String>,
    /// Exchange the approver's token for one issued to `audience` (RFC 8693 token
    /// exchange at the OP's token endpoint) before sending it, instead of asking for
    /// the audience in the authentication request.
    #[serde(default)]
    pub exchange: bool,
}

fn default_approval_token_header() -> String {
    "authorization".into()
}

impl ApprovalTokenConfig {
    pub fn prefix(&self) -> &str {
        match &self.prefix {
            Some(p) => p,
            None if self.header.eq_ignore_ascii_case("authorization") => "Bearer ",
            None => "",
        }
    }
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

mod validate;

pub use validate::validate_upstreams;
