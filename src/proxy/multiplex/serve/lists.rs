//! The merged lists a virtual server answers itself: `tools/list` (each tool put to
//! policy), `prompts/list`, `resources/list` and `resources/templates/list`, and how
//! the gateway asks its servers for them.

use std::sync::Mutex;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::super::VirtualServer;
use super::super::catalogue::{self, Ask, Kind};
use super::super::sessions::Session;
use super::{Incoming, reply};
use crate::outcome::Disposition;
use crate::outcome::Reason;
use crate::proxy::BoxBody;
use crate::proxy::call::{Call, Unit};
use crate::proxy::decide;
use crate::proxy::mcp;
use crate::proxy::render::{self, Shape};

/// The agent's MCP headers a 2026-07-28 request mirrors, for the gateway's own
/// requests to the servers.
fn mirrored(head: &http::request::Parts) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(v) = head.headers.get("mcp-method") {
        h.insert("mcp-method", v.clone());
    }
    h
}

pub(super) fn ask<'a>(
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
        p.remove("notifications");
    }
    Ask {
        session,
        revision,
        params,
        extra: mirrored(head),
        limit: call.gw.limits.max_inspected_response_bytes,
    }
}

/// Where a merged list starts: the agent's request id, whether its revision is
/// 2026-07-28, and how the servers are asked for their lists.
fn asking<'a>(call: &Call<'_>, incoming: &'a Incoming) -> (Value, bool, Ask<'a>) {
    let msg = &incoming.msg;
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let how = ask(
        call,
        &incoming.head,
        params,
        incoming.revision.clone(),
        incoming.session.as_deref(),
    );
    let stateless = mcp::is_stateless(incoming.revision.as_deref());
    (msg.id.clone().unwrap_or(Value::Null), stateless, how)
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
pub(super) async fn list(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    incoming: &Incoming,
) -> Response<BoxBody> {
    let (id, stateless, how) = asking(call, incoming);
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
pub(super) async fn list_plain(
    call: &Call<'_>,
    vs: &VirtualServer,
    unit: Unit,
    incoming: &Incoming,
    kind: Kind,
) -> Response<BoxBody> {
    let (id, stateless, how) = asking(call, incoming);
    let merged = catalogue::list(vs, &how, kind).await;
    let entries: Vec<Value> = merged.tools.iter().map(|(_, _, p)| p.clone()).collect();
    let result = list_result(vs, kind, entries, &merged, stateless);
    unit.record
        .conclude(Disposition::Answered, &Reason::Allowed, None);
    render::json(StatusCode::OK, &reply(id, result, stateless))
}
