//! The per-request context every phase works on: the gateway, the mount, the request
//! head facts, and the evidence record of each call the request carries.

use crate::clock::Instant;
use std::sync::Arc;

use http::Method;
use serde_json::Value;

use super::mcp::ToolCall;
use super::multiplex::Routed;
use super::render::Shape;
use super::upstream::Upstream;
use super::{ApprovalsState, Gateway, Mount, Target};
use crate::approval::identity::{self, Identity};
use crate::audit::{EvidenceRecord, PendingRecord};
use crate::outcome::{Disposition, Reason};
use crate::policy::input::{self, PolicyInput};

/// One agent request on its way through the phases.
pub struct Call<'g> {
    pub gw: &'g Arc<Gateway>,
    pub mount: &'g Mount,
    /// Correlates the evidence records of this request.
    pub id: String,
    pub started: Instant,
    pub method: Method,
    /// The end user the agent proved this request is for (`x-ciba-gate-identity`).
    pub identity: Option<Arc<Identity>>,
    /// Behind a virtual server: the server this call goes to (once its tool is known).
    pub routed: Option<Routed>,
}

impl<'g> Call<'g> {
    /// The tool server this call goes to: the mount's, or the routed one behind a
    /// virtual server (none before routing).
    pub fn upstream(&self) -> Option<&'g Upstream> {
        match (&self.mount.target, &self.routed) {
            (Target::Upstream(u), _) => Some(u),
            (Target::Virtual(vs), Some(r)) => vs.members[r.server].http(),
            (Target::Virtual(_), None) => None,
        }
    }

    /// The upstream name policy and evidence see: the routed server's, else the mount's.
    pub fn upstream_name(&self) -> &'g str {
        match (&self.mount.target, &self.routed) {
            (Target::Virtual(vs), Some(r)) => vs.members[r.server].name(),
            _ => self
                .upstream()
                .map_or(self.mount.name(), |u| u.name.as_str()),
        }
    }

    /// The name the tool server reads for this call's tool (its own, behind a virtual
    /// server), given the name the agent used.
    pub fn own_tool_name<'a>(&'a self, agent_name: &'a str) -> &'a str {
        self.routed
            .as_ref()
            .map_or(agent_name, |r| r.own_name.as_str())
    }

    pub fn new(gw: &'g Arc<Gateway>, mount: &'g Mount, method: &Method) -> Self {
        Call {
            gw,
            mount,
            id: new_request_id(),
            started: crate::clock::now(),
            method: method.clone(),
            identity: None,
            routed: None,
        }
    }

    /// A new evidence record for one call of this request (written exactly once).
    pub fn record(&self) -> PendingRecord {
        record_for(
            self.gw,
            &self.id,
            self.started,
            &self.method,
            self.upstream_name(),
        )
    }

    /// Refuses the whole request before any decision: one `rejected` record, the answer.
    pub fn reject(&self, reason: Reason, shape: &Shape) -> http::Response<super::BoxBody> {
        self.record().conclude(Disposition::Rejected, &reason, None);
        super::render::answer(&reason, shape)
    }

    /// Phase `identify`: verifies the end user's identity the request carries, if any.
    /// A refusal ends the request before any decision.
    pub async fn identify(&mut self, headers: &http::HeaderMap) -> Result<(), Reason> {
        let mut values = headers.get_all(identity::IDENTITY_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(identity::refused(format!(
                "{} is given more than once",
                identity::IDENTITY_HEADER
            )));
        }
        let approvals = match self.gw.approvals_state() {
            ApprovalsState::Ready(a) => a,
            ApprovalsState::NotConfigured => {
                return Err(identity::refused(
                    "this gateway asks no one for approval (no `approvals` configured)",
                ));
            }
            ApprovalsState::Unavailable => {
                return Err(identity::refused(
                    "the OpenID Provider's keys are not available yet, so it cannot be verified; try again shortly",
                ));
            }
        };
        self.identity = Some(Arc::new(identity::verify(&approvals, value).await?));
        Ok(())
    }

    /// The input facts every call of this request shares (phase `request`).
    pub fn base_input(&self, head: &http::request::Parts) -> PolicyInput {
        let mut input = PolicyInput::new(
            input::Phase::Request,
            self.agent_facts(),
            input::Upstream {
                name: self.upstream_name().to_string(),
                kind: self.mount.kind.as_str(),
                via: match &self.mount.target {
                    Target::Virtual(vs) => Some(vs.name.clone()),
                    Target::Upstream(_) => None,
                },
            },
        );
        input.request = Some(PolicyInput::request_facts(
            &head.method,
            head.uri.path(),
            &head.headers,
        ));
        input.op = self.gw.binding_message_profile().map(|p| input::Op {
            binding_message_profile: p.to_string(),
        });
        input.identity = self.identity.as_ref().and_then(|person| {
            let approvals = self.gw.approvals()?;
            Some(input::Identity {
                subject: person.subject.clone(),
                issuer: person.issuer.clone(),
                subject_hash: approvals.subject_hash(&person.issuer, &person.subject),
            })
        });
        input
    }

    /// The same call, owned (for a held call's task).
    pub fn to_owned(&self) -> OwnedCall {
        OwnedCall {
            gw: self.gw.clone(),
            mount: self.gw.mount_position(self.mount),
            id: self.id.clone(),
            started: self.started,
            method: self.method.clone(),
            identity: self.identity.clone(),
            routed: self.routed.clone(),
        }
    }

    pub fn agent_facts(&self) -> input::Agent {
        input::Agent {
            id: self.gw.agent.id.clone(),
            namespace: self.gw.agent.namespace.clone(),
        }
    }
}

/// A call that outlives the request handler (held over SSE).
pub struct OwnedCall {
    gw: Arc<Gateway>,
    mount: usize,
    id: String,
    started: Instant,
    method: Method,
    identity: Option<Arc<Identity>>,
    routed: Option<Routed>,
}

impl OwnedCall {
    pub fn call(&self) -> Call<'_> {
        Call {
            gw: &self.gw,
            mount: self.gw.mount_at(self.mount),
            id: self.id.clone(),
            started: self.started,
            method: self.method.clone(),
            identity: self.identity.clone(),
            routed: self.routed.clone(),
        }
    }
}

/// A record for a request that never reached a mount (a bad path).
pub fn record_for(
    gw: &Gateway,
    id: &str,
    started: Instant,
    method: &Method,
    upstream: &str,
) -> PendingRecord {
    PendingRecord::new(
        &gw.evidence,
        started,
        EvidenceRecord {
            request_id: id.to_string(),
            http_method: method.to_string(),
            agent: gw.agent.id.clone(),
            upstream: upstream.to_string(),
            ..Default::default()
        },
    )
}

/// 16 hex digits, random.
pub fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// How a call's approval answer must be shaped.
#[derive(Debug, Clone)]
pub enum Caller {
    Mcp {
        id: Value,
        progress_token: Option<Value>,
        /// The request's `Accept` names `text/event-stream`: it can be held over SSE.
        accepts_sse: bool,
        stateless: bool,
        /// It declared it can answer a form elicitation (2026-07-28 per-request
        /// `clientCapabilities`): it may be sent `input_required`.
        can_elicit: bool,
        request_state: Option<String>,
    },
    Http,
}

impl Caller {
    /// The shape a blocked answer takes for this caller.
    pub fn shape(&self, tool: &str) -> Shape {
        match self {
            Caller::Mcp { id, stateless, .. } => Shape::ToolResult {
                id: id.clone(),
                tool: tool.to_string(),
                stateless: *stateless,
            },
            Caller::Http => Shape::Http,
        }
    }
}

/// One call to decide: an MCP message or a routed HTTP tool call.
pub struct Unit {
    pub record: PendingRecord,
    pub input: PolicyInput,
    /// The tool and arguments, when the call is a tool call.
    pub tool: Option<ToolCall>,
    /// How to answer it when the gateway does.
    pub shape: Shape,
    /// Whether a person's approval can be given for it (a tool call that is a request).
    pub approvable: Option<Caller>,
    /// Its answer is a `tools/list` result to filter (by this id).
    pub list_id: Option<String>,
}
