//! Every answer the gateway writes itself, in one place: a `Reason` rendered in the
//! shape the caller speaks (plain HTTP JSON, a JSON-RPC error, a tool result the model
//! reads), always JSON, always with the reason's code. JSON-RPC callers always get
//! JSON-RPC.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::BoxBody;
use super::mcp::results;
use crate::outcome::{Reason, Source};

/// The shape of the answer a caller understands.
#[derive(Debug, Clone)]
pub enum Shape {
    /// A plain HTTP tool API: `{"error": sentence, "reason": code}` with the reason's status.
    Http,
    /// A whole MCP POST refused before its messages were considered (bad input): a
    /// JSON-RPC error with the reason's HTTP status.
    Post { id: Value },
    /// One JSON-RPC request answered by the gateway: a JSON-RPC error, HTTP 200 (a
    /// tool-server failure keeps its 502 / 504).
    JsonRpc { id: Value },
    /// A notification or response (nothing to answer by id): 403 with a JSON-RPC error.
    Unanswerable,
    /// A `tools/call`: a tool result with `isError` the model reads and adapts to.
    ToolResult {
        id: Value,
        tool: String,
        stateless: bool,
    },
}

impl Shape {
    /// The shape for a path or route refusal: JSON-RPC on MCP mounts.
    pub fn for_mount(is_mcp: bool) -> Shape {
        if is_mcp {
            Shape::Post { id: Value::Null }
        } else {
            Shape::Http
        }
    }
}

/// The JSON body and status for `reason` in `shape`.
pub fn value(reason: &Reason, shape: &Shape) -> (StatusCode, Value) {
    match shape {
        Shape::Http => {
            let mut v = json!({"error": reason.sentence(), "reason": reason.code()});
            if let Some(s) = reason.retry_after() {
                v["retry_after_seconds"] = json!(s);
            }
            (reason.http_status(), v)
        }
        Shape::Post { id } => {
            let status = match reason.source() {
                Source::Agent | Source::Upstream => reason.http_status(),
                _ => StatusCode::OK,
            };
            (status, results::error(id.clone(), reason))
        }
        Shape::JsonRpc { id } => {
            let status = match reason.source() {
                Source::Upstream => reason.http_status(),
                _ => StatusCode::OK,
            };
            (status, results::error(id.clone(), reason))
        }
        Shape::Unanswerable => (StatusCode::FORBIDDEN, results::error(Value::Null, reason)),
        Shape::ToolResult {
            id,
            tool,
            stateless,
        } => match reason.source() {
            // Bad input and tool-server failures are protocol errors, not tool results.
            Source::Agent | Source::Upstream => value(reason, &Shape::JsonRpc { id: id.clone() }),
            _ => (
                StatusCode::OK,
                results::blocked_tool_result(id.clone(), tool, reason, *stateless),
            ),
        },
    }
}

/// The response for `reason` in `shape`.
pub fn answer(reason: &Reason, shape: &Shape) -> Response<BoxBody> {
    let (status, v) = value(reason, shape);
    let mut r = json(status, &v);
    if let Some(s) = reason.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if matches!(reason, Reason::MethodNotAllowed) {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    }
    r
}

pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A tool server's streamed answer, as the body the agent gets.
pub fn streamed(body: hyper::body::Incoming) -> BoxBody {
    body.map_err(|e| Box::new(e) as super::BoxError)
        .boxed_unsync()
}

/// Why a body was not read in full.
pub enum ReadFailure {
    /// It is longer than the limit.
    TooLarge,
    Failed(super::BoxError),
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_at_most(mut body: BoxBody, limit: usize) -> Result<Bytes, ReadFailure> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(ReadFailure::Failed)?.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadFailure::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub fn empty() -> BoxBody {
    full(Bytes::new())
}

pub fn json(status: StatusCode, value: &Value) -> Response<BoxBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 202 with no body: the answer to notifications and responses.
pub fn accepted() -> Response<BoxBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reason_renders_in_every_shape_with_the_same_code() {
        let r = Reason::ApprovalDenied;
        let shapes = [
            Shape::Http,
            Shape::Post { id: json!(1) },
            Shape::JsonRpc { id: json!(1) },
            Shape::Unanswerable,
            Shape::ToolResult {
                id: json!(1),
                tool: "deploy".into(),
                stateless: true,
            },
        ];
        let codes: Vec<String> = shapes
            .iter()
            .map(|s| {
                let (_, v) = value(&r, s);
                v.pointer("/reason")
                    .or(v.pointer("/error/data/reason"))
                    .or(v.pointer("/result/_meta/ciba-gate~1reason"))
                    .and_then(Value::as_str)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(codes.iter().all(|c| c == "approval_denied"), "{codes:?}");
        let (status, v) = value(&r, &shapes[4]);
        assert_eq!(status, 200);
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(v["result"]["resultType"], "complete");
    }

    #[test]
    fn bad_input_is_a_protocol_error_even_for_a_tool_call() {
        let (status, v) = value(
            &Reason::InvalidParams("x".into()),
            &Shape::ToolResult {
                id: json!(2),
                tool: "t".into(),
                stateless: false,
            },
        );
        assert_eq!(status, 200);
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["id"], 2);
    }
}
