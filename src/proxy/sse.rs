//! Server-Sent Events pass-through with per-event rewriting. Events are forwarded as
//! soon as each one is complete (never buffered whole), so progress notifications and
//! long-lived streams flow through unchanged.

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use serde_json::Value;

use super::BoxError;

/// Rewrites the JSON-RPC message carried by one event; `None` leaves the event as is.
pub type Rewrite = Box<dyn FnMut(&Value) -> Option<Value> + Send>;

/// Finds the end of the first complete event in `buf` (index past its blank line),
/// looking from `from` on (everything before it was scanned already).
pub(in crate::proxy) fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.saturating_sub(2);
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// An event's `data` (its lines joined) and its other lines.
fn event_fields(text: &str) -> (String, Vec<&str>) {
    let mut data = String::new();
    let mut other_lines = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() {
            other_lines.push(line);
        }
    }
    (data, other_lines)
}

/// The JSON-RPC message one raw event carries, if it carries one.
pub(in crate::proxy) fn event_message(raw: &[u8]) -> Option<Value> {
    let (data, _) = event_fields(std::str::from_utf8(raw).ok()?);
    serde_json::from_str(&data).ok()
}

/// Applies `rewrite` to one raw event; returns the bytes to send.
fn rewrite_event(raw: Bytes, rewrite: &mut Rewrite) -> Bytes {
    let Ok(text) = std::str::from_utf8(&raw) else {
        return raw;
    };
    let (data, other_lines) = event_fields(text);
    if data.is_empty() {
        return raw;
    }
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        // Data that is not a JSON-RPC message cannot be checked: it could be a list
        // the agent's parser reads but policy never filtered. Dropped.
        tracing::debug!("dropped an upstream SSE event whose data is not JSON");
        return Bytes::new();
    };
    match rewrite(&value) {
        None => raw,
        Some(new) => {
            let mut out = String::new();
            for l in other_lines {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("data: ");
            out.push_str(&new.to_string());
            out.push_str("\n\n");
            Bytes::from(out)
        }
    }
}

/// What to send instead when an upstream event passes the size limit: the gateway
/// cannot rewrite (or safely pass on) an event it cannot hold, so the stream ends with
/// these events (JSON-RPC errors for the requests still unanswered).
pub type Overflow = Box<dyn FnOnce() -> Vec<Bytes> + Send>;

/// Wraps an upstream SSE body: first `prefix` (events the gateway adds), then every
/// upstream event, rewritten where `rewrite` says so, each sent as soon as it is whole.
/// An event longer than `max_event` bytes ends the stream with `overflow`'s events.
pub fn rewrite_stream(
    body: super::BoxBody,
    prefix: Vec<Bytes>,
    rewrite: Rewrite,
    max_event: usize,
    overflow: Overflow,
) -> impl Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    struct State<B> {
        body: Option<B>,
        buf: BytesMut,
        scanned: usize,
        pending: std::collections::VecDeque<Bytes>,
        rewrite: Rewrite,
        overflow: Option<Overflow>,
        max_event: usize,
    }
    let state = State {
        body: Some(body),
        buf: BytesMut::new(),
        scanned: 0,
        pending: prefix.into(),
        rewrite,
        overflow: Some(overflow),
        max_event,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(p) = st.pending.pop_front() {
                return Some((Ok(Frame::data(p)), st));
            }
            if let Some(end) = event_end(&st.buf, st.scanned) {
                let raw = st.buf.split_to(end).freeze();
                st.scanned = 0;
                let out = rewrite_event(raw, &mut st.rewrite);
                if out.is_empty() {
                    continue;
                }
                return Some((Ok(Frame::data(out)), st));
            }
            st.scanned = st.buf.len();
            if st.buf.len() > st.max_event {
                // Never pass on (or keep growing) an event too large to rewrite.
                crate::telemetry::metrics::limit_exceeded("sse_event");
                tracing::warn!(
                    limit = st.max_event,
                    "upstream SSE event over the limit; stream ended"
                );
                st.buf.clear();
                st.body = None;
                if let Some(f) = st.overflow.take() {
                    st.pending.extend(f());
                }
                continue;
            }
            let Some(body) = st.body.as_mut() else {
                if st.buf.is_empty() {
                    return None;
                }
                // A trailing partial event is passed on untouched.
                let rest = st.buf.split().freeze();
                return Some((Ok(Frame::data(rest)), st));
            };
            if body.is_end_stream() {
                st.body = None;
                continue;
            }
            match body.frame().await {
                None => st.body = None,
                Some(Err(e)) => {
                    st.body = None;
                    st.buf.clear();
                    return Some((Err(e), st));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        st.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};
    use serde_json::json;

    async fn collect(prefix: Vec<Bytes>, input: &'static [u8], rewrite: Rewrite) -> Vec<String> {
        let body = StreamBody::new(futures_util::stream::iter(input.chunks(7).map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c)))
        })));
        let body = body.map_err(|never| match never {}).boxed_unsync();
        let s = rewrite_stream(body, prefix, rewrite, 1 << 20, Box::new(Vec::new));
        s.map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_are_forwarded_one_by_one_and_rewritten_by_id() {
        let input = b"event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[1]}}\n\n";
        let out = collect(
            vec![Bytes::from_static(b"data: pre\n\n")],
            input,
            Box::new(|v| (v["id"] == json!(2)).then(|| json!({"id": 2, "rewritten": true}))),
        )
        .await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], "data: pre\n\n");
        assert!(out[1].contains("notifications/progress"));
        assert_eq!(
            out[2],
            "event: message\ndata: {\"id\":2,\"rewritten\":true}\n\n"
        );
    }

    #[tokio::test]
    async fn an_event_over_the_limit_ends_the_stream_with_the_overflow_answer() {
        let body = StreamBody::new(futures_util::stream::iter(
            [
                Bytes::from_static(b"data: {\"ok\":1}\n\n"),
                Bytes::from(vec![b'x'; 4096]),
                Bytes::from(vec![b'y'; 4096]),
            ]
            .into_iter()
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
        ))
        .map_err(|never| match never {})
        .boxed_unsync();
        let s = rewrite_stream(
            body,
            vec![],
            Box::new(|_| None),
            1000,
            Box::new(|| vec![Bytes::from_static(b"data: overflow\n\n")]),
        );
        let out: Vec<String> = s
            .map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
            .collect()
            .await;
        assert_eq!(out, vec!["data: {\"ok\":1}\n\n", "data: overflow\n\n"]);
    }

    #[tokio::test]
    async fn comments_and_partial_events_pass_untouched_and_non_json_data_is_dropped() {
        let out = collect(
            vec![],
            b": keep-alive\n\ndata: not json\n\ndata: tail",
            Box::new(|_| Some(json!(1))),
        )
        .await;
        assert_eq!(out, vec![": keep-alive\n\n", "data: tail"]);
        let _ = Full::new(Bytes::new());
    }
}
