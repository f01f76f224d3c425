//! The request path on a virtual server's mount. Every message is put to policy as on
//! a direct mount; then the gateway answers what the virtual server itself owns
//! (`initialize`, `server/discover`, `ping`, the merged `tools/list`, notifications)
//! and routes a `tools/call` to its server through the shared phases
//! (`flow::one`: decide → approve → forward), under the server's own tool name.

use std::sync::Mutex;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use super::catalogue::{self, Ask, Kind};
use super::exchange::SESSION_HEADER;
use super::sessions::Session;
use super::{Routed, VirtualServer};
use crate::outcome::{Disposition, Reason};
use crate::proxy::call::{Call, Unit};
use crate::proxy::classify::{McpRequest, OutBody};
use crate::proxy::decide::{self, Verdict};
use crate::proxy::forward::{Outbound, Plan};
use crate::proxy::mcp::{self, Message, MessageKind};
use crate::proxy::render::{self, Shape};
use crate::proxy::{BoxBody, flow};

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
        McpRequest::Messages { batch: true, .. } => call.reject(
            Reason::BatchNotAllowed(
                "a virtual server takes one message per request (its members may differ)".into(),
            ),
            &Shape::Post { id: Value::Null },
        ),
        McpRequest::Messages {
            head,
            members,
            revision,
            ..
        } => match members.into_iter().next() {
            Some(Ok(msg)) => message(call, vs, head, msg, revision).await,
            _ => call.reject(
                Reason::InvalidRequest("no message".into()),
                &Shape::Post { id: Value::Null },
            ),
        },
    }
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

async fn message(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    head: http::request::Parts,
    msg: Message,
    revision: Option<String>,
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
    if msg.kind == MessageKind::Request
        && let Some(named) = Named::of(&method, msg.value.get("params"), stateless)
    {
        return by_name(call, vs, head, msg, revision, session, named).await;
    }
    let base = call.base_input(&head);
    let unit = match flow::message_unit(call, &base, &head, &msg, revision.as_deref(), true) {
        Ok(u) => u,
        Err((reason, shape)) => return render::answer(&reason, &shape),
    };
    let unit = match allowed(call, unit) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    if msg.kind == MessageKind::Notification && method == "notifications/cancelled" {
        return cancelled(call, vs, unit, head, msg, session).await;
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
        "initialize" => return initialize(vs, unit, &msg, id),
        "server/discover" => json!({
            "supportedVersions": REVISIONS,
            "capabilities": capabilities(false),
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info(vs)},
            "ttlMs": 0,
            "cacheScope": "private",
        }),
        "ping" => json!({}),
        "tools/list" => return list(call, vs, unit, &head, &msg, revision, session).await,
        "prompts/list" | "resources/list" | "resources/templates/list" => {
            let kind = match method.as_str() {
                "prompts/list" => Kind::Prompts,
                "resources/list" => Kind::Resources,
                _ => Kind::Templates,
            };
            return list_plain(call, vs, unit, &head, &msg, revision, session, kind).await;
        }
        other => {
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

/// What the virtual server offers; resource updates need the session's event stream
/// (`subscribe`: a revision with sessions).
fn capabilities(subscribe: bool) -> Value {
    json!({
        "completions": {},
        "tools": {"listChanged": true},
        "prompts": {"listChanged": true},
        "resources": {"listChanged": true, "subscribe": subscribe},
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
        "capabilities": capabilities(!mcp::is_stateless(Some(revision))),
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

/// The agent's MCP headers a 2026-07-28 request mirrors, for the gateway's own
/// requests to the servers.
fn mirrored(head: &http::request::Parts) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(v) = head.headers.get("mcp-method") {
        h.insert("mcp-method", v.clone());
    }
    h
}

fn ask<'a>(
    call: &Call<'_>,
    head: &http::request::Parts,
    params: Value,
    revision: Option<String>,
    session: Option<&'a Session>,
) -> Ask<'a> {
    let mut params = match params {
        Value::Object(o) => Value::Object(o),
        _ => json!({}),
    };
    if let Some(p) = params.as_object_mut() {
        p.remove("cursor");
        p.remove("name");
        p.remove("arguments");
    }
    Ask {
        session,
        revision,
        params,
        extra: mirrored(head),
        limit: call.gw.limits.max_inspected_response_bytes,
    }
}

/// A merged list's result: 2026-07-28 says how long it may be cached and by whom;
/// `_meta` names what is missing.
fn list_result(
    vs: &VirtualServer,
    kind: Kind,
    entries: Vec<Value>,
    merged: &catalogue::Merged,
    stateless: bool,
) -> Value {
    let mut result = json!({ kind.key(): entries });
    if stateless {
        result["ttlMs"] = json!(0);
        result["cacheScope"] = json!("private");
    }
    if let Some(meta) = merged.meta(vs) {
        result["_meta"] = meta;
    }
    result
}

/// The merged `tools/list`, each tool put to policy (phase `list`) with its own
/// server as `input.upstream`; what is missing is named in `_meta`.
async fn list(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    head: &http::request::Parts,
    msg: &Message,
    revision: Option<String>,
    session: Option<std::sync::Arc<Session>>,
) -> Response<BoxBody> {
    let stateless = mcp::is_stateless(revision.as_deref());
    let id = msg.id.clone().unwrap_or(Value::Null);
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let how = ask(call, head, params, revision, session.as_deref());
    let merged = catalogue::tools(vs, &how).await;
    if merged.unavailable.len() == vs.members.len()
        && let Some((_, reason)) = merged.unavailable.first()
    {
        let resp = render::answer(reason, &Shape::JsonRpc { id });
        unit.record
            .conclude(Disposition::UpstreamFailed, reason, None);
        return resp;
    }
    let shadow = Mutex::new(decide::ListShadow::default());
    let mut shown = Vec::new();
    let mut hidden = 0;
    for (i, own, tool) in &merged.tools {
        let mut base = unit.input.clone();
        base.upstream.name = vs.members[*i].name().to_string();
        base.upstream.via = Some(vs.name.clone());
        if decide::list_shows(call.gw, &base, tool, Some(own), &shadow) {
            shown.push(tool.clone());
        } else {
            hidden += 1;
        }
    }
    let result = list_result(vs, Kind::Tools, shown, &merged, stateless);
    let mut record = unit.record;
    let r = record.get_mut();
    r.hidden_tools = Some(hidden);
    if r.shadow.is_none() {
        r.shadow = shadow.lock().ok().and_then(|s| s.evidence());
    }
    record.conclude(Disposition::Answered, &Reason::Allowed, None);
    render::json(StatusCode::OK, &reply(id, result, stateless))
}

/// The merged `prompts/list` or `resources/list` (the request itself was put to
/// policy; entries are not filtered one by one).
#[allow(clippy::too_many_arguments)]
async fn list_plain(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    head: &http::request::Parts,
    msg: &Message,
    revision: Option<String>,
    session: Option<std::sync::Arc<Session>>,
    kind: Kind,
) -> Response<BoxBody> {
    let stateless = mcp::is_stateless(revision.as_deref());
    let id = msg.id.clone().unwrap_or(Value::Null);
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let how = ask(call, head, params, revision, session.as_deref());
    let merged = catalogue::list(vs, &how, kind).await;
    let entries: Vec<Value> = merged.tools.iter().map(|(_, _, p)| p.clone()).collect();
    let result = list_result(vs, kind, entries, &merged, stateless);
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, None);
    render::json(StatusCode::OK, &reply(id, result, stateless))
}

/// Where a request names the entry it uses, and the list that name is from.
#[derive(Clone, Copy)]
struct Named {
    kind: Kind,
    /// JSON pointer to the name (or URI) in the request.
    at: &'static str,
}

impl Named {
    /// `stateless`: 2026-07-28, where no event stream could carry a resource's updates.
    fn of(method: &str, params: Option<&Value>, stateless: bool) -> Option<Named> {
        let (kind, at) = match method {
            m if m == mcp::methods::name_of(mcp::methods::Role::ToolCall) => {
                (Kind::Tools, "/params/name")
            }
            "prompts/get" => (Kind::Prompts, "/params/name"),
            "resources/read" => (Kind::Resources, "/params/uri"),
            "resources/subscribe" | "resources/unsubscribe" if !stateless => {
                (Kind::Resources, "/params/uri")
            }
            // A completion goes to the server of the prompt or template it completes.
            "completion/complete" => {
                match params
                    .and_then(|p| p.pointer("/ref/type"))
                    .and_then(Value::as_str)
                {
                    Some("ref/resource") => (Kind::Templates, "/params/ref/uri"),
                    _ => (Kind::Prompts, "/params/ref/name"),
                }
            }
            _ => return None,
        };
        Some(Named { kind, at })
    }
}

/// The server that owns `shown`, and its own name for it: by the naming rules or the
/// last merged list, else by a fresh one (and a resource's URI by the templates too).
#[allow(clippy::too_many_arguments)]
async fn owner_of(
    call: &Call<'_>,
    vs: &VirtualServer,
    head: &http::request::Parts,
    msg: &Message,
    revision: &Option<String>,
    session: Option<&Session>,
    kind: Kind,
    shown: &str,
) -> Option<(usize, String)> {
    if let Some(owner) = vs.resolve_known(kind, shown) {
        return Some(owner);
    }
    if shown.is_empty() {
        return None;
    }
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let how = ask(call, head, params, revision.clone(), session);
    catalogue::list(vs, &how, kind).await;
    if let Some(owner) = vs.resolve_known(kind, shown) {
        return Some(owner);
    }
    if kind != Kind::Resources {
        return None;
    }
    // A URI that no list has may come from a server's resource template.
    catalogue::list(vs, &how, Kind::Templates).await;
    vs.template_owner(shown).map(|i| (i, shown.to_string()))
}

/// A `tools/call`, `prompts/get`, `resources/read`, `resources/(un)subscribe` or
/// `completion/complete`: find the
/// server that owns the name (asking the servers for their lists when the name is not
/// decided by prefix or alias), then the shared phases with the server as the call's
/// upstream and the server's own name in the body it reads.
async fn by_name(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    mut head: http::request::Parts,
    msg: Message,
    revision: Option<String>,
    session: Option<std::sync::Arc<Session>>,
    named: Named,
) -> Response<BoxBody> {
    let kind = named.kind;
    let shown = msg
        .value
        .pointer(named.at)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let owner = owner_of(
        call,
        vs,
        &head,
        &msg,
        &revision,
        session.as_deref(),
        kind,
        &shown,
    )
    .await;
    if let Some((server, own)) = &owner {
        call.routed = Some(Routed {
            server: *server,
            own_name: own.clone(),
            session,
        });
    }
    let base = call.base_input(&head);
    let mut unit = match flow::message_unit(call, &base, &head, &msg, revision.as_deref(), true) {
        Ok(u) => u,
        Err((reason, shape)) => return render::answer(&reason, &shape),
    };
    let Some((_, own)) = owner else {
        let what = match kind {
            Kind::Tools => "tool named",
            Kind::Prompts => "prompt named",
            Kind::Resources => "resource",
            Kind::Templates => "resource template",
        };
        let reason = Reason::UnknownTool(format!(
            "no server behind this endpoint offers a {what} {shown:?} (or two servers claim it); {} shows the names to use",
            kind.method()
        ));
        unit.record.conclude(Disposition::Rejected, &reason, None);
        return render::answer(
            &reason,
            &Shape::JsonRpc {
                id: msg.id.clone().unwrap_or(Value::Null),
            },
        );
    };
    if let Some(t) = unit.input.tool.as_mut() {
        t.upstream_name = Some(own.clone());
    }
    if kind == Kind::Tools {
        unit.record.get_mut().upstream_tool = Some(own.clone());
    }
    // The server reads its own name; everything else is the agent's message as policy
    // read it (re-serialised from the strict parse: no duplicate key survives it).
    let mut value = msg.value;
    if let Some(name) = value.pointer_mut(named.at) {
        *name = Value::String(own.clone());
    }
    if head.headers.contains_key("mcp-name")
        && let Ok(v) = HeaderValue::from_str(&own)
    {
        head.headers.insert("mcp-name", v);
    }
    let out = Outbound {
        head,
        rest: String::new(),
        body: OutBody::Held(bytes::Bytes::from(
            serde_json::to_vec(&value).unwrap_or_default(),
        )),
    };
    if let (Some(r), Some(id)) = (&call.routed, &msg.id)
        && let Some(s) = &r.session
    {
        s.sent(id, r.server);
    }
    let plan = Plan {
        jsonrpc: true,
        ..Plan::default()
    };
    flow::one(call, unit, out, plan).await
}

/// `notifications/cancelled`: sent on to the server the cancelled request went to (in
/// this session); one the gateway did not send anywhere ends here.
async fn cancelled(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    head: http::request::Parts,
    msg: Message,
    session: Option<std::sync::Arc<Session>>,
) -> Response<BoxBody> {
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
