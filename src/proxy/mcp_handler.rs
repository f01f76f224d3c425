//! MCP Streamable HTTP through the gateway. POST bodies are read (up to the limit),
//! parsed, and every message is put to policy; only allowed messages are forwarded.
//! Upstream answers stream back untouched, except that `tools/list` results are
//! filtered and the gateway's own answers for blocked batch members are merged in.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::mcp::{self, Body, Message, MessageKind, codes};
use super::upstream::{UpstreamError, clean_response_headers};
use super::{BoxBody, Gateway, Mount, RequestContext, answer, block_reason, effect_name};
use crate::audit::PendingRecord;
use crate::fingerprint;
use crate::policy::Effect;

pub async fn handle(
    gw: &Arc<Gateway>,
    mount: &Mount,
    rest: &str,
    req: Request<Incoming>,
    ctx: RequestContext,
) -> Response<BoxBody> {
    // The MCP endpoint is one path; nothing lives below it.
    if !rest.is_empty() {
        return answer::bad_input(
            true,
            StatusCode::NOT_FOUND,
            "no_such_route",
            "the MCP endpoint has no sub-paths",
        );
    }
    match *req.method() {
        Method::POST => post(gw, mount, req, ctx).await,
        Method::GET | Method::DELETE => stream_or_session(gw, mount, req, ctx).await,
        _ => {
            let mut r = answer::bad_input(
                true,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the MCP endpoint accepts POST, GET and DELETE",
            );
            r.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static("GET, POST, DELETE"),
            );
            r
        }
    }
}

/// The revision from `MCP-Protocol-Version`, checked for shape.
fn revision_header(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut all = headers.get_all("mcp-protocol-version").iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err("MCP-Protocol-Version appears more than once");
    }
    let s = v
        .to_str()
        .map_err(|_| "MCP-Protocol-Version is not visible ASCII")?;
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("MCP-Protocol-Version is not a protocol revision");
    }
    Ok(Some(s.to_string()))
}

fn is_json_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// What to do with one message.
enum Verdict {
    Forward,
    /// Policy wants a person's approval for this `tools/call`.
    Approve {
        tool: String,
        arguments: Value,
        params: Value,
        input: Map<String, Value>,
    },
    /// Answer a request ourselves with this JSON-RPC response.
    Answer(Value),
    /// Refuse a notification or response (nothing to answer by id).
    Refuse {
        reason: String,
        message: String,
    },
}

/// One message's decision and its evidence record.
struct Decided {
    msg_id: Option<Value>,
    is_tools_list: bool,
    verdict: Verdict,
    record: PendingRecord,
}

async fn post(
    gw: &Arc<Gateway>,
    mount: &Mount,
    req: Request<Incoming>,
    ctx: RequestContext,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let reject = |reason: &str| {
        let mut rec = gw.record(&ctx, &mount.upstream.name);
        rec.get_mut().decision = "reject";
        rec.get_mut().reason = reason.to_string();
        rec.finish("rejected", None);
    };
    if !is_json_content(&parts.headers) {
        reject("unsupported_media_type");
        return answer::jsonrpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Value::Null,
            codes::INVALID_REQUEST,
            "unsupported_media_type",
            "MCP messages must be sent as Content-Type: application/json",
        );
    }
    let revision = match revision_header(&parts.headers) {
        Ok(r) => r,
        Err(msg) => {
            reject("bad_header");
            return answer::jsonrpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                codes::INVALID_REQUEST,
                "bad_header",
                msg,
            );
        }
    };
    if let Err(resp) = super::framing::check_inspected_encoding(&parts.headers, true) {
        reject(super::framing::UNSUPPORTED_ENCODING);
        return resp;
    }
    let bytes = match super::framing::read_body(
        body,
        &parts.headers,
        gw.max_body_bytes,
        gw.body_read_timeout,
        true,
    )
    .await
    {
        Ok(b) => b,
        Err(resp) => {
            reject("bad_body");
            return resp;
        }
    };
    let parsed = match crate::traced_span!("classify", mcp.protocol.version = revision.as_deref())
        .in_scope(|| mcp::parse_body(&bytes, gw.max_json_depth, revision.as_deref()))
    {
        Ok(b) => b,
        Err(e) => {
            reject(e.reason());
            return answer::jsonrpc_error(
                StatusCode::BAD_REQUEST,
                e.id(),
                e.code(),
                e.reason(),
                &e.to_string(),
            );
        }
    };

    let input_base = gw.base_input(mount, &parts.method, parts.uri.path(), &parts.headers);
    match parsed {
        Body::Single(msg) => {
            let rev = revision
                .as_deref()
                .or(msg.declared_revision())
                .map(str::to_string);
            if let Err(m) = mcp::check_mirror_headers(&parts.headers, &msg, rev.as_deref()) {
                reject("header_mismatch");
                return answer::jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    msg.id.clone().unwrap_or(Value::Null),
                    codes::HEADER_MISMATCH,
                    "header_mismatch",
                    &m,
                );
            }
            let stateless = rev.as_deref().is_some_and(|r| r >= mcp::REV_STATELESS);
            let decided = decide_message(
                gw,
                mount,
                &ctx,
                &input_base,
                &msg,
                rev.as_deref(),
                stateless,
            );
            match decided.verdict {
                Verdict::Forward => {
                    let lists: HashSet<String> = decided
                        .is_tools_list
                        .then(|| decided.msg_id.as_ref().map(Value::to_string))
                        .flatten()
                        .into_iter()
                        .collect();
                    forward(
                        gw,
                        mount,
                        parts,
                        bytes,
                        vec![decided.record],
                        lists,
                        Vec::new(),
                        false,
                        rev,
                    )
                    .await
                }
                Verdict::Answer(v) => {
                    decided.record.finish("blocked", None);
                    answer::json(StatusCode::OK, &v)
                }
                Verdict::Refuse { reason, message } => {
                    decided.record.finish("blocked", None);
                    answer::jsonrpc_error(
                        StatusCode::FORBIDDEN,
                        Value::Null,
                        codes::BLOCKED,
                        &reason,
                        &message,
                    )
                }
                Verdict::Approve {
                    tool,
                    arguments,
                    params,
                    input,
                } => {
                    let meta = msg.params().and_then(|p| p.get("_meta"));
                    let caller = super::approve::Caller::Mcp {
                        id: msg.id.clone().unwrap_or(Value::Null),
                        progress_token: meta.and_then(|m| m.get("progressToken")).cloned(),
                        accepts_sse: parts
                            .headers
                            .get_all(header::ACCEPT)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .any(|v| v.contains("text/event-stream")),
                        stateless,
                        request_state: msg
                            .params()
                            .and_then(|p| p.get("requestState"))
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    };
                    let out = super::approve::Outbound {
                        method: parts.method.clone(),
                        uri_rest: String::new(),
                        query: parts.uri.query().map(str::to_string),
                        headers: parts.headers.clone(),
                        body: bytes.clone(),
                    };
                    let call = super::approve::PendingCall {
                        tool,
                        arguments,
                        params,
                        input,
                    };
                    super::approve::run(gw, mount, call, caller, out, decided.record).await
                }
            }
        }
        Body::Batch(items) => {
            let mut forwarded = Vec::new();
            let mut records = Vec::new();
            let mut answers = Vec::new();
            let mut lists = HashSet::new();
            for item in items {
                match item {
                    Err(inv) => {
                        let mut rec = gw.record(&ctx, &mount.upstream.name);
                        rec.get_mut().decision = "reject";
                        rec.get_mut().reason = "invalid_request".into();
                        rec.finish("rejected", None);
                        answers.push(mcp::error_response(
                            inv.id,
                            codes::INVALID_REQUEST,
                            &inv.message,
                            "invalid_request",
                        ));
                    }
                    Ok(msg) => {
                        let d = decide_message(
                            gw,
                            mount,
                            &ctx,
                            &input_base,
                            &msg,
                            revision.as_deref(),
                            false,
                        );
                        match d.verdict {
                            Verdict::Forward => {
                                if d.is_tools_list
                                    && let Some(id) = &d.msg_id
                                {
                                    lists.insert(id.to_string());
                                }
                                forwarded.push(msg.value);
                                records.push(d.record);
                            }
                            Verdict::Answer(v) => {
                                d.record.finish("blocked", None);
                                answers.push(v);
                            }
                            Verdict::Approve { tool, .. } => {
                                // Approvals hold or park one call; a batch member cannot.
                                let mut rec = d.record;
                                rec.get_mut().reason = "approval_in_batch".into();
                                rec.finish("blocked", None);
                                let text = format!(
                                    "The tool call {tool} needs a person's approval, which cannot be given inside a JSON-RPC batch; send it on its own."
                                );
                                answers.push(mcp::blocked_tool_result(
                                    d.msg_id.clone().unwrap_or(Value::Null),
                                    "approve",
                                    "approval_in_batch",
                                    &text,
                                    false,
                                ));
                            }
                            Verdict::Refuse { .. } => d.record.finish("blocked", None),
                        }
                    }
                }
            }
            if forwarded.is_empty() {
                return if answers.is_empty() {
                    answer::accepted()
                } else {
                    answer::json(StatusCode::OK, &Value::Array(answers))
                };
            }
            let body =
                Bytes::from(serde_json::to_vec(&Value::Array(forwarded)).unwrap_or_default());
            forward(
                gw, mount, parts, body, records, lists, answers, true, revision,
            )
            .await
        }
    }
}

/// Classifies one message and puts it to policy.
fn decide_message(
    gw: &Gateway,
    mount: &Mount,
    ctx: &RequestContext,
    base: &Map<String, Value>,
    msg: &Message,
    revision: Option<&str>,
    stateless: bool,
) -> Decided {
    let mut record = gw.record(ctx, &mount.upstream.name);
    record.get_mut().mcp_method = msg.method.clone();
    let mut input = base.clone();
    input.insert(
        "mcp".into(),
        json!({
            "method": msg.method,
            "kind": msg.kind.as_str(),
            "protocol_version": revision,
        }),
    );
    let tool = match msg.tool_call() {
        Ok(t) => t,
        Err(inv) => {
            record.get_mut().decision = "reject";
            record.get_mut().reason = "invalid_params".into();
            return Decided {
                msg_id: msg.id.clone(),
                is_tools_list: false,
                verdict: Verdict::Answer(mcp::error_response(
                    inv.id,
                    -32602,
                    &inv.message,
                    "invalid_params",
                )),
                record,
            };
        }
    };
    let root = tracing::Span::current();
    if let Some(m) = &msg.method {
        root.record("mcp.method.name", m.as_str());
    }
    if let Some((name, args)) = &tool {
        root.record("gen_ai.tool.name", name.as_str());
        record.get_mut().tool = Some(name.clone());
        record.get_mut().args_fingerprint = Some(fingerprint::of_json(args));
        input.insert("tool".into(), json!({"name": name, "arguments": args}));
    }
    let (decision, input) = gw.decide(input);
    {
        let r = record.get_mut();
        r.decision = effect_name(&decision);
        r.policy_revision = decision.revision.to_string();
    }
    let is_tools_list =
        msg.method.as_deref() == Some("tools/list") && msg.kind == MessageKind::Request;
    let verdict = if decision.effect == Effect::Allow {
        record.get_mut().reason = "allowed".into();
        Verdict::Forward
    } else if let (Effect::Approve, MessageKind::Request, Some((name, args)), Some(params)) =
        (decision.effect, msg.kind, &tool, &decision.approval)
    {
        Verdict::Approve {
            tool: name.clone(),
            arguments: args.clone(),
            params: params.clone(),
            input,
        }
    } else {
        let (reason, message) = block_reason(&decision);
        record.get_mut().reason = reason.clone();
        let decision_name = effect_name(&decision);
        match (&msg.kind, &tool, &msg.id) {
            (MessageKind::Request, Some((name, _)), Some(id)) => {
                let text = match decision.effect {
                    Effect::Approve => format!("The tool call {name} was not run: {message}"),
                    _ => {
                        format!("The tool call {name} was blocked by policy ({reason}): {message}")
                    }
                };
                Verdict::Answer(mcp::blocked_tool_result(
                    id.clone(),
                    decision_name,
                    &reason,
                    &text,
                    stateless,
                ))
            }
            (MessageKind::Request, None, Some(id)) => Verdict::Answer(mcp::error_response(
                id.clone(),
                codes::BLOCKED,
                &format!("blocked by policy: {message}"),
                &reason,
            )),
            _ => Verdict::Refuse {
                message: format!("blocked by policy: {message}"),
                reason,
            },
        }
    };
    Decided {
        msg_id: msg.id.clone(),
        is_tools_list,
        verdict,
        record,
    }
}

/// Sends allowed messages on and shapes the answer.
#[allow(clippy::too_many_arguments)]
async fn forward(
    gw: &Arc<Gateway>,
    mount: &Mount,
    parts: http::request::Parts,
    body: Bytes,
    records: Vec<PendingRecord>,
    tools_list_ids: HashSet<String>,
    answers: Vec<Value>,
    batch: bool,
    revision: Option<String>,
) -> Response<BoxBody> {
    let resp = mount
        .upstream
        .forward(
            parts.method,
            "",
            parts.uri.query(),
            parts.headers,
            answer::full(body.clone()),
        )
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return upstream_failed(e, records, answers, batch, &body),
    };
    let status = resp.status().as_u16();
    let (mut rparts, rbody) = resp.into_parts();
    clean_response_headers(&mut rparts.headers);
    let needs_rewrite = !tools_list_ids.is_empty() || !answers.is_empty();
    let is_json = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    // Records of a filtered JSON answer are finished once the hidden tools are counted.
    let hidden = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _finish_later = FinishOnDrop {
        records: if needs_rewrite && is_json {
            records
        } else {
            for r in records {
                r.finish("forwarded", Some(status));
            }
            Vec::new()
        },
        status,
        hidden: hidden.clone(),
    };
    if !needs_rewrite {
        return Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync());
    }
    let content_type = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let gw2 = gw.clone();
    let mount_name = mount.upstream.name.clone();
    let mount_kind = mount.kind;
    // The tools/list requests still waiting for their (filtered) answer.
    let unanswered = Arc::new(std::sync::Mutex::new(tools_list_ids));
    let waiting = unanswered.clone();
    let filter = move |v: &Value| -> Option<Value> {
        let id = v.get("id")?.to_string();
        if !waiting.lock().ok()?.remove(&id) {
            return None;
        }
        let (out, n) = filter_tools_list(&gw2, &mount_name, mount_kind, v, revision.as_deref())?;
        hidden.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Some(out)
    };
    if content_type.starts_with("text/event-stream") {
        let prefix = answers
            .iter()
            .map(|a| Bytes::from(mcp::sse_event(a)))
            .collect();
        // An event too large to filter: the lists still owed get an error instead.
        let overflow = Box::new(move || {
            let ids: Vec<String> = unanswered
                .lock()
                .map(|mut ids| ids.drain().collect())
                .unwrap_or_default();
            ids.iter()
                .filter_map(|id| serde_json::from_str::<Value>(id).ok())
                .map(|id| {
                    Bytes::from(mcp::sse_event(&mcp::error_response(
                        id,
                        codes::UPSTREAM_UNAVAILABLE,
                        "the tool server's answer is larger than the gateway inspects",
                        "upstream_answer_too_large",
                    )))
                })
                .collect()
        });
        let stream = super::sse::rewrite_stream(
            rbody,
            prefix,
            Box::new(move |v| filter(v)),
            gw.max_inspected_response_bytes,
            overflow,
        );
        rparts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(rparts, StreamBody::new(stream).boxed_unsync());
    }
    if content_type.starts_with("application/json") {
        let limit = gw.max_inspected_response_bytes;
        let bytes = match Limited::new(rbody, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let (reason, message) = if e.is::<http_body_util::LengthLimitError>() {
                    crate::telemetry::metrics::limit_exceeded("upstream_answer");
                    (
                        "upstream_answer_too_large",
                        format!(
                            "the tool server's answer is larger than the gateway inspects ({limit} bytes)"
                        ),
                    )
                } else {
                    (
                        "upstream_error",
                        format!("the upstream's answer could not be read: {e}"),
                    )
                };
                return answer::jsonrpc_error(
                    StatusCode::BAD_GATEWAY,
                    Value::Null,
                    codes::UPSTREAM_UNAVAILABLE,
                    reason,
                    &message,
                );
            }
        };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            // An answer the gateway must filter but cannot read is not passed on: the
            // agent's parser might read a list the policy never filtered.
            return answer::jsonrpc_error(
                StatusCode::BAD_GATEWAY,
                Value::Null,
                codes::UPSTREAM_UNAVAILABLE,
                "upstream_error",
                "the tool server's answer is not valid JSON",
            );
        };
        let mut items = match value {
            Value::Array(items) => items,
            single if batch => vec![single],
            single => {
                let out = filter(&single).unwrap_or(single);
                rparts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(
                    rparts,
                    answer::full(serde_json::to_vec(&out).unwrap_or_default()),
                );
            }
        };
        for item in items.iter_mut() {
            if let Some(new) = filter(item) {
                *item = new;
            }
        }
        items.extend(answers);
        rparts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(
            rparts,
            answer::full(serde_json::to_vec(&Value::Array(items)).unwrap_or_default()),
        );
    }
    if !answers.is_empty() && (rparts.status == StatusCode::ACCEPTED || content_type.is_empty()) {
        // Only notifications went upstream; the blocked requests still need answers.
        return answer::json(StatusCode::OK, &Value::Array(answers));
    }
    Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync())
}

/// The upstream could not be reached or timed out: every forwarded request gets a
/// JSON-RPC error, with the gateway's own answers for the rest of a batch.
fn upstream_failed(
    e: UpstreamError,
    records: Vec<PendingRecord>,
    mut answers: Vec<Value>,
    batch: bool,
    sent: &Bytes,
) -> Response<BoxBody> {
    tracing::warn!(error = %e, "upstream request failed");
    for mut r in records {
        r.get_mut().reason = e.reason().to_string();
        r.finish("upstream_failed", None);
    }
    let sent: Value = serde_json::from_slice(sent).unwrap_or(Value::Null);
    let ids: Vec<Value> = match &sent {
        Value::Array(items) => items.iter().filter_map(|m| m.get("id").cloned()).collect(),
        other => other.get("id").cloned().into_iter().collect(),
    };
    let message = e.to_string();
    let errors: Vec<Value> = ids
        .into_iter()
        .map(|id| mcp::error_response(id, codes::UPSTREAM_UNAVAILABLE, &message, e.reason()))
        .collect();
    if batch {
        answers.extend(errors);
        return answer::json(e.status(), &Value::Array(answers));
    }
    let one = errors.into_iter().next().unwrap_or_else(|| {
        mcp::error_response(
            Value::Null,
            codes::UPSTREAM_UNAVAILABLE,
            &message,
            e.reason(),
        )
    });
    answer::json(e.status(), &one)
}

/// Hides the tools that policy denies outright (phase `list`).
fn filter_tools_list(
    gw: &Gateway,
    upstream: &str,
    kind: crate::config::UpstreamKind,
    response: &Value,
    revision: Option<&str>,
) -> Option<(Value, usize)> {
    let tools = response.get("result")?.get("tools")?.as_array()?;
    let mut kept = Vec::with_capacity(tools.len());
    let mut hidden = 0usize;
    for t in tools {
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            hidden += 1;
            continue;
        };
        let mut tool = json!({"name": name});
        if let Some(a) = t.get("annotations") {
            tool["annotations"] = a.clone();
        }
        let mut agent = json!({"id": gw.agent_id});
        if let Some(ns) = &gw.agent_namespace {
            agent["namespace"] = json!(ns);
        }
        let input = json!({
            "phase": "list",
            "agent": agent,
            "upstream": {"name": upstream, "kind": kind.to_string()},
            "mcp": {"method": "tools/call", "kind": "request", "protocol_version": revision},
            "tool": tool,
        });
        if gw.policy.decide(&input).effect == Effect::Deny {
            hidden += 1;
        } else {
            kept.push(t.clone());
        }
    }
    if hidden > 0 {
        tracing::debug!(hidden, "tools hidden from tools/list by policy");
    }
    let mut out = response.clone();
    out["result"]["tools"] = Value::Array(kept);
    Some((out, hidden))
}

/// Finishes evidence records when the answer has been shaped (or abandoned).
struct FinishOnDrop {
    records: Vec<PendingRecord>,
    status: u16,
    hidden: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        let hidden = self.hidden.load(std::sync::atomic::Ordering::Relaxed);
        for mut r in self.records.drain(..) {
            if r.get_mut().mcp_method.as_deref() == Some("tools/list") {
                r.get_mut().hidden_tools = Some(hidden);
            }
            r.finish("forwarded", Some(self.status));
        }
    }
}

/// GET (the server's SSE stream) and DELETE (end of a session): no JSON-RPC body, but
/// still put to policy; the answer streams through.
async fn stream_or_session(
    gw: &Arc<Gateway>,
    mount: &Mount,
    req: Request<Incoming>,
    ctx: RequestContext,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    // GET and DELETE carry no JSON-RPC message: a body behind them is bytes policy
    // never reads, and a tool server that does not read it either would take them for
    // the next request on the connection. Refused, never forwarded.
    if let Err(resp) = super::framing::refuse_declared_body(&body, &parts.method, true) {
        let mut rec = gw.record(&ctx, &mount.upstream.name);
        rec.get_mut().decision = "reject";
        rec.get_mut().reason = super::framing::BODY_NOT_ALLOWED.into();
        rec.finish("rejected", None);
        return resp;
    }
    drop(body);
    let mut input = gw.base_input(mount, &parts.method, parts.uri.path(), &parts.headers);
    let revision = revision_header(&parts.headers).ok().flatten();
    input.insert(
        "mcp".into(),
        json!({"method": null, "kind": "request", "protocol_version": revision}),
    );
    let (decision, _) = gw.decide(input);
    let mut rec = gw.record(&ctx, &mount.upstream.name);
    rec.get_mut().decision = effect_name(&decision);
    rec.get_mut().policy_revision = decision.revision.to_string();
    if decision.effect != Effect::Allow {
        let (reason, message) = block_reason(&decision);
        rec.get_mut().reason = reason.clone();
        rec.finish("blocked", None);
        return answer::jsonrpc_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            codes::BLOCKED,
            &reason,
            &format!("blocked by policy: {message}"),
        );
    }
    rec.get_mut().reason = "allowed".into();
    let query = parts.uri.query().map(str::to_string);
    let sent = mount
        .upstream
        .forward(
            parts.method,
            "",
            query.as_deref(),
            parts.headers,
            answer::empty(),
        )
        .await;
    match sent {
        Ok(resp) => {
            rec.finish("forwarded", Some(resp.status().as_u16()));
            let (mut rparts, rbody) = resp.into_parts();
            clean_response_headers(&mut rparts.headers);
            Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync())
        }
        Err(e) => {
            rec.get_mut().reason = e.reason().to_string();
            rec.finish("upstream_failed", None);
            answer::jsonrpc_error(
                e.status(),
                Value::Null,
                codes::UPSTREAM_UNAVAILABLE,
                e.reason(),
                &e.to_string(),
            )
        }
    }
}
