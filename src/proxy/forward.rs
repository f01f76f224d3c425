//! Phase 4, forward: send what policy allowed to the tool server and shape its answer.
//! An answer passes through untouched (streamed, never held), except that `tools/list`
//! results are filtered by policy and, in a batch, the gateway's own answers for blocked
//! members are merged in. What the gateway must rewrite it holds only up to a limit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use serde_json::Value;

use super::call::Call;
use super::classify::OutBody;
use super::mcp::results;
use super::render::{self, Shape};
use super::upstream::{UpstreamError, clean_response_headers};
use super::{BoxBody, Target, decide};
use crate::audit::PendingRecord;
use crate::outcome::{Disposition, Reason};
use crate::policy::input::PolicyInput;

/// What goes to the tool server.
pub struct Outbound {
    pub head: Parts,
    /// The path below the mount (`""` for the MCP endpoint itself).
    pub rest: String,
    pub body: OutBody,
}

/// How the tool server's answer must be shaped.
#[derive(Default)]
pub struct Plan {
    /// The answer speaks JSON-RPC (an MCP mount): failures become JSON-RPC errors.
    pub jsonrpc: bool,
    /// `tools/list` requests (by JSON id text) whose results policy filters.
    pub lists: HashSet<String>,
    /// The facts the list phase shares with the request (agent, upstream, mcp).
    pub list_input: Option<PolicyInput>,
    /// The gateway's own answers for the rest of a batch.
    pub answers: Vec<Value>,
    /// The request was a JSON-RPC batch.
    pub batch: bool,
    /// The approver's access token, for an approved call to an upstream that asks.
    pub approval_token: Option<secrecy::SecretString>,
}

impl Plan {
    fn rewrites(&self) -> bool {
        !self.lists.is_empty() || !self.answers.is_empty()
    }
}

fn content_type(parts: &http::response::Parts) -> String {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Sends `out` and answers the agent. `records` are the calls it carries, concluded as
/// forwarded for `reason` (allowed or approved) once the answer is shaped.
pub async fn send(
    call: &Call<'_>,
    out: Outbound,
    records: Vec<PendingRecord>,
    reason: Reason,
    plan: Plan,
) -> Response<BoxBody> {
    // Kept (a reference count) to answer each request in it if the upstream fails.
    let sent = match &out.body {
        OutBody::Held(b) if plan.jsonrpc => Some(b.clone()),
        _ => None,
    };
    let token = plan.approval_token.as_ref();
    let resp = match (&call.mount.target, &call.routed, out.body) {
        (Target::Virtual(vs), Some(routed), OutBody::Held(b)) => {
            let limit = call.gw.limits.max_inspected_response_bytes;
            vs.forward(routed, out.head.headers, b, token, limit).await
        }
        (Target::Virtual(_), _, _) => Err(UpstreamError::Protocol(
            "no server behind the virtual server was chosen for this message".into(),
        )),
        (Target::Upstream(up), _, body) => {
            let body = match body {
                OutBody::None => render::empty(),
                OutBody::Held(b) => render::full(b),
                OutBody::Stream(s) => s,
            };
            up.forward(
                out.head.method,
                &out.rest,
                out.head.uri.query(),
                out.head.headers,
                body,
                token,
            )
            .await
            .map(|r| r.map(render::streamed))
        }
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return upstream_failed(e, records, plan, sent.as_ref()),
    };
    let status = resp.status().as_u16();
    let (mut rparts, rbody) = resp.into_parts();
    clean_response_headers(&mut rparts.headers);
    if !plan.rewrites() {
        for r in records {
            r.conclude(Disposition::Forwarded, &reason, Some(status));
        }
        return Response::from_parts(rparts, rbody);
    }
    let ctype = content_type(&rparts);
    let is_json = ctype.starts_with("application/json");
    // Records of a filtered JSON answer are written once the hidden tools are counted.
    let hidden = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shadow = Arc::new(Mutex::new(decide::ListShadow::default()));
    let _finish_later = ConcludeOnDrop {
        records: if is_json {
            records
        } else {
            for r in records {
                r.conclude(Disposition::Forwarded, &reason, Some(status));
            }
            Vec::new()
        },
        reason: reason.clone(),
        status,
        hidden: hidden.clone(),
        shadow: shadow.clone(),
    };
    let limit = call.gw.limits.max_inspected_response_bytes;
    // The tools/list requests still waiting for their (filtered) answer.
    let unanswered = Arc::new(Mutex::new(plan.lists));
    let filter = {
        let waiting = unanswered.clone();
        let gw = call.gw.clone();
        let base = plan.list_input;
        move |v: &Value| -> Option<Value> {
            let id = v.get("id")?.to_string();
            if !waiting.lock().ok()?.remove(&id) {
                return None;
            }
            let base = base.as_ref()?;
            let tools = v.get("result")?.get("tools")?.as_array()?;
            let (kept, gone): (Vec<&Value>, Vec<&Value>) = tools
                .iter()
                .partition(|t| decide::list_shows(&gw, base, t, None, &shadow));
            if !gone.is_empty() {
                tracing::debug!(
                    hidden = gone.len(),
                    "tools hidden from tools/list by policy"
                );
            }
            hidden.fetch_add(gone.len(), std::sync::atomic::Ordering::Relaxed);
            let mut out = v.clone();
            out["result"]["tools"] = Value::Array(kept.into_iter().cloned().collect());
            Some(out)
        }
    };
    if ctype.starts_with("text/event-stream") {
        let prefix = plan.answers.iter().map(results::sse_event).collect();
        // An event too large to filter: the lists still owed get an error instead.
        let overflow = Box::new(move || {
            let ids: Vec<String> = unanswered
                .lock()
                .map(|mut ids| ids.drain().collect())
                .unwrap_or_default();
            ids.iter()
                .filter_map(|id| serde_json::from_str::<Value>(id).ok())
                .map(|id| {
                    results::sse_event(&results::error(id, &Reason::UpstreamAnswerTooLarge(limit)))
                })
                .collect()
        });
        let stream = super::sse::rewrite_stream(rbody, prefix, Box::new(filter), limit, overflow);
        rparts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(rparts, StreamBody::new(stream).boxed_unsync());
    }
    if is_json {
        let bytes = match render::read_at_most(rbody, limit).await {
            Ok(b) => b,
            Err(e) => {
                let reason = match e {
                    render::ReadFailure::TooLarge => {
                        crate::telemetry::metrics::limit_exceeded("upstream_answer");
                        Reason::UpstreamAnswerTooLarge(limit)
                    }
                    render::ReadFailure::Failed(e) => Reason::UpstreamError(format!(
                        "the upstream's answer could not be read: {e}"
                    )),
                };
                return render::answer(&reason, &Shape::Post { id: Value::Null });
            }
        };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            // An answer the gateway must filter but cannot read is not passed on: the
            // agent's parser might read a list the policy never filtered.
            return render::answer(
                &Reason::UpstreamError("the tool server's answer is not valid JSON".into()),
                &Shape::Post { id: Value::Null },
            );
        };
        let mut items = match value {
            Value::Array(items) => items,
            single if plan.batch => vec![single],
            single => {
                let out = filter(&single).unwrap_or(single);
                rparts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(
                    rparts,
                    render::full(serde_json::to_vec(&out).unwrap_or_default()),
                );
            }
        };
        for item in items.iter_mut() {
            if let Some(new) = filter(item) {
                *item = new;
            }
        }
        items.extend(plan.answers);
        rparts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(
            rparts,
            render::full(serde_json::to_vec(&Value::Array(items)).unwrap_or_default()),
        );
    }
    if !plan.answers.is_empty() && (rparts.status == StatusCode::ACCEPTED || ctype.is_empty()) {
        // Only notifications went upstream; the blocked requests still need answers.
        return render::json(StatusCode::OK, &Value::Array(plan.answers));
    }
    Response::from_parts(rparts, rbody)
}

/// The ids of the JSON-RPC requests in a body the gateway sends.
fn jsonrpc_ids(body: &Bytes) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.iter().filter_map(|m| m.get("id").cloned()).collect(),
        Ok(one) => one.get("id").cloned().into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

/// The upstream could not be reached or timed out: every forwarded request gets an
/// error (JSON-RPC for MCP, with the gateway's own answers for the rest of a batch).
fn upstream_failed(
    e: UpstreamError,
    records: Vec<PendingRecord>,
    plan: Plan,
    sent: Option<&Bytes>,
) -> Response<BoxBody> {
    tracing::warn!(error = %e, "upstream request failed");
    let reason = e.reason();
    for r in records {
        r.conclude(Disposition::UpstreamFailed, &reason, None);
    }
    if !plan.jsonrpc {
        return render::answer(&reason, &Shape::Http);
    }
    let errors = sent
        .map(jsonrpc_ids)
        .unwrap_or_default()
        .into_iter()
        .map(|id| results::error(id, &reason));
    if plan.batch {
        let mut answers = plan.answers;
        answers.extend(errors);
        return render::json(reason.http_status(), &Value::Array(answers));
    }
    let one = errors
        .into_iter()
        .next()
        .unwrap_or_else(|| results::error(Value::Null, &reason));
    render::json(reason.http_status(), &one)
}

/// Concludes evidence records when the answer has been shaped (or abandoned).
struct ConcludeOnDrop {
    records: Vec<PendingRecord>,
    reason: Reason,
    status: u16,
    hidden: Arc<std::sync::atomic::AtomicUsize>,
    /// The shadow set's differences in which tools a list shows.
    shadow: Arc<Mutex<decide::ListShadow>>,
}

impl Drop for ConcludeOnDrop {
    fn drop(&mut self) {
        let hidden = self.hidden.load(std::sync::atomic::Ordering::Relaxed);
        for mut r in self.records.drain(..) {
            let method = r
                .get_mut()
                .mcp_method
                .as_deref()
                .map(super::mcp::methods::lookup);
            if method.is_some_and(|m| m.role == super::mcp::methods::Role::ToolList) {
                let rec = r.get_mut();
                rec.hidden_tools = Some(hidden);
                if rec.shadow.is_none() {
                    rec.shadow = self.shadow.lock().ok().and_then(|s| s.evidence());
                }
            }
            r.conclude(Disposition::Forwarded, &self.reason, Some(self.status));
        }
    }
}
