//! Client authentication at the OP's endpoints: `client_secret_basic`, `client_secret_post`
//! and `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9). The one place for a method on
//! the protocol side: its variant, its registered name and what it adds to a request
//! (the config's `approvals.op.client_auth` maps onto it in `approval/config.rs`).

use base64::Engine;
use secrecy::ExposeSecret;
use serde::Serialize;

use std::fmt;

use super::error::CibaError;
use super::{ClientConfig, SigningKey, now_secs, random_id};

pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a client assertion.
const ASSERTION_LIFETIME: u64 = 60;

/// Client authentication at the backchannel and token endpoints.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret_basic` (id and secret form-urlencoded before Base64, RFC 6749 §2.3.1).
    SecretBasic { secret: secrecy::SecretString },
    /// `client_secret_post`.
    SecretPost { secret: secrecy::SecretString },
    /// `private_key_jwt` (RFC 7523), `aud` = the OP issuer.
    PrivateKeyJwt { key: SigningKey },
}

impl ClientAuth {
    /// The registered `token_endpoint_auth_method` name.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic { .. } => "client_secret_basic",
            ClientAuth::SecretPost { .. } => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::SecretBasic { .. } => f.write_str("SecretBasic { secret: <redacted> }"),
            ClientAuth::SecretPost { .. } => f.write_str("SecretPost { secret: <redacted> }"),
            ClientAuth::PrivateKeyJwt { key } => {
                f.debug_struct("PrivateKeyJwt").field("key", key).finish()
            }
        }
    }
}

/// Form fields and an optional `Authorization` header value for one request.
pub(crate) struct Authn {
    pub form: Vec<(&'static str, String)>,
    pub authorization: Option<String>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn basic_header(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(client_id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Client authentication for a request to one of the OP's endpoints. The assertion
/// audience is the issuer identifier.
pub(crate) fn authn(cfg: &ClientConfig, audience: &str) -> Result<Authn, CibaError> {
    let client_id = cfg.client_id.as_str();
    Ok(match &cfg.auth {
        ClientAuth::SecretBasic { secret } => Authn {
            form: Vec::new(),
            authorization: Some(basic_header(client_id, secret.expose_secret())),
        },
        ClientAuth::SecretPost { secret } => Authn {
            form: vec![
                ("client_id", client_id.to_owned()),
                ("client_secret", secret.expose_secret().to_string()),
            ],
            authorization: None,
        },
        ClientAuth::PrivateKeyJwt { key } => {
            let iat = now_secs();
            let assertion = key.sign(&AssertionClaims {
                iss: client_id,
                sub: client_id,
                aud: audience,
                jti: random_id(),
                iat,
                exp: iat + ASSERTION_LIFETIME,
            })?;
            Authn {
                form: vec![
                    ("client_id", client_id.to_owned()),
                    ("client_assertion_type", JWT_BEARER_ASSERTION.to_owned()),
                    ("client_assertion", assertion),
                ],
                authorization: None,
            }
        }
    })
}

/// Builds a form POST with client authentication added.
pub(crate) fn post_form(
    http: &reqwest::Client,
    url: &str,
    cfg: &ClientConfig,
    audience: &str,
    mut form: Vec<(&'static str, String)>,
) -> Result<reqwest::RequestBuilder, CibaError> {
    let a = authn(cfg, audience)?;
    for (k, v) in a.form {
        if !form.iter().any(|(name, _)| *name == k) {
            form.push((k, v));
        }
    }
    let mut req = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form);
    if let Some(h) = a.authorization {
        req = req.header(reqwest::header::AUTHORIZATION, h);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::super::{DeliveryMode, SigningKey};
    use super::*;

    #[test]
    fn basic_header_form_encodes() {
        // RFC 6749 §2.3.1: application/x-www-form-urlencoded before Base64.
        let h = basic_header("my client", "p@ss:w/rd+");
        let b64 = h.strip_prefix("Basic ").unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "my+client:p%40ss%3Aw%2Frd%2B"
        );
    }

    #[test]
    fn post_puts_credentials_in_body() {
        let cfg = ClientConfig::new(
            "https://op",
            "cid",
            ClientAuth::SecretPost {
                secret: "sec".into(),
            },
            DeliveryMode::Poll,
        );
        let a = authn(&cfg, "https://op").unwrap_or_else(|e| panic!("{e}"));
        assert!(a.authorization.is_none());
        assert!(a.form.contains(&("client_id", "cid".into())));
        assert!(a.form.contains(&("client_secret", "sec".into())));
    }

    #[test]
    fn private_key_jwt_fields() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|k| k.serialize_pem())
            .unwrap_or_default();
        let key = SigningKey::from_pem(
            jsonwebtoken::Algorithm::ES256,
            Some("k1".into()),
            pem.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = ClientConfig::new(
            "https://op",
            "cid",
            ClientAuth::PrivateKeyJwt { key },
            DeliveryMode::Poll,
        );
        let a = authn(&cfg, "https://op").unwrap_or_else(|e| panic!("{e}"));
        assert!(a.authorization.is_none());
        assert!(
            a.form
                .contains(&("client_assertion_type", JWT_BEARER_ASSERTION.into()))
        );
        assert!(
            a.form
                .iter()
                .any(|(k, v)| *k == "client_assertion" && v.split('.').count() == 3)
        );
    }
}
