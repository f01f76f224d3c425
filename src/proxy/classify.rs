//! Phase 1, classify: read the agent's request into the calls it carries, or refuse it.
//! MCP: a POST body (read within limits, parsed strictly: one reading for every parser)
//! holding one message or a batch; a GET (the server's event stream) or DELETE (end of
//! session), which carry no body. HTTP tool APIs: the route that names the tool, and its
//! arguments from the path, the query and a JSON body.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, header};
use hyper::body::{Body as _, Incoming};
use serde_json::{Map, Value};

use super::call::Call;
use super::mcp::{self, Body, InvalidMessage, Message};
use super::render::Shape;
use super::routes::{self, Route};
use super::{BoxBody, framing};
use crate::outcome::Reason;

/// A request refused before any call in it was decided.
#[derive(Debug)]
pub struct Rejected {
    pub reason: Reason,
    pub shape: Shape,
}

impl Rejected {
    fn post(reason: Reason) -> Self {
        Rejected {
            reason,
            shape: Shape::Post { id: Value::Null },
        }
    }
    fn http(reason: Reason) -> Self {
        Rejected {
            reason,
            shape: Shape::Http,
        }
    }
}

/// What an MCP request carries.
pub enum McpRequest {
    /// A POST: one message or a batch, and the exact bytes they were read from.
    Messages {
        head: Parts,
        bytes: Bytes,
        members: Vec<Result<Message, InvalidMessage>>,
        batch: bool,
        /// `MCP-Protocol-Version`, or the revision the message declares.
        revision: Option<String>,
    },
    /// GET or DELETE, with no body.
    Stream { head: Parts },
}

impl McpRequest {
    pub fn headers(&self) -> &http::HeaderMap {
        match self {
            McpRequest::Messages { head, .. } | McpRequest::Stream { head } => &head.headers,
        }
    }

    /// How to refuse the whole request: a JSON-RPC error with the message's id when
    /// it is one message, else with a null id.
    pub fn refusal_shape(&self) -> Shape {
        let id = match self {
            McpRequest::Messages {
                members,
                batch: false,
                ..
            } => members
                .first()
                .and_then(|m| m.as_ref().ok())
                .and_then(|m| m.id.clone()),
            _ => None,
        };
        Shape::Post {
            id: id.unwrap_or(Value::Null),
        }
    }
}

/// A body as it will go upstream.
pub enum OutBody {
    None,
    /// Read in full; policy saw exactly these bytes.
    Held(Bytes),
    /// Streamed unread (an opaque HTTP-route body), framed by the gateway.
    Stream(BoxBody),
}

/// A routed (or unrouted) HTTP tool request.
pub struct HttpRequest<'m> {
    pub head: Parts,
    /// The path below the mount.
    pub rest: String,
    pub route: Option<&'m Route>,
    /// Path parameters, query and JSON body fields, merged (an object).
    pub arguments: Value,
    pub body: OutBody,
    /// `none`, `json` or `opaque`.
    pub body_kind: &'static str,
}

fn accepts_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn is_json_type(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// Classifies a request on an MCP mount (`rest`: the path below the mount).
pub async fn mcp(
    call: &Call<'_>,
    rest: &str,
    req: Request<Incoming>,
) -> Result<McpRequest, Rejected> {
    // The MCP endpoint is one path; nothing lives below it.
    if !rest.is_empty() {
        return Err(Rejected::post(Reason::NoSuchRoute));
    }
    let (head, body) = req.into_parts();
    match head.method {
        Method::POST => {}
        Method::GET | Method::DELETE => {
            // GET and DELETE carry no JSON-RPC message: a body behind them is bytes
            // policy never reads, and a tool server that does not read it either would
            // take them for the next request on the connection.
            framing::refuse_declared_body(&body, &head.method).map_err(Rejected::post)?;
            return Ok(McpRequest::Stream { head });
        }
        _ => return Err(Rejected::post(Reason::MethodNotAllowed)),
    }
    if !accepts_json(&head.headers) {
        return Err(Rejected::post(Reason::UnsupportedMediaType));
    }
    let header_revision = mcp::revision_header(&head.headers).map_err(Rejected::post)?;
    framing::check_inspected_encoding(&head.headers).map_err(Rejected::post)?;
    let limits = &call.gw.limits;
    let bytes = framing::read_body(
        body,
        &head.headers,
        limits.max_body_bytes,
        limits.body_read_timeout,
    )
    .await
    .map_err(Rejected::post)?;
    let parsed = crate::traced_span!(
        "classify",
        mcp.protocol.version = header_revision.as_deref()
    )
    .in_scope(|| mcp::parse_body(&bytes, limits.max_json_depth, header_revision.as_deref()))
    .map_err(|e| Rejected {
        reason: e.reason,
        shape: Shape::Post { id: e.id },
    })?;
    match parsed {
        Body::Single(msg) => {
            let revision = header_revision.or_else(|| msg.declared_revision().map(str::to_string));
            mcp::check_mirror_headers(&head.headers, &msg, revision.as_deref()).map_err(
                |reason| Rejected {
                    reason,
                    shape: Shape::Post {
                        id: msg.id.clone().unwrap_or(Value::Null),
                    },
                },
            )?;
            Ok(McpRequest::Messages {
                head,
                bytes,
                members: vec![Ok(msg)],
                batch: false,
                revision,
            })
        }
        Body::Batch(members) => Ok(McpRequest::Messages {
            head,
            bytes,
            members,
            batch: true,
            revision: header_revision,
        }),
    }
}

/// Merges `more` into `args`; the same key from two places with different values is
/// ambiguous (policy and tool server could read different ones), so it is refused.
fn merge(
    args: &mut Map<String, Value>,
    more: Map<String, Value>,
    from: &str,
) -> Result<(), Reason> {
    for (k, v) in more {
        match args.get(&k) {
            Some(existing) if *existing != v => {
                return Err(Reason::AmbiguousArguments(format!(
                    "argument {k:?} is given twice with different values (in the {from} and elsewhere)"
                )));
            }
            _ => {
                args.insert(k, v);
            }
        }
    }
    Ok(())
}

/// Classifies a request on an HTTP tool mount.
pub async fn http<'m>(
    call: &Call<'m>,
    rest: &str,
    req: Request<Incoming>,
) -> Result<HttpRequest<'m>, Rejected> {
    let (head, body) = req.into_parts();
    let rest = if rest.is_empty() { "/" } else { rest }.to_string();
    let limits = &call.gw.limits;
    // A method without a body must not carry one (a tool server that does not read it
    // would take it for its next request).
    framing::refuse_declared_body(&body, &head.method).map_err(Rejected::http)?;
    let route = crate::traced_span!("classify")
        .in_scope(|| routes::find(&call.mount.routes, &head.method, &rest));
    let mut arguments = Map::new();
    if let Some((r, params)) = &route {
        tracing::Span::current().record("gen_ai.tool.name", r.tool.as_str());
        arguments = params.clone();
    }
    let query =
        routes::query_arguments(head.uri.query()).map_err(|_| Rejected::http(Reason::BadQuery))?;
    merge(&mut arguments, query, "query").map_err(Rejected::http)?;
    let route = route.map(|(r, _)| r);

    // A JSON body is read (up to the limit) so policy can see it. Any other body is
    // streamed on unread only where the route says it may be (policy then sees its
    // kind, and an approval binds its digest); elsewhere it is refused.
    let (body, body_kind) = if body.is_end_stream() {
        (OutBody::None, "none")
    } else if is_json_type(&head.headers) {
        framing::check_inspected_encoding(&head.headers).map_err(Rejected::http)?;
        let bytes = framing::read_body(
            body,
            &head.headers,
            limits.max_body_bytes,
            limits.body_read_timeout,
        )
        .await
        .map_err(Rejected::http)?;
        if !bytes.is_empty() {
            let value = crate::json_strict::parse(
                &bytes,
                crate::json_strict::Limits {
                    max_depth: limits.max_json_depth,
                    ..Default::default()
                },
            )
            .map_err(|e| Rejected::http(mcp::strict_reason(&e, limits.max_json_depth)))?;
            match value {
                Value::Object(obj) => merge(&mut arguments, obj, "body").map_err(Rejected::http)?,
                other => {
                    arguments.insert("body".into(), other);
                }
            }
        }
        (OutBody::Held(bytes), "json")
    } else if route.is_some_and(|r| r.opaque_body) {
        let stream = framing::stream_opaque(body, &head.headers, limits.max_body_bytes)
            .map_err(Rejected::http)?;
        (OutBody::Stream(stream), "opaque")
    } else {
        return Err(Rejected::http(Reason::OpaqueBodyNotAllowed));
    };
    Ok(HttpRequest {
        head,
        rest,
        route,
        arguments: Value::Object(arguments),
        body,
        body_kind,
    })
}
