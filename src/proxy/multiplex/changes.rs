//! Changes: the agent's event stream (GET on the virtual server's mount, in its
//! session), on which the gateway tells it that a merged list changed, so it lists
//! again, and that a resource it subscribed to was updated. The changes come from the
//! servers: a stdio server's `notifications/*/list_changed` reaches every session (one
//! process serves them all), its `notifications/resources/updated` the sessions that
//! subscribed to that resource there; an HTTP server's come on the event stream of the
//! agent's session there, which the gateway opens when the agent opens its own.
//! Nothing else a server sends on its stream is passed on (the gateway's sessions
//! declare no client capabilities, so there is nothing for the agent to answer).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::catalogue::Kind;
use super::sessions::{self, Session};
use super::{VirtualServer, exchange};
use crate::proxy::BoxBody;

/// A comment sent this often keeps idle proxies from closing the stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A server whose own stream is not open by then is left out of the agent's.
const STREAM_OPEN: Duration = Duration::from_secs(5);

/// What a server's notification tells the agents.
#[derive(Debug, Clone)]
pub enum Change {
    /// One of its lists changed.
    Listed(Kind),
    /// A resource changed: `notifications/resources/updated` from the server named,
    /// its params as the server sent them (resource URIs are not renamed).
    Updated { server: String, params: Value },
}

impl Change {
    /// What the notification `message` from `server` tells, if anything.
    pub fn of(server: &str, message: &Value) -> Option<Change> {
        let method = message.get("method")?.as_str()?;
        if method == UPDATED {
            let params = message.get("params")?;
            params.get("uri")?.as_str()?;
            return Some(Change::Updated {
                server: server.to_string(),
                params: params.clone(),
            });
        }
        kind_of(method).map(Change::Listed)
    }

    /// Whether `session` hears of it: a list change, every session; an update, those
    /// that follow the resource on that server.
    fn concerns(&self, session: &Session) -> bool {
        match self {
            Change::Listed(_) => true,
            Change::Updated { server, params } => params
                .get("uri")
                .and_then(Value::as_str)
                .is_some_and(|uri| session.follows(server, uri)),
        }
    }
}

const UPDATED: &str = "notifications/resources/updated";

/// Where the stdio servers publish their changes.
#[derive(Clone)]
pub struct Changes(broadcast::Sender<Change>);

impl Default for Changes {
    fn default() -> Self {
        Changes(broadcast::channel(16).0)
    }
}

impl Changes {
    /// A server told of a change (no one listening is fine).
    pub fn publish(&self, change: Change) {
        let _ = self.0.send(change);
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

fn event(change: Change) -> Bytes {
    sse_event(&message_of(change))
}

fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// The notification that tells an agent of `change`.
fn message_of(change: Change) -> Value {
    match change {
        Change::Listed(kind) => {
            let method = match kind {
                Kind::Tools => "notifications/tools/list_changed",
                Kind::Prompts => "notifications/prompts/list_changed",
                Kind::Resources | Kind::Templates => "notifications/resources/list_changed",
            };
            json!({"jsonrpc": "2.0", "method": method})
        }
        Change::Updated { params, .. } => {
            json!({"jsonrpc": "2.0", "method": UPDATED, "params": params})
        }
    }
}

type Changed = Pin<Box<dyn Stream<Item = Change> + Send>>;

/// The changes `server` sends on the event stream of one agent session there (its
/// other messages dropped; an event over `limit` ends it).
fn from_events(body: hyper::body::Incoming, limit: usize, server: String) -> Changed {
    let state = (body, BytesMut::new(), server);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut body, mut buf, server)| async move {
            loop {
                while let Some(end) = crate::proxy::sse::event_end(&buf, 0) {
                    let raw = buf.split_to(end);
                    let change = crate::proxy::sse::event_message(&raw)
                        .and_then(|m| Change::of(&server, &m));
                    if let Some(change) = change {
                        return Some((change, (body, buf, server)));
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

/// The stdio servers' changes, as `session`'s stream: every list change, the updates
/// of the resources it follows.
fn published(changes: &Changes, session: Arc<Session>) -> Changed {
    let rx = changes.0.subscribe();
    let state = (rx, session);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut rx, session)| async move {
            loop {
                match rx.recv().await {
                    Ok(change) if change.concerns(&session) => {
                        return Some((change, (rx, session)));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    ))
}

/// The agent's event stream for `session`: the servers' sessions are opened first
/// (an agent opens its stream right after `initialize`, before any call would), then
/// each HTTP server's own event stream; a server that has none (405), cannot be
/// reached or does not open it within `STREAM_OPEN` is left out.
pub async fn stream(vs: &VirtualServer, session: &Arc<Session>, limit: usize) -> Response<BoxBody> {
    let opened = futures_util::future::join_all((0..vs.members.len()).map(|i| async move {
        tokio::time::timeout(STREAM_OPEN, server_events(vs, session, i, limit))
            .await
            .ok()
            .flatten()
    }))
    .await;
    let mut sources: Vec<Changed> = opened.into_iter().flatten().collect();
    sources.push(published(&vs.changes, session.clone()));
    let changes = futures_util::stream::select_all(sources).map(event);
    event_stream(changes)
}

/// An event stream of `events`, with keep-alive comments between them.
fn event_stream(events: impl Stream<Item = Bytes> + Send + 'static) -> Response<BoxBody> {
    let keepalive = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(KEEPALIVE).await;
        Some((Bytes::from_static(b": keep-alive\n\n"), ()))
    });
    let frames = futures_util::stream::select(events, keepalive)
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

/// `server`'s event stream in `session` (its session there opened first), when it is
/// an HTTP server that has one.
async fn server_events(
    vs: &VirtualServer,
    session: &Session,
    i: usize,
    limit: usize,
) -> Option<Changed> {
    let up = vs.members[i].http()?;
    let s = vs.server_session(session, i, limit).await.ok()?;
    s.id.as_ref()?;
    let resp = exchange::events(up, &super::envelope(&s)).await.ok()?;
    changes_in(resp, limit, &up.name)
}

/// What a `subscriptions/listen` request opts in to (2026-07-28), in its
/// `params.notifications`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// `resourceSubscriptions`: the resources whose updates it wants.
    pub uris: Vec<String>,
}

/// The key that ties a notification to the `subscriptions/listen` request whose
/// stream carries it (the value is that request's id).
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

impl Filter {
    pub fn of(notifications: Option<&Value>) -> Filter {
        let flag = |k: &str| {
            notifications
                .and_then(|n| n.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let uris = notifications
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Filter {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris,
        }
    }

    /// The filter as the wire has it (only what is opted in to).
    fn to_wire(&self) -> Value {
        let mut n = serde_json::Map::new();
        for (key, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                n.insert(key.into(), Value::Bool(true));
            }
        }
        if !self.uris.is_empty() {
            n.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(n)
    }

    fn wants(&self, change: &Change) -> bool {
        match change {
            Change::Listed(Kind::Tools) => self.tools,
            Change::Listed(Kind::Prompts) => self.prompts,
            Change::Listed(Kind::Resources | Kind::Templates) => self.resources,
            Change::Updated { params, .. } => params
                .get("uri")
                .and_then(Value::as_str)
                .is_some_and(|uri| self.uris.iter().any(|u| u == uri)),
        }
    }
}

/// A `subscriptions/listen` request (2026-07-28) as the gateway honors it.
pub struct Listen {
    /// The request's id, which tags every message on its stream.
    pub id: Value,
    /// The request's params (its `_meta` goes to the servers too).
    pub params: Value,
    /// What it asked for, less the resources no server is known to own.
    pub honored: Filter,
    /// The owner (member index) of each honored resource.
    pub owners: Vec<(usize, String)>,
    /// Its record of what it follows at stdio servers, registered while it lives.
    pub session: Arc<Session>,
    pub held: sessions::Held,
}

/// The stream of a `subscriptions/listen` request: acknowledged with what is honored
/// (the list changes asked for, and the resources whose server is known), then every
/// change it opted in to, each tagged with the request's id. The changes come from
/// each HTTP server's own `subscriptions/listen` stream (asked for the part of the
/// filter that server can honor: its own resources) and from the stdio servers. A
/// server without such a stream, or one not open within `STREAM_OPEN`, is left out.
pub async fn listen(vs: &VirtualServer, listen: Listen, limit: usize) -> Response<BoxBody> {
    let Listen {
        id,
        params,
        honored,
        owners,
        session,
        held,
    } = listen;
    let opened = futures_util::future::join_all((0..vs.members.len()).map(|i| {
        let own = Filter {
            uris: owners
                .iter()
                .filter(|(o, _)| *o == i)
                .map(|(_, u)| u.clone())
                .collect(),
            ..honored.clone()
        };
        let params = params.clone();
        async move {
            tokio::time::timeout(STREAM_OPEN, server_listen(vs, i, own, params, limit))
                .await
                .ok()
                .flatten()
        }
    }))
    .await;
    let mut sources: Vec<Changed> = opened.into_iter().flatten().collect();
    sources.push(published(&vs.changes, session));
    let ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": honored.to_wire(), "_meta": {SUBSCRIPTION_ID: id}},
    });
    let changes = futures_util::stream::select_all(sources)
        .filter(move |change| std::future::ready(honored.wants(change)))
        .map(move |change| {
            // The registration ends with the stream.
            let _registered = &held;
            let mut message = message_of(change);
            message["params"]["_meta"][SUBSCRIPTION_ID] = id.clone();
            sse_event(&message)
        });
    event_stream(futures_util::stream::once(async move { sse_event(&ack) }).chain(changes))
}

/// `server`'s own `subscriptions/listen` stream with `filter` (and the agent's
/// `params` otherwise), when it is an HTTP server that has one.
async fn server_listen(
    vs: &VirtualServer,
    i: usize,
    filter: Filter,
    mut params: Value,
    limit: usize,
) -> Option<Changed> {
    let up = vs.members[i].http()?;
    params["notifications"] = filter.to_wire();
    let request = json!({
        "jsonrpc": "2.0",
        "id": "ciba-gate-listen",
        "method": "subscriptions/listen",
        "params": params,
    });
    let mut extra = http::HeaderMap::new();
    extra.insert(
        "mcp-method",
        http::HeaderValue::from_static("subscriptions/listen"),
    );
    let envelope = exchange::Envelope {
        revision: Some(crate::proxy::mcp::REV_STATELESS.to_string()),
        session: None,
        extra,
    };
    let resp = exchange::listen(up, &request, &envelope).await.ok()?;
    changes_in(resp, limit, &up.name)
}

/// The changes on a server's answer, when it is a successful event stream.
fn changes_in(
    resp: http::Response<hyper::body::Incoming>,
    limit: usize,
    server: &str,
) -> Option<Changed> {
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    (resp.status().is_success() && is_sse)
        .then(|| from_events(resp.into_body(), limit, server.to_string()))
}
