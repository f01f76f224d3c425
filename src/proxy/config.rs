//! The proxy's sections of the config file: who the agent is (`agent`), the tool
//! servers behind the gateway (`upstreams`) and the limits on what it reads (`limits`).
//! Schema and validation only; `Gateway::new` turns them into mounts.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::routes::PathTemplate;
use crate::secret::SecretSource;
use crate::validate::{Checked, FieldError, require};

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

impl UpstreamConfig {
    /// The first setting of an HTTP tool server this entry has (neither a virtual server
    /// nor a stdio server may have one).
    fn http_setting(&self) -> Option<&'static str> {
        [
            ("url", self.url.is_some()),
            ("credential", self.credential.is_some()),
            ("tls", self.tls.is_some()),
            ("approval_token", self.approval_token.is_some()),
            ("routes", !self.routes.is_empty()),
            (
                "forward_agent_authorization",
                self.forward_agent_authorization,
            ),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// A virtual MCP server: `servers` with distinct upstreams and names that cannot
    /// collide (no prefix is the start of another, aliases are valid tool names);
    /// nothing of a direct upstream's connection settings.
    fn validate_virtual(&self) -> Checked {
        require(
            self.kind == UpstreamKind::Mcp,
            "servers",
            "are only for kind: mcp",
        )?;
        require(
            self.mount.is_some(),
            "mount",
            "is required for a virtual server",
        )?;
        if let Some(key) = self.http_setting() {
            return Err(FieldError::new(
                key,
                "belongs on each server's own upstream entry, not on a virtual server",
            ));
        }
        let mut seen = HashSet::new();
        let prefixes: Vec<&str> = self
            .servers
            .iter()
            .filter_map(|s| s.tool_prefix.as_deref())
            .collect();
        for (i, s) in self.servers.iter().enumerate() {
            let at = |k: &str| format!("servers[{i}].{k}");
            require(
                seen.insert(s.upstream.as_str()),
                &at("upstream"),
                "is listed twice",
            )?;
            if let Some(p) = &s.tool_prefix {
                require(
                    is_tool_name(p) && p.len() < 64,
                    &at("tool_prefix"),
                    "must be 1-63 of letters, digits, '_', '-' or '.'",
                )?;
                // "git_" and "git_hub_" would both claim "git_hub_x".
                if let Some(other) = prefixes.iter().find(|o| {
                    **o != p.as_str() && (o.starts_with(p.as_str()) || p.starts_with(**o))
                }) {
                    return Err(FieldError::new(
                        at("tool_prefix"),
                        format!(
                            "{p:?} and {other:?} overlap: one name could belong to both servers"
                        ),
                    ));
                }
                require(
                    prefixes.iter().filter(|o| **o == p.as_str()).count() == 1,
                    &at("tool_prefix"),
                    "is used by two servers",
                )?;
            }
            for (shown, own) in &s.aliases {
                require(
                    is_tool_name(shown) && is_tool_name(own),
                    &at(&format!("aliases.{shown}")),
                    "names must be 1-128 of letters, digits, '_', '-' or '.'",
                )?;
            }
        }
        let mut shown = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            for alias in s.aliases.keys() {
                require(
                    shown.insert(alias.as_str()),
                    &format!("servers[{i}].aliases.{alias}"),
                    "is an alias of two servers",
                )?;
            }
        }
        Ok(())
    }

    /// A stdio server: an MCP program behind a virtual server, with nothing of an HTTP
    /// upstream's settings.
    fn validate_stdio(&self) -> Checked {
        require(
            self.kind == UpstreamKind::Mcp,
            "command",
            "is only for kind: mcp",
        )?;
        require(
            self.mount.is_none(),
            "mount",
            "a stdio server is reached through a virtual server's `servers`, not mounted",
        )?;
        if let Some(key) = self.http_setting() {
            return Err(FieldError::new(
                key,
                "is for an HTTP tool server; a stdio server (`command`) has none",
            ));
        }
        require(
            !self.command[0].trim().is_empty() && self.command.iter().all(|a| !a.contains('\0')),
            "command",
            "must start with a program, and no argument may hold a NUL byte",
        )?;
        let is_name = |k: &str| !k.is_empty() && !k.contains(['=', '\0']);
        for (k, v) in &self.env {
            require(
                is_name(k) && !v.contains('\0'),
                &format!("env.{k}"),
                "names a variable without '=' or NUL, with a value without NUL",
            )?;
        }
        for (j, k) in self.pass_env.iter().enumerate() {
            require(
                is_name(k),
                &format!("pass_env[{j}]"),
                "must name a variable (no '=' or NUL)",
            )?;
        }
        require(
            (1..=10_000).contains(&self.max_pending),
            "max_pending",
            "must be between 1 and 10000",
        )?;
        require(
            !self.response_timeout.is_zero(),
            "response_timeout",
            "must be greater than 0",
        )
    }

    pub fn validate(&self) -> Checked {
        require(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
            "name",
            "must be non-empty letters, digits, '-', '_' or '.'",
        )?;
        if let Some(mount) = &self.mount {
            require(
                mount.starts_with('/') && (mount.len() == 1 || !mount.ends_with('/')),
                "mount",
                "must start with '/' and not end with '/'",
            )?;
        }
        if !self.servers.is_empty() {
            return self.validate_virtual();
        }
        if !self.command.is_empty() {
            return self.validate_stdio();
        }
        let stdio_only = [
            ("env", !self.env.is_empty()),
            ("pass_env", !self.pass_env.is_empty()),
            ("working_dir", self.working_dir.is_some()),
            ("max_pending", self.max_pending != default_max_pending()),
        ];
        if let Some((key, _)) = stdio_only.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                *key,
                "is only for a stdio server (`command`)",
            ));
        }
        let Some(url) = &self.url else {
            return Err(FieldError::new(
                "url",
                "is required (or `servers` for a virtual MCP server, or `command` for a stdio server)",
            ));
        };
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                if self.tls.is_some() {
                    return Err(FieldError::new(
                        "tls",
                        "is only for https:// urls (this one is http://)",
                    ));
                }
            }
            Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => {
                if let Some(tls) = &self.tls {
                    tls.validate().map_err(|e| e.under("tls"))?;
                }
            }
            _ => {
                return Err(FieldError::new(
                    "url",
                    "must be an absolute http:// or https:// URL",
                ));
            }
        }
        require(
            !self.connect_timeout.is_zero() && !self.response_timeout.is_zero(),
            "connect_timeout",
            "timeouts must be greater than 0",
        )?;
        if let Some(cred) = &self.credential {
            require(
                http::HeaderName::from_bytes(cred.header.as_bytes()).is_ok(),
                "credential.header",
                "is not a valid header name",
            )?;
            cred.source()
                .validate()
                .map_err(|e| e.under("credential"))?;
        }
        if let Some(t) = &self.approval_token {
            require(
                http::HeaderName::from_bytes(t.header.as_bytes()).is_ok()
                    && !t
                        .header
                        .to_ascii_lowercase()
                        .starts_with(super::upstream::GATEWAY_HEADER_PREFIX),
                "approval_token.header",
                "is not a valid header name outside the gateway's x-ciba-gate- prefix",
            )?;
            require(
                http::HeaderValue::from_str(t.prefix()).is_ok(),
                "approval_token.prefix",
                "is not a valid header value",
            )?;
            require(
                !t.exchange || t.audience.is_some(),
                "approval_token.exchange",
                "needs approval_token.audience (the audience to exchange for)",
            )?;
        }
        match self.kind {
            UpstreamKind::Mcp if !self.routes.is_empty() => {
                return Err(FieldError::new("routes", "routes are only for kind: http"));
            }
            UpstreamKind::Http if self.routes.is_empty() => {
                return Err(FieldError::new(
                    "routes",
                    "kind: http needs at least one route",
                ));
            }
            _ => {}
        }
        for (j, r) in self.routes.iter().enumerate() {
            let at = |k: &str| format!("routes[{j}].{k}");
            require(
                http::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()).is_ok(),
                &at("method"),
                "is not an HTTP method",
            )?;
            if let Err(e) = PathTemplate::parse(&r.path) {
                return Err(FieldError::new(at("path"), e.to_string()));
            }
            require(!r.tool.is_empty(), &at("tool"), "must not be empty")?;
        }
        Ok(())
    }
}

/// The whole `upstreams:` list: each entry, then names and mounts unique.
pub fn validate_upstreams(upstreams: &[UpstreamConfig]) -> Checked {
    require(
        !upstreams.is_empty(),
        "",
        "at least one upstream is required",
    )?;
    let mut names = HashSet::new();
    let mut mounts = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let at = format!("[{i}]");
        u.validate().map_err(|e| e.under(&at))?;
        if !names.insert(u.name.as_str()) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("duplicate upstream name {:?}", u.name),
            ));
        }
        if let Some(mount) = &u.mount
            && !mounts.insert(mount.as_str())
        {
            return Err(FieldError::new(
                format!("{at}.mount"),
                format!("duplicate mount {mount:?}"),
            ));
        }
    }
    // A virtual server's servers are direct MCP upstreams; every upstream is reachable.
    let members: HashSet<&str> = upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(|s| s.upstream.as_str()))
        .collect();
    for (i, u) in upstreams.iter().enumerate() {
        for (j, s) in u.servers.iter().enumerate() {
            let why = match upstreams.iter().find(|t| t.name == s.upstream) {
                None => format!("there is no upstream {:?}", s.upstream),
                Some(t) if t.kind != UpstreamKind::Mcp || !t.servers.is_empty() => {
                    format!("{:?} is not a direct MCP upstream", s.upstream)
                }
                Some(_) => continue,
            };
            return Err(FieldError::new(
                format!("[{i}].servers[{j}].upstream"),
                format!("must name an MCP upstream with a url or a command: {why}"),
            ));
        }
        require(
            u.mount.is_some() || members.contains(u.name.as_str()),
            &format!("[{i}].mount"),
            "is required (or list this upstream in a virtual server's servers)",
        )?;
    }
    Ok(())
}
