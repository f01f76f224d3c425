//! OpenID Connect Client-Initiated Backchannel Authentication (CIBA Core 1.0), client side.
//!
//! Protocol only: discovery, client authentication, the backchannel authentication request
//! (optionally signed), token polling, ping/push notification parsing and ID token
//! validation. Nothing here knows about tools, policies or the proxy.
//!
//! Secrets (tokens, client secrets, notification tokens, user hints, user codes) never
//! appear in `Debug` output or error messages.

mod client_auth;
mod discovery;
mod error;
mod http;
pub(crate) mod id_token;
pub(crate) mod jwks;
mod notification;
mod request;
mod token;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client_auth::ClientAuth;
pub use discovery::ProviderMetadata;
pub use error::{CibaError, ErrorCode};
/// For the fuzz targets (`crate::fuzzing`): ID token checks with a known key.
pub(crate) use id_token::verify as verify_id_token;
pub use id_token::{ApproverEvidence, IdTokenCheck, at_hash};
pub use notification::{
    PushNotification, bearer_token, new_notification_token, token_hash, token_matches,
};
pub use token::{Poller, TokenPoll, TokenSet};

/// The CIBA grant type.
pub const CIBA_GRANT_TYPE: &str = "urn:openid:params:grant-type:ciba";

/// How the OP delivers the result (CIBA §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Poll,
    Ping,
    Push,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Poll => "poll",
            DeliveryMode::Ping => "ping",
            DeliveryMode::Push => "push",
        }
    }
}

impl fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Algorithms accepted for client assertions and signed authentication requests.
const SIGNING_ALGS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::EdDSA,
];

/// The wire name of a JWS algorithm (`"PS256"`, ...).
pub fn alg_name(alg: jsonwebtoken::Algorithm) -> &'static str {
    use jsonwebtoken::Algorithm as A;
    match alg {
        A::HS256 => "HS256",
        A::HS384 => "HS384",
        A::HS512 => "HS512",
        A::ES256 => "ES256",
        A::ES384 => "ES384",
        A::RS256 => "RS256",
        A::RS384 => "RS384",
        A::RS512 => "RS512",
        A::PS256 => "PS256",
        A::PS384 => "PS384",
        A::PS512 => "PS512",
        A::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// An asymmetric private key used for `private_key_jwt` and signed authentication requests.
#[derive(Clone)]
pub struct SigningKey {
    /// RS256, PS256 or ES256 (RS384/512, PS384/512, ES384 and EdDSA are accepted too).
    pub alg: jsonwebtoken::Algorithm,
    /// Sent as the JWS `kid` header when set.
    pub kid: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

impl SigningKey {
    /// Loads a PEM private key (PKCS#8, or PKCS#1 / SEC1 for RSA / EC) for `alg`.
    /// Checks that the key can actually sign with `alg`.
    pub fn from_pem(
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
        pem: &[u8],
    ) -> Result<SigningKey, CibaError> {
        use jsonwebtoken::{AlgorithmFamily, EncodingKey};
        if !SIGNING_ALGS.contains(&alg) {
            return Err(CibaError::Config(format!(
                "signing algorithm {} is not supported (use RS256, PS256 or ES256)",
                alg_name(alg)
            )));
        }
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => {
                return Err(CibaError::Config("HMAC keys are not supported".into()));
            }
        }
        .map_err(|_| {
            CibaError::Config(format!(
                "the private key is not a valid PEM key for {}",
                alg_name(alg)
            ))
        })?;
        if jsonwebtoken::crypto::sign(b"probe", &key, alg).is_err() {
            return Err(CibaError::Config(format!(
                "the private key cannot sign with {}",
                alg_name(alg)
            )));
        }
        Ok(SigningKey { alg, kid, key })
    }

    /// The public key as a JWK (with `kid`, `alg` and `use: sig`), for client registration.
    pub fn public_jwk(&self) -> Result<jsonwebtoken::jwk::Jwk, CibaError> {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg)
            .map_err(|_| CibaError::Config("cannot derive the public key".into()))?;
        jwk.common.key_id = self.kid.clone();
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }

    pub(crate) fn sign<T: Serialize>(&self, claims: &T) -> Result<String, CibaError> {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|_| CibaError::Config("signing a JWT failed".into()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Everything the client needs to know about its registration at one OP.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The OP's issuer identifier, exactly as in its discovery document.
    pub issuer: String,
    pub client_id: String,
    pub auth: ClientAuth,
    pub delivery: DeliveryMode,
    /// Sign authentication requests (CIBA §7.1.1, FAPI-CIBA).
    pub request_signing: Option<SigningKey>,
    /// Leeway for `exp` / `iat` / `nbf` (default 60 s).
    pub clock_skew: Duration,
    /// Per-request HTTP timeout (default 10 s).
    pub http_timeout: Duration,
    /// Allow `http://` issuer and endpoints. Development and tests on loopback only.
    pub allow_http: bool,
}

impl ClientConfig {
    /// A configuration with the defaults: no request signing, 60 s clock skew,
    /// 10 s HTTP timeout, https only.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        auth: ClientAuth,
        delivery: DeliveryMode,
    ) -> ClientConfig {
        ClientConfig {
            issuer: issuer.into(),
            client_id: client_id.into(),
            auth,
            delivery,
            request_signing: None,
            clock_skew: Duration::from_secs(60),
            http_timeout: Duration::from_secs(10),
            allow_http: false,
        }
    }
}

/// Identifies the user to the OP. Exactly one hint per request, enforced by the type.
#[derive(Clone, PartialEq, Eq)]
pub enum UserHint {
    LoginHint(String),
    IdTokenHint(String),
    LoginHintToken(String),
}

impl UserHint {
    /// The form parameter name of this hint.
    pub fn param(&self) -> &'static str {
        match self {
            UserHint::LoginHint(_) => "login_hint",
            UserHint::IdTokenHint(_) => "id_token_hint",
            UserHint::LoginHintToken(_) => "login_hint_token",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            UserHint::LoginHint(v) | UserHint::IdTokenHint(v) | UserHint::LoginHintToken(v) => v,
        }
    }
}

impl fmt::Debug for UserHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserHint({}: <redacted>)", self.param())
    }
}

/// One backchannel authentication request (CIBA §7.1).
#[derive(Clone)]
pub struct AuthRequest {
    /// Space-separated; must contain `openid`.
    pub scope: String,
    pub hint: UserHint,
    pub binding_message: Option<String>,
    pub user_code: Option<String>,
    pub acr_values: Option<String>,
    /// Seconds.
    pub requested_expiry: Option<u64>,
    /// RFC 9396 rich authorization request (a JSON array).
    pub authorization_details: Option<serde_json::Value>,
    /// RFC 8707 resource indicator: the audience the access token is for.
    pub resource: Option<String>,
    /// Required for ping and push; not sent in poll mode.
    pub client_notification_token: Option<String>,
}

impl AuthRequest {
    /// A request with only scope and hint set.
    pub fn new(scope: impl Into<String>, hint: UserHint) -> AuthRequest {
        AuthRequest {
            scope: scope.into(),
            hint,
            binding_message: None,
            user_code: None,
            acr_values: None,
            requested_expiry: None,
            authorization_details: None,
            resource: None,
            client_notification_token: None,
        }
    }
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("scope", &self.scope)
            .field("hint", &self.hint)
            .field("binding_message", &self.binding_message)
            .field("user_code", &self.user_code.as_ref().map(|_| "<redacted>"))
            .field("acr_values", &self.acr_values)
            .field("requested_expiry", &self.requested_expiry)
            .field(
                "authorization_details",
                &self.authorization_details.as_ref().map(|_| "<set>"),
            )
            .field("resource", &self.resource)
            .field(
                "client_notification_token",
                &self
                    .client_notification_token
                    .as_ref()
                    .map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The OP's acknowledgement (CIBA §7.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthAck {
    pub auth_req_id: String,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// A CIBA client for one OP and one client registration. Cheap to clone.
#[derive(Clone)]
pub struct CibaClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    meta: ProviderMetadata,
    http: reqwest::Client,
    jwks: jwks::JwksCache,
}

impl fmt::Debug for CibaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CibaClient")
            .field("issuer", &self.inner.cfg.issuer)
            .field("client_id", &self.inner.cfg.client_id)
            .field("delivery", &self.inner.cfg.delivery)
            .finish_non_exhaustive()
    }
}

impl CibaClient {
    /// Fetches and checks the OP's discovery document (issuer, endpoints, delivery mode,
    /// auth method, request signing) and its JWKS.
    pub async fn discover(cfg: ClientConfig) -> Result<CibaClient, CibaError> {
        discovery::check_config(&cfg)?;
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .connect_timeout(cfg.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ciba-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| CibaError::Config("cannot build the HTTP client".into()))?;
        let meta = discovery::fetch(&http, &cfg).await?;
        let jwks = jwks::JwksCache::load(http.clone(), meta.jwks_uri.clone()).await?;
        Ok(CibaClient {
            inner: Arc::new(Inner {
                cfg,
                meta,
                http,
                jwks,
            }),
        })
    }

    pub fn metadata(&self) -> &ProviderMetadata {
        &self.inner.meta
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Sends a backchannel authentication request and returns the acknowledgement.
    pub async fn authenticate(&self, req: &AuthRequest) -> Result<AuthAck, CibaError> {
        request::authenticate(&self.inner.http, &self.inner.cfg, &self.inner.meta, req).await
    }

    /// One token request for `auth_req_id` (poll mode, or once after a ping).
    pub async fn poll_token(&self, auth_req_id: &str) -> Result<TokenPoll, CibaError> {
        token::poll_token(
            &self.inner.http,
            &self.inner.cfg,
            &self.inner.meta,
            auth_req_id,
        )
        .await
    }

    /// RFC 8693: exchanges an access token for one whose audience is `audience`.
    pub async fn exchange_token(
        &self,
        subject_token: &str,
        audience: &str,
    ) -> Result<secrecy::SecretString, CibaError> {
        token::exchange_token(
            &self.inner.http,
            &self.inner.cfg,
            &self.inner.meta,
            subject_token,
            audience,
        )
        .await
    }

    /// Validates an ID token from a token response or a push notification.
    pub async fn validate_id_token(
        &self,
        id_token: &str,
        check: &IdTokenCheck<'_>,
    ) -> Result<ApproverEvidence, CibaError> {
        id_token::validate(
            &self.inner.jwks,
            &self.inner.cfg,
            &self.inner.meta,
            id_token,
            check,
        )
        .await
    }

    /// Parses a push-mode notification body (CIBA §10.3, §12). The bearer token must be
    /// checked separately (see [`token_matches`]); the ID token with
    /// [`CibaClient::validate_id_token`] and `push: true`.
    pub fn parse_push(body: &[u8]) -> Result<PushNotification, CibaError> {
        notification::parse_push(body)
    }

    /// Parses a ping-mode notification body (CIBA §10.2) and returns the `auth_req_id`.
    pub fn parse_ping(body: &[u8]) -> Result<String, CibaError> {
        notification::parse_ping(body)
    }

    /// How many times the JWKS has been fetched (initial load included).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.jwks.fetch_count()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A random identifier (`jti`): 128 bits, base64url.
pub(crate) fn random_id() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_serde() {
        assert_eq!(
            serde_json::to_string(&DeliveryMode::Ping).ok().as_deref(),
            Some("\"ping\"")
        );
        let m: DeliveryMode = serde_json::from_str("\"push\"").unwrap_or(DeliveryMode::Poll);
        assert_eq!(m, DeliveryMode::Push);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let auth: ClientAuth = ClientAuth::SecretBasic {
            secret: "s3cr3t-value".into(),
        };
        assert!(!format!("{auth:?}").contains("s3cr3t"));
        let mut req = AuthRequest::new("openid", UserHint::LoginHint("alice@example.com".into()));
        req.user_code = Some("1234-code".into());
        req.client_notification_token = Some("notif-token-value".into());
        let s = format!("{req:?}");
        assert!(!s.contains("alice"));
        assert!(!s.contains("1234-code"));
        assert!(!s.contains("notif-token-value"));
    }

    #[test]
    fn signing_key_rejects_garbage() {
        let e = SigningKey::from_pem(jsonwebtoken::Algorithm::ES256, None, b"not a key");
        assert!(matches!(e, Err(CibaError::Config(_))));
        let e = SigningKey::from_pem(jsonwebtoken::Algorithm::HS256, None, b"x");
        assert!(matches!(e, Err(CibaError::Config(_))));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id(), random_id());
        assert_eq!(random_id().len(), 22);
    }
}
