//! The `approve` path of the proxy: a call that policy says needs a person's approval
//! is held (or parked) while the approval runs, re-checked by policy with the
//! approver's evidence, and forwarded only on `allow` — once per approval.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::mcp::{self, codes};
use super::{BoxBody, BoxError, Gateway, Mount, answer};
use crate::approval::request_state::{self, RequestState};
use crate::approval::{Approvals, CallForApproval, Mode, Settled, Ticket};
use crate::audit::PendingRecord;
use crate::policy::Effect;
use crate::store::now_ms;

/// Response header carrying the binding message to the agent side, so the user can
/// match what the agent console shows with what the phone shows.
pub const BINDING_HEADER: &str = "x-ciba-gate-binding-message";
/// Response header with the approval state: pending, approved, denied, expired, failed.
pub const APPROVAL_HEADER: &str = "x-ciba-gate-approval";

/// The call, as the approval path needs it.
pub struct PendingCall {
    pub tool: String,
    pub arguments: Value,
    pub params: Value,
    /// The policy input of phase `request`, reused for phase `approved`.
    pub input: Map<String, Value>,
}

/// How the answer must be shaped.
pub enum Caller {
    Mcp {
        id: Value,
        progress_token: Option<Value>,
        accepts_sse: bool,
        stateless: bool,
        request_state: Option<String>,
    },
    Http,
}

/// What to send upstream once approved.
pub struct Outbound {
    pub method: http::Method,
    pub uri_rest: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        let enc = percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        HeaderValue::from_str(&enc).unwrap_or_else(|_| HeaderValue::from_static("-"))
    })
}

fn with_headers(mut r: Response<BoxBody>, binding: &str, state: &'static str) -> Response<BoxBody> {
    r.headers_mut()
        .insert(BINDING_HEADER, header_value(binding));
    r.headers_mut()
        .insert(APPROVAL_HEADER, HeaderValue::from_static(state));
    r
}

/// A blocked answer in the caller's shape.
fn blocked(caller: &Caller, decision: &str, code: &str, text: &str) -> Value {
    match caller {
        Caller::Mcp { id, stateless, .. } => {
            mcp::blocked_tool_result(id.clone(), decision, code, text, *stateless)
        }
        Caller::Http => json!({"error": text, "reason": code}),
    }
}

fn respond(caller: &Caller, body: &Value) -> Response<BoxBody> {
    match caller {
        Caller::Mcp { .. } => answer::json(StatusCode::OK, body),
        Caller::Http => answer::json(StatusCode::FORBIDDEN, body),
    }
}

/// Runs the approval for one call and answers the agent.
pub async fn run(
    gw: &Arc<Gateway>,
    mount: &Mount,
    call: PendingCall,
    caller: Caller,
    out: Outbound,
    mut rec: PendingRecord,
) -> Response<BoxBody> {
    let Some(slot) = gw.approvals.clone() else {
        rec.get_mut().reason = "approval_not_configured".into();
        rec.finish("blocked", None);
        let text = format!(
            "The tool call {} was not run: it needs a person's approval, and no approval provider (CIBA) is configured on this gateway.",
            call.tool
        );
        return respond(
            &caller,
            &blocked(&caller, "approve", "approval_not_configured", &text),
        );
    };
    let Some(approvals) = slot.get().cloned() else {
        rec.get_mut().reason = "op_unavailable".into();
        rec.finish("blocked", None);
        let text = format!(
            "The tool call {} was not run: it needs a person's approval, and the OpenID Provider's metadata could not be fetched yet. Try again shortly.",
            call.tool
        );
        return respond(
            &caller,
            &blocked(&caller, "approve", "op_unavailable", &text),
        );
    };
    let for_approval = CallForApproval {
        agent: &gw.agent_id,
        upstream: &mount.upstream.name,
        tool: &call.tool,
        arguments: &call.arguments,
        params: &call.params,
    };
    // A 2026-07-28 retry carries the requestState we issued: it must be intact, ours,
    // for this agent and this exact call.
    if let Caller::Mcp {
        request_state: Some(state),
        id,
        ..
    } = &caller
    {
        let digest = Approvals::fingerprint(&for_approval);
        if let Err(e) = request_state::open(
            approvals.state_key(),
            state,
            &gw.agent_id,
            &digest,
            now_ms(),
        ) {
            rec.get_mut().decision = "reject";
            rec.get_mut().reason = "invalid_request_state".into();
            rec.finish("rejected", None);
            return answer::json(
                StatusCode::OK,
                &mcp::error_response(
                    id.clone(),
                    -32602,
                    &format!("{e}; call again without it"),
                    "invalid_request_state",
                ),
            );
        }
    }
    // The CIBA driver this may start traces below this span.
    let ticket = match approvals
        .prepare(&for_approval)
        .instrument(crate::traced_span!("approval.request"))
        .await
    {
        Ok(t) => t,
        Err(b) => {
            rec.get_mut().reason = b.code.clone();
            rec.finish("blocked", None);
            let text = format!("The tool call {} was not run: {}.", call.tool, b.message);
            return respond(&caller, &blocked(&caller, "approve", &b.code, &text));
        }
    };
    let binding = ticket.params.binding_message.clone();
    let mode = ticket.params.mode.unwrap_or(approvals.settings.mode);
    let remaining = Duration::from_millis(ticket.deadline_ms.saturating_sub(now_ms()));
    let plain_ok = remaining <= approvals.settings.max_plain_wait;
    let stream_hold = matches!(&caller, Caller::Mcp { accepts_sse: true, progress_token, .. } if progress_token.is_some() || plain_ok);

    if mode == Mode::Hold && stream_hold {
        return hold_over_sse(
            gw.clone(),
            mount_index(gw, mount),
            approvals,
            ticket,
            call,
            caller,
            out,
            rec,
        );
    }
    let until = if mode == Mode::Hold && plain_ok {
        ticket.deadline_ms
    } else {
        now_ms()
    };
    let settled = wait_or_shutdown(gw, &approvals, &ticket, until)
        .instrument(crate::traced_span!(
            "approval.wait",
            ciba_gate.approval.mode = "park_or_plain"
        ))
        .await;
    let resp = conclude(
        gw, mount, &approvals, &ticket, call, &caller, out, rec, settled,
    )
    .await;
    match resp {
        Concluded::Answer(r, state) => with_headers(r, &binding, state),
        Concluded::Forwarded(r) => {
            let (mut parts, body) = r.into_parts();
            super::upstream::clean_response_headers(&mut parts.headers);
            with_headers(
                Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()),
                &binding,
                "approved",
            )
        }
    }
}

fn mount_index(gw: &Gateway, mount: &Mount) -> usize {
    gw.mounts
        .iter()
        .position(|m| std::ptr::eq(m, mount))
        .unwrap_or(0)
}

/// Waits for the decision, but gives up at once when the gateway is shutting down.
async fn wait_or_shutdown(
    gw: &Gateway,
    approvals: &Approvals,
    ticket: &Ticket,
    until: u64,
) -> Settled {
    let mut shutdown = gw.shutdown.clone();
    if *shutdown.borrow() {
        return Settled::Blocked(crate::approval::Blocked { code: "shutting_down".into(), message: "the gateway is shutting down; call again to continue (the approval request is kept)".into() }, None);
    }
    tokio::select! {
        s = approvals.settle(ticket, until) => s,
        _ = shutdown.wait_for(|v| *v) => Settled::Blocked(
            crate::approval::Blocked {
                code: "shutting_down".into(),
                message: "the gateway is shutting down; call again to continue (the approval request is kept)".into(),
            },
            None,
        ),
    }
}

enum Concluded {
    Answer(Response<BoxBody>, &'static str),
    Forwarded(Response<hyper::body::Incoming>),
}

/// Turns a settled approval into the agent's answer: park, block, or re-check and forward.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    gw: &Arc<Gateway>,
    mount: &Mount,
    approvals: &Approvals,
    ticket: &Ticket,
    call: PendingCall,
    caller: &Caller,
    out: Outbound,
    mut rec: PendingRecord,
    settled: Settled,
) -> Concluded {
    let binding = &ticket.params.binding_message;
    match settled {
        Settled::Pending(r) => {
            rec.get_mut().approval = Some(approvals.evidence(ticket, Some(&r)));
            rec.get_mut().reason = "approval_pending".into();
            rec.finish("parked", None);
            Concluded::Answer(parked(gw, approvals, ticket, caller), "pending")
        }
        Settled::Blocked(b, r) => {
            rec.get_mut().approval = Some(approvals.evidence(ticket, r.as_ref()));
            rec.get_mut().reason = b.code.clone();
            rec.finish("blocked", None);
            let text = format!(
                "The tool call {} was not run: {} (approval request: \"{binding}\").",
                call.tool, b.message
            );
            let state = match b.code.as_str() {
                "approval_denied" => "denied",
                "approval_expired" => "expired",
                _ => "failed",
            };
            Concluded::Answer(
                respond(caller, &blocked(caller, "approve", &b.code, &text)),
                state,
            )
        }
        Settled::Approved(r) => {
            rec.get_mut().approval = Some(approvals.evidence(ticket, Some(&r)));
            // Separate approval from execution: policy decides again, with the evidence.
            let mut input = call.input;
            input.insert("phase".into(), json!("approved"));
            let approver = r.approver.clone().unwrap_or_default();
            input.insert(
                "approval".into(),
                json!({
                    "subject_hash": approver.subject_hash,
                    "acr": approver.acr,
                    "amr": approver.amr,
                    "auth_time": approver.auth_time,
                    "binding_message": r.binding_message,
                }),
            );
            let span = crate::traced_span!(
                "policy.approved",
                ciba_gate.policy.phase = "approved",
                ciba_gate.policy.effect = tracing::field::Empty,
                ciba_gate.policy.revision = tracing::field::Empty
            );
            let decision = span.in_scope(|| gw.policy.decide(&Value::Object(input)));
            span.record("ciba_gate.policy.effect", super::effect_name(&decision));
            span.record("ciba_gate.policy.revision", &*decision.revision);
            rec.get_mut().policy_revision = decision.revision.to_string();
            if decision.effect != Effect::Allow {
                let (code, message) = super::block_reason(&decision);
                let code = if decision.effect == Effect::Approve {
                    "approval_not_sufficient".to_string()
                } else {
                    code
                };
                rec.get_mut().decision = "deny";
                rec.get_mut().reason = code.clone();
                rec.finish("blocked", None);
                let text = format!(
                    "The tool call {} was approved, but policy blocked it afterwards ({code}): {message}",
                    call.tool
                );
                return Concluded::Answer(
                    respond(caller, &blocked(caller, "deny", &code, &text)),
                    "approved",
                );
            }
            rec.get_mut().decision = "allow";
            rec.get_mut().reason = "approved".into();
            match send(mount, out).await {
                Ok(resp) => {
                    rec.finish("forwarded", Some(resp.status().as_u16()));
                    Concluded::Forwarded(resp)
                }
                Err(e) => {
                    rec.get_mut().reason = e.reason().to_string();
                    rec.finish("upstream_failed", None);
                    let body = match caller {
                        Caller::Mcp { id, .. } => mcp::error_response(
                            id.clone(),
                            codes::UPSTREAM_UNAVAILABLE,
                            &e.to_string(),
                            e.reason(),
                        ),
                        Caller::Http => json!({"error": e.to_string(), "reason": e.reason()}),
                    };
                    Concluded::Answer(answer::json(e.status(), &body), "approved")
                }
            }
        }
    }
}

async fn send(
    mount: &Mount,
    out: Outbound,
) -> Result<Response<hyper::body::Incoming>, super::upstream::UpstreamError> {
    mount
        .upstream
        .forward(
            out.method,
            &out.uri_rest,
            out.query.as_deref(),
            out.headers,
            answer::full(out.body),
        )
        .await
}

/// "Pending" in the caller's shape, with retry advice.
fn parked(
    gw: &Gateway,
    approvals: &Approvals,
    ticket: &Ticket,
    caller: &Caller,
) -> Response<BoxBody> {
    let binding = &ticket.params.binding_message;
    let retry = approvals.settings.park_retry_after.as_secs().max(1);
    match caller {
        Caller::Http => {
            let mut r = answer::json(
                StatusCode::ACCEPTED,
                &json!({
                    "status": "approval_pending",
                    "reason": "approval_pending",
                    "binding_message": binding,
                    "retry_after_seconds": retry,
                    "message": format!("Waiting for approval on the user's phone: \"{binding}\". Send the identical request again to continue."),
                }),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            r
        }
        Caller::Mcp {
            id,
            stateless: true,
            ..
        } => {
            let state = request_state::seal(
                approvals.state_key(),
                &RequestState {
                    sub: gw.agent_id.clone(),
                    dig: ticket.fingerprint.clone(),
                    exp: ticket.deadline_ms.min(now_ms() + 10 * 60 * 1000),
                },
            );
            answer::json(
                StatusCode::OK,
                &json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "result": {
                        "resultType": "input_required",
                        "inputRequests": {
                            "ciba-gate/approval": {
                                "method": "elicitation/create",
                                "params": {
                                    "mode": "form",
                                    "message": format!("Approve on your phone: \"{binding}\". Continue once you have answered there."),
                                    "requestedSchema": {"type": "object", "properties": {}},
                                },
                            },
                        },
                        "requestState": state,
                        "_meta": {"ciba-gate/decision": "approve", "ciba-gate/reason": "approval_pending", "ciba-gate/binding_message": binding},
                    },
                }),
            )
        }
        Caller::Mcp { id, .. } => answer::json(
            StatusCode::OK,
            &json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "content": [{"type": "text", "text": format!(
                        "Waiting for approval on your phone: \"{binding}\". Call this tool again with the same arguments in about {retry} seconds to continue."
                    )}],
                    "isError": true,
                    "_meta": {
                        "ciba-gate/decision": "approve",
                        "ciba-gate/reason": "approval_pending",
                        "ciba-gate/binding_message": binding,
                        "ciba-gate/retry_after_seconds": retry,
                    },
                },
            }),
        ),
    }
}

type FrameTx = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// Holds an MCP call over an SSE answer: progress notifications carrying the binding
/// message (when the client asked for progress), comment keep-alives, then the result.
#[allow(clippy::too_many_arguments)]
fn hold_over_sse(
    gw: Arc<Gateway>,
    mount_at: usize,
    approvals: Arc<Approvals>,
    ticket: Ticket,
    call: PendingCall,
    caller: Caller,
    out: Outbound,
    rec: PendingRecord,
) -> Response<BoxBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    let binding = ticket.params.binding_message.clone();
    // The held call stays in the request's trace (its span ends with the answer).
    let span = tracing::Span::current();
    let hold_fut = async move {
        let Some(mount) = gw.mounts.get(mount_at) else {
            return;
        };
        let (progress_token, id) = match &caller {
            Caller::Mcp {
                progress_token, id, ..
            } => (progress_token.clone(), id.clone()),
            Caller::Http => (None, Value::Null),
        };
        let text = format!(
            "Waiting for approval on your phone: \"{}\"",
            ticket.params.binding_message
        );
        let mut progress_n: u64 = 0;
        let send_progress = |n: u64| {
            progress_token.as_ref().map(|t| {
                mcp::sse_event(&json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": t, "progress": n, "message": text},
                }))
            })
        };
        if let Some(ev) = send_progress(progress_n)
            && !send_frame(&tx, ev).await
        {
            return;
        }
        let settle = wait_or_shutdown(&gw, &approvals, &ticket, ticket.deadline_ms)
            .instrument(crate::traced_span!("approval.wait", ciba_gate.approval.mode = "hold"));
        tokio::pin!(settle);
        let mut keepalive = tokio::time::interval(approvals.settings.keepalive);
        let mut progress = tokio::time::interval(approvals.settings.progress_interval);
        keepalive.tick().await;
        progress.tick().await;
        let settled = loop {
            tokio::select! {
                s = &mut settle => break s,
                _ = keepalive.tick() => {
                    if !send_frame(&tx, ": waiting for approval\n\n".into()).await { return; }
                }
                _ = progress.tick() => {
                    progress_n += 1;
                    if let Some(ev) = send_progress(progress_n) && !send_frame(&tx, ev).await { return; }
                }
                _ = tx.closed() => {
                    // The agent went away; the approval stays in the store for its retry.
                    return;
                }
            }
        };
        // Boxed: a held call's task stays small while it waits; the forwarding state
        // is allocated only once the answer is in.
        match Box::pin(conclude(
            &gw, mount, &approvals, &ticket, call, &caller, out, rec, settled,
        ))
        .await
        {
            Concluded::Answer(resp, _) => {
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    mcp::error_response(id.clone(), codes::BLOCKED, "blocked", "blocked")
                });
                let _ = send_frame(&tx, mcp::sse_event(&v)).await;
            }
            Concluded::Forwarded(resp) => {
                let is_sse = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                let mut body = resp.into_body();
                if is_sse {
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if tx.send(Ok(f)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        }
                    }
                } else {
                    // Held in memory to be sent as one event: bounded like every
                    // answer the gateway inspects.
                    let limit = gw.max_inspected_response_bytes;
                    let v = match http_body_util::Limited::new(body, limit).collect().await {
                        Ok(c) => serde_json::from_slice(&c.to_bytes()).unwrap_or_else(|_| {
                            mcp::error_response(
                                id.clone(),
                                codes::UPSTREAM_UNAVAILABLE,
                                "the tool server's answer was not JSON",
                                "upstream_error",
                            )
                        }),
                        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                            crate::telemetry::metrics::limit_exceeded("upstream_answer");
                            mcp::error_response(
                                id.clone(),
                                codes::UPSTREAM_UNAVAILABLE,
                                &format!("the tool server's answer is larger than the gateway holds ({limit} bytes)"),
                                "upstream_answer_too_large",
                            )
                        }
                        Err(_) => mcp::error_response(
                            id.clone(),
                            codes::UPSTREAM_UNAVAILABLE,
                            "the tool server's answer could not be read",
                            "upstream_error",
                        ),
                    };
                    let _ = send_frame(&tx, mcp::sse_event(&v)).await;
                }
            }
        }
    }.instrument(span);
    tokio::spawn(hold_fut);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_headers(r, &binding, "pending")
}

async fn send_frame(tx: &FrameTx, text: String) -> bool {
    tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok()
}
