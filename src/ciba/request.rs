//! The backchannel authentication request (CIBA §7.1), optionally signed (§7.1.1), and the
//! acknowledgement (§7.3).

use serde::Deserialize;

use super::client_auth::post_form;
use super::error::CibaError;
use super::http;
use super::{
    AuthAck, AuthRequest, ClientConfig, DeliveryMode, ProviderMetadata, now_secs, random_id,
};

pub(crate) const ENDPOINT: &str = "backchannel authentication";

/// Lifetime of a signed request object (FAPI-CIBA: at most 60 minutes between nbf and exp).
const REQUEST_OBJECT_LIFETIME: u64 = 300;

/// Longest accepted `client_notification_token` (CIBA §7.1).
const MAX_NOTIFICATION_TOKEN: usize = 1024;

/// Shortest accepted `client_notification_token`: 22 base64 characters ≈ 128 bits.
const MIN_NOTIFICATION_TOKEN: usize = 22;

/// Whether `s` has bearer token syntax (RFC 6750 §2.1): `[A-Za-z0-9-._~+/]+=*`.
pub(crate) fn is_bearer_syntax(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Checks a request and returns its parameters (values as JSON, for the signed form).
pub(crate) fn params(
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    req: &AuthRequest,
) -> Result<Vec<(&'static str, serde_json::Value)>, CibaError> {
    use serde_json::Value;
    if !req.scope.split(' ').any(|s| s == "openid") {
        return Err(CibaError::Config("scope must contain \"openid\"".into()));
    }
    if req.hint.value().is_empty() {
        return Err(CibaError::Config(format!("{} is empty", req.hint.param())));
    }
    let mut p: Vec<(&'static str, Value)> = vec![
        ("scope", Value::String(req.scope.clone())),
        (req.hint.param(), Value::String(req.hint.value().to_owned())),
    ];
    match (cfg.delivery, &req.client_notification_token) {
        (DeliveryMode::Poll, _) => {}
        (_, None) => {
            return Err(CibaError::Config(format!(
                "a client_notification_token is required in {} mode",
                cfg.delivery
            )));
        }
        (_, Some(t)) => {
            if t.len() < MIN_NOTIFICATION_TOKEN
                || t.len() > MAX_NOTIFICATION_TOKEN
                || !is_bearer_syntax(t)
            {
                return Err(CibaError::Config(
                    "the client_notification_token must have bearer token syntax, \
                     at least 128 bits of entropy and at most 1024 characters"
                        .into(),
                ));
            }
            p.push(("client_notification_token", Value::String(t.clone())));
        }
    }
    if let Some(acr) = &req.acr_values {
        p.push(("acr_values", Value::String(acr.clone())));
    }
    if let Some(m) = &req.binding_message {
        if m.is_empty() {
            return Err(CibaError::Config("binding_message is empty".into()));
        }
        p.push(("binding_message", Value::String(m.clone())));
    }
    if let Some(code) = &req.user_code {
        if !meta.backchannel_user_code_parameter_supported {
            return Err(CibaError::Config(
                "the OP does not support the user_code parameter".into(),
            ));
        }
        p.push(("user_code", Value::String(code.clone())));
    }
    if let Some(e) = req.requested_expiry {
        if e == 0 {
            return Err(CibaError::Config(
                "requested_expiry must be positive".into(),
            ));
        }
        p.push(("requested_expiry", Value::from(e)));
    }
    if let Some(d) = &req.authorization_details {
        if !d.is_array() {
            return Err(CibaError::Config(
                "authorization_details must be a JSON array".into(),
            ));
        }
        p.push(("authorization_details", d.clone()));
    }
    if let Some(r) = &req.resource {
        p.push(("resource", Value::String(r.clone())));
    }
    Ok(p)
}

/// Form encoding of a parameter: strings as is, numbers as decimal, JSON as JSON text.
fn form_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The signed request object claims: all parameters plus aud, iss, exp, iat, nbf, jti.
pub(crate) fn request_object_claims(
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    params: &[(&'static str, serde_json::Value)],
) -> serde_json::Map<String, serde_json::Value> {
    let now = now_secs();
    let mut claims = serde_json::Map::new();
    for (k, v) in params {
        // requested_expiry is a number inside the JWT (CIBA §7.1.1 example) too.
        claims.insert((*k).to_owned(), v.clone());
    }
    claims.insert("aud".into(), meta.issuer.clone().into());
    claims.insert("iss".into(), cfg.client_id.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + REQUEST_OBJECT_LIFETIME).into());
    claims.insert("jti".into(), random_id().into());
    claims
}

#[derive(Deserialize)]
struct RawAck {
    auth_req_id: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    interval: Option<serde_json::Value>,
}

fn as_secs(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

fn parse_ack(status: u16, body: &[u8]) -> Result<AuthAck, CibaError> {
    let not_json = || CibaError::NotJson {
        status,
        endpoint: ENDPOINT,
    };
    let raw: RawAck = serde_json::from_slice(body).map_err(|_| not_json())?;
    let auth_req_id = match raw.auth_req_id {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 1024 => s,
        _ => return Err(not_json()),
    };
    let expires_in = raw
        .expires_in
        .as_ref()
        .and_then(as_secs)
        .ok_or_else(not_json)?;
    if expires_in == 0 {
        return Err(not_json());
    }
    let interval = raw.interval.as_ref().and_then(as_secs);
    Ok(AuthAck {
        auth_req_id,
        expires_in,
        interval,
    })
}

/// Values the OP must not echo back in error descriptions.
fn redactions(req: &AuthRequest) -> Vec<&str> {
    let mut r = vec![req.hint.value()];
    if let Some(c) = &req.user_code {
        r.push(c);
    }
    if let Some(t) = &req.client_notification_token {
        r.push(t);
    }
    r
}

pub(crate) async fn authenticate(
    http_client: &reqwest::Client,
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    req: &AuthRequest,
) -> Result<AuthAck, CibaError> {
    let params = params(cfg, meta, req)?;
    let form: Vec<(&'static str, String)> = match &cfg.request_signing {
        None => params.iter().map(|(k, v)| (*k, form_value(v))).collect(),
        Some(key) => {
            let jwt = key.sign(&request_object_claims(cfg, meta, &params))?;
            vec![("request", jwt), ("client_id", cfg.client_id.clone())]
        }
    };
    let builder = post_form(
        http_client,
        &meta.backchannel_authentication_endpoint,
        cfg,
        &meta.issuer,
        form,
    )?;
    let answer = http::send(ENDPOINT, builder).await?;
    if (200..300).contains(&answer.status) {
        return parse_ack(answer.status, &answer.body);
    }
    Err(http::error_from_answer(ENDPOINT, &answer, &redactions(req)))
}

#[cfg(test)]
mod tests {
    use super::super::{ClientAuth, DeliveryMode, UserHint};
    use super::*;

    fn cfg(delivery: DeliveryMode) -> ClientConfig {
        ClientConfig::new(
            "https://op",
            "cid",
            ClientAuth::SecretBasic { secret: "s".into() },
            delivery,
        )
    }

    fn meta() -> ProviderMetadata {
        ProviderMetadata {
            issuer: "https://op".into(),
            backchannel_authentication_endpoint: "https://op/bc".into(),
            token_endpoint: "https://op/token".into(),
            jwks_uri: "https://op/jwks".into(),
            backchannel_token_delivery_modes_supported: vec!["poll".into()],
            backchannel_authentication_request_signing_alg_values_supported: vec![],
            backchannel_user_code_parameter_supported: false,
            token_endpoint_auth_methods_supported: vec![],
            id_token_signing_alg_values_supported: vec![],
            grant_types_supported: vec![],
        }
    }

    #[test]
    fn exactly_one_hint_is_sent() {
        for hint in [
            UserHint::LoginHint("a".into()),
            UserHint::IdTokenHint("b".into()),
            UserHint::LoginHintToken("c".into()),
        ] {
            let req = AuthRequest::new("openid", hint.clone());
            let p = params(&cfg(DeliveryMode::Poll), &meta(), &req).unwrap_or_default();
            let hints: Vec<_> = p
                .iter()
                .filter(|(k, _)| ["login_hint", "id_token_hint", "login_hint_token"].contains(k))
                .collect();
            assert_eq!(hints.len(), 1);
            assert_eq!(hints[0].0, hint.param());
        }
    }

    #[test]
    fn request_checks() {
        let m = meta();
        let c = cfg(DeliveryMode::Poll);
        let bad_scope = AuthRequest::new("profile", UserHint::LoginHint("a".into()));
        assert!(matches!(
            params(&c, &m, &bad_scope),
            Err(CibaError::Config(_))
        ));
        let mut r = AuthRequest::new("openid", UserHint::LoginHint("a".into()));
        r.user_code = Some("1234".into());
        assert!(matches!(params(&c, &m, &r), Err(CibaError::Config(_))));
        let r = AuthRequest::new("openid", UserHint::LoginHint("a".into()));
        assert!(matches!(
            params(&cfg(DeliveryMode::Ping), &m, &r),
            Err(CibaError::Config(_))
        ));
        let mut r = AuthRequest::new("openid", UserHint::LoginHint("a".into()));
        r.client_notification_token = Some("short".into());
        assert!(matches!(
            params(&cfg(DeliveryMode::Ping), &m, &r),
            Err(CibaError::Config(_))
        ));
        r.client_notification_token = Some("has spaces in it but is long enough".into());
        assert!(matches!(
            params(&cfg(DeliveryMode::Ping), &m, &r),
            Err(CibaError::Config(_))
        ));
        r.client_notification_token = Some(crate::ciba::new_notification_token());
        assert!(params(&cfg(DeliveryMode::Ping), &m, &r).is_ok());
    }

    #[test]
    fn bearer_syntax() {
        assert!(is_bearer_syntax("abc-._~+/=="));
        assert!(!is_bearer_syntax("=="));
        assert!(!is_bearer_syntax("a b"));
        assert!(!is_bearer_syntax("a=b"));
    }

    #[test]
    fn ack_parsing() {
        let a = parse_ack(
            200,
            br#"{"auth_req_id":"x1","expires_in":120,"interval":2}"#,
        );
        assert!(
            matches!(a, Ok(AuthAck { ref auth_req_id, expires_in: 120, interval: Some(2) }) if auth_req_id == "x1")
        );
        let a = parse_ack(200, br#"{"auth_req_id":"x1","expires_in":120}"#);
        assert!(matches!(a, Ok(AuthAck { interval: None, .. })));
        assert!(matches!(
            parse_ack(200, br#"{"expires_in":120}"#),
            Err(CibaError::NotJson { .. })
        ));
        assert!(matches!(
            parse_ack(200, br#"{"auth_req_id":"x","expires_in":"soon"}"#),
            Err(CibaError::NotJson { .. })
        ));
    }
}
