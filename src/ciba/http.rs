//! Small HTTP helpers shared by the CIBA client: bounded bodies, OP error bodies, Retry-After.

use std::time::Duration;

use serde::Deserialize;

use super::error::{CibaError, ErrorCode, sanitize_description};

/// Largest response body accepted from the OP.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Longest `Retry-After` honoured; longer values are capped.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Used when a `Retry-After` header is present but not a number of seconds (HTTP-date).
pub(crate) const FALLBACK_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A fully read answer from the OP.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

pub(crate) fn transport_error(what: &str, e: reqwest::Error) -> CibaError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The URL is kept (it is configuration, not a secret); the body never is.
    let url = e.url().map(|u| format!(" ({u})")).unwrap_or_default();
    CibaError::Transport(format!("{what}: {kind}{url}"))
}

/// Sends the request and reads at most [`MAX_BODY`] bytes of the answer.
pub(crate) async fn send(
    what: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<Answer, CibaError> {
    let mut resp = req.send().await.map_err(|e| transport_error(what, e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| parse_retry_after(v.to_str().unwrap_or("")));
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(what, e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(CibaError::Transport(format!(
                "{what}: the answer is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// `Retry-After` as delta-seconds; an HTTP-date (or garbage) gives a short fallback.
pub(crate) fn parse_retry_after(v: &str) -> Duration {
    match v.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs).min(MAX_RETRY_AFTER),
        Err(_) => FALLBACK_RETRY_AFTER,
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<serde_json::Value>,
    error_description: Option<serde_json::Value>,
}

/// Turns a non-success answer into a [`CibaError`], mapping on the `error` string.
pub(crate) fn error_from_answer(
    endpoint: &'static str,
    answer: &Answer,
    redact: &[&str],
) -> CibaError {
    let Ok(body) = serde_json::from_slice::<ErrorBody>(&answer.body) else {
        return CibaError::NotJson {
            status: answer.status,
            endpoint,
        };
    };
    let Some(serde_json::Value::String(error)) = body.error else {
        return CibaError::NotJson {
            status: answer.status,
            endpoint,
        };
    };
    let description = match body.error_description {
        Some(serde_json::Value::String(d)) => sanitize_description(&d, redact),
        _ => None,
    };
    CibaError::Endpoint {
        endpoint,
        status: answer.status,
        code: ErrorCode::parse(&error),
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Duration::from_secs(7));
        assert_eq!(parse_retry_after("100000"), MAX_RETRY_AFTER);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            FALLBACK_RETRY_AFTER
        );
    }

    #[test]
    fn error_bodies() {
        let e = error_from_answer(
            "token",
            &answer(400, r#"{"error":"slow_down","error_description":"easy"}"#),
            &[],
        );
        assert!(matches!(
            e,
            CibaError::Endpoint { code: ErrorCode::SlowDown, status: 400, ref description, .. }
                if description.as_deref() == Some("easy")
        ));
        let e = error_from_answer("token", &answer(502, "<html>bad gateway</html>"), &[]);
        assert!(matches!(e, CibaError::NotJson { status: 502, .. }));
        let e = error_from_answer("token", &answer(400, r#"{"error":42}"#), &[]);
        assert!(matches!(e, CibaError::NotJson { status: 400, .. }));
    }
}
