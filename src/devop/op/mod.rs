//! A **development** OpenID Provider with CIBA (poll, ping and push) and a phone-sized
//! approval page, for `ciba-gate dev` and for tests.
//!
//! DEVELOPMENT ONLY — NOT FOR PRODUCTION. Anyone who can reach the approval page can
//! approve or deny every request; users are a fixed list of `login_hint` values without
//! any authentication; keys are generated at start and live only in memory; state is in
//! memory. It says so in its discovery document (`"ciba_gate_development_op": true`) and
//! on its page.
//!
//! Endpoints (relative to the issuer URL):
//! - `GET /.well-known/openid-configuration`, `GET /jwks` (one ES256 key)
//! - `POST /backchannel` — CIBA authentication request (§7.1), `client_secret_basic` or
//!   `client_secret_post`
//! - `POST /token` — grant `urn:openid:params:grant-type:ciba` (poll and ping clients)
//! - `GET /` — the approval page; `GET /api/requests`, `POST /api/requests/{id}/approve`,
//!   `POST /api/requests/{id}/deny` — its JSON API (never shows tokens or secrets)
//! - `GET /api/stats` — token-endpoint counts (requests, tokens issued, redemptions of
//!   approved grants, grants redeemed more than once); no identifiers
//!
//! After a decision, ping clients get `{"auth_req_id"}` with their bearer
//! `client_notification_token` (on approval and denial); push clients get the token
//! response (approval), `{"error": "access_denied"}` (denial) or, when the request runs
//! out of time undecided, `{"error": "expired_token"}`. One attempt each, no retry (like
//! real OPs).
#![allow(clippy::disallowed_methods)] // a development OP timing its own requests in real time

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

mod backchannel;
mod notification;
mod oauth;
mod page;
mod server;
mod token;

use oauth::*;
use page::*;
use server::*;

/// The CIBA grant type.
pub use crate::ciba::CIBA_GRANT_TYPE;
/// The `acr` of every ID token this OP issues.
pub const DEV_ACR: &str = "urn:ciba-gate:dev:phone";
/// The ID token claim carrying the `auth_req_id` (push mode).
pub const AUTH_REQ_ID_CLAIM: &str = "urn:openid:params:jwt:claim:auth_req_id";
/// The ID token claim carrying the refresh token hash (push mode).
pub const RT_HASH_CLAIM: &str = "urn:openid:params:jwt:claim:rt_hash";
/// Longest accepted `binding_message`, in characters.
pub const MAX_BINDING_MESSAGE_CHARS: usize = 64;
/// Largest accepted `requested_expiry`, in seconds.
pub const MAX_REQUESTED_EXPIRY: u64 = 600;

const ID_TOKEN_LIFETIME: u64 = 300;
const ACCESS_TOKEN_LIFETIME: u64 = 600;
/// Finished or expired requests are kept this long so that late polls still get
/// `expired_token` / `invalid_grant` rather than a confusing answer.
const RETAIN_AFTER_EXPIRY: Duration = Duration::from_secs(600);
const MAX_REQUESTS: usize = 10_000;
const MAX_BODY: usize = 64 * 1024;
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_NOTIFICATION_TOKEN_LEN: usize = 1024;

/// How a client receives its result (CIBA §5): the same type the client side uses.
pub use crate::ciba::DeliveryMode;

/// A registered client. Every client may use `client_secret_basic` or `client_secret_post`.
#[derive(Clone)]
pub struct DevClient {
    pub client_id: String,
    pub secret: String,
    pub delivery: DeliveryMode,
    /// Required for ping and push clients (http or https; this is a development OP).
    pub notification_endpoint: Option<String>,
}

impl std::fmt::Debug for DevClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevClient")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("delivery", &self.delivery)
            .field("notification_endpoint", &self.notification_endpoint)
            .finish()
    }
}

/// Configuration of the development OP.
#[derive(Debug, Clone)]
pub struct DevOpConfig {
    /// Exactly the base URL it serves, e.g. `http://127.0.0.1:9400`. Empty: derived from
    /// the listener's address (`http://127.0.0.1:<port>` for an unspecified address).
    pub issuer: String,
    pub clients: Vec<DevClient>,
    /// Accepted `login_hint` values, e.g. `["demo@example.com"]`.
    pub users: Vec<String>,
    /// Sent as `interval` in the acknowledgement when `Some`.
    pub interval: Option<u64>,
    /// Answer this many token polls of each pending request with `slow_down` first.
    pub slow_down_polls: u32,
    /// Lifetime of a request when the client sends no `requested_expiry`, in seconds.
    pub default_expiry: u64,
}

impl Default for DevOpConfig {
    /// No clients, one user `demo@example.com`, issuer derived from the listener,
    /// no `interval`, no `slow_down`, 120 s expiry.
    fn default() -> Self {
        DevOpConfig {
            issuer: String::new(),
            clients: Vec::new(),
            users: vec!["demo@example.com".to_string()],
            interval: None,
            slow_down_polls: 0,
            default_expiry: 120,
        }
    }
}

/// A pending request as the approval page sees it (`GET /api/requests`). Holds no
/// token, secret or `auth_req_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    /// Opaque id for the approve/deny endpoints (not the `auth_req_id`).
    pub id: String,
    pub client_id: String,
    pub binding_message: Option<String>,
    pub scope: String,
    /// Unix time (seconds) when the request expires.
    pub expires_at: u64,
    /// Seconds left (so that a phone with a wrong clock still shows the right countdown).
    pub expires_in: u64,
    /// The user, masked (`d***@example.com`).
    pub user: String,
}

/// Why a decision could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevOpError {
    #[error("there is no authentication request with this id")]
    NotFound,
    #[error("this authentication request has already been approved or denied")]
    AlreadyDecided,
    #[error("this authentication request has expired")]
    Expired,
}

impl DevOpError {
    /// The `error` code in JSON answers of the approval API.
    pub fn code(&self) -> &'static str {
        match self {
            DevOpError::NotFound => "not_found",
            DevOpError::AlreadyDecided => "already_decided",
            DevOpError::Expired => "expired",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            DevOpError::NotFound => StatusCode::NOT_FOUND,
            DevOpError::AlreadyDecided => StatusCode::CONFLICT,
            DevOpError::Expired => StatusCode::GONE,
        }
    }
}

/// A running development OP. Serves until [`DevOp::shutdown`] (dropping the handle does
/// not stop it).
pub struct DevOp {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DevOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevOp")
            .field("issuer", &self.shared.issuer)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DevOp {
    /// Validates the configuration, generates a fresh ES256 key and serves on `listener`
    /// in the background. Errors (`InvalidInput`) on a bad issuer, duplicate client ids or
    /// a ping/push client without a notification endpoint.
    pub async fn spawn(listener: TcpListener, cfg: DevOpConfig) -> std::io::Result<DevOp> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(cfg, local_addr)?);
        tracing::warn!(
            issuer = %shared.issuer,
            "development OpenID Provider started: not for production (approval page at {}/)",
            shared.issuer
        );
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(DevOp {
            shared,
            local_addr,
            server,
        })
    }

    /// The issuer URL (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Pending, unexpired requests, oldest first (same data as `GET /api/requests`).
    pub fn pending(&self) -> Vec<PendingView> {
        self.shared.pending(Instant::now())
    }

    /// Approves or denies a pending request and sends the ping/push notification (in the
    /// background). `auth_req_id` may also be the opaque `id` of a [`PendingView`].
    pub async fn decide(&self, auth_req_id: &str, approve: bool) -> Result<(), DevOpError> {
        self.shared.decide(auth_req_id, approve)
    }

    /// Token-endpoint totals (the same as `GET /api/stats`).
    pub fn stats(&self) -> DevOpStats {
        self.shared.stats()
    }

    /// What the token endpoint saw for each request it still remembers.
    pub fn request_stats(&self) -> Vec<RequestStats> {
        let st = self.shared.lock();
        let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_millis() as u64;
        st.requests
            .values()
            .map(|r| RequestStats {
                id: r.view_id.clone(),
                approved: r.approved(),
                token_requests: r.token_requests,
                redemption_requests: r.redemption_requests,
                decided_after_ms: r.decided.map(|d| ms(r.created, d)),
                token_requests_after_ms: r
                    .token_request_times
                    .iter()
                    .map(|t| ms(r.created, *t))
                    .collect(),
            })
            .collect()
    }

    /// Stops accepting connections (open connections finish on their own).
    pub fn shutdown(&self) {
        self.server.abort();
    }
}

// ---------------------------------------------------------------------------------------
// State

struct Shared {
    issuer: String,
    /// The issuer URL's path without the trailing slash ("" for a root issuer).
    prefix: String,
    issuer_host: String,
    clients: HashMap<String, DevClient>,
    users: Vec<String>,
    interval: Option<u64>,
    slow_down_polls: u32,
    default_expiry: u64,
    key: EncodingKey,
    kid: String,
    jwks: Value,
    http: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By `auth_req_id`.
    requests: HashMap<String, AuthRequest>,
    /// Opaque view id → `auth_req_id`.
    by_view_id: HashMap<String, String>,
}

struct AuthRequest {
    view_id: String,
    client_id: String,
    user: String,
    scope: String,
    binding_message: Option<String>,
    created: Instant,
    deadline: Instant,
    expires_at: u64,
    notification_token: Option<String>,
    status: Status,
    polls: u32,
    /// Every token request for this `auth_req_id`.
    token_requests: u32,
    /// Token requests that arrived after the user approved (a client that redeems its
    /// grant once makes exactly one).
    redemption_requests: u32,
    /// When the user decided.
    decided: Option<Instant>,
    /// When each token request arrived (capped; for timing analysis in tests).
    token_request_times: Vec<Instant>,
}

/// What the token endpoint saw for one request (`DevOp::request_stats`). The id is the
/// opaque view id, never the `auth_req_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestStats {
    pub id: String,
    pub approved: bool,
    pub token_requests: u32,
    pub redemption_requests: u32,
    /// Milliseconds from the request's creation to the user's decision.
    pub decided_after_ms: Option<u64>,
    /// Milliseconds from the request's creation to each token request.
    pub token_requests_after_ms: Vec<u64>,
}

/// Totals over every request the OP still remembers (`GET /api/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevOpStats {
    pub requests: u64,
    pub approved: u64,
    pub token_requests: u64,
    /// Token requests for grants the user had approved.
    pub redemption_requests: u64,
    /// Approved requests whose grant was asked for more than once.
    pub double_redemptions: u64,
    /// Approved requests whose tokens were issued (token endpoint or push).
    pub tokens_issued: u64,
}

const MAX_TIMES_KEPT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Approved {
        auth_time: u64,
    },
    Denied,
    /// Tokens were handed out (token endpoint or push).
    Redeemed,
    /// Ran out of time undecided and the push client was told so.
    Expired,
}

struct Notification {
    url: String,
    bearer: String,
    body: Value,
    kind: &'static str,
}

fn invalid_input(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

impl Shared {
    fn new(cfg: DevOpConfig, local_addr: SocketAddr) -> std::io::Result<Shared> {
        let issuer = if cfg.issuer.trim().is_empty() {
            let ip = match local_addr.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, local_addr.port()))
        } else {
            cfg.issuer.trim().trim_end_matches('/').to_string()
        };
        let url = url::Url::parse(&issuer)
            .map_err(|e| invalid_input(format!("development OP issuer {issuer:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(invalid_input(format!(
                "development OP issuer {issuer:?} must be an http(s) URL without query or fragment"
            )));
        }
        let prefix = url.path().trim_end_matches('/').to_string();
        let issuer_host = url.host_str().unwrap_or_default().to_ascii_lowercase();

        let mut clients = HashMap::new();
        for c in cfg.clients {
            if c.client_id.is_empty() {
                return Err(invalid_input("development OP: empty client_id".into()));
            }
            if c.delivery != DeliveryMode::Poll {
                let Some(ep) = &c.notification_endpoint else {
                    return Err(invalid_input(format!(
                        "development OP client {:?}: {} mode needs a notification_endpoint",
                        c.client_id,
                        c.delivery.as_str()
                    )));
                };
                let ok = url::Url::parse(ep)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid_input(format!(
                        "development OP client {:?}: notification_endpoint {ep:?} is not an http(s) URL",
                        c.client_id
                    )));
                }
            }
            let id = c.client_id.clone();
            if clients.insert(id.clone(), c).is_some() {
                return Err(invalid_input(format!(
                    "development OP: client {id:?} is configured twice"
                )));
            }
        }

        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| std::io::Error::other("could not generate an ES256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| std::io::Error::other("could not load the generated ES256 key"))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(std::io::Error::other(
                "unexpected P-256 public key encoding",
            ));
        }
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = format!("dev-{}", &hex::encode(Sha256::digest(point))[..16]);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            "kid": kid, "alg": "ES256", "use": "sig",
        }]});
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());

        let http = reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| std::io::Error::other(format!("notification HTTP client: {e}")))?;

        Ok(Shared {
            issuer,
            prefix,
            issuer_host,
            clients,
            users: cfg.users,
            interval: cfg.interval,
            slow_down_polls: cfg.slow_down_polls,
            default_expiry: cfg.default_expiry.max(1),
            key,
            kid,
            jwks,
            http,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "backchannel_authentication_endpoint": self.endpoint("/backchannel"),
            "token_endpoint": self.endpoint("/token"),
            "jwks_uri": self.endpoint("/jwks"),
            "backchannel_token_delivery_modes_supported": ["poll", "ping", "push"],
            "backchannel_user_code_parameter_supported": false,
            "grant_types_supported": [CIBA_GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "response_types_supported": [],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "auth_time", "acr", "amr"],
            "acr_values_supported": [DEV_ACR],
            "ciba_gate_development_op": true,
            "ciba_gate_approval_page": self.endpoint("/"),
        })
    }

    fn stats(&self) -> DevOpStats {
        let st = self.lock();
        let mut out = DevOpStats::default();
        for r in st.requests.values() {
            out.requests += 1;
            out.token_requests += u64::from(r.token_requests);
            out.redemption_requests += u64::from(r.redemption_requests);
            if r.approved() {
                out.approved += 1;
                if r.status == Status::Redeemed {
                    out.tokens_issued += 1;
                }
                if r.redemption_requests > 1 {
                    out.double_redemptions += 1;
                }
            }
        }
        out
    }

    fn pending(&self, now: Instant) -> Vec<PendingView> {
        let mut st = self.lock();
        st.cleanup(now);
        let mut items: Vec<(&AuthRequest, PendingView)> = st
            .requests
            .values()
            .filter(|r| r.status == Status::Pending && now < r.deadline)
            .map(|r| (r, r.view(now)))
            .collect();
        items.sort_by_key(|(r, _)| r.created);
        items.into_iter().map(|(_, v)| v).collect()
    }
}

impl State {
    fn cleanup(&mut self, now: Instant) {
        let before = self.requests.len();
        self.requests
            .retain(|_, r| now < r.deadline + RETAIN_AFTER_EXPIRY);
        if self.requests.len() != before {
            let live: std::collections::HashSet<&str> =
                self.requests.keys().map(String::as_str).collect();
            self.by_view_id.retain(|_, a| live.contains(a.as_str()));
        }
    }
}

impl AuthRequest {
    fn approved(&self) -> bool {
        matches!(self.status, Status::Approved { .. } | Status::Redeemed)
    }

    fn view(&self, now: Instant) -> PendingView {
        PendingView {
            id: self.view_id.clone(),
            client_id: self.client_id.clone(),
            binding_message: self.binding_message.clone(),
            scope: self.scope.clone(),
            expires_at: self.expires_at,
            expires_in: self.deadline.saturating_duration_since(now).as_secs(),
            user: mask_user(&self.user),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// `binding_message` rule of this OP: the gateway's own `ciba-gate-dev` profile (one
/// implementation, so the development OP and the gateway can never disagree).
pub fn binding_message_ok(m: &str) -> bool {
    crate::approval::binding::Profile::named("ciba-gate-dev").is_some_and(|p| p.check(m).is_ok())
}

/// Bearer token syntax (RFC 6750 §2.1, `b64token`): `[A-Za-z0-9-._~+/]+=*`, ≤ 1024 chars.
pub fn bearer_token_syntax_ok(t: &str) -> bool {
    if t.is_empty() || t.len() > MAX_NOTIFICATION_TOKEN_LEN {
        return false;
    }
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// `d***@example.com`; names without `@` keep their first character only.
pub fn mask_user(user: &str) -> String {
    let (local, domain) = match user.split_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (user, None),
    };
    let first: String = local.chars().take(1).collect();
    match domain {
        Some(d) => format!("{first}***@{d}"),
        None => format!("{first}***"),
    }
}

/// The stable pseudonymous subject of a user: `user-` + 16 hex digits of a SHA-256.
pub fn subject_for(user: &str) -> String {
    let digest = Sha256::digest(format!("ciba-gate-dev-op:{user}").as_bytes());
    format!("user-{}", &hex::encode(digest)[..16])
}

/// `at_hash` / `rt_hash` for ES256: base64url of the left half of SHA-256 of the token.
pub fn half_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn normalize_scope(scope: &str) -> String {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    URL_SAFE_NO_PAD.encode(buf)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_specials() {
        assert_eq!(
            html_escape(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
        assert_eq!(html_escape("Deploy api to prod"), "Deploy api to prod");
    }

    #[test]
    fn binding_message_rules() {
        assert!(binding_message_ok(
            "Deploy api-v2 to prod? #42, ok: yes/no!"
        ));
        assert!(binding_message_ok(&"a".repeat(64)));
        assert!(!binding_message_ok(&"a".repeat(65)));
        assert!(!binding_message_ok(""));
        assert!(!binding_message_ok("<b>"));
        assert!(!binding_message_ok("a\nb"));
        assert!(!binding_message_ok("quote\""));
    }

    #[test]
    fn bearer_syntax() {
        assert!(bearer_token_syntax_ok("abcDEF012-._~+/=="));
        assert!(!bearer_token_syntax_ok("=="));
        assert!(!bearer_token_syntax_ok("has space"));
        assert!(!bearer_token_syntax_ok("a=b"));
        assert!(!bearer_token_syntax_ok(&"a".repeat(1025)));
    }

    #[test]
    fn masks_users() {
        assert_eq!(mask_user("demo@example.com"), "d***@example.com");
        assert_eq!(mask_user("alice"), "a***");
        assert_eq!(mask_user(""), "***");
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let b64 = STANDARD.encode("my%20client:s%3Acret+x%2B");
        assert_eq!(
            parse_basic_credentials(&b64),
            Some(("my client".to_string(), "s:cret x+".to_string()))
        );
        assert_eq!(parse_basic_credentials("!!!"), None);
        assert_eq!(parse_basic_credentials(&STANDARD.encode("nocolon")), None);
    }

    #[test]
    fn template_is_single_pass() {
        let out = render_template("a{{X}}b{{Y}}c{{Z}}{{", &[("X", "{{Y}}"), ("Y", "1")]);
        assert_eq!(out, "a{{Y}}b1c{{Z}}{{");
    }

    #[test]
    fn card_escapes_everything() {
        let v = PendingView {
            id: "id\"1".into(),
            client_id: "<img src=x onerror=alert(1)>".into(),
            binding_message: Some("<b>".into()),
            scope: "openid".into(),
            expires_at: 0,
            expires_in: 5,
            user: "a***@x".into(),
        };
        let html = render_card(&v);
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("data-id=\"id&quot;1\""));
    }

    #[test]
    fn hosts() {
        assert_eq!(host_name("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn subjects_are_stable() {
        assert_eq!(
            subject_for("demo@example.com"),
            subject_for("demo@example.com")
        );
        assert_ne!(
            subject_for("demo@example.com"),
            subject_for("other@example.com")
        );
        assert!(subject_for("x").starts_with("user-"));
    }
}
