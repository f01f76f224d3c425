//! Server-Sent Events pass-through with per-event rewriting. Events are forwarded as
//! soon as each one is complete (never buffered whole), so progress notifications and
//! long-lived streams flow through unchanged.

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::Value;

use super::BoxError;

/// Rewrites the JSON-RPC message carried by one event; `None` leaves the event as is.
pub type Rewrite = Box<dyn FnMut(&Value) -> Option<Value> + Send>;

/// Finds the end of the first complete event in `buf` (index past its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
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

/// Applies `rewrite` to one raw event; returns the bytes to send.
fn rewrite_event(raw: Bytes, rewrite: &mut Rewrite) -> Bytes {
    let Ok(text) = std::str::from_utf8(&raw) else {
        return raw;
    };
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
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return raw;
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

/// Wraps an upstream SSE body: first `prefix` (events the gateway adds), then every
/// upstream event, rewritten where `rewrite` says so, each sent as soon as it is whole.
pub fn rewrite_stream<B>(
    body: B,
    prefix: Vec<Bytes>,
    rewrite: Rewrite,
) -> impl Stream<Item = Result<Frame<Bytes>, BoxError>> + Send
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    struct State<B> {
        body: B,
        buf: BytesMut,
        prefix: std::vec::IntoIter<Bytes>,
        rewrite: Rewrite,
        done: bool,
    }
    let state = State {
        body,
        buf: BytesMut::new(),
        prefix: prefix.into_iter(),
        rewrite,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if let Some(p) = st.prefix.next() {
            return Some((Ok(Frame::data(p)), st));
        }
        loop {
            if let Some(end) = event_end(&st.buf) {
                let raw = st.buf.split_to(end).freeze();
                let out = rewrite_event(raw, &mut st.rewrite);
                return Some((Ok(Frame::data(out)), st));
            }
            if st.done {
                if st.buf.is_empty() {
                    return None;
                }
                // A trailing partial event is passed on untouched.
                let rest = st.buf.split().freeze();
                return Some((Ok(Frame::data(rest)), st));
            }
            if st.body.is_end_stream() {
                st.done = true;
                continue;
            }
            match st.body.frame().await {
                None => st.done = true,
                Some(Err(e)) => {
                    st.done = true;
                    st.buf.clear();
                    return Some((Err(e.into()), st));
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
    use http_body_util::{Full, StreamBody};
    use serde_json::json;

    async fn collect(prefix: Vec<Bytes>, input: &'static [u8], rewrite: Rewrite) -> Vec<String> {
        let body = StreamBody::new(futures_util::stream::iter(input.chunks(7).map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c)))
        })));
        let s = rewrite_stream(body, prefix, rewrite);
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
    async fn non_json_and_partial_events_pass_untouched() {
        let out = collect(
            vec![],
            b": keep-alive\n\ndata: not json\n\ndata: tail",
            Box::new(|_| Some(json!(1))),
        )
        .await;
        assert_eq!(
            out,
            vec![": keep-alive\n\n", "data: not json\n\n", "data: tail"]
        );
        let _ = Full::new(Bytes::new());
    }
}
