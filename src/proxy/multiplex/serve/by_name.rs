//! Requests that name what they use (the method table's `names`: `tools/call`,
//! `prompts/get`, `resources/read`, `resources/(un)subscribe`, `completion/complete`):
//! the server that owns the name is found, and the request goes through the shared
//! phases to it, under its own name.

use http::{HeaderValue, Response};
use serde_json::{Value, json};

use super::super::catalogue::{self, Kind};
use super::super::{Routed, VirtualServer};
use super::Incoming;
use super::lists::ask;
use crate::outcome::{Disposition, Reason};
use crate::proxy::call::Call;
use crate::proxy::classify::OutBody;
use crate::proxy::forward::{Outbound, Plan};
use crate::proxy::mcp;
use crate::proxy::mcp::methods::Names;
use crate::proxy::render::{self, Shape};
use crate::proxy::{BoxBody, flow};

/// Where a request names the entry it uses, and the list that name is from.
#[derive(Clone, Copy)]
pub(super) struct Named {
    kind: Kind,
    /// JSON pointer to the name (or URI) in the request.
    at: &'static str,
}

impl Named {
    /// `stateless`: 2026-07-28, where no event stream could carry a resource's updates.
    pub(super) fn of(method: &str, params: Option<&Value>, stateless: bool) -> Option<Named> {
        let spec = mcp::methods::lookup(method);
        if spec.needs_stream() && stateless {
            return None;
        }
        let (kind, at) = match spec.names? {
            Names::Entry(kind, at) => (kind, at),
            Names::Completed => match params
                .and_then(|p| p.pointer("/ref/type"))
                .and_then(Value::as_str)
            {
                Some("ref/resource") => (Kind::Templates, "/params/ref/uri"),
                _ => (Kind::Prompts, "/params/ref/name"),
            },
        };
        Some(Named { kind, at })
    }
}

/// The server that owns `shown`, and its own name for it: by the naming rules or the
/// last merged list, else by a fresh one (and a resource's URI by the templates too).
pub(super) async fn owner_of(
    call: &Call<'_>,
    vs: &VirtualServer,
    incoming: &Incoming,
    kind: Kind,
    shown: &str,
) -> Option<(usize, String)> {
    let Incoming {
        head,
        msg,
        revision,
        session,
        ..
    } = incoming;
    if let Some(owner) = vs.resolve_known(kind, shown) {
        return Some(owner);
    }
    if shown.is_empty() {
        return None;
    }
    let params = msg.value.get("params").cloned().unwrap_or(json!({}));
    let how = ask(call, head, params, revision.clone(), session.as_deref());
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
pub(super) async fn by_name(
    call: &mut Call<'_>,
    vs: &VirtualServer,
    incoming: Incoming,
    named: Named,
) -> Response<BoxBody> {
    let kind = named.kind;
    let shown = incoming
        .msg
        .value
        .pointer(named.at)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let owner = owner_of(call, vs, &incoming, kind, &shown).await;
    let Incoming {
        mut head,
        msg,
        revision,
        session,
        single,
    } = incoming;
    if let Some((server, own)) = &owner {
        call.routed = Some(Routed {
            server: *server,
            own_name: own.clone(),
            session,
        });
    }
    let base = call.base_input(&head);
    let mut unit = match flow::message_unit(call, &base, &head, &msg, revision.as_deref(), single) {
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
