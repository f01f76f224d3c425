//! The merged `tools/list` (and `prompts/list`, `resources/list`,
//! `resources/templates/list`) of a virtual server: every server asked
//! at once (all pages followed), each entry renamed by its server's naming rule, a name
//! two servers claim left out of the list (and refused when called), a server that
//! cannot answer named as unavailable while the others' entries are still listed.

use std::collections::HashMap;

use futures_util::future::join_all;
use http::HeaderMap;
use serde_json::{Value, json};

use super::exchange::{self, Envelope};
use super::naming::{self, Resolved};
use super::sessions::Session;
use super::{VirtualServer, envelope};
use crate::outcome::Reason;
use crate::proxy::upstream::UpstreamError;

pub use crate::proxy::mcp::methods::Kind;

/// Pages followed per server; a server paging further is listed up to here.
pub const MAX_PAGES: usize = 32;
/// Tools read per server.
pub const MAX_TOOLS: usize = 4096;

/// How to ask each server: in the agent's session, or (2026-07-28) with the agent's
/// revision and MCP headers.
pub struct Ask<'a> {
    pub session: Option<&'a Session>,
    pub revision: Option<String>,
    /// The agent's `params` (its `_meta`), without the cursor.
    pub params: Value,
    pub extra: HeaderMap,
    pub limit: usize,
}

/// The merged catalogue.
#[derive(Default)]
pub struct Merged {
    /// Each tool as the agent sees it, with its server's index and own name.
    pub tools: Vec<(usize, String, Value)>,
    /// Servers that could not list their tools, and why.
    pub unavailable: Vec<(usize, Reason)>,
    /// Shown names claimed twice (neither tool is listed).
    pub collisions: Vec<String>,
}

impl Merged {
    /// The `_meta` that says what is missing from the list, if anything is.
    pub fn meta(&self, vs: &VirtualServer) -> Option<Value> {
        if self.unavailable.is_empty() && self.collisions.is_empty() {
            return None;
        }
        let unavailable: Vec<Value> = self
            .unavailable
            .iter()
            .map(|(i, r)| {
                json!({"server": vs.members[*i].name(), "reason": r.code(), "message": r.sentence()})
            })
            .collect();
        Some(json!({
            "ciba-gate/unavailable": unavailable,
            "ciba-gate/collisions": self.collisions,
        }))
    }
}

/// Asks every server for its tools and merges them.
pub async fn tools(vs: &VirtualServer, ask: &Ask<'_>) -> Merged {
    list(vs, ask, Kind::Tools).await
}

/// Asks every server for its `kind` entries and merges them.
pub async fn list(vs: &VirtualServer, ask: &Ask<'_>, kind: Kind) -> Merged {
    let lists = join_all((0..vs.members.len()).map(|i| list_server(vs, i, ask, kind))).await;
    let namings = vs.namings();
    let mut merged = Merged::default();
    let mut entries: Vec<(usize, String, String, Value)> = Vec::new();
    for (i, list) in lists.into_iter().enumerate() {
        let tools = match list {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(server = %vs.members[i].name(), error = %e, "a server behind the virtual server could not list its tools");
                merged.unavailable.push((i, e.reason()));
                continue;
            }
        };
        for tool in tools {
            let Some(own) = tool.get(kind.name_key()).and_then(Value::as_str) else {
                continue;
            };
            if !kind.renamed() {
                entries.push((i, own.to_string(), own.to_string(), tool));
                continue;
            }
            let shown = vs.members[i].naming.shown(own);
            // Listed only if calling the shown name reaches exactly this tool.
            let back = match naming::resolve(&namings, &shown) {
                Resolved::Server(j, o) => j == i && o == own,
                Resolved::Unprefixed(candidates) => candidates.contains(&i),
                Resolved::Nowhere => false,
            };
            if !back {
                merged.collisions.push(shown);
                continue;
            }
            entries.push((i, own.to_string(), shown, tool));
        }
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, _, shown, _) in &entries {
        *count.entry(shown.as_str()).or_default() += 1;
    }
    let twice: Vec<String> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| s.to_string())
        .collect();
    let mut owners = HashMap::new();
    for (i, own, shown, mut tool) in entries {
        if twice.contains(&shown) {
            continue;
        }
        tool[kind.name_key()] = Value::String(shown.clone());
        owners.insert(shown, i);
        merged.tools.push((i, own, tool));
    }
    merged.collisions.extend(twice);
    merged.collisions.sort();
    merged.collisions.dedup();
    vs.remember_owners(kind, owners);
    merged
}

/// One server's whole list, page by page.
async fn list_server(
    vs: &VirtualServer,
    i: usize,
    ask: &Ask<'_>,
    kind: Kind,
) -> Result<Vec<Value>, UpstreamError> {
    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for page in 0..MAX_PAGES {
        let mut params = ask.params.clone();
        if let (Some(c), Some(obj)) = (&cursor, params.as_object_mut()) {
            obj.insert("cursor".into(), c.clone());
        }
        let request = json!({
            "jsonrpc": "2.0",
            "id": format!("ciba-gate-list-{page}"),
            "method": kind.method(),
            "params": params,
        });
        let answer = ask_server(vs, i, ask, &request).await?;
        let Some(result) = answer.get("result") else {
            // A server without prompts (or resources) has none to list.
            if kind != Kind::Tools
                && answer.pointer("/error/code")
                    == Some(&json!(crate::outcome::jsonrpc::METHOD_NOT_FOUND))
            {
                return Ok(tools);
            }
            return Err(UpstreamError::Protocol(format!(
                "the server answered {} with an error: {}",
                kind.method(),
                answer.get("error").cloned().unwrap_or(Value::Null)
            )));
        };
        let page_tools = result
            .get(kind.key())
            .and_then(Value::as_array)
            .ok_or_else(|| {
                UpstreamError::Protocol(format!(
                    "its {} result has no {}",
                    kind.method(),
                    kind.key()
                ))
            })?;
        tools.extend(
            page_tools
                .iter()
                .take(MAX_TOOLS.saturating_sub(tools.len()))
                .cloned(),
        );
        cursor = result.get("nextCursor").filter(|c| c.is_string()).cloned();
        if cursor.is_none() || tools.len() >= MAX_TOOLS {
            break;
        }
    }
    Ok(tools)
}

/// One request of the gateway's own to server `i`, in the agent's session when it has
/// one (re-opened once if the server lost it).
async fn ask_server(
    vs: &VirtualServer,
    i: usize,
    ask: &Ask<'_>,
    request: &Value,
) -> Result<Value, UpstreamError> {
    let up = match &vs.members[i].link {
        super::Link::Http(up) => up,
        super::Link::Stdio(s) => return s.ask(request.clone(), "").await,
    };
    let Some(session) = ask.session else {
        let e = Envelope {
            revision: ask.revision.clone(),
            session: None,
            extra: ask.extra.clone(),
        };
        return exchange::ask(up, request, &e, ask.limit, up.response_timeout())
            .await
            .map(|a| a.message);
    };
    let mut reopened = false;
    loop {
        let s = vs.server_session(session, i, ask.limit).await?;
        match exchange::ask(up, request, &envelope(&s), ask.limit, up.response_timeout()).await {
            Err(UpstreamError::SessionLost) if !reopened => {
                vs.forget(session, i, &s).await;
                reopened = true;
            }
            other => return other.map(|a| a.message),
        }
    }
}
