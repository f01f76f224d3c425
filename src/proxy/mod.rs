//! The agent-facing reverse proxy. Every request takes the same phases:
//! check the path → find the mount → classify (MCP JSON-RPC or an HTTP route) →
//! decide with policy → forward or answer → record evidence.
//! A phase that answers early returns its response; nothing reaches an upstream
//! unless policy said `allow` for every message in it.

pub mod answer;
pub mod approve;
pub mod framing;
pub mod http_tools;
pub mod mcp;
pub mod mcp_handler;
pub mod path;
pub mod routes;
pub mod server;
pub mod sse;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::audit::{EvidenceRecord, EvidenceSink, PendingRecord};
use crate::config::{LoadedConfig, Secret, UpstreamKind};
use crate::policy::{Decision, PolicyEngine};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A gateway path prefix and the tool server behind it.
pub struct Mount {
    pub prefix: String,
    pub kind: UpstreamKind,
    pub upstream: upstream::Upstream,
    pub routes: Vec<routes::Route>,
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
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub agent_id: String,
    pub agent_namespace: Option<String>,
    pub mounts: Vec<Mount>,
    pub policy: PolicyEngine,
    pub evidence: EvidenceSink,
    pub max_body_bytes: usize,
    /// Longest time an agent may take to send a request body (408 after it).
    pub body_read_timeout: std::time::Duration,
    pub max_json_depth: usize,
    pub max_inspected_response_bytes: usize,
    /// Human approvals (CIBA); `None`: not configured, an `approve` decision blocks the
    /// call. The slot fills once the OP's metadata has been fetched.
    pub approvals: Option<Arc<std::sync::OnceLock<Arc<crate::approval::Approvals>>>>,
    /// Turns true when held calls must give up (shutdown drain deadline).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

/// Headers a policy may read (lower-cased); all others stay out of the input document.
const POLICY_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "user-agent",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

impl Gateway {
    pub fn from_config(
        cfg: &LoadedConfig,
        secrets: Vec<Option<Secret>>,
        policy: PolicyEngine,
        evidence: EvidenceSink,
    ) -> anyhow::Result<Self> {
        let c = &cfg.config;
        let mut mounts = Vec::new();
        for (u, secret) in c.upstreams.iter().zip(secrets) {
            let routes = u
                .routes
                .iter()
                .map(|r| {
                    Ok(routes::Route {
                        method: Method::from_bytes(r.method.to_ascii_uppercase().as_bytes())?,
                        template: routes::PathTemplate::parse(&r.path)?,
                        tool: r.tool.clone(),
                        opaque_body: r.opaque_body,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            mounts.push(Mount {
                prefix: u.mount.clone(),
                kind: u.kind,
                upstream: upstream::Upstream::new(u, secret)?,
                routes,
            });
        }
        // Longest prefix first, so /mcp/admin wins over /mcp.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        Ok(Gateway {
            approvals: None,
            shutdown,
            shutdown_tx,
            agent_id: c.agent.id.clone(),
            agent_namespace: c.agent.namespace.clone(),
            mounts,
            policy,
            evidence,
            max_body_bytes: c.limits.max_body_bytes,
            body_read_timeout: c.limits.body_read_timeout,
            max_json_depth: c.limits.max_json_depth,
            max_inspected_response_bytes: c.limits.max_inspected_response_bytes,
        })
    }

    /// Held calls stop waiting and answer "shutting down, retry" (their approvals stay
    /// in the store for the retry).
    pub fn abandon_holds(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Handles one request from the agent. Never fails: every problem is an answer.
    /// With trace export on, each request is one trace (parented to the agent's
    /// `traceparent`, if any), its root span named after the mount.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        use tracing::Instrument;
        if !crate::telemetry::traces::enabled() {
            return self.handle_inner(req).await;
        }
        let mount = self
            .mounts
            .iter()
            .find(|m| m.rest(req.uri().path()).is_some())
            .map(|m| (m.prefix.as_str(), m.upstream.name.as_str()));
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
            gen_ai.tool.name = tracing::field::Empty,
            ciba_gate.upstream = mount.map(|m| m.1).unwrap_or("-"),
            ciba_gate.decision = tracing::field::Empty,
        );
        crate::telemetry::traces::adopt_remote_parent(&span, req.headers());
        let resp = self.handle_inner(req).instrument(span.clone()).await;
        span.record("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        resp
    }

    async fn handle_inner(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        let ctx = RequestContext::new(req.method());
        let path = req.uri().path().to_string();
        let mount = self.mounts.iter().find(|m| m.rest(&path).is_some());
        let is_mcp = mount.is_some_and(|m| m.kind == UpstreamKind::Mcp);

        if let Err(e) = path::check(&path) {
            let mut rec = self.record(&ctx, mount.map(|m| m.upstream.name.as_str()).unwrap_or("-"));
            rec.get_mut().decision = "reject";
            rec.get_mut().reason = "bad_path".into();
            rec.finish("rejected", None);
            return answer::bad_input(
                is_mcp,
                http::StatusCode::BAD_REQUEST,
                "bad_path",
                &e.to_string(),
            );
        }
        let Some(mount) = mount else {
            return answer::http_error(
                http::StatusCode::NOT_FOUND,
                "no_such_route",
                "no upstream is mounted at this path",
            );
        };
        let rest = mount.rest(&path).unwrap_or_default().to_string();
        match mount.kind {
            UpstreamKind::Mcp => mcp_handler::handle(&self, mount, &rest, req, ctx).await,
            UpstreamKind::Http => http_tools::handle(&self, mount, &rest, req, ctx).await,
        }
    }

    /// The parts of the policy input every call shares.
    fn base_input(
        &self,
        mount: &Mount,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Map<String, Value> {
        let mut h = Map::new();
        for name in POLICY_HEADERS {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                h.insert(name.to_string(), Value::String(v.to_string()));
            }
        }
        let mut agent = Map::new();
        agent.insert("id".into(), Value::String(self.agent_id.clone()));
        if let Some(ns) = &self.agent_namespace {
            agent.insert("namespace".into(), Value::String(ns.clone()));
        }
        let mut input = Map::new();
        input.insert("phase".into(), json!("request"));
        input.insert("agent".into(), Value::Object(agent));
        input.insert(
            "upstream".into(),
            json!({"name": mount.upstream.name, "kind": mount.kind.to_string()}),
        );
        input.insert(
            "request".into(),
            json!({"method": method.as_str(), "path": path, "headers": Value::Object(h)}),
        );
        input
    }

    /// Decides on `input` and hands it back (the approval path reuses it for phase
    /// `approved`), so the document is never copied.
    fn decide(&self, input: Map<String, Value>) -> (Decision, Map<String, Value>) {
        let input = Value::Object(input);
        let span = crate::traced_span!(
            "policy.request",
            ciba_gate.policy.phase = "request",
            ciba_gate.policy.effect = tracing::field::Empty,
            ciba_gate.policy.revision = tracing::field::Empty
        );
        let decision = span.in_scope(|| self.policy.decide(&input));
        span.record("ciba_gate.policy.effect", effect_name(&decision));
        span.record("ciba_gate.policy.revision", &*decision.revision);
        tracing::Span::current().record("ciba_gate.decision", effect_name(&decision));
        match input {
            Value::Object(m) => (decision, m),
            _ => (decision, Map::new()),
        }
    }

    fn record(&self, ctx: &RequestContext, upstream: &str) -> PendingRecord {
        PendingRecord::new(
            &self.evidence,
            ctx.started,
            EvidenceRecord {
                request_id: ctx.id.clone(),
                http_method: ctx.method.to_string(),
                agent: self.agent_id.clone(),
                upstream: upstream.to_string(),
                ..Default::default()
            },
        )
    }
}

/// Per-request facts: an id for correlating the evidence record, and the start time.
pub struct RequestContext {
    pub id: String,
    pub started: Instant,
    pub method: Method,
}

impl RequestContext {
    fn new(method: &Method) -> Self {
        RequestContext {
            id: format!("{:016x}", rand::random::<u64>()),
            started: Instant::now(),
            method: method.clone(),
        }
    }
}

/// The effect name as written in evidence records.
fn effect_name(d: &Decision) -> &'static str {
    match d.effect {
        crate::policy::Effect::Allow => "allow",
        crate::policy::Effect::Deny => "deny",
        crate::policy::Effect::Approve => "approve",
    }
}

/// The reason code and sentence for a blocked decision.
fn block_reason(d: &Decision) -> (String, String) {
    use crate::policy::Effect;
    match d.effect {
        // Tool calls go through the approval path; anything else that policy wants
        // approved (a resource read, an unrouted HTTP request) cannot be.
        Effect::Approve => (
            "approval_unsupported".to_string(),
            "policy asks for a person's approval, which is given only for tool calls (MCP tools/call or a routed HTTP tool); this request was not run".to_string(),
        ),
        _ => match d.reasons.first() {
            Some(r) => {
                let msg = d.reasons.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; ");
                (r.code.clone(), msg)
            }
            None => ("policy_denied".to_string(), "denied by policy".to_string()),
        },
    }
}
