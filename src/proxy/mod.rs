//! The agent-facing reverse proxy. Every request takes the same phases over one
//! per-request context (`call::Call`):
//!
//!   classify → decide → (approve: hold or park) → forward → record
//!
//! `classify` reads the request into the calls it carries (an MCP message or a batch,
//! a routed HTTP tool call, an MCP stream request) or refuses it; `decide` puts each call
//! to policy; `approve` runs a person's approval when policy asks for one; `forward`
//! sends what was allowed; every call leaves one evidence record (`record`), on every
//! path, cancellation included. A phase that answers early returns `Err(Stop)`.
//! Nothing reaches an upstream unless policy allowed every message in it.

pub mod approve;
pub mod call;
pub mod classify;
pub mod config;
pub mod decide;
pub mod flow;
pub mod forward;
pub mod framing;
pub mod mcp;
pub mod multiplex;
pub mod path;
#[cfg(test)]
mod phases_tests;
pub mod render;
pub mod routes;
pub mod server;
pub mod sse;
pub mod upstream;
pub mod upstream_tls;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::approval::Approvals;
use crate::audit::EvidenceSink;
use crate::policy::PolicyEngine;
use crate::validate::{Checked, FieldError};
use config::{AgentConfig, Limits, UpstreamConfig, UpstreamKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A gateway path prefix and what answers there.
pub struct Mount {
    pub prefix: String,
    pub kind: UpstreamKind,
    pub target: Target,
    pub routes: Vec<routes::Route>,
}

/// What a mount leads to.
// One per mount, built once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    /// One tool server.
    Upstream(upstream::Upstream),
    /// A virtual MCP server in front of several.
    Virtual(multiplex::VirtualServer),
}

impl Mount {
    /// The part of `path` below this mount, if the path is under it.
    fn rest<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    pub fn name(&self) -> &str {
        match &self.target {
            Target::Upstream(u) => &u.name,
            Target::Virtual(vs) => &vs.name,
        }
    }
}

/// What a gateway is built from (`App::build` supplies it).
pub struct GatewayParts {
    pub agent: AgentConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// The config file's directory (credential files are relative to it).
    pub base: PathBuf,
    pub limits: Limits,
    pub policy: PolicyEngine,
    /// A policy set decided beside `policy` and never enforced (`policy.shadow`).
    pub shadow: Option<PolicyEngine>,
    /// `policy.dry_run`: decisions are recorded, none is enforced.
    pub dry_run: bool,
    pub evidence: EvidenceSink,
    /// `evidence.required`: what is refused while the sink cannot write.
    pub evidence_required: crate::audit::Required,
    /// Human approvals (CIBA): `None` when not configured (an `approve` decision blocks
    /// the call); the slot fills once the OP's metadata has been fetched.
    pub approvals: Option<Arc<OnceLock<Arc<Approvals>>>>,
    /// The configured binding-message profile's name (policy input `op`), when
    /// approvals are configured.
    pub binding_message_profile: Option<String>,
}

/// The tool server of `upstreams[i]`, with its credential read (files relative to
/// `base`). Errors name the key below `upstreams`.
pub fn direct_upstream(
    upstreams: &[UpstreamConfig],
    base: &std::path::Path,
    i: usize,
) -> Checked<upstream::Upstream> {
    let u = &upstreams[i];
    let at = format!("[{i}]");
    let credential = match &u.credential {
        Some(c) => Some(
            c.source()
                .read(base)
                .map_err(|e| e.under(&format!("{at}.credential")))?,
        ),
        None => None,
    };
    upstream::Upstream::new(u, credential, base).map_err(|e| e.under(&at))
}

/// Everything a request needs, shared by all connections. Immutable once built.
pub struct Gateway {
    pub agent: AgentConfig,
    mounts: Vec<Mount>,
    pub policy: PolicyEngine,
    pub shadow: Option<PolicyEngine>,
    pub dry_run: bool,
    pub evidence: EvidenceSink,
    pub evidence_required: crate::audit::Required,
    pub limits: Limits,
    approvals: Option<Arc<OnceLock<Arc<Approvals>>>>,
    binding_message_profile: Option<String>,
    /// Turns true when held calls must give up (shutdown drain deadline).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

/// Whether approvals can be asked for right now.
pub enum ApprovalsState {
    NotConfigured,
    /// Configured, but the OP's metadata has not been fetched yet.
    Unavailable,
    Ready(Arc<Approvals>),
}

impl Gateway {
    /// Builds the mounts (reading each upstream's credential). Errors name the key below
    /// `upstreams`.
    pub fn new(parts: GatewayParts) -> Checked<Self> {
        let mut mounts = Vec::new();
        for (i, u) in parts.upstreams.iter().enumerate() {
            let at = format!("[{i}]");
            let Some(prefix) = u.mount.clone() else {
                continue;
            };
            let target = if u.servers.is_empty() {
                Target::Upstream(direct_upstream(&parts.upstreams, &parts.base, i)?)
            } else {
                Target::Virtual(multiplex::VirtualServer::from_config(
                    &parts.upstreams,
                    &parts.base,
                    i,
                    parts.limits.max_inspected_response_bytes,
                )?)
            };
            let routes = u
                .routes
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    Ok(routes::Route {
                        method: Method::from_bytes(r.method.to_ascii_uppercase().as_bytes())
                            .map_err(|e| {
                                FieldError::new(format!("{at}.routes[{j}].method"), e.to_string())
                            })?,
                        template: routes::PathTemplate::parse(&r.path).map_err(|e| {
                            FieldError::new(format!("{at}.routes[{j}].path"), e.to_string())
                        })?,
                        tool: r.tool.clone(),
                        opaque_body: r.opaque_body,
                    })
                })
                .collect::<Checked<Vec<_>>>()?;
            mounts.push(Mount {
                prefix,
                kind: u.kind,
                target,
                routes,
            });
        }
        // Longest prefix first, so /mcp/admin wins over /mcp.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        Ok(Gateway {
            agent: parts.agent,
            mounts,
            policy: parts.policy,
            shadow: parts.shadow,
            dry_run: parts.dry_run,
            evidence: parts.evidence,
            evidence_required: parts.evidence_required,
            limits: parts.limits,
            approvals: parts.approvals,
            binding_message_profile: parts.binding_message_profile,
            shutdown,
            shutdown_tx,
        })
    }

    /// The configured binding-message profile's name, when approvals are configured.
    pub fn binding_message_profile(&self) -> Option<&str> {
        self.binding_message_profile.as_deref()
    }

    /// The approvals, once the OP's metadata has been fetched.
    pub fn approvals(&self) -> Option<Arc<Approvals>> {
        self.approvals.as_ref().and_then(|s| s.get().cloned())
    }

    pub fn approvals_state(&self) -> ApprovalsState {
        match &self.approvals {
            None => ApprovalsState::NotConfigured,
            Some(slot) => match slot.get() {
                None => ApprovalsState::Unavailable,
                Some(a) => ApprovalsState::Ready(a.clone()),
            },
        }
    }

    /// The shadow policy set, once it has a policy in force (a shadow bundle that has
    /// not arrived yet compares nothing: it would differ on every call).
    pub fn shadow_in_force(&self) -> Option<&PolicyEngine> {
        self.shadow.as_ref().filter(|s| &*s.revision() != "none")
    }

    /// True when approvals are configured (ready or not).
    pub fn approvals_configured(&self) -> bool {
        self.approvals.is_some()
    }

    /// Held calls stop waiting and answer "shutting down, retry" (their approvals stay
    /// in the store for the retry).
    pub fn abandon_holds(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Stops the tool server processes the gateway started (stdio servers), once no
    /// call is served any more.
    pub async fn stop_servers(&self) {
        for m in &self.mounts {
            if let Target::Virtual(vs) = &m.target {
                vs.shutdown().await;
            }
        }
    }

    fn mount_position(&self, mount: &Mount) -> usize {
        self.mounts
            .iter()
            .position(|m| std::ptr::eq(m, mount))
            .unwrap_or(0)
    }

    fn mount_at(&self, i: usize) -> &Mount {
        &self.mounts[i.min(self.mounts.len().saturating_sub(1))]
    }

    fn mount_for(&self, path: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.rest(path).is_some())
    }

    /// Handles one request from the agent. Never fails: every problem is an answer.
    /// With trace export on, each request is one trace (parented to the agent's
    /// `traceparent`, if any), its root span named after the mount.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        use tracing::Instrument;
        let found = self.mount_for(req.uri().path());
        if !crate::telemetry::traces::enabled() {
            return flow::run(&self, found, req).await;
        }
        let mount = found.map(|m| (m.prefix.as_str(), m.name()));
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{} {}", req.method(), mount.map(|m| m.0).unwrap_or("-")),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method(),
            url.path = req.uri().path(),
            http.route = mount.map(|m| m.0).unwrap_or("-"),
            http.response.status_code = tracing::field::Empty,
            mcp.method.name = tracing::field::Empty,
            mcp.protocol.version = tracing::field::Empty,
            mcp.session.id = tracing::field::Empty,
            jsonrpc.request.id = tracing::field::Empty,
            gen_ai.tool.name = tracing::field::Empty,
            ciba_gate.upstream = mount.map(|m| m.1).unwrap_or("-"),
            ciba_gate.decision = tracing::field::Empty,
        );
        crate::telemetry::traces::adopt_remote_parent(&span, req.headers());
        let resp = flow::run(&self, found, req).instrument(span.clone()).await;
        // tracing-opentelemetry exports u64 fields as strings; i64 as integers.
        span.record(
            "http.response.status_code",
            i64::from(resp.status().as_u16()),
        );
        if resp.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        resp
    }
}
