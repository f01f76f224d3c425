//! Phase 3, approve: a call that policy says needs a person's approval is held (or
//! parked) while the approval runs, re-checked by policy with the approver's evidence
//! (phase `approved`), and forwarded only on `allow`, once per approval.

mod hold;
mod park;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use tracing::Instrument;

use super::call::{Call, Caller, Unit};
use super::classify::OutBody;
use super::forward::{self, Outbound, Plan};
use super::render::{self, Shape};
use super::{ApprovalsState, BoxBody, decide, framing, mcp};
use crate::approval::request_state;
use crate::approval::{Approvals, CallForApproval, Settled, Ticket};
use crate::outcome::{Disposition, Reason};
use crate::policy::input;
use crate::store::now_ms;

/// Response header carrying the binding message to the agent side, so the user can
/// match what the agent console shows with what the phone shows.
pub const BINDING_HEADER: &str = "x-ciba-gate-binding-message";
/// Response header with the approval state: pending, approved, denied, expired, failed.
pub const APPROVAL_HEADER: &str = "x-ciba-gate-approval";

/// The approval state the agent's answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Failed,
}

impl State {
    fn of(reason: &Reason) -> State {
        match reason {
            Reason::ApprovalDenied => State::Denied,
            Reason::ApprovalExpired => State::Expired,
            Reason::ApprovalPending => State::Pending,
            _ => State::Failed,
        }
    }
}

/// How a settled approval ends for the agent.
enum Concluded {
    /// The gateway answers itself (blocked, parked, failed before forwarding).
    Answer {
        status: StatusCode,
        body: Value,
        state: State,
        retry_after: Option<u64>,
    },
    /// Approved, re-checked and sent: the tool server's answer (or its failure).
    Forwarded(Response<BoxBody>),
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        let enc = percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        HeaderValue::from_str(&enc).unwrap_or_else(|_| HeaderValue::from_static("-"))
    })
}

fn with_headers(mut r: Response<BoxBody>, binding: &str, state: State) -> Response<BoxBody> {
    r.headers_mut()
        .insert(BINDING_HEADER, header_value(binding));
    r.headers_mut().insert(
        APPROVAL_HEADER,
        HeaderValue::from_static(<&'static str>::from(state)),
    );
    r
}

/// Blocks the unit before any approval started.
fn refuse(mut unit: Unit, reason: Reason) -> Response<BoxBody> {
    let resp = render::answer(&reason, &unit.shape);
    unit.record.get_mut().decision = "approve";
    unit.record.conclude(Disposition::Blocked, &reason, None);
    resp
}

/// Runs the approval for one call and answers the agent.
pub async fn run(
    call: &Call<'_>,
    unit: Unit,
    params: Value,
    mut out: Outbound,
) -> Response<BoxBody> {
    let approvals = match call.gw.approvals_state() {
        ApprovalsState::NotConfigured => return refuse(unit, Reason::ApprovalNotConfigured),
        ApprovalsState::Unavailable => return refuse(unit, Reason::OpUnavailable),
        ApprovalsState::Ready(a) => a,
    };
    let (Some(tool), Some(caller)) = (unit.tool.clone(), unit.approvable.clone()) else {
        return refuse(unit, Reason::ApprovalUnsupported);
    };
    // The approval is bound to the exact request: a body policy could not read is read
    // now, and its digest joins the arguments that are fingerprinted.
    let mut bound = tool.arguments.clone();
    if matches!(out.body, OutBody::Stream(_))
        && let OutBody::Stream(stream) = std::mem::replace(&mut out.body, OutBody::None)
    {
        let limits = &call.gw.limits;
        match framing::collect_stream(stream, limits.max_body_bytes, limits.body_read_timeout).await
        {
            Ok(b) => {
                if !b.is_empty()
                    && let Value::Object(m) = &mut bound
                {
                    use sha2::Digest;
                    m.insert(
                        "$body_sha256".into(),
                        Value::String(hex::encode(sha2::Sha256::digest(&b))),
                    );
                }
                out.body = OutBody::Held(b);
            }
            Err(reason) => {
                unit.record.conclude(Disposition::Rejected, &reason, None);
                return render::answer(&reason, &unit.shape);
            }
        }
    }
    let for_approval = CallForApproval {
        agent: &call.gw.agent.id,
        upstream: call.upstream_name(),
        tool: &tool.name,
        arguments: &bound,
        params: &params,
        trace_parent: crate::telemetry::traces::traceparent(&tracing::Span::current()),
        identity: call.identity.as_deref(),
        resource: call.upstream().and_then(|u| u.approval_resource()),
        // What the tool server will verify: its own name for the tool.
        call_digest: crate::verify::call_digest(call.own_tool_name(&tool.name), &bound),
    };
    // A 2026-07-28 retry carries the requestState we issued: it must be intact, ours,
    // for this agent and this exact call.
    if let Caller::Mcp {
        request_state: Some(state),
        id,
        ..
    } = &caller
    {
        let digest = approvals.fingerprint(&for_approval);
        if let Err(e) = request_state::open(
            approvals.state_key(),
            state,
            &call.gw.agent.id,
            &digest,
            now_ms(),
        ) {
            let reason = Reason::InvalidRequestState(e.to_string());
            unit.record.conclude(Disposition::Rejected, &reason, None);
            return render::answer(&reason, &Shape::JsonRpc { id: id.clone() });
        }
    }
    // What the gateway put into a retry (its requestState, its inputResponses entry,
    // its `_meta`) is not the tool server's: the approved call goes on without it.
    if let Caller::Mcp { request_state, .. } = &caller
        && let OutBody::Held(bytes) = &out.body
        && let Some(clean) = mcp::retry::clean(bytes, request_state.is_some())
    {
        out.body = OutBody::Held(clean);
    }
    // The CIBA driver this may start traces below this span.
    let ticket = match approvals
        .prepare(&for_approval)
        .instrument(crate::traced_span!("approval.request"))
        .await
    {
        Ok(t) => t,
        Err(reason) => return refuse(unit, reason),
    };
    if let Some(first) = &ticket.joined_trace {
        crate::telemetry::traces::link_to(&tracing::Span::current(), first);
    }
    let binding = ticket.params.binding_message.clone();
    let mode = ticket.params.mode.unwrap_or(approvals.settings.mode);
    let remaining = Duration::from_millis(ticket.deadline_ms.saturating_sub(now_ms()));
    let until = match wait::how(mode, &caller, remaining, approvals.settings.max_plain_wait) {
        wait::Wait::OverSse => return hold::over_sse(call, approvals, ticket, unit, caller, out),
        wait::Wait::Plain => ticket.deadline_ms,
        wait::Wait::Park => now_ms(),
    };
    let settled = wait_or_shutdown(call, &approvals, &ticket, until)
        .instrument(crate::traced_span!(
            "approval.wait",
            ciba_gate.approval.mode = "park_or_plain"
        ))
        .await;
    match conclude(call, &approvals, &ticket, unit, &caller, out, settled).await {
        Concluded::Answer {
            status,
            body,
            state,
            retry_after,
        } => {
            let mut r = render::json(status, &body);
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            with_headers(r, &binding, state)
        }
        Concluded::Forwarded(r) => with_headers(r, &binding, State::Approved),
    }
}

/// Waits for the decision, but gives up at once when the gateway is shutting down.
async fn wait_or_shutdown(
    call: &Call<'_>,
    approvals: &Arc<Approvals>,
    ticket: &Ticket,
    until: u64,
) -> Settled {
    let mut shutdown = call.gw.shutdown.clone();
    if *shutdown.borrow() {
        return Settled::Blocked(Reason::ShuttingDown, Vec::new());
    }
    tokio::select! {
        s = approvals.settle(ticket, until) => s,
        _ = shutdown.wait_for(|v| *v) => Settled::Blocked(Reason::ShuttingDown, Vec::new()),
    }
}

/// Turns a settled approval into the agent's answer: park, block, or re-check and forward.
async fn conclude(
    call: &Call<'_>,
    approvals: &Approvals,
    ticket: &Ticket,
    mut unit: Unit,
    caller: &Caller,
    out: Outbound,
    settled: Settled,
) -> Concluded {
    let tool = unit
        .tool
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    unit.record.get_mut().decision = "approve";
    match settled {
        Settled::Pending(r) => {
            unit.record.get_mut().approval = Some(approvals.evidence(ticket, &r));
            unit.record
                .conclude(Disposition::Parked, &Reason::ApprovalPending, None);
            park::answer(call, approvals, ticket, caller)
        }
        Settled::Blocked(reason, r) => {
            unit.record.get_mut().approval = Some(approvals.evidence(ticket, &r));
            unit.record.conclude(Disposition::Blocked, &reason, None);
            let (status, mut body) = render::value(&reason, &caller.shape(&tool));
            name_the_request(&mut body, &ticket.params.binding_message);
            Concluded::Answer {
                status,
                body,
                state: State::of(&reason),
                retry_after: reason.retry_after(),
            }
        }
        Settled::Approved(records) => {
            unit.record.get_mut().approval = Some(approvals.evidence(ticket, &records));
            let facts: Vec<input::Approval> = crate::approval::approvals_used(&records)
                .into_iter()
                .map(|rec| {
                    let approver = rec.approver.clone().unwrap_or_default();
                    input::Approval {
                        subject_hash: approver.subject_hash,
                        acr: approver.acr,
                        amr: approver.amr,
                        auth_time: approver.auth_time,
                        binding_message: rec.binding_message.clone(),
                    }
                })
                .collect();
            let (verdict, revision, shadow) = decide::approved(call.gw, &mut unit.input, facts);
            let r = unit.record.get_mut();
            r.policy_revision = revision.to_string();
            if r.shadow.is_none() {
                r.shadow = shadow;
            }
            if let Err(reason) = verdict {
                unit.record.get_mut().decision = "deny";
                return blocked_after_approval(unit, &reason, caller, &tool);
            }
            // An upstream that takes the approver's token gets it, or nothing at all.
            let approval_token = if call.upstream().is_some_and(|u| u.wants_approval_token()) {
                let first = crate::approval::approvals_used(&records).into_iter().next();
                let kept = first.and_then(|rec| approvals.access_token(rec));
                let token = match (
                    kept,
                    call.upstream().and_then(|u| u.approval_exchange_audience()),
                ) {
                    (Some(t), Some(audience)) => {
                        use secrecy::ExposeSecret;
                        match approvals
                            .ciba
                            .exchange_token(t.expose_secret(), audience)
                            .await
                        {
                            Ok(exchanged) => Some(exchanged),
                            Err(e) => {
                                tracing::warn!(code = e.code(), error = %e, "token exchange for the tool server failed");
                                None
                            }
                        }
                    }
                    (kept, _) => kept,
                };
                match token {
                    Some(token) => {
                        if let Some(a) = unit.record.get_mut().approval.as_mut() {
                            a.token_forwarded = true;
                        }
                        Some(token)
                    }
                    None => {
                        let reason = Reason::ApprovalTokenMissing;
                        return blocked_after_approval(unit, &reason, caller, &tool);
                    }
                }
            } else {
                None
            };
            unit.record.get_mut().decision = "allow";
            let plan = Plan {
                jsonrpc: matches!(caller, Caller::Mcp { .. }),
                approval_token,
                ..Plan::default()
            };
            Concluded::Forwarded(
                forward::send(call, out, vec![unit.record], Reason::Approved, plan).await,
            )
        }
    }
}

/// A call a person approved that is still not forwarded: recorded blocked, answered
/// in the caller's shape.
fn blocked_after_approval(unit: Unit, reason: &Reason, caller: &Caller, tool: &str) -> Concluded {
    unit.record.conclude(Disposition::Blocked, reason, None);
    let (status, body) = render::value(reason, &caller.shape(tool));
    Concluded::Answer {
        status,
        body,
        state: State::Approved,
        retry_after: None,
    }
}

/// Names the approval request in a blocked answer, so the person can tell which of
/// their phone's prompts it was.
fn name_the_request(body: &mut Value, binding: &str) {
    if let Some(Value::String(text)) = body.pointer_mut("/result/content/0/text") {
        text.push_str(&format!(" (approval request: \"{binding}\")"));
    } else if let Some(obj) = body.as_object_mut()
        && obj.contains_key("reason")
    {
        obj.insert("binding_message".into(), json!(binding));
    }
}

/// The body the parked answer carries, for `park` to fill in.
fn pending_http_body(binding: &str, retry: u64) -> Value {
    json!({
        "status": Reason::ApprovalPending.code(),
        "reason": Reason::ApprovalPending.code(),
        "binding_message": binding,
        "retry_after_seconds": retry,
        "message": format!("Waiting for approval on the user's phone: \"{binding}\". Send the identical request again to continue."),
    })
}
