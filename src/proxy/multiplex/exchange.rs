//! The gateway speaking MCP to one server behind a virtual server: a request of its
//! own (`initialize`, `tools/list`) whose answer it reads from a JSON body or from the
//! SSE stream the server opens, and a notification. Every failure is an
//! `UpstreamError`, so it maps to the same typed answers as a direct upstream's.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::BodyExt;
use serde_json::Value;

use super::super::render;
use super::super::upstream::{Upstream, UpstreamError};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const REVISION_HEADER: &str = "mcp-protocol-version";

/// What a message of the gateway's own carries besides its body.
#[derive(Default, Clone)]
pub struct Envelope {
    /// `MCP-Protocol-Version` (none on `initialize`).
    pub revision: Option<String>,
    /// The server's session, once opened.
    pub session: Option<HeaderValue>,
    /// Further MCP headers (a 2026-07-28 request mirrors its method in `Mcp-Method`).
    pub extra: HeaderMap,
}

impl Envelope {
    fn headers(&self) -> HeaderMap {
        let mut h = self.extra.clone();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(r) = self
            .revision
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            h.insert(REVISION_HEADER, r);
        }
        if let Some(s) = &self.session {
            h.insert(SESSION_HEADER, s.clone());
        }
        h
    }
}

/// The answer to a request of the gateway's own.
pub struct Answer {
    pub message: Value,
    pub headers: HeaderMap,
}

fn protocol(why: impl Into<String>) -> UpstreamError {
    UpstreamError::Protocol(why.into())
}

/// POSTs one message of the gateway's own.
async fn post(
    upstream: &Upstream,
    message: &Value,
    envelope: &Envelope,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    let body = serde_json::to_vec(message).map_err(|e| protocol(e.to_string()))?;
    upstream
        .forward(
            Method::POST,
            "",
            None,
            envelope.headers(),
            render::full(body),
            None,
        )
        .await
}

/// Opens a `subscriptions/listen` stream of the gateway's own (2026-07-28): a POST
/// whose answer, when the server has one, is the event stream.
pub async fn listen(
    upstream: &Upstream,
    request: &Value,
    envelope: &Envelope,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    post(upstream, request, envelope).await
}

/// Sends `request` (a JSON-RPC request with an id) and reads its response, at most
/// `limit` bytes and `timeout` long, whether the server answers with JSON or SSE.
pub async fn ask(
    upstream: &Upstream,
    request: &Value,
    envelope: &Envelope,
    limit: usize,
    timeout: Duration,
) -> Result<Answer, UpstreamError> {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let exchange = async {
        let resp = post(upstream, request, envelope).await?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        if status == http::StatusCode::NOT_FOUND && envelope.session.is_some() {
            return Err(UpstreamError::SessionLost);
        }
        if !status.is_success() {
            return Err(protocol(format!(
                "the server answered HTTP {}",
                status.as_u16()
            )));
        }
        let is_sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        let message = if is_sse {
            answer_from_events(body, &id, limit).await?
        } else {
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| protocol(format!("its answer could not be read: {e}")))?
                .to_bytes();
            serde_json::from_slice(&bytes).map_err(|_| protocol("its answer is not valid JSON"))?
        };
        Ok(Answer {
            message,
            headers: parts.headers,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

/// Sends a notification of the gateway's own; the server answers 202 with no body.
pub async fn tell(
    upstream: &Upstream,
    notification: &Value,
    envelope: &Envelope,
) -> Result<(), UpstreamError> {
    let resp = post(upstream, notification, envelope).await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(protocol(format!(
            "the server answered HTTP {} to a notification",
            resp.status().as_u16()
        )))
    }
}

/// Opens the server's event stream in its session (HTTP GET); a server that keeps
/// none answers 405.
pub async fn events(
    upstream: &Upstream,
    envelope: &Envelope,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    let mut headers = envelope.headers();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    upstream
        .forward(Method::GET, "", None, headers, render::empty(), None)
        .await
}

/// Closes a server's session (HTTP DELETE); a server that keeps none answers 405.
pub async fn close(upstream: &Upstream, envelope: &Envelope) -> Result<(), UpstreamError> {
    upstream
        .forward(
            Method::DELETE,
            "",
            None,
            envelope.headers(),
            render::empty(),
            None,
        )
        .await
        .map(|_| ())
}

/// Reads SSE events until the response with `id` (requests and notifications the
/// server sends first are skipped: the gateway's own requests declare no capabilities).
async fn answer_from_events(
    mut body: hyper::body::Incoming,
    id: &Value,
    limit: usize,
) -> Result<Value, UpstreamError> {
    let mut buf = BytesMut::new();
    let mut seen = 0;
    loop {
        while let Some(end) = super::super::sse::event_end(&buf, 0) {
            let event: Bytes = buf.split_to(end).freeze();
            if let Some(message) = super::super::sse::event_message(&event)
                && message.get("id") == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                return Ok(message);
            }
        }
        let Some(frame) = body.frame().await else {
            return Err(protocol("its event stream ended without an answer"));
        };
        let frame = frame.map_err(|e| protocol(format!("its event stream failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return Err(protocol(format!(
                    "its answer is larger than the gateway reads ({limit} bytes)"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
}
