//! A virtual MCP server: one endpoint in front of several MCP tool servers. The
//! gateway answers `initialize` / `server/discover` itself, merges the servers'
//! `tools/list` into one catalogue (names mapped by `naming`), and routes each
//! `tools/call` to the server that owns the tool, under the server's own name, through
//! the same decide → approve → forward phases as a direct mount. Sessions
//! (`sessions`) map one agent session to one session per server. A server is reached
//! over Streamable HTTP (an `Upstream`) or is a process the gateway starts and speaks
//! to over stdio (`stdio`).

pub mod catalogue;
pub mod changes;
pub mod exchange;
pub mod naming;
pub mod serve;
pub mod sessions;
pub mod stdio;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use serde_json::{Value, json};

use super::mcp::methods::{self, Role};
use super::upstream::{Upstream, UpstreamError};
use super::{BoxBody, render};
use exchange::{Envelope, REVISION_HEADER, SESSION_HEADER};
use naming::{Naming, Resolved};
use sessions::{ServerSession, Session, Sessions};

/// One server behind the virtual server.
pub struct Member {
    pub link: Link,
    pub naming: Naming,
}

/// How the gateway reaches a server.
pub enum Link {
    /// MCP Streamable HTTP (`url`).
    Http(Box<Upstream>),
    /// A process the gateway starts (`command`), over stdin/stdout.
    Stdio(Box<stdio::StdioServer>),
}

impl Member {
    /// The server's upstream name (what policy and evidence call it).
    pub fn name(&self) -> &str {
        match &self.link {
            Link::Http(up) => &up.name,
            Link::Stdio(s) => &s.name,
        }
    }

    /// The server's HTTP client, when it is reached over HTTP.
    pub fn http(&self) -> Option<&Upstream> {
        match &self.link {
            Link::Http(up) => Some(up),
            Link::Stdio(_) => None,
        }
    }
}

/// The virtual server of one mount.
pub struct VirtualServer {
    pub name: String,
    pub members: Vec<Member>,
    pub sessions: Sessions,
    /// The stdio servers' list changes, for the agents' event streams.
    pub changes: changes::Changes,
    /// Who owns each shown name no prefix or alias decides, from the last merged list
    /// of each kind.
    owners: RwLock<HashMap<(catalogue::Kind, String), usize>>,
}

/// Where an agent's tool call goes.
#[derive(Clone)]
pub struct Routed {
    /// The member's index.
    pub server: usize,
    /// The tool's name at that server.
    pub own_name: String,
    /// The agent's session (revisions with sessions).
    pub session: Option<Arc<Session>>,
}

impl VirtualServer {
    pub fn new(name: String, members: Vec<Member>, changes: changes::Changes) -> VirtualServer {
        let n = members.len();
        VirtualServer {
            name,
            members,
            changes,
            sessions: Sessions::new(n),
            owners: RwLock::new(HashMap::new()),
        }
    }

    /// The virtual server of `upstreams[i]` (an entry with `servers`), its servers'
    /// clients built from their own entries (`max_message`: the longest message read
    /// from a stdio server).
    pub fn from_config(
        upstreams: &[crate::proxy::config::UpstreamConfig],
        base: &std::path::Path,
        i: usize,
        max_message: usize,
    ) -> crate::validate::Checked<VirtualServer> {
        let u = &upstreams[i];
        let changes = changes::Changes::default();
        let members = u
            .servers
            .iter()
            .map(|s| {
                let j = upstreams
                    .iter()
                    .position(|t| t.name == s.upstream)
                    .ok_or_else(|| {
                        crate::validate::FieldError::new(
                            format!("[{i}].servers"),
                            "names no upstream",
                        )
                    })?;
                let t = &upstreams[j];
                let link = if t.command.is_empty() {
                    Link::Http(Box::new(super::direct_upstream(upstreams, base, j)?))
                } else {
                    let launch = stdio::Launch::from_config(t, base, max_message);
                    Link::Stdio(Box::new(stdio::StdioServer::new(
                        t.name.clone(),
                        launch,
                        changes.clone(),
                    )))
                };
                Ok(Member {
                    link,
                    naming: Naming::new(s.tool_prefix.clone(), s.aliases.clone()),
                })
            })
            .collect::<crate::validate::Checked<Vec<_>>>()?;
        Ok(VirtualServer::new(u.name.clone(), members, changes))
    }

    /// What `check` reports: every server asked for its tools in a session of the
    /// gateway's own; the names two servers claim and the servers that did not answer.
    pub async fn survey(&self, limit: usize) -> catalogue::Merged {
        let id = self.sessions.open(
            serve::LATEST_WITH_SESSIONS,
            json!({"name": "ciba-gate-check", "version": env!("CARGO_PKG_VERSION")}),
        );
        let Some(session) = self.sessions.get(&id) else {
            return catalogue::Merged::default();
        };
        let ask = catalogue::Ask {
            session: Some(&session),
            revision: None,
            params: json!({}),
            extra: HeaderMap::new(),
            limit,
        };
        let merged = catalogue::tools(self, &ask).await;
        if let Some(s) = self.sessions.close(&id) {
            self.close(&s).await;
        }
        merged
    }

    fn namings(&self) -> Vec<&Naming> {
        self.members.iter().map(|m| &m.naming).collect()
    }

    /// The owner of the `kind` entry `shown` by the naming rules, then by the last
    /// merged list.
    pub fn resolve_known(&self, kind: catalogue::Kind, shown: &str) -> Option<(usize, String)> {
        if !kind.renamed() {
            let owner = *self.owners.read().ok()?.get(&(kind, shown.to_string()))?;
            return Some((owner, shown.to_string()));
        }
        match naming::resolve(&self.namings(), shown) {
            Resolved::Server(i, own) => Some((i, own)),
            Resolved::Nowhere => None,
            Resolved::Unprefixed(candidates) => {
                let owner = *self.owners.read().ok()?.get(&(kind, shown.to_string()))?;
                candidates
                    .contains(&owner)
                    .then(|| (owner, shown.to_string()))
            }
        }
    }

    /// The one server with a listed resource template that `uri` matches (none when
    /// none does, or two servers' do).
    pub fn template_owner(&self, uri: &str) -> Option<usize> {
        let owners = self.owners.read().ok()?;
        let mut matching = owners
            .iter()
            .filter(|((k, template), _)| {
                *k == catalogue::Kind::Templates && naming::template_matches(template, uri)
            })
            .map(|(_, i)| *i);
        let first = matching.next()?;
        matching.all(|i| i == first).then_some(first)
    }

    pub(crate) fn remember_owners(&self, kind: catalogue::Kind, owners: HashMap<String, usize>) {
        if let Ok(mut o) = self.owners.write() {
            o.retain(|(k, _), _| *k != kind);
            o.extend(owners.into_iter().map(|(name, i)| ((kind, name), i)));
        }
    }

    /// The server's side of `session`, opened (initialize, then
    /// notifications/initialized) on first use.
    pub async fn server_session(
        &self,
        session: &Session,
        server: usize,
        limit: usize,
    ) -> Result<ServerSession, UpstreamError> {
        let up = match &self.members[server].link {
            Link::Http(up) => up,
            // One process, one session of its own, shared by every agent.
            Link::Stdio(s) => {
                return Ok(ServerSession {
                    id: None,
                    revision: s.revision().await?,
                });
            }
        };
        let mut slot = session.servers[server].lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let init = json!({
            "jsonrpc": "2.0",
            "id": "ciba-gate-initialize",
            "method": "initialize",
            "params": {
                "protocolVersion": session.revision,
                // None declared: a server then sends no requests (sampling,
                // elicitation) the gateway would have to route back.
                "capabilities": {},
                "clientInfo": session.client_info,
            },
        });
        let answer = exchange::ask(
            up,
            &init,
            &Envelope::default(),
            limit,
            up.response_timeout(),
        )
        .await?;
        let result = answer.message.get("result").ok_or_else(|| {
            UpstreamError::Protocol(format!(
                "the server refused to open a session: {}",
                answer.message.get("error").cloned().unwrap_or(Value::Null)
            ))
        })?;
        let opened = ServerSession {
            id: answer.headers.get(SESSION_HEADER).cloned(),
            revision: result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(&session.revision)
                .to_string(),
        };
        exchange::tell(
            up,
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            &envelope(&opened),
        )
        .await?;
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Forgets a server's session the server lost (unless it was re-opened already).
    async fn forget(&self, session: &Session, server: usize, stale: &ServerSession) {
        let mut slot = session.servers[server].lock().await;
        if slot.as_ref().is_some_and(|s| s.id == stale.id) {
            *slot = None;
        }
    }

    /// Sends an agent's routed message to its server: the agent's session replaced by
    /// the server's (re-opened once if the server lost it), the server's session id
    /// never shown to the agent.
    pub async fn forward(
        &self,
        routed: &Routed,
        mut headers: HeaderMap,
        body: Bytes,
        approval_token: Option<&secrecy::SecretString>,
        limit: usize,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let up = match &self.members[routed.server].link {
            Link::Http(up) => up,
            Link::Stdio(s) => return self.forward_stdio(s, &headers, &body, routed).await,
        };
        headers.remove(SESSION_HEADER);
        let Some(session) = &routed.session else {
            let resp = up
                .forward(
                    Method::POST,
                    "",
                    None,
                    headers,
                    render::full(body),
                    approval_token,
                )
                .await?;
            return Ok(without_session(resp));
        };
        let mut reopened = false;
        loop {
            let s = self.server_session(session, routed.server, limit).await?;
            let mut h = headers.clone();
            let e = envelope(&s);
            if let Some(id) = e.session {
                h.insert(SESSION_HEADER, id);
            }
            if let Ok(r) = HeaderValue::from_str(&s.revision) {
                h.insert(REVISION_HEADER, r);
            }
            let resp = up
                .forward(
                    Method::POST,
                    "",
                    None,
                    h,
                    render::full(body.clone()),
                    approval_token,
                )
                .await?;
            // 404 on a session: the server forgot it (restarted) and ran nothing.
            if resp.status() == http::StatusCode::NOT_FOUND && s.id.is_some() && !reopened {
                tracing::info!(server = %up.name, "server lost its session; opening a new one");
                self.forget(session, routed.server, &s).await;
                reopened = true;
                continue;
            }
            return Ok(without_session(resp));
        }
    }

    /// An agent's message to a stdio server, answered as a Streamable HTTP server
    /// would: a request's answer as one JSON body (as an event stream, after the
    /// server's progress, when the agent asked for progress and takes a stream), a
    /// notification with 202. The one process serves every session, so the gateway
    /// keeps who follows which resource: a subscription the server accepted is noted,
    /// and an unsubscribe reaches the server only when no other session still follows
    /// the resource there.
    async fn forward_stdio(
        &self,
        server: &stdio::StdioServer,
        headers: &HeaderMap,
        body: &Bytes,
        routed: &Routed,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let message: Value = serde_json::from_slice(body)
            .map_err(|_| UpstreamError::Protocol("the message is not JSON".into()))?;
        let scope = routed.session.as_ref().map_or("", |s| s.id.as_str());
        if message.get("id").is_none() {
            server.tell(message, scope).await?;
            return Ok(render::accepted());
        }
        let follow = Follow::of(&message);
        if follow.is_none()
            && message.pointer("/params/_meta/progressToken").is_some()
            && takes_events(headers)
        {
            let id = message["id"].clone();
            let events = server.ask_streamed(message, scope).await?;
            return with_progress(events, id).await;
        }
        if let (Some(Follow { on: false, uri }), Some(session)) = (&follow, &routed.session) {
            session.follow(&server.name, uri, false);
            if self.sessions.followed(&server.name, uri) {
                let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": {}});
                return Ok(render::json(http::StatusCode::OK, &answer));
            }
        }
        let answer = server.ask(message, scope).await?;
        if let (Some(Follow { on: true, uri }), Some(session)) = (&follow, &routed.session)
            && answer.get("result").is_some()
        {
            session.follow(&server.name, uri, true);
        }
        Ok(render::json(http::StatusCode::OK, &answer))
    }

    /// Ends the servers' sessions of a closed agent session (best effort), and the
    /// subscriptions at stdio servers that no other session follows.
    pub async fn close(&self, session: &Session) {
        for (i, s) in session.opened() {
            if let (Some(up), Some(_)) = (self.members[i].http(), &s.id) {
                let _ = exchange::close(up, &envelope(&s)).await;
            }
        }
        for (server, uri) in session.subscriptions() {
            let stdio = self.members.iter().find_map(|m| match &m.link {
                Link::Stdio(s) if s.name == server => Some(s),
                _ => None,
            });
            if let Some(s) = stdio
                && !self.sessions.followed(&server, &uri)
            {
                let unsubscribe = json!({"jsonrpc": "2.0", "id": 0,
                    "method": "resources/unsubscribe", "params": {"uri": uri}});
                let _ = s.ask(unsubscribe, &session.id).await;
            }
        }
    }

    /// Stops the stdio servers' processes (gateway shutdown).
    pub async fn shutdown(&self) {
        for m in &self.members {
            if let Link::Stdio(s) = &m.link {
                s.shutdown().await;
            }
        }
    }
}

/// Whether the agent's request takes an event stream as its answer.
fn takes_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// A stdio server's progress and answer as an event stream. The first message is
/// waited for, so a call that fails before anything is sent fails as the call (a
/// typed upstream failure); one that fails later ends the stream with its JSON-RPC
/// error.
async fn with_progress(
    events: impl futures_util::Stream<Item = Result<Value, UpstreamError>> + Send + 'static,
    id: Value,
) -> Result<Response<BoxBody>, UpstreamError> {
    use futures_util::StreamExt;
    let mut events = Box::pin(events);
    let first = events.next().await.unwrap_or_else(|| {
        Err(UpstreamError::Protocol(
            "the server process sent nothing".into(),
        ))
    })?;
    let event = |message: &Value| {
        Ok::<_, super::BoxError>(hyper::body::Frame::data(Bytes::from(format!(
            "event: message\ndata: {message}\n\n"
        ))))
    };
    let rest = events.map(move |m| {
        let message = m.unwrap_or_else(|e| {
            render::value(&e.reason(), &render::Shape::JsonRpc { id: id.clone() }).1
        });
        event(&message)
    });
    let frames = futures_util::stream::once(async move { event(&first) }).chain(rest);
    let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::StreamBody::new(frames),
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(resp)
}

/// A `resources/subscribe` (`on`) or `resources/unsubscribe` of `uri`.
struct Follow {
    on: bool,
    uri: String,
}

impl Follow {
    fn of(message: &Value) -> Option<Follow> {
        let Role::Follow(on) = methods::lookup(message.get("method")?.as_str()?).role else {
            return None;
        };
        let uri = message.pointer("/params/uri")?.as_str()?.to_string();
        Some(Follow { on, uri })
    }
}

fn envelope(s: &ServerSession) -> Envelope {
    Envelope {
        revision: Some(s.revision.clone()),
        session: s.id.clone(),
        extra: HeaderMap::new(),
    }
}

fn without_session(resp: Response<hyper::body::Incoming>) -> Response<BoxBody> {
    let mut resp = resp.map(render::streamed);
    resp.headers_mut().remove(SESSION_HEADER);
    resp
}
