//! Answers the gateway gives by itself, in one place: always JSON, always a clear
//! reason code; JSON-RPC callers always get JSON-RPC.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::BoxBody;
use super::mcp::{codes, error_response};

pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
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
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A plain-HTTP error: `{"error": sentence, "reason": code}`.
pub fn http_error(status: StatusCode, reason: &str, message: &str) -> Response<BoxBody> {
    json(status, &json!({"error": message, "reason": reason}))
}

/// A JSON-RPC error that answers a whole POST (no single message to answer).
pub fn jsonrpc_error(
    status: StatusCode,
    id: Value,
    code: i64,
    reason: &str,
    message: &str,
) -> Response<BoxBody> {
    json(status, &error_response(id, code, message, reason))
}

/// Bad input before any message could be read: JSON-RPC shape on MCP mounts.
pub fn bad_input(
    is_mcp: bool,
    status: StatusCode,
    reason: &str,
    message: &str,
) -> Response<BoxBody> {
    if is_mcp {
        jsonrpc_error(status, Value::Null, codes::INVALID_REQUEST, reason, message)
    } else {
        http_error(status, reason, message)
    }
}

pub fn accepted() -> Response<BoxBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}
