//! One typed outcome for every answer the gateway gives. A `Reason` says why a request
//! ended the way it did; its code is the same in the agent's answer, the evidence record
//! and the metric label, and it knows who failed (agent, policy, approver, OP, store,
//! upstream, gateway), which HTTP status and JSON-RPC code it maps to, and the sentence
//! the model reads. Codes that come from Rego stay data (`Reason::Policy`).

use http::StatusCode;

use crate::policy::codes;
use crate::store::Failure;

/// Who a failure belongs to: decides 4xx against 5xx and what an operator looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Source {
    /// The agent sent something the gateway refuses to read or route.
    Agent,
    /// The policy decided (deny, or nothing allowed the call).
    Policy,
    /// The person asked: denied, did not answer, or the answer was already used.
    Approver,
    /// The OpenID Provider failed or refused the gateway.
    Op,
    /// The approval store failed.
    Store,
    /// The tool server failed.
    Upstream,
    /// The gateway itself (not configured, shutting down).
    Gateway,
}

/// JSON-RPC error codes the gateway answers with.
pub mod jsonrpc {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// Blocked by gateway policy (implementation-defined server error range).
    pub const BLOCKED: i64 = -32001;
    /// The gateway could not reach or hear back from the upstream.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32002;
    /// MCP 2026-07-28: `Mcp-Method` / `Mcp-Name` headers disagree with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
}

/// Why a request was forwarded, answered by the gateway or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    // --- forwarded -------------------------------------------------------------------
    /// Policy allowed the call.
    Allowed,
    /// A person approved the call and policy allowed it again with their evidence.
    Approved,

    // --- the agent's request -----------------------------------------------------------
    BadPath(String),
    NoSuchRoute,
    MethodNotAllowed,
    UnsupportedMediaType,
    /// A content coding or charset policy cannot read.
    UnsupportedEncoding(String),
    /// A body behind a method that carries none.
    BodyNotAllowed(String),
    BodyTooLarge(usize),
    BodyReadTimeout,
    BodyReadError(String),
    /// A route body policy cannot read (not JSON) on a route that does not stream one.
    OpaqueBodyNotAllowed,
    /// Malformed JSON (syntax, encoding): JSON-RPC -32700.
    ParseError(String),
    /// JSON two parsers could read differently (duplicate keys, lossy numbers, ...).
    AmbiguousJson {
        code: &'static str,
        message: String,
    },
    JsonTooDeep(usize),
    EmptyBatch,
    BatchNotAllowed(String),
    /// Not a JSON-RPC 2.0 message.
    InvalidRequest(String),
    /// A message with malformed params (e.g. `tools/call` without a name).
    InvalidParams(String),
    /// 2026-07-28 mirror headers disagree with the body.
    HeaderMismatch(String),
    BadHeader(String),
    /// An HTTP-route argument given twice with different values.
    AmbiguousArguments(String),
    BadQuery,
    /// A 2026-07-28 retry whose `requestState` is not ours, or not for this call.
    InvalidRequestState(String),
    /// The end user's identity (`x-ciba-gate-identity`) could not be verified, or is
    /// not accepted here.
    IdentityRefused(String),
    /// A virtual server: no server behind it offers this tool name (or two claim it).
    UnknownTool(String),
    /// A virtual server: the method is not one it answers or routes.
    MethodNotOffered(String),
    /// A virtual server speaking a revision with sessions: the request has no
    /// `Mcp-Session-Id` (only `initialize` may come without one).
    SessionRequired,
    /// A virtual server: the `Mcp-Session-Id` is not (or no longer) one it issued.
    UnknownSession,

    // --- policy ------------------------------------------------------------------------
    /// The policy's own reason (a `deny` element, or the engine's `no_matching_rule`,
    /// `policy_error`, `policy_unavailable`).
    Policy {
        code: String,
        message: String,
    },
    /// Policy asks for approval of something that is not a tool call.
    ApprovalUnsupported,
    /// Policy asks for approval of a batch member (one call is held at a time).
    ApprovalInBatch,
    /// After approval, policy still asks for approval instead of allowing.
    ApprovalNotSufficient(String),
    /// After approval, policy blocked the call.
    BlockedAfterApproval {
        code: String,
        message: String,
    },

    // --- approvals ---------------------------------------------------------------------
    ApprovalNotConfigured,
    OpUnavailable,
    ApprovalMisconfigured(String),
    InvalidBindingMessage(String),
    ApprovalPending,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalAlreadyUsed,
    ApprovalLost,
    /// Two-person rule: the grants came from fewer distinct people (by the ID tokens'
    /// subjects) than the policy requires.
    ApproversNotDistinct,
    /// The person who approved (the ID token's subject) is not the person the call was
    /// for (the verified identity the agent sent).
    ApproverMismatch,
    /// The upstream takes the approver's access token, and the grant kept none that
    /// opens (the OP sent none, or the store's copy was altered).
    ApprovalTokenMissing,
    ApprovalRateLimited {
        what: &'static str,
        retry_after_secs: u64,
    },
    DenialCooldown,
    RequestLost,
    StoreUnavailable(String),
    /// The approval failed at the OP, with the OP's (or validation's) code:
    /// `unknown_user_id`, `invalid_client`, `invalid_id_token`, `op_unreachable`, ...
    ApprovalFailed(String),
    ShuttingDown,
    /// `evidence.required`: the evidence sink cannot write, so calls that need an
    /// audit trail are refused.
    EvidenceUnavailable,

    // --- the tool server ---------------------------------------------------------------
    UpstreamUnreachable(String),
    UpstreamTimeout(std::time::Duration),
    UpstreamError(String),
    UpstreamAnswerTooLarge(usize),
    /// A stdio tool server already has this many requests waiting (`max_pending`).
    UpstreamBusy(usize),
    /// The tool server's certificate could not be verified (or it refused ours).
    UpstreamTls(String),
}

impl Reason {
    /// The stable code: the agent's answer, the evidence record and logs carry it.
    pub fn code(&self) -> &str {
        match self {
            Reason::Policy { code, .. } | Reason::BlockedAfterApproval { code, .. } => code,
            Reason::AmbiguousJson { code, .. } => code,
            Reason::ApprovalFailed(code) => code,
            other => other.static_code(),
        }
    }

    /// The metric label: the code for the gateway's own reasons, `policy` for codes a
    /// policy chose (a policy may build codes from input; labels must stay bounded).
    pub fn metric_label(&self) -> &'static str {
        use Reason::*;
        match self {
            Policy { code, .. } | BlockedAfterApproval { code, .. } => match code.as_str() {
                codes::NO_MATCHING_RULE => codes::NO_MATCHING_RULE,
                codes::POLICY_ERROR => codes::POLICY_ERROR,
                codes::POLICY_UNAVAILABLE => codes::POLICY_UNAVAILABLE,
                _ => "policy",
            },
            AmbiguousJson { code, .. } => code,
            ApprovalFailed(code) => {
                crate::ciba::ErrorCode::parse(code)
                    .static_name()
                    .unwrap_or(match code.as_str() {
                        "op_unreachable" => "op_unreachable",
                        "op_error" => "op_error",
                        _ => match code.parse::<Failure>() {
                            Ok(f) => f.code(),
                            Err(_) => Failure::ApprovalFailed.code(),
                        },
                    })
            }
            other => other.static_code(),
        }
    }

    fn static_code(&self) -> &'static str {
        use Reason::*;
        match self {
            Allowed => "allowed",
            Approved => "approved",
            BadPath(_) => "bad_path",
            NoSuchRoute => "no_such_route",
            MethodNotAllowed => "method_not_allowed",
            UnsupportedMediaType => "unsupported_media_type",
            UnsupportedEncoding(_) => "unsupported_encoding",
            BodyNotAllowed(_) => "body_not_allowed",
            BodyTooLarge(_) => "body_too_large",
            BodyReadTimeout => "body_read_timeout",
            BodyReadError(_) => "body_read_error",
            OpaqueBodyNotAllowed => "opaque_body_not_allowed",
            ParseError(_) => "parse_error",
            JsonTooDeep(_) => "json_too_deep",
            EmptyBatch => "empty_batch",
            BatchNotAllowed(_) => "batch_not_allowed",
            InvalidRequest(_) => "invalid_request",
            InvalidParams(_) => "invalid_params",
            HeaderMismatch(_) => "header_mismatch",
            BadHeader(_) => "bad_header",
            AmbiguousArguments(_) => "ambiguous_arguments",
            BadQuery => "bad_query",
            InvalidRequestState(_) => "invalid_request_state",
            IdentityRefused(_) => "identity_refused",
            UnknownTool(_) => "unknown_tool",
            MethodNotOffered(_) => "method_not_offered",
            SessionRequired => "session_required",
            UnknownSession => "unknown_session",
            ApprovalUnsupported => "approval_unsupported",
            ApprovalInBatch => "approval_in_batch",
            ApprovalNotSufficient(_) => "approval_not_sufficient",
            ApprovalNotConfigured => "approval_not_configured",
            OpUnavailable => "op_unavailable",
            ApprovalMisconfigured(_) => "approval_misconfigured",
            InvalidBindingMessage(_) => "invalid_binding_message",
            ApprovalPending => "approval_pending",
            ApprovalDenied => "approval_denied",
            ApprovalExpired => "approval_expired",
            ApprovalAlreadyUsed => "approval_already_used",
            ApprovalLost => Failure::ApprovalLost.code(),
            ApproversNotDistinct => Failure::ApproversNotDistinct.code(),
            ApproverMismatch => "approver_mismatch",
            ApprovalTokenMissing => "approval_token_missing",
            ApprovalRateLimited { .. } => "approval_rate_limited",
            DenialCooldown => "denial_cooldown",
            RequestLost => Failure::RequestLost.code(),
            StoreUnavailable(_) => Failure::StoreUnavailable.code(),
            ShuttingDown => "shutting_down",
            EvidenceUnavailable => "evidence_unavailable",
            UpstreamUnreachable(_) => "upstream_unreachable",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamError(_) => "upstream_error",
            UpstreamAnswerTooLarge(_) => "upstream_answer_too_large",
            UpstreamBusy(_) => "upstream_busy",
            UpstreamTls(_) => "upstream_tls_error",
            Policy { .. }
            | BlockedAfterApproval { .. }
            | AmbiguousJson { .. }
            | ApprovalFailed(_) => "policy",
        }
    }

    /// Who failed (or decided).
    pub fn source(&self) -> Source {
        use Reason::*;
        match self {
            Allowed | Approved => Source::Policy,
            BadPath(_)
            | NoSuchRoute
            | MethodNotAllowed
            | UnsupportedMediaType
            | UnsupportedEncoding(_)
            | BodyNotAllowed(_)
            | BodyTooLarge(_)
            | BodyReadTimeout
            | BodyReadError(_)
            | OpaqueBodyNotAllowed
            | ParseError(_)
            | AmbiguousJson { .. }
            | JsonTooDeep(_)
            | EmptyBatch
            | BatchNotAllowed(_)
            | InvalidRequest(_)
            | InvalidParams(_)
            | HeaderMismatch(_)
            | BadHeader(_)
            | AmbiguousArguments(_)
            | BadQuery
            | InvalidRequestState(_)
            | IdentityRefused(_)
            | UnknownTool(_)
            | MethodNotOffered(_)
            | SessionRequired
            | UnknownSession => Source::Agent,
            Policy { .. }
            | ApprovalUnsupported
            | ApprovalInBatch
            | ApprovalNotSufficient(_)
            | BlockedAfterApproval { .. }
            | ApprovalMisconfigured(_)
            | InvalidBindingMessage(_) => Source::Policy,
            ApprovalPending
            | ApprovalDenied
            | ApprovalExpired
            | ApprovalAlreadyUsed
            | ApproversNotDistinct
            | ApproverMismatch
            | ApprovalRateLimited { .. }
            | DenialCooldown => Source::Approver,
            OpUnavailable | ApprovalFailed(_) | RequestLost | ApprovalTokenMissing => Source::Op,
            ApprovalLost | StoreUnavailable(_) => Source::Store,
            ApprovalNotConfigured | ShuttingDown | EvidenceUnavailable => Source::Gateway,
            UpstreamUnreachable(_)
            | UpstreamTimeout(_)
            | UpstreamError(_)
            | UpstreamAnswerTooLarge(_)
            | UpstreamBusy(_)
            | UpstreamTls(_) => Source::Upstream,
        }
    }

    /// The HTTP status of a plain-HTTP answer (and of a JSON-RPC answer to a whole POST).
    pub fn http_status(&self) -> StatusCode {
        use Reason::*;
        match self {
            Allowed | Approved => StatusCode::OK,
            NoSuchRoute | UnknownSession => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedMediaType | UnsupportedEncoding(_) | OpaqueBodyNotAllowed => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyReadTimeout => StatusCode::REQUEST_TIMEOUT,
            IdentityRefused(_) => StatusCode::UNAUTHORIZED,
            ApprovalPending => StatusCode::ACCEPTED,
            ApprovalRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            EvidenceUnavailable | UpstreamBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamUnreachable(_)
            | UpstreamError(_)
            | UpstreamAnswerTooLarge(_)
            | UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            other if other.source() == Source::Agent => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The JSON-RPC error code, when the answer is a JSON-RPC error.
    pub fn jsonrpc_code(&self) -> i64 {
        use Reason::*;
        match self {
            ParseError(_) => jsonrpc::PARSE_ERROR,
            InvalidParams(_) | InvalidRequestState(_) | UnknownTool(_) => jsonrpc::INVALID_PARAMS,
            MethodNotOffered(_) => jsonrpc::METHOD_NOT_FOUND,
            HeaderMismatch(_) => jsonrpc::HEADER_MISMATCH,
            UpstreamUnreachable(_)
            | UpstreamTimeout(_)
            | UpstreamError(_)
            | UpstreamAnswerTooLarge(_)
            | UpstreamBusy(_)
            | UpstreamTls(_) => jsonrpc::UPSTREAM_UNAVAILABLE,
            other if other.source() == Source::Agent => jsonrpc::INVALID_REQUEST,
            _ => jsonrpc::BLOCKED,
        }
    }

    /// The sentence a person or a model reads.
    pub fn sentence(&self) -> String {
        use Reason::*;
        match self {
            Allowed => "allowed by policy".into(),
            Approved => "approved and allowed by policy".into(),
            BadPath(why) => why.clone(),
            NoSuchRoute => "no upstream is mounted at this path".into(),
            MethodNotAllowed => "this method is not accepted here".into(),
            UnsupportedMediaType => {
                "MCP messages must be sent as Content-Type: application/json".into()
            }
            UnsupportedEncoding(why) | BodyNotAllowed(why) | BodyReadError(why)
            | ParseError(why) | BatchNotAllowed(why) | InvalidRequest(why)
            | InvalidParams(why) | HeaderMismatch(why) | BadHeader(why)
            | AmbiguousArguments(why) => why.clone(),
            BodyTooLarge(limit) => {
                format!("the request body exceeds the gateway's limit of {limit} bytes")
            }
            BodyReadTimeout => "the request body did not arrive in time".into(),
            OpaqueBodyNotAllowed => "this route takes a JSON body (Content-Type: application/json) or none; other bodies are refused because policy cannot read them".into(),
            AmbiguousJson { message, .. } => message.clone(),
            JsonTooDeep(max) => format!("JSON nesting deeper than {max} levels"),
            EmptyBatch => "an empty batch is not a valid JSON-RPC request".into(),
            BadQuery => "query string is not valid UTF-8 after percent-decoding".into(),
            InvalidRequestState(why) => format!("{why}; call again without it"),
            UnknownTool(why) => why.clone(),
            MethodNotOffered(method) => format!("this endpoint does not offer {method} (its servers' tools are offered through tools/list and tools/call)"),
            SessionRequired => "this request needs the Mcp-Session-Id that initialize returned".into(),
            UnknownSession => "this session is unknown or has ended; initialize a new one".into(),
            IdentityRefused(why) => format!("the end user's identity was refused: {why}; nothing was run and no one was asked"),
            Policy { message, .. } => message.clone(),
            ApprovalUnsupported => "policy asks for a person's approval, which is given only for tool calls (MCP tools/call or a routed HTTP tool); this request was not run".into(),
            ApprovalInBatch => "it needs a person's approval, which cannot be given inside a JSON-RPC batch; send it on its own".into(),
            ApprovalNotSufficient(message) => format!("it was approved, but policy still does not allow it: {message}"),
            BlockedAfterApproval { message, .. } => {
                format!("it was approved, but policy blocked it afterwards: {message}")
            }
            ApprovalNotConfigured => "it needs a person's approval, and no approval provider (CIBA) is configured on this gateway".into(),
            OpUnavailable => "it needs a person's approval, and the OpenID Provider's metadata could not be fetched yet; try again shortly".into(),
            ApprovalMisconfigured(why) => format!("the policy's approval is misconfigured: {why}"),
            InvalidBindingMessage(why) => format!("the policy's binding message does not fit the OP ({why}); this is a configuration error"),
            ApprovalPending => "waiting for the person's approval".into(),
            ApprovalDenied => "the user denied the request on their phone".into(),
            ApprovalExpired => "nobody approved the request in time".into(),
            ApprovalAlreadyUsed => "the approval for this exact call was used by an identical call; call again to ask for a new approval".into(),
            ApproversNotDistinct => "the approvals came from fewer distinct people than the policy requires (two of the approvers named are one person); nothing was forwarded".into(),
            ApprovalTokenMissing => "it was approved, but the tool server takes the approver's access token and none could be recovered from the grant (or exchanged for the tool server); nothing was forwarded".into(),
            ApproverMismatch => "the approval came from a different person than the one this call is for; nothing was forwarded".into(),
            ApprovalLost => "the pending approval for this call is gone from the approval store (it was lost or has expired); nothing was forwarded; call again to ask for a new approval".into(),
            ApprovalRateLimited { what, retry_after_secs } => format!(
                "too many approval requests {what}; try again in {retry_after_secs} s"
            ),
            DenialCooldown => "the user recently denied an approval; no new request is sent until the cool-down passes".into(),
            RequestLost => "the gateway that sent the approval request stopped before the OP acknowledged it; retry the call to ask again".into(),
            StoreUnavailable(why) => format!("approvals cannot be checked right now: {why}"),
            ApprovalFailed(code) => match code.as_str() {
                "invalid_binding_message" => "the OP rejected the binding message; this is a configuration error".into(),
                "unknown_user_id" => "the OP does not know the user this agent acts for".into(),
                "invalid_client" | "unauthorized_client" => "the OP rejected the gateway's client credentials".into(),
                "op_unreachable" => "the OpenID Provider could not be reached".into(),
                "op_error" => "the OpenID Provider answered with an error".into(),
                "invalid_id_token" => "the approval's ID token failed validation".into(),
                "invalid_grant" => "the OP no longer knows the approval request".into(),
                "access_denied" => "the OP refused the request".into(),
                other => format!("the approval failed ({other})"),
            },
            ShuttingDown => "the gateway is shutting down; call again to continue (the approval request is kept)".into(),
            EvidenceUnavailable => "the gateway cannot write its audit trail right now, so this call is refused; try again later".into(),
            UpstreamUnreachable(why) => format!("could not connect to the upstream: {why}"),
            UpstreamTimeout(d) => format!("the upstream did not answer within {d:?}"),
            UpstreamError(why) => why.clone(),
            UpstreamAnswerTooLarge(limit) => format!(
                "the tool server's answer is larger than the gateway inspects ({limit} bytes)"
            ),
            UpstreamTls(why) => format!("the tool server's TLS could not be trusted: {why}"),
            UpstreamBusy(n) => format!(
                "the tool server already has {n} requests waiting; nothing was sent; try again shortly"
            ),
        }
    }

    /// The decision word of an answer the model reads (`_meta["ciba-gate/decision"]`).
    pub fn decision(&self) -> &'static str {
        use Reason::*;
        match self {
            Allowed | Approved => "allow",
            BlockedAfterApproval { .. } => "deny",
            r if r.source() == Source::Agent => "reject",
            Policy { .. } => "deny",
            _ => "approve",
        }
    }

    /// Seconds after which a retry may succeed, for answers that say so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Reason::ApprovalRateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The reason for a failed approval record: the gateway's own `Failure` codes, or
    /// the OP's code as it was stored.
    pub fn from_failure(code: Option<&str>) -> Reason {
        let code = code.unwrap_or(Failure::ApprovalFailed.code());
        match code.parse::<Failure>() {
            Ok(Failure::RequestLost) => Reason::RequestLost,
            Ok(Failure::ApprovalLost) => Reason::ApprovalLost,
            Ok(Failure::ApproversNotDistinct) => Reason::ApproversNotDistinct,
            Ok(Failure::StoreUnavailable) => {
                Reason::StoreUnavailable("the approval store failed".into())
            }
            Ok(Failure::InvalidIdToken | Failure::ApprovalFailed) | Err(_) => {
                match crate::ciba::ErrorCode::parse(code) {
                    crate::ciba::ErrorCode::InvalidBindingMessage => {
                        Reason::InvalidBindingMessage("the OP rejected it".into())
                    }
                    _ => Reason::ApprovalFailed(code.to_string()),
                }
            }
        }
    }

    /// A policy decision's reason (`deny` elements joined, first code wins).
    pub fn from_policy(reasons: &[crate::policy::Reason]) -> Reason {
        match reasons.first() {
            Some(first) => Reason::Policy {
                code: first.code.clone(),
                message: reasons
                    .iter()
                    .map(|r| r.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            None => Reason::Policy {
                code: codes::POLICY_DENIED.into(),
                message: "denied by policy".into(),
            },
        }
    }
}

/// What happened to a request, as the evidence record and the decisions metric say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Disposition {
    /// Sent to the tool server.
    Forwarded,
    /// Answered by the gateway: policy or approval said no.
    Blocked,
    /// Answered "pending": the identical retry continues.
    Parked,
    /// Refused before any decision: the request could not be read as one call.
    Rejected,
    /// Allowed by policy and answered by the gateway itself, as the virtual server
    /// in front of several tool servers (`initialize`, a merged `tools/list`, …).
    Answered,
    /// Policy allowed it, the tool server failed.
    UpstreamFailed,
    /// The agent went away before an answer.
    Cancelled,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_the_gateway_stores_reads_back_as_the_same_code() {
        use strum::IntoEnumIterator;
        for failure in Failure::iter() {
            let reason = Reason::from_failure(Some(failure.code()));
            assert_eq!(reason.code(), failure.code(), "{failure:?}");
            assert_eq!(reason.metric_label(), failure.code(), "{failure:?}");
        }
        assert_eq!(Reason::from_failure(None).code(), "approval_failed");
        assert_eq!(
            Reason::from_failure(Some("invalid_binding_message")),
            Reason::InvalidBindingMessage("the OP rejected it".into())
        );
    }

    #[test]
    fn the_agent_gets_4xx_and_the_tool_server_5xx() {
        assert_eq!(Reason::BodyTooLarge(1).http_status(), 413);
        assert_eq!(Reason::ParseError("x".into()).jsonrpc_code(), -32700);
        assert_eq!(
            Reason::UpstreamTimeout(std::time::Duration::from_secs(1)).http_status(),
            504
        );
        assert_eq!(Reason::ApprovalDenied.http_status(), 403);
        assert_eq!(Reason::ApprovalDenied.source(), Source::Approver);
        assert_eq!(Reason::ApprovalDenied.jsonrpc_code(), jsonrpc::BLOCKED);
    }

    #[test]
    fn policy_codes_stay_data_and_metric_labels_stay_bounded() {
        let r = Reason::Policy {
            code: "deploy_freeze_for_alice".into(),
            message: "m".into(),
        };
        assert_eq!(r.code(), "deploy_freeze_for_alice");
        assert_eq!(r.metric_label(), "policy");
        let e = Reason::Policy {
            code: "policy_error".into(),
            message: "m".into(),
        };
        assert_eq!(e.metric_label(), "policy_error");
        assert_eq!(
            Reason::ApprovalFailed("made_up_by_op".into()).metric_label(),
            "approval_failed"
        );
        assert_eq!(
            Reason::ApprovalFailed("unknown_user_id".into()).metric_label(),
            "unknown_user_id"
        );
    }
}
