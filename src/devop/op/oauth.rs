//! Forms, OAuth error answers and JSON responses.

use super::*;

// ---------------------------------------------------------------------------------------
// Forms and errors

/// A decoded `application/x-www-form-urlencoded` body (each name at most once).
#[derive(Debug, Default)]
pub(super) struct Form(pub(super) HashMap<String, String>);

impl Form {
    /// The value, with empty values treated as absent (RFC 6749 §3.1).
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

pub(super) async fn read_form(headers: &HeaderMap, body: Incoming) -> Result<Form, OAuthError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::bad(
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            ));
        }
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(OAuthError {
                status: if too_large {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                code: "invalid_request",
                description: if too_large {
                    "the request body is too large".into()
                } else {
                    "the request body could not be read".into()
                },
                basic_challenge: false,
            });
        }
    };
    parse_form(&bytes)
}

pub(super) fn parse_form(bytes: &[u8]) -> Result<Form, OAuthError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(OAuthError::bad(
            "invalid_request",
            "the request body is not UTF-8",
        ));
    }
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
            return Err(OAuthError::bad(
                "invalid_request",
                "a form parameter is not valid percent-encoded UTF-8",
            ));
        }
        if map.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("parameter {k} is repeated"),
            ));
        }
    }
    Ok(Form(map))
}

/// `client_secret_basic` credentials: base64 of `form-encoded id ':' form-encoded secret`
/// (RFC 6749 §2.3.1).
pub(super) fn parse_basic_credentials(b64: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

pub(super) fn form_decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[derive(Debug)]
pub(super) struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) description: String,
    pub(super) basic_challenge: bool,
}

impl OAuthError {
    pub(super) fn bad(code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    pub(super) fn client(description: &str, basic_challenge: bool) -> OAuthError {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: description.into(),
            basic_challenge,
        }
    }

    pub(super) fn response(&self) -> Resp {
        let mut r = json_response(
            self.status,
            &json!({"error": self.code, "error_description": self.description}),
        );
        if self.basic_challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ciba-gate development OP\""),
            );
        }
        r
    }
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub(super) fn api_error(status: StatusCode, code: &str, description: &str) -> Resp {
    json_response(
        status,
        &json!({"error": code, "error_description": description}),
    )
}

pub(super) fn not_found() -> Resp {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(super) fn misdirected() -> Resp {
    api_error(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected_request",
        "unexpected Host header (DNS rebinding protection)",
    )
}

pub(super) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
