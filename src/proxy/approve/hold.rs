//! Held over SSE: the call stays open on an event stream while the person decides —
//! progress notifications carrying the binding message (when the client asked for
//! progress), comment keep-alives — and ends with the result as its last event.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Concluded, State, conclude, wait_or_shutdown, with_headers};
use crate::approval::{Approvals, Ticket};
use crate::outcome::Reason;
use crate::proxy::call::{Call, Caller, Unit};
use crate::proxy::forward::Outbound;
use crate::proxy::mcp::results;
use crate::proxy::{BoxBody, BoxError};

/// The frames of a held call's answer, boxed: the channel allocates its slots in
/// blocks of 32 up front, and an unboxed frame (with room for trailers) made that
/// 3 KB of every held call.
type Queued = Box<Result<Frame<Bytes>, BoxError>>;
type FrameTx = mpsc::Sender<Queued>;

async fn send_event(tx: &FrameTx, event: Bytes) -> bool {
    tx.send(Box::new(Ok(Frame::data(event)))).await.is_ok()
}

/// Answers with an SSE stream at once and runs the wait in a task of its own.
pub(super) fn over_sse(
    call: &Call<'_>,
    approvals: Arc<Approvals>,
    ticket: Ticket,
    unit: Unit,
    caller: Caller,
    out: Outbound,
) -> Response<BoxBody> {
    let (tx, rx) = mpsc::channel::<Queued>(16);
    let binding = ticket.params.binding_message.clone();
    let owned = call.to_owned();
    // The held call stays in the request's trace (its span ends with the answer).
    let span = tracing::Span::current();
    let hold = async move {
        let call = owned.call();
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
        let progress = |n: u64| {
            progress_token
                .as_ref()
                .map(|t| results::sse_event(&results::progress(t, n, &text)))
        };
        let mut sent: u64 = 0;
        if let Some(ev) = progress(sent)
            && !send_event(&tx, ev).await
        {
            return;
        }
        let settle = wait_or_shutdown(&call, &approvals, &ticket, ticket.deadline_ms)
            .instrument(crate::traced_span!("approval.wait", ciba_gate.approval.mode = "hold"));
        tokio::pin!(settle);
        let mut keepalive = tokio::time::interval(approvals.settings.keepalive);
        let mut progress_tick = tokio::time::interval(approvals.settings.progress_interval);
        keepalive.tick().await;
        progress_tick.tick().await;
        let settled = loop {
            tokio::select! {
                s = &mut settle => break s,
                _ = keepalive.tick() => {
                    if !send_event(&tx, Bytes::from_static(b": waiting for approval\n\n")).await { return; }
                }
                _ = progress_tick.tick() => {
                    sent += 1;
                    if let Some(ev) = progress(sent) && !send_event(&tx, ev).await { return; }
                }
                // The agent went away; the approval stays in the store for its retry
                // (and the call's record says it was cancelled).
                _ = tx.closed() => return,
            }
        };
        // Boxed: a held call's task stays small while it waits; the forwarding state
        // is allocated only once the answer is in.
        match Box::pin(conclude(&call, &approvals, &ticket, unit, &caller, out, settled)).await {
            Concluded::Answer { body, .. } => {
                let _ = send_event(&tx, results::sse_event(&body)).await;
            }
            Concluded::Forwarded(resp) => relay(&call, resp, id, &tx).await,
        }
    }
    .instrument(span);
    tokio::spawn(hold);
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|f| (*f, rx)) },
        );
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_headers(r, &binding, State::Pending)
}

/// Passes the tool server's answer on as the stream's last events: its own SSE events
/// as they come, or its JSON answer (held up to the inspection limit) as one event.
async fn relay(call: &Call<'_>, resp: Response<BoxBody>, id: Value, tx: &FrameTx) {
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if is_sse {
        while let Some(frame) = body.frame().await {
            let stop = frame.is_err();
            if tx.send(Box::new(frame)).await.is_err() || stop {
                return;
            }
        }
        return;
    }
    let limit = call.gw.limits.max_inspected_response_bytes;
    let v = match collect_limited(&mut body, limit).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            results::error(
                id,
                &Reason::UpstreamError("the tool server's answer was not JSON".into()),
            )
        }),
        Err(Some(_)) => {
            crate::telemetry::metrics::limit_exceeded("upstream_answer");
            results::error(id, &Reason::UpstreamAnswerTooLarge(limit))
        }
        Err(None) => results::error(
            id,
            &Reason::UpstreamError("the tool server's answer could not be read".into()),
        ),
    };
    let _ = send_event(tx, results::sse_event(&v)).await;
}

/// Reads a body up to `limit` bytes: `Err(Some(limit))` past it, `Err(None)` on a read error.
async fn collect_limited(body: &mut BoxBody, limit: usize) -> Result<Vec<u8>, Option<usize>> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| None)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(Some(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
