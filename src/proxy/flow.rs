//! The request path, written once: classify → decide → (approve) → forward → record,
//! for MCP messages, MCP stream requests and HTTP tool calls alike. Each call the
//! request carries becomes a `Unit` (its policy input, its evidence record, the shape
//! of its answer); `one` runs a single unit through the phases, `batch` a JSON-RPC batch.

use std::sync::Arc;

use http::{Request, Response, header};
use hyper::body::Incoming;
use serde_json::Value;

use super::call::{Call, Caller, Unit};
use super::classify::{self, HttpRequest, McpRequest, OutBody};
use super::decide::{self, Verdict};
use super::forward::{self, Outbound, Plan};
use super::mcp::{self, InvalidMessage, Message, MessageKind, results};
use super::render::{self, Shape};
use super::{BoxBody, Gateway, approve, path};
use crate::outcome::{Disposition, Reason};
use crate::policy::input::{self, BodyFacts, PolicyInput};

/// Handles one request from the agent (`mount`: the one its path is under). Never
/// fails: every problem is an answer.
pub async fn run<'g>(
    gw: &'g Arc<Gateway>,
    mount: Option<&'g super::Mount>,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let is_mcp = mount.is_some_and(|m| m.kind == super::config::UpstreamKind::Mcp);
    if let Err(e) = path::check(&path) {
        let reason = Reason::BadPath(e.to_string());
        super::call::record_for(
            gw,
            &super::call::new_request_id(),
            crate::clock::now(),
            req.method(),
            mount.map(|m| m.name()).unwrap_or("-"),
        )
        .conclude(Disposition::Rejected, &reason, None);
        return render::answer(&reason, &Shape::for_mount(is_mcp));
    }
    let Some(mount) = mount else {
        return render::answer(&Reason::NoSuchRoute, &Shape::Http);
    };
    let mut call = Call::new(gw, mount, req.method());
    let rest = mount.rest(&path).unwrap_or_default().to_string();
    if is_mcp {
        match classify::mcp(&call, &rest, req).await {
            Err(r) => call.reject(r.reason, &r.shape),
            Ok(request) => {
                if let Err(reason) = call.identify(request.headers()).await {
                    return call.reject(reason, &request.refusal_shape());
                }
                match &mount.target {
                    super::Target::Virtual(vs) => {
                        super::multiplex::serve::request(&mut call, vs, request).await
                    }
                    super::Target::Upstream(_) => mcp_request(&call, request).await,
                }
            }
        }
    } else {
        match classify::http(&call, &rest, req).await {
            Err(r) => call.reject(r.reason, &r.shape),
            Ok(h) => {
                if let Err(reason) = call.identify(&h.head.headers).await {
                    return call.reject(reason, &Shape::Http);
                }
                http_call(&call, h).await
            }
        }
    }
}

/// An MCP request, classified and identified.
async fn mcp_request(call: &Call<'_>, request: McpRequest) -> Response<BoxBody> {
    match request {
        McpRequest::Stream { head } => stream(call, head).await,
        McpRequest::Messages {
            head,
            bytes,
            members,
            batch,
            revision,
        } => {
            let out = Outbound {
                head,
                rest: String::new(),
                body: OutBody::Held(bytes),
            };
            if batch {
                batch_of(call, out, members, revision).await
            } else {
                match members.into_iter().next() {
                    Some(Ok(msg)) => single(call, out, msg, revision).await,
                    _ => call.reject(
                        Reason::InvalidRequest("no message".into()),
                        &Shape::Post { id: Value::Null },
                    ),
                }
            }
        }
    }
}

/// One unit through decide → (approve) → forward, recording on every path.
pub(super) async fn one(
    call: &Call<'_>,
    mut unit: Unit,
    out: Outbound,
    plan: Plan,
) -> Response<BoxBody> {
    match decide::request(call.gw, &mut unit) {
        Verdict::Forward => {
            forward::send(call, out, vec![unit.record], Reason::Allowed, plan).await
        }
        Verdict::Block(reason) => {
            let resp = render::answer(&reason, &unit.shape);
            unit.record.conclude(Disposition::Blocked, &reason, None);
            resp
        }
        // Boxed: the approval path's state is far larger than the allow path's, and a
        // request future is as large as its largest path for its whole life.
        Verdict::Approve(params) => Box::pin(approve::run(call, unit, params, out)).await,
    }
}

/// The trace attribute for an MCP session id: 32 hex digits of its SHA-256.
fn session_digest(id: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(id)[..16])
}

/// A JSON-RPC id as a trace attribute: a number or string as written, cut at 64
/// characters (the agent picks it).
fn request_id_attribute(id: &Value) -> String {
    let text = match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(64).collect()
}

fn session(head: &http::request::Parts) -> Option<String> {
    head.headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn accepts_sse(head: &http::request::Parts) -> bool {
    head.headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The unit of a GET (the server's event stream) or DELETE (end of a session): no
/// method, nothing to answer by id.
pub(super) fn stream_unit(call: &Call<'_>, head: &http::request::Parts) -> Unit {
    let mut input = call.base_input(head);
    input.mcp = Some(input::Mcp {
        method: None,
        kind: "request",
        protocol_version: mcp::revision_header(&head.headers).ok().flatten(),
        session: session(head),
    });
    Unit {
        record: call.record(),
        input,
        tool: None,
        shape: Shape::Unanswerable,
        approvable: None,
        list_id: None,
    }
}

/// GET and DELETE: put to policy with no method, then passed through.
async fn stream(call: &Call<'_>, head: http::request::Parts) -> Response<BoxBody> {
    let unit = stream_unit(call, &head);
    let out = Outbound {
        head,
        rest: String::new(),
        body: OutBody::None,
    };
    one(
        call,
        unit,
        out,
        Plan {
            jsonrpc: true,
            ..Plan::default()
        },
    )
    .await
}

/// Classifies one message into a unit, or the answer for a malformed `tools/call`.
pub(super) fn message_unit(
    call: &Call<'_>,
    base: &PolicyInput,
    head: &http::request::Parts,
    msg: &Message,
    revision: Option<&str>,
    single: bool,
) -> Result<Unit, (Reason, Shape)> {
    let mut record = call.record();
    record.get_mut().mcp_method = msg.method.clone();
    let stateless = mcp::is_stateless(revision);
    let mut input = base.clone();
    input.mcp = Some(input::Mcp {
        method: msg.method.clone(),
        kind: msg.kind.as_str(),
        protocol_version: revision.map(str::to_string),
        session: session(head),
    });
    let root = tracing::Span::current();
    if let Some(m) = &msg.method {
        root.record("mcp.method.name", m.as_str());
    }
    if let Some(r) = revision {
        root.record("mcp.protocol.version", r);
    }
    if let Some(s) = head.headers.get("mcp-session-id") {
        // A digest, not the id: whoever holds a session id can speak in that session.
        root.record("mcp.session.id", session_digest(s.as_bytes()).as_str());
    }
    // A batch has one id per member: the span names none of them.
    if let (true, Some(id)) = (single, &msg.id) {
        root.record("jsonrpc.request.id", request_id_attribute(id).as_str());
    }
    let tool = match msg.tool_call() {
        Ok(t) => t,
        Err(InvalidMessage { id, message }) => {
            let reason = Reason::InvalidParams(message);
            let shape = Shape::JsonRpc { id };
            record.conclude(Disposition::Rejected, &reason, None);
            return Err((reason, shape));
        }
    };
    if let Some(t) = &tool {
        root.record("gen_ai.tool.name", t.name.as_str());
        let r = record.get_mut();
        r.tool = Some(t.name.clone());
        r.args_fingerprint = Some(crate::fingerprint::of_json(&t.arguments));
        input.tool = Some(input::Tool {
            name: t.name.clone(),
            upstream_name: None,
            arguments: Some(t.arguments.clone()),
            annotations: None,
        });
    }
    let id = msg.id.clone().unwrap_or(Value::Null);
    let shape = match (&msg.kind, &tool) {
        (MessageKind::Request, Some(t)) => Shape::ToolResult {
            id: id.clone(),
            tool: t.name.clone(),
            stateless,
        },
        (MessageKind::Request, None) => Shape::JsonRpc { id: id.clone() },
        _ => Shape::Unanswerable,
    };
    // A person's approval holds or parks one call: never a batch member.
    let approvable = (single && tool.is_some()).then(|| Caller::Mcp {
        id,
        progress_token: msg.progress_token().cloned(),
        accepts_sse: accepts_sse(head),
        stateless,
        can_elicit: stateless && msg.can_elicit_form(),
        request_state: msg.request_state().map(str::to_string),
    });
    Ok(Unit {
        record,
        input,
        tool,
        shape,
        approvable,
        list_id: msg
            .is_tool_list()
            .then(|| msg.id.as_ref().map(Value::to_string))
            .flatten(),
    })
}

fn list_plan(unit: &Unit, batch: bool) -> Plan {
    Plan {
        jsonrpc: true,
        lists: unit.list_id.iter().cloned().collect(),
        list_input: unit.list_id.as_ref().map(|_| unit.input.clone()),
        answers: Vec::new(),
        batch,
        approval_token: None,
    }
}

async fn single(
    call: &Call<'_>,
    out: Outbound,
    msg: Message,
    revision: Option<String>,
) -> Response<BoxBody> {
    let base = call.base_input(&out.head);
    match message_unit(call, &base, &out.head, &msg, revision.as_deref(), true) {
        Err((reason, shape)) => render::answer(&reason, &shape),
        Ok(unit) => {
            let plan = list_plan(&unit, false);
            one(call, unit, out, plan).await
        }
    }
}

/// A JSON-RPC batch (revision 2025-03-26): each member is decided on its own; the
/// allowed ones go upstream together (re-serialised from what policy read) and the
/// gateway's answers for the others are merged into the upstream's.
async fn batch_of(
    call: &Call<'_>,
    mut out: Outbound,
    members: Vec<Result<Message, InvalidMessage>>,
    revision: Option<String>,
) -> Response<BoxBody> {
    let base = call.base_input(&out.head);
    let mut forwarded = Vec::new();
    let mut records = Vec::new();
    let mut answers = Vec::new();
    let mut plan = Plan {
        jsonrpc: true,
        batch: true,
        ..Plan::default()
    };
    for member in members {
        let msg = match member {
            Err(inv) => {
                let reason = Reason::InvalidRequest(inv.message);
                call.record().conclude(Disposition::Rejected, &reason, None);
                answers.push(results::error(inv.id, &reason));
                continue;
            }
            Ok(msg) => msg,
        };
        let mut unit = match message_unit(call, &base, &out.head, &msg, revision.as_deref(), false)
        {
            Ok(u) => u,
            Err((reason, shape)) => {
                answers.push(render::value(&reason, &shape).1);
                continue;
            }
        };
        let reason = match decide::request(call.gw, &mut unit) {
            Verdict::Forward => {
                if let Some(id) = unit.list_id.take() {
                    plan.lists.insert(id);
                    plan.list_input.get_or_insert_with(|| unit.input.clone());
                }
                forwarded.push(msg.value);
                records.push(unit.record);
                continue;
            }
            Verdict::Block(reason) => reason,
            // Approvals hold or park one call; a batch member cannot be.
            Verdict::Approve(_) => Reason::ApprovalInBatch,
        };
        if !matches!(unit.shape, Shape::Unanswerable) {
            answers.push(render::value(&reason, &unit.shape).1);
        }
        unit.record.conclude(Disposition::Blocked, &reason, None);
    }
    if forwarded.is_empty() {
        return if answers.is_empty() {
            render::accepted()
        } else {
            render::json(http::StatusCode::OK, &Value::Array(answers))
        };
    }
    out.body = OutBody::Held(bytes::Bytes::from(
        serde_json::to_vec(&Value::Array(forwarded)).unwrap_or_default(),
    ));
    plan.answers = answers;
    forward::send(call, out, records, Reason::Allowed, plan).await
}

/// A plain HTTP tool request: the route names the tool; the unrouted rest still goes to
/// policy (which, with no tool, normally denies it).
async fn http_call(call: &Call<'_>, h: HttpRequest<'_>) -> Response<BoxBody> {
    let mut input = call.base_input(&h.head);
    if let Some(r) = input.request.as_mut() {
        r.body = Some(BodyFacts { kind: h.body_kind });
    }
    let mut record = call.record();
    let tool = h.route.map(|r| mcp::ToolCall {
        name: r.tool.clone(),
        arguments: h.arguments.clone(),
    });
    if let (Some(route), Some(t)) = (h.route, &tool) {
        let rec = record.get_mut();
        rec.tool = Some(t.name.clone());
        rec.args_fingerprint = Some(crate::fingerprint::of_json(&t.arguments));
        input.tool = Some(input::Tool {
            name: t.name.clone(),
            upstream_name: None,
            arguments: Some(t.arguments.clone()),
            annotations: None,
        });
        input.http = Some(input::Http {
            route: route.template.to_string(),
        });
    }
    let unit = Unit {
        record,
        input,
        approvable: tool.as_ref().map(|_| Caller::Http),
        tool,
        shape: Shape::Http,
        list_id: None,
    };
    let out = Outbound {
        head: h.head,
        rest: h.rest,
        body: h.body,
    };
    one(call, unit, out, Plan::default()).await
}
