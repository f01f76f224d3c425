//! Client authentication at the OP's endpoints: `client_secret_basic`, `client_secret_post`
//! and `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9). The one place for a method:
//! its variant (which is also the config file's `approvals.op.client_auth`, read
//! with the secret's and key's sources in place of the secret and key), its
//! registered name and what it adds to a request.

use base64::Engine;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use std::fmt;

use super::error::CibaError;
use super::{ClientConfig, SigningKey, now_secs, random_id};

pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a client assertion.
const ASSERTION_LIFETIME: u64 = 60;

/// The method an OP supports when its metadata lists none (OpenID Connect Discovery 1.0,
/// `token_endpoint_auth_methods_supported`).
pub const DISCOVERY_DEFAULT_METHOD: &str = "client_secret_basic";

/// Client authentication at the backchannel and token endpoints: with the secret and
/// the key themselves (`S`, `K` by default), or with where to read them (the config
/// file's form; `load` turns one into the other). The variant names are the
/// registered `token_endpoint_auth_method` names, the config's `method`.
#[derive(Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientAuth<S = secrecy::SecretString, K = SigningKey> {
    /// `client_secret_basic` (id and secret form-urlencoded before Base64, RFC 6749 §2.3.1).
    #[serde(rename = "client_secret_basic")]
    SecretBasic { secret: S },
    /// `client_secret_post`.
    #[serde(rename = "client_secret_post")]
    SecretPost { secret: S },
    /// `private_key_jwt` (RFC 7523), `aud` = the OP issuer.
    PrivateKeyJwt { key: K },
}

impl<S, K> ClientAuth<S, K> {
    /// The registered `token_endpoint_auth_method` name.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic { .. } => DISCOVERY_DEFAULT_METHOD,
            ClientAuth::SecretPost { .. } => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }

    /// The shared secret, for the methods that have one.
    pub fn secret(&self) -> Option<&S> {
        match self {
            ClientAuth::SecretBasic { secret } | ClientAuth::SecretPost { secret } => Some(secret),
            ClientAuth::PrivateKeyJwt { .. } => None,
        }
    }

    /// The same method with its secret and key read (`secret`, `key`: how).
    pub fn load<S2, K2, E>(
        &self,
        secret: impl FnOnce(&S) -> Result<S2, E>,
        key: impl FnOnce(&K) -> Result<K2, E>,
    ) -> Result<ClientAuth<S2, K2>, E> {
        Ok(match self {
            ClientAuth::SecretBasic { secret: s } => ClientAuth::SecretBasic { secret: secret(s)? },
            ClientAuth::SecretPost { secret: s } => ClientAuth::SecretPost { secret: secret(s)? },
            ClientAuth::PrivateKeyJwt { key: k } => ClientAuth::PrivateKeyJwt { key: key(k)? },
        })
    }
}

/// A secret never shows in a debug print, whichever form it has.
impl<S, K: fmt::Debug> fmt::Debug for ClientAuth<S, K> {
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
