//! List changes: the agent's event stream (GET on the virtual server's mount, in its
//! session), on which the gateway tells it that a merged list changed, so it lists
//! again. The changes come from the servers: a stdio server's
//! `notifications/*/list_changed` reaches every session (one process serves them all);
//! an HTTP server's comes on the event stream of the agent's session there, which the
//! gateway opens when the agent opens its own. Nothing else a server sends on its
//! stream is passed on (the gateway's sessions declare no client capabilities, so
//! there is nothing for the agent to answer).

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::broadcast;

use super::catalogue::Kind;
use super::sessions::Session;
use super::{VirtualServer, exchange};
use crate::proxy::BoxBody;

/// A comment sent this often keeps idle proxies from closing the stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Where the stdio servers publish their list changes.
#[derive(Clone)]
pub struct Changes(broadcast::Sender<Kind>);

impl Default for Changes {
    fn default() -> Self {
        Changes(broadcast::channel(16).0)
    }
}

impl Changes {
    /// A server said one of its lists changed (no one listening is fine).
    pub fn publish(&self, kind: Kind) {
        let _ = self.0.send(kind);
    }
}

/// The list a `notifications/*/list_changed` method names.
pub fn kind_of(method: &str) -> Option<Kind> {
    match method {
        "notifications/tools/list_changed" => Some(Kind::Tools),
        "notifications/prompts/list_changed" => Some(Kind::Prompts),
        "notifications/resources/list_changed" => Some(Kind::Resources),
        _ => None,
    }
}

fn event(kind: Kind) -> Bytes {
    let method = match kind {
        Kind::Tools => "notifications/tools/list_changed",
        Kind::Prompts => "notifications/prompts/list_changed",
        Kind::Resources | Kind::Templates => "notifications/resources/list_changed",
    };
    let message = json!({"jsonrpc": "2.0", "method": method});
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

type Changed = Pin<Box<dyn Stream<Item = Kind> + Send>>;

/// The list changes a server sends on its event stream (its other messages dropped;
/// an event over `limit` ends it).
fn from_events(body: hyper::body::Incoming, limit: usize) -> Changed {
    let state = (body, BytesMut::new());
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut body, mut buf)| async move {
            loop {
                while let Some(end) = crate::proxy::sse::event_end(&buf, 0) {
                    let raw = buf.split_to(end);
                    let kind = crate::proxy::sse::event_message(&raw)
                        .and_then(|m| m.get("method")?.as_str().and_then(kind_of));
                    if let Some(kind) = kind {
                        return Some((kind, (body, buf)));
                    }
                }
                if buf.len() > limit {
                    return None;
                }
                let data = body.frame().await?.ok()?.into_data().ok();
                if let Some(data) = data {
                    buf.extend_from_slice(&data);
                }
            }
        },
    ))
}

/// The stdio servers' list changes, as this stream's.
fn published(changes: &Changes) -> Changed {
    let rx = changes.0.subscribe();
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(kind) => return Some((kind, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// The agent's event stream for `session`: the servers' sessions are opened first
/// (an agent opens its stream right after `initialize`, before any call would), then
/// each HTTP server's own event stream; a server that has none (405) or cannot be
/// reached is left out.
pub async fn stream(vs: &VirtualServer, session: &Session, limit: usize) -> Response<BoxBody> {
    let opened = futures_util::future::join_all((0..vs.members.len()).map(|i| async move {
        let up = vs.members[i].http()?;
        let s = vs.server_session(session, i, limit).await.ok()?;
        s.id.as_ref()?;
        let resp = exchange::events(up, &super::envelope(&s)).await.ok()?;
        let is_sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        (resp.status().is_success() && is_sse).then(|| from_events(resp.into_body(), limit))
    }))
    .await;
    let mut sources: Vec<Changed> = opened.into_iter().flatten().collect();
    sources.push(published(&vs.changes));
    let changes = futures_util::stream::select_all(sources).map(event);
    let keepalive = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(KEEPALIVE).await;
        Some((Bytes::from_static(b": keep-alive\n\n"), ()))
    });
    let frames = futures_util::stream::select(changes, keepalive)
        .map(|b| Ok::<_, crate::proxy::BoxError>(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
