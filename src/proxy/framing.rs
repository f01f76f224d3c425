//! Request framing: what the gateway reads of a request body and what it lets through.
//! Nothing is forwarded with bytes policy did not see: a method that carries no body
//! must not declare one, an inspected body must be plain UTF-8 JSON (no content coding,
//! no other charset), bodies are read within a size and a time limit, and a body that is
//! streamed on (an opaque HTTP-route body) goes out with the framing the gateway writes,
//! without the agent's trailers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};

use super::BoxBody;
use crate::outcome::Reason;

/// Methods whose requests carry no body. A tool server may not read one behind them
/// (Python's `http.server` does not), and would parse it as the next request.
pub fn method_has_no_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Refuses a request whose method has no body but which declares one (a
/// `Content-Length` above zero or a chunked body).
pub fn refuse_declared_body(body: &Incoming, method: &Method) -> Result<(), Reason> {
    if method_has_no_body(method) && !body.is_end_stream() {
        return Err(Reason::BodyNotAllowed(format!(
            "a {method} request must not carry a body; nothing was forwarded"
        )));
    }
    Ok(())
}

/// An inspected (JSON) body must be read by the tool server exactly as the gateway
/// reads it: no `Content-Encoding` (other than `identity`) and no charset but UTF-8.
pub fn check_inspected_encoding(headers: &HeaderMap) -> Result<(), Reason> {
    let refuse = |msg: &str| Reason::UnsupportedEncoding(msg.to_string());
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let ok = v
            .to_str()
            .map(|s| {
                s.split(',')
                    .all(|c| c.trim().eq_ignore_ascii_case("identity"))
            })
            .unwrap_or(false);
        if !ok {
            return Err(refuse(
                "an inspected body must not have a Content-Encoding; send it uncompressed",
            ));
        }
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    if let (Some(_), Some(_)) = (types.next(), types.next()) {
        return Err(refuse("Content-Type appears more than once"));
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let Ok(ct) = ct.to_str() else {
            return Err(refuse("Content-Type is not visible ASCII"));
        };
        for param in ct.split(';').skip(1) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name.trim().eq_ignore_ascii_case("charset") {
                let value = value.trim().trim_matches('"');
                if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") {
                    return Err(refuse(
                        "an inspected JSON body must be UTF-8 (charset=utf-8)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The declared `Content-Length`, when it parses.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(limit: usize) -> Reason {
    crate::telemetry::metrics::limit_exceeded("request_body");
    Reason::BodyTooLarge(limit)
}

/// Reads a request body up to `limit` bytes within `timeout`.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Reason> {
    if declared_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => {
            crate::telemetry::metrics::limit_exceeded("request_body_time");
            Err(Reason::BodyReadTimeout)
        }
        // Trailers are dropped: only the data policy reads goes on.
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(Reason::BodyReadError(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Reads an opaque body that was streaming (an approval binds its digest).
pub async fn collect_stream(
    body: BoxBody,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Reason> {
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => {
            crate::telemetry::metrics::limit_exceeded("request_body_time");
            Err(Reason::BodyReadTimeout)
        }
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(_)) => Err(too_large(limit)),
    }
}

/// An opaque body streamed on: still size-limited, data frames only (the agent's
/// trailers never reach the tool server), framed by the gateway's own client.
pub fn stream_opaque(body: Incoming, headers: &HeaderMap, limit: usize) -> Result<BoxBody, Reason> {
    if declared_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    Ok(DataOnly(Limited::new(body, limit).boxed_unsync()).boxed_unsync())
}

/// A body without its trailers.
struct DataOnly(BoxBody);

impl Body for DataOnly {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        loop {
            match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn bodiless_methods_are_the_safe_ones() {
        for m in [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS] {
            assert!(method_has_no_body(&m), "{m}");
        }
        for m in [Method::POST, Method::PUT, Method::PATCH] {
            assert!(!method_has_no_body(&m), "{m}");
        }
    }

    #[test]
    fn inspected_bodies_must_be_plain_utf8() {
        assert!(
            check_inspected_encoding(&headers(&[("content-type", "application/json")])).is_ok()
        );
        assert!(
            check_inspected_encoding(&headers(&[(
                "content-type",
                "application/json; charset=UTF-8"
            )]))
            .is_ok()
        );
        assert!(check_inspected_encoding(&headers(&[("content-encoding", "identity")])).is_ok());
        for bad in [
            vec![("content-encoding", "gzip")],
            vec![("content-encoding", "identity, br")],
            vec![("content-type", "application/json; charset=iso-8859-1")],
            vec![("content-type", "application/json;charset=\"utf-16\"")],
            vec![
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
        ] {
            assert!(check_inspected_encoding(&headers(&bad)).is_err(), "{bad:?}");
        }
    }
}
