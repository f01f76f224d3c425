//! A JSON-RPC batch on a virtual server (2025-03-26, the one revision with batches):
//! its members may belong to different servers, so each is handled as a single
//! message would be, one after another, and their answers are gathered into one
//! array. A member cannot wait for a person (`approval_unsupported`: a batch answers
//! at once) and `initialize` is refused (MCP keeps it out of batches).

use bytes::BytesMut;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use super::super::VirtualServer;
use super::message;
use crate::outcome::{Disposition, Reason};
use crate::proxy::call::Call;
use crate::proxy::mcp::{InvalidMessage, Message, results};
use crate::proxy::{BoxBody, render, sse};

/// Handles a batch's members in order; answers the array of their answers (202 when
/// every member was a notification or a response).
pub(super) async fn batch(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    head: http::request::Parts,
    members: Vec<Result<Message, InvalidMessage>>,
    revision: Option<String>,
) -> Response<BoxBody> {
    let limit = call.gw.limits.max_inspected_response_bytes;
    let mut answers = Vec::new();
    for member in members {
        let msg = match member {
            Ok(msg) if msg.method.as_deref() == Some("initialize") => {
                let reason =
                    Reason::InvalidRequest("initialize is never part of a JSON-RPC batch".into());
                call.record().conclude(Disposition::Rejected, &reason, None);
                answers.push(results::error(msg.id.unwrap_or(Value::Null), &reason));
                continue;
            }
            Ok(msg) => msg,
            Err(inv) => {
                let reason = Reason::InvalidRequest(inv.message);
                call.record().conclude(Disposition::Rejected, &reason, None);
                answers.push(results::error(inv.id, &reason));
                continue;
            }
        };
        let id = msg.id.clone();
        let resp = Box::pin(message(
            call,
            vs,
            head.clone(),
            msg,
            revision.clone(),
            false,
        ))
        .await;
        if let Some(id) = id {
            answers.extend(answer_in(resp, &id, limit).await);
        }
    }
    if answers.is_empty() {
        render::accepted()
    } else {
        render::json(StatusCode::OK, &Value::Array(answers))
    }
}

/// The answer to request `id` in one member's response: its JSON body, or the response
/// on its event stream (the server's notifications before it are dropped: a batch's
/// answer is one JSON array). None for a 202; a body that cannot be read answers
/// the member with why.
async fn answer_in(resp: Response<BoxBody>, id: &Value, limit: usize) -> Option<Value> {
    if resp.status() == StatusCode::ACCEPTED {
        return None;
    }
    let is_events = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let failed = |why: &str| {
        let reason = Reason::UpstreamError(format!("the answer to a batch member {why}"));
        Some(results::error(id.clone(), &reason))
    };
    let mut body = resp.into_body();
    if !is_events {
        return match render::read_at_most(body, limit).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .ok()
                .or_else(|| failed("is not JSON")),
            Err(render::ReadFailure::TooLarge) => Some(results::error(
                id.clone(),
                &Reason::UpstreamAnswerTooLarge(limit),
            )),
            Err(render::ReadFailure::Failed(_)) => failed("could not be read"),
        };
    }
    let mut buf = BytesMut::new();
    let mut seen = 0;
    loop {
        while let Some(end) = sse::event_end(&buf, 0) {
            let event = buf.split_to(end);
            if let Some(message) = sse::event_message(&event)
                && message.get("id") == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                return Some(message);
            }
        }
        let Some(Ok(frame)) = body.frame().await else {
            return failed("ended without it");
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return Some(results::error(
                    id.clone(),
                    &Reason::UpstreamAnswerTooLarge(limit),
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
}
