//! The request path on a virtual server's mount. Every message is put to policy as on
//! a direct mount; then the gateway answers what the virtual server itself owns
//! (`initialize`, `server/discover`, `ping`, notifications, the merged lists:
//! `lists`) and routes a request that names what it uses (`tools/call`, …: `by_name`)
//! to the server that owns it through the shared phases (`flow::one`: decide →
//! approve → forward), under the server's own name.

mod batch;
mod by_name;
mod lists;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use super::catalogue::Kind;
use super::exchange::SESSION_HEADER;
use super::sessions::Session;
use super::{Link, Routed, VirtualServer, changes};
use crate::outcome::{Disposition, Reason};
use crate::proxy::call::{Call, Unit};
use crate::proxy::classify::McpRequest;
use crate::proxy::decide::{self, Verdict};
use crate::proxy::mcp::{self, Message, MessageKind};
use crate::proxy::render::{self, Shape};
use crate::proxy::{BoxBody, flow};
use by_name::{Named, by_name};
use lists::{list, list_plain};

/// The revisions the virtual server speaks; the newest with sessions is the default.
pub const REVISIONS: [&str; 4] = ["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];
pub const LATEST_WITH_SESSIONS: &str = "2025-11-25";

/// Handles one classified, identified request on a virtual server's mount.
pub async fn request(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    request: McpRequest,
) -> Response<BoxBody> {
    match request {
        McpRequest::Stream { head } if head.method == Method::DELETE => {
            end_session(call, vs, head).await
        }
        McpRequest::Stream { head } if head.method == Method::GET => {
            list_changes(call, vs, head).await
        }
        McpRequest::Stream { .. } => {
            let mut r = call.reject(Reason::MethodNotAllowed, &Shape::Post { id: Value::Null });
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
        McpRequest::Messages {
            batch: true,
            head,
            members,
            revision,
            ..
        } => batch::batch(call, vs, head, members, revision).await,
        McpRequest::Messages {
            head,
            members,
            revision,
            ..
        } => match members.into_iter().next() {
            Some(Ok(msg)) => message(call, vs, head, msg, revision, true).await,
            _ => call.reject(
                Reason::InvalidRequest("no message".into()),
                &Shape::Post { id: Value::Null },
            ),
        },
    }
}

/// A message on the virtual server's mount and what came with it.
struct Incoming {
    head: http::request::Parts,
    msg: Message,
    revision: Option<String>,
    session: Option<std::sync::Arc<Session>>,
    /// The request's only message (a batch member cannot wait for a person).
    single: bool,
}

/// The agent's session, for revisions that have one (`initialize` opens it).
fn session_of(
    vs: &VirtualServer,
    head: &http::request::Parts,
) -> Result<Option<std::sync::Arc<Session>>, Reason> {
    let id = head
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(Reason::SessionRequired)?;
    vs.sessions.get(id).map(Some).ok_or(Reason::UnknownSession)
}

/// One message (`single`: the request's only one; a batch member cannot wait for a
/// person).
async fn message(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    head: http::request::Parts,
    msg: Message,
    revision: Option<String>,
    single: bool,
) -> Response<BoxBody> {
    let stateless = mcp::is_stateless(revision.as_deref());
    let method = msg.method.clone().unwrap_or_default();
    let session = if stateless || method == "initialize" {
        None
    } else {
        match session_of(vs, &head) {
            Ok(s) => s,
            Err(reason) => {
                let id = msg.id.clone().unwrap_or(Value::Null);
                return call.reject(reason, &Shape::Post { id });
            }
        }
    };
    let named = Named::of(&method, msg.value.get("params"), stateless)
        .filter(|_| msg.kind == MessageKind::Request);
    let incoming = Incoming {
        head,
        msg,
        revision,
        session,
        single,
    };
    if let Some(named) = named {
        return by_name(call, vs, incoming, named).await;
    }
    let (head, msg) = (&incoming.head, &incoming.msg);
    let base = call.base_input(head);
    let revision = incoming.revision.as_deref();
    let unit = match flow::message_unit(call, &base, head, msg, revision, single) {
        Ok(u) => u,
        Err((reason, shape)) => return render::answer(&reason, &shape),
    };
    let unit = match allowed(call, unit) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    if msg.kind == MessageKind::Notification && method == "notifications/cancelled" {
        return cancelled(call, vs, unit, incoming).await;
    }
    if msg.kind != MessageKind::Request {
        // Other notifications and responses end here: the gateway's own requests to
        // the servers declare no capabilities, so no server waits for an answer.
        unit.record
            .conclude(Disposition::Answered, &Reason::Allowed, None);
        return render::accepted();
    }
    let id = msg.id.clone().unwrap_or(Value::Null);
    let result = match method.as_str() {
        "initialize" => return initialize(vs, unit, msg, id),
        "server/discover" => json!({
            "supportedVersions": REVISIONS,
            "capabilities": capabilities(),
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info(vs)},
            "ttlMs": 0,
            "cacheScope": "private",
        }),
        "ping" => json!({}),
        "subscriptions/listen" if stateless => return listen(call, vs, unit, &incoming).await,
        other => {
            match mcp::methods::lookup(other).lists {
                Some(Kind::Tools) => return list(call, vs, unit, &incoming).await,
                Some(kind) => return list_plain(call, vs, unit, &incoming, kind).await,
                None => {}
            }
            let reason = Reason::MethodNotOffered(other.to_string());
            unit.record.conclude(Disposition::Rejected, &reason, None);
            return render::answer(&reason, &Shape::JsonRpc { id });
        }
    };
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, None);
    render::json(StatusCode::OK, &reply(id, result, stateless))
}

/// Phase decide for a message the gateway answers itself: only `allow` goes on.
#[allow(clippy::result_large_err)]
fn allowed(call: &Call<'_>, mut unit: Unit) -> Result<Unit, Response<BoxBody>> {
    let reason = match decide::request(call.gw, &mut unit) {
        Verdict::Forward => return Ok(unit),
        Verdict::Block(reason) => reason,
        Verdict::Approve(_) => Reason::ApprovalUnsupported,
    };
    let resp = render::answer(&reason, &unit.shape);
    unit.record.conclude(Disposition::Blocked, &reason, None);
    Err(resp)
}

fn reply(id: Value, mut result: Value, stateless: bool) -> Value {
    if stateless {
        result["resultType"] = json!("complete");
    }
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// What the virtual server offers. Changes reach the agent on its session's event
/// stream (`resources/subscribe` for updates), or in 2026-07-28 on a
/// `subscriptions/listen` stream.
fn capabilities() -> Value {
    json!({
        "completions": {},
        "tools": {"listChanged": true},
        "prompts": {"listChanged": true},
        "resources": {"listChanged": true, "subscribe": true},
    })
}

fn server_info(vs: &VirtualServer) -> Value {
    json!({"name": vs.name, "version": env!("CARGO_PKG_VERSION")})
}

/// `initialize`: the revision agreed (the agent's, when the gateway speaks it), and a
/// session for revisions that have them.
fn initialize(vs: &VirtualServer, unit: Unit, msg: &Message, id: Value) -> Response<BoxBody> {
    let params = msg.value.get("params");
    let asked = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str)
        .unwrap_or(LATEST_WITH_SESSIONS);
    let revision = REVISIONS
        .iter()
        .find(|r| **r == asked)
        .copied()
        .unwrap_or(LATEST_WITH_SESSIONS);
    let result = json!({
        "protocolVersion": revision,
        "capabilities": capabilities(),
        "serverInfo": server_info(vs),
    });
    let mut resp = render::json(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    );
    if !mcp::is_stateless(Some(revision)) {
        let client_info = params
            .and_then(|p| p.get("clientInfo"))
            .cloned()
            .unwrap_or_else(|| json!({"name": "ciba-gate", "version": env!("CARGO_PKG_VERSION")}));
        let sid = vs.sessions.open(revision, client_info);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            resp.headers_mut().insert(SESSION_HEADER, v);
        }
    }
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, None);
    resp
}

/// `notifications/cancelled`: sent on to the server the cancelled request went to (in
/// this session); one the gateway did not send anywhere ends here.
async fn cancelled(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    incoming: Incoming,
) -> Response<BoxBody> {
    let Incoming {
        head, msg, session, ..
    } = incoming;
    let server = session.as_ref().and_then(|s| {
        let id = msg.value.pointer("/params/requestId")?;
        s.server_of(id)
    });
    let Some(server) = server else {
        unit.record
            .conclude(Disposition::Answered, &Reason::Allowed, None);
        return render::accepted();
    };
    let routed = Routed {
        server,
        own_name: String::new(),
        session,
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&msg.value).unwrap_or_default());
    let limit = call.gw.limits.max_inspected_response_bytes;
    let mut record = unit.record;
    record.get_mut().upstream = vs.members[server].name().to_string();
    match vs.forward(&routed, head.headers, body, None, limit).await {
        Ok(resp) => {
            record.conclude(
                Disposition::Forwarded,
                &Reason::Allowed,
                Some(resp.status().as_u16()),
            );
        }
        Err(e) => record.conclude(Disposition::UpstreamFailed, &e.reason(), None),
    }
    render::accepted()
}

/// `subscriptions/listen` (2026-07-28): the agent's stream of the changes it opts in
/// to (`changes::listen`). Each resource it names goes to the server that owns it
/// (found as for `resources/read`); a stdio server is subscribed to it first (one the
/// server refuses, or no server owns, is not honored).
async fn listen(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    incoming: &Incoming,
) -> Response<BoxBody> {
    let msg = &incoming.msg;
    let id = msg.id.clone().unwrap_or(Value::Null);
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let mut honored = changes::Filter::of(params.get("notifications"));
    let Some((session, held)) = vs.sessions.hold(mcp::REV_STATELESS) else {
        let reason = Reason::InvalidRequest("no stream could be opened".into());
        unit.record.conclude(Disposition::Rejected, &reason, None);
        return render::answer(&reason, &Shape::JsonRpc { id });
    };
    let mut owners = Vec::new();
    for uri in std::mem::take(&mut honored.uris) {
        let owner = by_name::owner_of(call, vs, incoming, Kind::Resources, &uri).await;
        let Some((i, _)) = owner else { continue };
        if let Link::Stdio(s) = &vs.members[i].link {
            let subscribe = json!({"jsonrpc": "2.0", "id": 0,
                "method": "resources/subscribe", "params": {"uri": uri}});
            match s.ask(subscribe, &session.id).await {
                Ok(answer) if answer.get("result").is_some() => session.follow(&s.name, &uri, true),
                _ => continue,
            }
        }
        owners.push((i, uri.clone()));
        honored.uris.push(uri);
    }
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, Some(200));
    let listen = changes::Listen {
        id,
        params,
        honored,
        owners,
        session,
        held,
    };
    changes::listen(vs, listen, call.gw.limits.max_inspected_response_bytes).await
}

/// GET: policy decides it like a direct mount's; then, in the agent's session, the
/// stream on which the servers' list changes reach it (`changes`). Without a session
/// (2026-07-28) there is no such stream: 405.
async fn list_changes(
    call: &Call<'_>,
    vs: &VirtualServer,
    head: http::request::Parts,
) -> Response<BoxBody> {
    let unit = match allowed(call, flow::stream_unit(call, &head)) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let session = match session_of(vs, &head) {
        Ok(Some(s)) => s,
        Ok(None) | Err(Reason::SessionRequired) => {
            let reason = Reason::MethodNotAllowed;
            unit.record.conclude(Disposition::Rejected, &reason, None);
            let mut r = render::answer(&reason, &Shape::Post { id: Value::Null });
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            return r;
        }
        Err(reason) => {
            unit.record.conclude(Disposition::Rejected, &reason, None);
            return render::answer(&reason, &Shape::Post { id: Value::Null });
        }
    };
    let limit = call.gw.limits.max_inspected_response_bytes;
    let resp = super::changes::stream(vs, &session, limit).await;
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, Some(200));
    resp
}

/// DELETE: policy decides it like a direct mount's; then the session ends here and at
/// every server it opened.
async fn end_session(
    call: &Call<'_>,
    vs: &VirtualServer,
    head: http::request::Parts,
) -> Response<BoxBody> {
    let unit = match allowed(call, flow::stream_unit(call, &head)) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let closed = head
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|id| vs.sessions.close(id));
    let Some(session) = closed else {
        let reason = Reason::UnknownSession;
        unit.record.conclude(Disposition::Rejected, &reason, None);
        return render::answer(&reason, &Shape::Post { id: Value::Null });
    };
    vs.close(&session).await;
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, Some(200));
    let mut r = Response::new(render::empty());
    *r.status_mut() = StatusCode::OK;
    r
}
