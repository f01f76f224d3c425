//! The policy input document, built in one place. Its shape is the policy contract
//! (docs/policy-contract.md): `phase`, `agent`, `upstream`, `request`, `mcp`, `tool`,
//! `http`, `approval`, `op`, `identity`. Only allow-listed request headers ever enter it.

use serde::Serialize;
use serde_json::{Map, Value};

/// When the policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The agent's request, before anything is forwarded.
    Request,
    /// After a person approved: the same input plus `approval`.
    Approved,
    /// A tool in a `tools/list` answer, without arguments: a deny hides it.
    List,
}

/// Request headers a policy may read (lower-cased); all others stay out of the input.
pub const POLICY_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "user-agent",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    pub name: String,
    pub kind: &'static str,
    /// The virtual server the call came through, when the mount is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Map<String, Value>,
    /// `none`, `json` or `opaque` (an HTTP-route body streamed unread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BodyFacts {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mcp {
    /// Null for GET (the server's event stream) and DELETE (end of session).
    pub method: Option<String>,
    pub kind: &'static str,
    pub protocol_version: Option<String>,
    /// The `Mcp-Session-Id` the client sent, if any.
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    /// The name the agent used.
    pub name: String,
    /// The tool's own name at its server, behind a virtual server (which may show it
    /// under a prefix or an alias).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<String>,
    /// Absent in phase `list`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// The tool server's annotations (phase `list`): hints, never trusted alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Http {
    /// The route's path template, e.g. `/projects/{project}/issues`.
    pub route: String,
}

/// What the approver's ID token proved (phase `approved`).
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub subject_hash: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: Option<i64>,
    pub binding_message: String,
}

/// The end user the agent proved the call is for (a verified ID token in
/// `x-ciba-gate-identity`); absent when the agent sent none.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    /// The same keyed hash as `approval.subject_hash` for this person.
    pub subject_hash: String,
}

/// What the gateway knows of the OpenID Provider that will show the message.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// The configured binding-message profile (`oidc-provider`, `auth0`, …, `custom`):
    /// the policy picks a message that fits it.
    pub binding_message_profile: String,
}

/// The whole input document.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInput {
    pub phase: Phase,
    pub agent: Agent,
    pub upstream: Upstream,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Mcp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Every distinct approver, in phase `approved` (one entry unless a quorum was asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<Approval>>,
    /// Absent when approvals are not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

impl PolicyInput {
    /// The facts every input shares.
    pub fn new(phase: Phase, agent: Agent, upstream: Upstream) -> Self {
        PolicyInput {
            phase,
            agent,
            upstream,
            request: None,
            mcp: None,
            tool: None,
            http: None,
            approval: None,
            approvals: None,
            op: None,
            identity: None,
        }
    }

    /// The document as the engine reads it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The request facts from an HTTP request head (allow-listed headers only).
    pub fn request_facts(method: &http::Method, path: &str, headers: &http::HeaderMap) -> Request {
        let mut h = Map::new();
        for name in POLICY_HEADERS {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                h.insert(name.to_string(), Value::String(v.to_string()));
            }
        }
        Request {
            method: method.as_str().to_string(),
            path: path.to_string(),
            headers: h,
            body: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_headers_enter_the_input() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-ciba-gate-approved", "yes".parse().unwrap());
        let r = PolicyInput::request_facts(&http::Method::POST, "/mcp", &h);
        assert_eq!(r.headers.len(), 1);
        assert!(r.headers.contains_key("content-type"));
    }

    #[test]
    fn the_document_has_the_contract_shape() {
        let mut input = PolicyInput::new(
            Phase::Request,
            Agent {
                id: "a".into(),
                namespace: None,
            },
            Upstream {
                name: "tools".into(),
                kind: "mcp",
                via: None,
            },
        );
        input.mcp = Some(Mcp {
            method: None,
            kind: "request",
            protocol_version: None,
            session: Some("s1".into()),
        });
        let v = input.to_value();
        assert_eq!(v["phase"], "request");
        assert_eq!(v["mcp"]["method"], Value::Null);
        assert_eq!(v["mcp"]["session"], "s1");
        assert!(v.get("tool").is_none());
    }
}
