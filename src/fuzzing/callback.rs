//! `callback`: the ping and push notification bodies and the bearer token of the
//! callback listener.

use serde_json::Value;

use crate::approval::callback::presented_token;
use crate::ciba::{self, CibaClient, ErrorCode, PushNotification};

/// Largest notification body (`ciba::notification::MAX_NOTIFICATION_BODY`).
const MAX_NOTIFICATION_BODY: usize = 256 * 1024;

/// The same bytes as a ping body, a push body and an `Authorization` value. Properties:
/// - a ping is accepted exactly when the body is a JSON object whose `auth_req_id` is a
///   string of 1 to 1024 bytes, and yields that string;
/// - a push yields the body's own `auth_req_id`, and either its `error` (a string) or
///   non-empty access and ID tokens exactly as sent; it never yields tokens for a body
///   with an `error` member;
/// - a presented bearer token is non-empty, trimmed, follows `Bearer ` / `bearer `,
///   agrees with `ciba::bearer_token`, and matches only its own hash.
pub fn callback(data: &[u8]) {
    let lax = (data.len() <= MAX_NOTIFICATION_BODY)
        .then(|| serde_json::from_slice::<Value>(data).ok())
        .flatten();
    let object = lax.as_ref().and_then(Value::as_object);
    let id = object
        .and_then(|m| m.get("auth_req_id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 1024);
    let ping = CibaClient::parse_ping(data).ok();
    assert_eq!(ping.as_deref(), id, "ping reads another auth_req_id");
    match CibaClient::parse_push(data) {
        Ok(note) => {
            let m = object.expect("an accepted push is a JSON object");
            assert_eq!(Some(note.auth_req_id()), id);
            let text = |k: &str| m.get(k).and_then(Value::as_str);
            match note {
                PushNotification::Error { error, .. } => {
                    let code = text("error").expect("error is a string");
                    assert_eq!(error, ErrorCode::parse(code));
                }
                PushNotification::Tokens { tokens, .. } => {
                    assert!(!m.contains_key("error"), "tokens from an error body");
                    assert!(!tokens.access_token.is_empty() && !tokens.id_token.is_empty());
                    assert_eq!(text("access_token"), Some(tokens.access_token.as_str()));
                    assert_eq!(text("id_token"), Some(tokens.id_token.as_str()));
                    assert_eq!(text("refresh_token"), tokens.refresh_token.as_deref());
                }
            }
        }
        Err(_) => {
            if let (Some(m), Some(_)) = (object, id) {
                let text = |k: &str| m.get(k).and_then(Value::as_str);
                let well_formed = match m.get("error") {
                    Some(e) => e.is_string(),
                    None => {
                        text("access_token").is_some_and(|t| !t.is_empty())
                            && text("id_token").is_some_and(|t| !t.is_empty())
                            && text("token_type").is_some()
                            && m.get("refresh_token")
                                .is_none_or(|r| r.is_string() || r.is_null())
                            && m.get("expires_in")
                                .is_none_or(|e| e.is_u64() || e.is_null())
                    }
                };
                assert!(!well_formed, "a well-formed push was refused");
            }
        }
    }
    if let Ok(header) = std::str::from_utf8(data) {
        check_bearer(header);
    }
}

fn check_bearer(header: &str) {
    let Some(token) = presented_token(header) else {
        return;
    };
    assert!(!token.is_empty() && token.trim() == token);
    let rest = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .expect("the scheme is there");
    assert_eq!(rest.trim(), token);
    if header.is_ascii() {
        assert_eq!(ciba::bearer_token(header), Some(token.as_str()));
    }
    let hash = ciba::token_hash(&token);
    assert!(ciba::token_matches(&token, &hash));
    assert!(!ciba::token_matches(&format!("{token}x"), &hash));
}
