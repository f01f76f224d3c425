//! Ping and push notification bodies (CIBA §10.2, §10.3, §12) and client notification
//! token helpers.

use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::error::{CibaError, ErrorCode};
use super::token::TokenSet;

/// Largest notification body accepted.
pub(crate) const MAX_NOTIFICATION_BODY: usize = 256 * 1024;

/// A push-mode result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushNotification {
    Tokens {
        auth_req_id: String,
        tokens: TokenSet,
    },
    Error {
        auth_req_id: String,
        error: ErrorCode,
    },
}

impl PushNotification {
    pub fn auth_req_id(&self) -> &str {
        match self {
            PushNotification::Tokens { auth_req_id, .. }
            | PushNotification::Error { auth_req_id, .. } => auth_req_id,
        }
    }
}

fn bad(msg: &str) -> CibaError {
    CibaError::InvalidNotification(msg.to_owned())
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, CibaError> {
    if body.len() > MAX_NOTIFICATION_BODY {
        return Err(bad("the body is too large"));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(bad("the body is not a JSON object")),
    }
}

fn auth_req_id(m: &serde_json::Map<String, serde_json::Value>) -> Result<String, CibaError> {
    match m.get("auth_req_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Ok(s.clone()),
        _ => Err(bad("auth_req_id is missing or not a string")),
    }
}

pub(crate) fn parse_ping(body: &[u8]) -> Result<String, CibaError> {
    auth_req_id(&object(body)?)
}

pub(crate) fn parse_push(body: &[u8]) -> Result<PushNotification, CibaError> {
    let m = object(body)?;
    let id = auth_req_id(&m)?;
    if let Some(err) = m.get("error") {
        let serde_json::Value::String(code) = err else {
            return Err(bad("error is not a string"));
        };
        return Ok(PushNotification::Error {
            auth_req_id: id,
            error: ErrorCode::parse(code),
        });
    }
    let tokens = TokenSet::deserialize(serde_json::Value::Object(m))
        .map_err(|_| bad("the token fields are missing or malformed"))?;
    if tokens.access_token.is_empty() || tokens.id_token.is_empty() {
        return Err(bad("access_token or id_token is empty"));
    }
    Ok(PushNotification::Tokens {
        auth_req_id: id,
        tokens,
    })
}

/// A fresh `client_notification_token`: 256 random bits, base64url without padding
/// (bearer token syntax).
pub fn new_notification_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Lower-case hex SHA-256 of a notification token: what is stored instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Whether `presented` hashes to `stored_hash`, compared in constant time.
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    let h = token_hash(presented);
    h.len() == stored_hash.len()
        && bool::from(
            h.as_bytes()
                .ct_eq(stored_hash.to_ascii_lowercase().as_bytes()),
        )
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() { None } else { Some(token) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_bodies() {
        assert_eq!(
            parse_ping(br#"{"auth_req_id":"abc"}"#).ok().as_deref(),
            Some("abc")
        );
        assert!(matches!(
            parse_ping(b"[]"),
            Err(CibaError::InvalidNotification(_))
        ));
        assert!(matches!(
            parse_ping(br#"{"auth_req_id":5}"#),
            Err(CibaError::InvalidNotification(_))
        ));
        assert!(parse_ping(&vec![b' '; MAX_NOTIFICATION_BODY + 1]).is_err());
    }

    #[test]
    fn push_bodies() {
        let ok = parse_push(
            br#"{"auth_req_id":"r1","access_token":"at","token_type":"Bearer",
                "expires_in":120,"id_token":"a.b.c","refresh_token":"rt"}"#,
        );
        match ok {
            Ok(PushNotification::Tokens {
                auth_req_id,
                tokens,
            }) => {
                assert_eq!(auth_req_id, "r1");
                assert_eq!(tokens.refresh_token.as_deref(), Some("rt"));
                assert_eq!(tokens.expires_in, Some(120));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_push(br#"{"auth_req_id":"r1","error":"access_denied"}"#).ok(),
            Some(PushNotification::Error {
                auth_req_id: "r1".into(),
                error: ErrorCode::AccessDenied
            })
        );
        assert!(parse_push(br#"{"auth_req_id":"r1","access_token":"at"}"#).is_err());
        assert!(parse_push(br#"{"access_token":"at","token_type":"x","id_token":"y"}"#).is_err());
    }

    #[test]
    fn notification_tokens() {
        let t = new_notification_token();
        assert_eq!(t.len(), 43);
        assert!(crate::ciba::request::is_bearer_syntax(&t));
        assert_ne!(t, new_notification_token());
        let h = token_hash(&t);
        assert_eq!(h.len(), 64);
        assert!(token_matches(&t, &h));
        assert!(token_matches(&t, &h.to_ascii_uppercase()));
        assert!(!token_matches("other", &h));
        assert!(!token_matches(&t, "abc"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
