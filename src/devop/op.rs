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

/// The CIBA grant type.
pub const CIBA_GRANT_TYPE: &str = "urn:openid:params:grant-type:ciba";
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

    // -- backchannel authentication endpoint ------------------------------------------

    fn backchannel(
        self: &Arc<Self>,
        headers: &HeaderMap,
        form: &Form,
    ) -> Result<Value, OAuthError> {
        let client = self.authenticate(headers, form)?;
        if form.get("request").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "signed authentication requests (request=) are not supported by the development OP",
            ));
        }
        if form.get("request_uri").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "request_uri is not supported by the development OP",
            ));
        }
        let hints = ["login_hint", "id_token_hint", "login_hint_token"];
        let present: Vec<&str> = hints
            .iter()
            .copied()
            .filter(|h| form.get(h).is_some())
            .collect();
        if present.len() != 1 {
            return Err(OAuthError::bad(
                "invalid_request",
                "exactly one of login_hint, id_token_hint and login_hint_token is required",
            ));
        }
        let scope = form.get("scope").unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(OAuthError::bad(
                "invalid_scope",
                "the scope must contain openid",
            ));
        }
        if present[0] != "login_hint" {
            return Err(OAuthError::bad(
                "invalid_request",
                "the development OP supports only login_hint",
            ));
        }
        let user = form.get("login_hint").unwrap_or_default();
        if !self.users.iter().any(|u| u == user) {
            return Err(OAuthError::bad(
                "unknown_user_id",
                "login_hint does not name a known user",
            ));
        }
        if form.get("user_code").is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                "user_code is not supported (backchannel_user_code_parameter_supported is false)",
            ));
        }
        let binding_message = form.get("binding_message").map(str::to_string);
        if let Some(bm) = &binding_message
            && !binding_message_ok(bm)
        {
            return Err(OAuthError::bad(
                "invalid_binding_message",
                "binding_message must be 1 to 64 letters, digits, spaces or -._+/!?#,:",
            ));
        }
        let lifetime = match form.get("requested_expiry") {
            None => self.default_expiry,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if (1..=MAX_REQUESTED_EXPIRY).contains(&n) && !s.starts_with('+') => n,
                _ => {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "requested_expiry must be a whole number of seconds from 1 to 600",
                    ));
                }
            },
        };
        let notification_token = match client.delivery {
            DeliveryMode::Poll => None,
            DeliveryMode::Ping | DeliveryMode::Push => {
                let Some(t) = form.get("client_notification_token") else {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_notification_token is required for ping and push clients",
                    ));
                };
                if !bearer_token_syntax_ok(t) {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_notification_token must use bearer token syntax and be at most 1024 characters",
                    ));
                }
                Some(t.to_string())
            }
        };

        let now = Instant::now();
        let deadline = now + Duration::from_secs(lifetime);
        let auth_req_id = random_token(32);
        let view_id = random_token(16);
        {
            let mut st = self.lock();
            st.cleanup(now);
            if st.requests.len() >= MAX_REQUESTS {
                return Err(OAuthError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "temporarily_unavailable",
                    description: "too many outstanding requests".into(),
                    basic_challenge: false,
                });
            }
            st.by_view_id.insert(view_id.clone(), auth_req_id.clone());
            st.requests.insert(
                auth_req_id.clone(),
                AuthRequest {
                    view_id: view_id.clone(),
                    client_id: client.client_id.clone(),
                    user: user.to_string(),
                    scope: normalize_scope(scope),
                    binding_message: binding_message.clone(),
                    created: now,
                    deadline,
                    expires_at: unix_now() + lifetime,
                    notification_token,
                    status: Status::Pending,
                    polls: 0,
                    token_requests: 0,
                    redemption_requests: 0,
                    decided: None,
                    token_request_times: Vec::new(),
                },
            );
        }
        tracing::info!(
            client_id = %client.client_id,
            request = %view_id,
            delivery = client.delivery.as_str(),
            binding_message = binding_message.as_deref().unwrap_or(""),
            expires_in = lifetime,
            "development OP: authentication request waiting for approval"
        );
        if client.delivery == DeliveryMode::Push {
            let shared = self.clone();
            let id = auth_req_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                shared.expire_push(&id);
            });
        }
        let mut ack = json!({"auth_req_id": auth_req_id, "expires_in": lifetime});
        if let Some(i) = self.interval {
            ack["interval"] = json!(i);
        }
        Ok(ack)
    }

    // -- token endpoint ----------------------------------------------------------------

    fn token(&self, headers: &HeaderMap, form: &Form) -> Result<Value, OAuthError> {
        let client = self.authenticate(headers, form)?;
        match form.get("grant_type") {
            None => {
                return Err(OAuthError::bad("invalid_request", "grant_type is missing"));
            }
            Some(CIBA_GRANT_TYPE) => {}
            Some(_) => {
                return Err(OAuthError::bad(
                    "unsupported_grant_type",
                    "the development OP supports only urn:openid:params:grant-type:ciba",
                ));
            }
        }
        if client.delivery == DeliveryMode::Push {
            // RFC 6749 §5.2 unauthorized_client: the *client* is not allowed to use this
            // grant at the token endpoint — push clients get their tokens at their
            // notification endpoint (CIBA §10.3), independent of any auth_req_id.
            return Err(OAuthError::bad(
                "unauthorized_client",
                "this client is registered for push delivery; tokens are pushed to its notification endpoint",
            ));
        }
        let Some(auth_req_id) = form.get("auth_req_id").filter(|s| !s.is_empty()) else {
            return Err(OAuthError::bad("invalid_request", "auth_req_id is missing"));
        };
        let now = Instant::now();
        let mut st = self.lock();
        st.cleanup(now);
        let Some(req) = st
            .requests
            .get_mut(auth_req_id)
            .filter(|r| r.client_id == client.client_id)
        else {
            return Err(OAuthError::bad(
                "invalid_grant",
                "auth_req_id is unknown or was issued to another client",
            ));
        };
        let expired = now >= req.deadline;
        req.token_requests = req.token_requests.saturating_add(1);
        if req.token_request_times.len() < MAX_TIMES_KEPT {
            req.token_request_times.push(now);
        }
        if matches!(req.status, Status::Approved { .. } | Status::Redeemed) {
            req.redemption_requests = req.redemption_requests.saturating_add(1);
        }
        match req.status {
            Status::Pending | Status::Approved { .. } | Status::Expired if expired => Err(
                OAuthError::bad("expired_token", "the authentication request has expired"),
            ),
            Status::Expired => Err(OAuthError::bad(
                "expired_token",
                "the authentication request has expired",
            )),
            Status::Pending => {
                req.polls = req.polls.saturating_add(1);
                if req.polls <= self.slow_down_polls {
                    Err(OAuthError::bad("slow_down", "poll less often"))
                } else {
                    Err(OAuthError::bad(
                        "authorization_pending",
                        "the user has not decided yet",
                    ))
                }
            }
            Status::Denied => Err(OAuthError::bad(
                "access_denied",
                "the user denied the request",
            )),
            Status::Redeemed => Err(OAuthError::bad(
                "invalid_grant",
                "the tokens for this auth_req_id were already issued",
            )),
            Status::Approved { auth_time } => {
                let body =
                    self.mint(req, auth_req_id, auth_time, false)
                        .map_err(|e| OAuthError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            code: "server_error",
                            description: e,
                            basic_challenge: false,
                        })?;
                req.status = Status::Redeemed;
                Ok(body)
            }
        }
    }

    /// The token response for an approved request. Push adds `auth_req_id` to the body
    /// and the `auth_req_id`, `at_hash` and `rt_hash` claims to the ID token.
    fn mint(
        &self,
        req: &AuthRequest,
        auth_req_id: &str,
        auth_time: u64,
        push: bool,
    ) -> Result<Value, String> {
        let access_token = random_token(32);
        let refresh_token = req
            .scope
            .split(' ')
            .any(|s| s == "offline_access")
            .then(|| random_token(32));
        let now = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(subject_for(&req.user)));
        claims.insert("aud".into(), json!(req.client_id));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + ID_TOKEN_LIFETIME));
        claims.insert("auth_time".into(), json!(auth_time));
        claims.insert("acr".into(), json!(DEV_ACR));
        claims.insert("amr".into(), json!(["user"]));
        if push {
            claims.insert(AUTH_REQ_ID_CLAIM.into(), json!(auth_req_id));
            claims.insert("at_hash".into(), json!(half_hash(&access_token)));
            if let Some(rt) = &refresh_token {
                claims.insert(RT_HASH_CLAIM.into(), json!(half_hash(rt)));
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let id_token = jsonwebtoken::encode(&header, &Value::Object(claims), &self.key)
            .map_err(|e| format!("could not sign the ID token: {e}"))?;
        let mut body = Map::new();
        if push {
            body.insert("auth_req_id".into(), json!(auth_req_id));
        }
        body.insert("access_token".into(), json!(access_token));
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("expires_in".into(), json!(ACCESS_TOKEN_LIFETIME));
        body.insert("id_token".into(), json!(id_token));
        if let Some(rt) = refresh_token {
            body.insert("refresh_token".into(), json!(rt));
        }
        body.insert("scope".into(), json!(req.scope));
        Ok(Value::Object(body))
    }

    // -- decisions ---------------------------------------------------------------------

    fn decide(self: &Arc<Self>, id: &str, approve: bool) -> Result<(), DevOpError> {
        let now = Instant::now();
        let notification = {
            let mut st = self.lock();
            st.cleanup(now);
            let auth_req_id = if st.requests.contains_key(id) {
                id.to_string()
            } else {
                st.by_view_id.get(id).cloned().ok_or(DevOpError::NotFound)?
            };
            let req = st
                .requests
                .get_mut(&auth_req_id)
                .ok_or(DevOpError::NotFound)?;
            match req.status {
                Status::Pending if now < req.deadline => {}
                Status::Pending | Status::Expired => return Err(DevOpError::Expired),
                _ => return Err(DevOpError::AlreadyDecided),
            }
            let client = self
                .clients
                .get(&req.client_id)
                .ok_or(DevOpError::NotFound)?;
            let auth_time = unix_now();
            req.decided = Some(now);
            req.status = if approve {
                Status::Approved { auth_time }
            } else {
                Status::Denied
            };
            tracing::info!(
                client_id = %req.client_id,
                request = %req.view_id,
                decision = if approve { "approved" } else { "denied" },
                "development OP: user decided"
            );
            let url = client.notification_endpoint.clone().unwrap_or_default();
            let bearer = req.notification_token.clone().unwrap_or_default();
            match client.delivery {
                DeliveryMode::Poll => None,
                DeliveryMode::Ping => Some(Notification {
                    url,
                    bearer,
                    body: json!({"auth_req_id": auth_req_id}),
                    kind: "ping",
                }),
                DeliveryMode::Push if approve => {
                    match self.mint(req, &auth_req_id, auth_time, true) {
                        Ok(body) => {
                            req.status = Status::Redeemed;
                            Some(Notification {
                                url,
                                bearer,
                                body,
                                kind: "push",
                            })
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "development OP: push token minting failed");
                            Some(Notification {
                                url,
                                bearer,
                                body: json!({"error": "transaction_failed", "auth_req_id": auth_req_id}),
                                kind: "push error",
                            })
                        }
                    }
                }
                DeliveryMode::Push => Some(Notification {
                    url,
                    bearer,
                    body: json!({"error": "access_denied", "auth_req_id": auth_req_id}),
                    kind: "push error",
                }),
            }
        };
        if let Some(n) = notification {
            tokio::spawn(self.clone().notify(n));
        }
        Ok(())
    }

    /// Called when a push request's deadline passes: if still undecided, tell the client.
    fn expire_push(self: &Arc<Self>, auth_req_id: &str) {
        let notification = {
            let mut st = self.lock();
            let Some(req) = st.requests.get_mut(auth_req_id) else {
                return;
            };
            if req.status != Status::Pending {
                return;
            }
            req.status = Status::Expired;
            let Some(client) = self.clients.get(&req.client_id) else {
                return;
            };
            Notification {
                url: client.notification_endpoint.clone().unwrap_or_default(),
                bearer: req.notification_token.clone().unwrap_or_default(),
                body: json!({"error": "expired_token", "auth_req_id": auth_req_id}),
                kind: "push error",
            }
        };
        tokio::spawn(self.clone().notify(notification));
    }

    async fn notify(self: Arc<Self>, n: Notification) {
        let result = self
            .http
            .post(&n.url)
            .bearer_auth(&n.bearer)
            .json(&n.body)
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(kind = n.kind, endpoint = %n.url, "development OP: notification delivered");
            }
            Ok(r) => tracing::warn!(
                kind = n.kind,
                endpoint = %n.url,
                status = r.status().as_u16(),
                "development OP: notification rejected by the client (not retried)"
            ),
            Err(e) => tracing::warn!(
                kind = n.kind,
                endpoint = %n.url,
                error = %e,
                "development OP: notification failed (not retried)"
            ),
        }
    }

    // -- client authentication ---------------------------------------------------------

    fn authenticate(&self, headers: &HeaderMap, form: &Form) -> Result<&DevClient, OAuthError> {
        let basic = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| OAuthError::client("malformed Authorization header", true))?;
                let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("basic") {
                    return Err(OAuthError::client(
                        "use client_secret_basic or client_secret_post",
                        true,
                    ));
                }
                Some(
                    parse_basic_credentials(rest.trim())
                        .ok_or_else(|| OAuthError::client("malformed Basic credentials", true))?,
                )
            }
        };
        let post_secret = form.get("client_secret");
        let form_id = form.get("client_id");
        let (client_id, secret, via_basic) = match (basic, post_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "use only one client authentication method",
                ));
            }
            (Some((id, secret)), None) => {
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "client_id in the body differs from the Basic credentials",
                    ));
                }
                (id, secret, true)
            }
            (None, Some(secret)) => {
                let Some(id) = form_id else {
                    return Err(OAuthError::client("client_id is missing", false));
                };
                (id.to_string(), secret.to_string(), false)
            }
            (None, None) => {
                return Err(OAuthError::client(
                    "client authentication is required",
                    true,
                ));
            }
        };
        let Some(client) = self.clients.get(&client_id) else {
            return Err(OAuthError::client(
                "client authentication failed",
                via_basic,
            ));
        };
        let same: bool = client.secret.as_bytes().ct_eq(secret.as_bytes()).into();
        if !same {
            return Err(OAuthError::client(
                "client authentication failed",
                via_basic,
            ));
        }
        Ok(client)
    }

    // -- host checks for the approval page ---------------------------------------------

    /// Guards the page and its API against DNS rebinding: the Host must be an IP
    /// literal, `localhost` or the issuer's host name.
    fn host_allowed(&self, headers: &HeaderMap, uri: &http::Uri) -> bool {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
        let Some(host) = host else {
            return true;
        };
        let name = host_name(&host).to_ascii_lowercase();
        name == "localhost"
            || name == self.issuer_host
            || name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
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
// HTTP

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "development OP: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |r| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, r).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(shared.prefix.as_str()) else {
        return not_found();
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match rest {
        "/.well-known/openid-configuration" if get => {
            json_response(StatusCode::OK, &shared.discovery())
        }
        "/jwks" if get => json_response(StatusCode::OK, &shared.jwks),
        "/backchannel" | "/token" if method == Method::POST => {
            let (parts, body) = req.into_parts();
            let form = match read_form(&parts.headers, body).await {
                Ok(f) => f,
                Err(e) => return e.response(),
            };
            let result = if rest == "/token" {
                shared.token(&parts.headers, &form)
            } else {
                shared.backchannel(&parts.headers, &form)
            };
            match result {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => e.response(),
            }
        }
        "/" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            page(&shared)
        }
        "/api/requests" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            json_response(StatusCode::OK, &json!(shared.pending(Instant::now())))
        }
        "/api/stats" if get => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            json_response(StatusCode::OK, &json!(shared.stats()))
        }
        p if method == Method::POST && p.starts_with("/api/requests/") => {
            if !shared.host_allowed(req.headers(), req.uri()) {
                return misdirected();
            }
            if cross_site(req.headers()) {
                return api_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-site requests cannot approve or deny",
                );
            }
            let tail = &p["/api/requests/".len()..];
            let (id, approve) = match tail.rsplit_once('/') {
                Some((id, "approve")) => (id, true),
                Some((id, "deny")) => (id, false),
                _ => return not_found(),
            };
            let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
            match shared.decide(&id, approve) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
                Err(e) => api_error(e.status(), e.code(), &e.to_string()),
            }
        }
        "/.well-known/openid-configuration" | "/jwks" | "/" | "/api/requests" | "/api/stats" => {
            method_not_allowed("GET, HEAD")
        }
        "/backchannel" | "/token" => method_not_allowed("POST"),
        _ => not_found(),
    }
}

fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return true;
    }
    // An Origin that does not match the Host means another site's page is posting.
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some("null"), _) => true,
        (Some(o), Some(h)) => match url::Url::parse(o) {
            Ok(u) => {
                let authority = match (u.host_str(), u.port()) {
                    (Some(hs), Some(p)) => format!("{hs}:{p}"),
                    (Some(hs), None) => hs.to_string(),
                    _ => return true,
                };
                !authority.eq_ignore_ascii_case(h)
            }
            Err(_) => true,
        },
        _ => false,
    }
}

fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn page(shared: &Shared) -> Resp {
    let now = Instant::now();
    let pending = shared.pending(now);
    let cards: String = pending.iter().map(render_card).collect();
    let nonce = random_token(16);
    let issuer = html_escape(&shared.issuer);
    let html = render_template(
        include_str!("approval_page.html"),
        &[
            ("CARDS", &cards),
            (
                "EMPTY_HIDDEN",
                if pending.is_empty() { "" } else { " hidden" },
            ),
            ("ISSUER", &issuer),
            ("NONCE", &nonce),
        ],
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    r
}

/// One pending request as server-rendered HTML (the page's script renders the same
/// structure from the JSON API afterwards). Every text is escaped.
fn render_card(v: &PendingView) -> String {
    let id = html_escape(&v.id);
    let bm = match &v.binding_message {
        Some(m) => format!("<p class=\"bm\">{}</p>", html_escape(m)),
        None => "<p class=\"bm none\">(no binding message)</p>".to_string(),
    };
    format!(
        "<article class=\"card\" data-id=\"{id}\" data-request=\"\">{bm}\
         <p class=\"meta\"><b class=\"client\">{client}</b> asks <b class=\"user\">{user}</b></p>\
         <p class=\"meta\">scope {scope} · <span class=\"left\" data-expires-in=\"{left}\">{left} s left</span></p>\
         <div class=\"actions\">\
         <button type=\"button\" class=\"approve\" id=\"approve-{id}\" data-action=\"approve\" data-id=\"{id}\">Approve</button>\
         <button type=\"button\" class=\"deny\" id=\"deny-{id}\" data-action=\"deny\" data-id=\"{id}\">Deny</button>\
         </div></article>",
        client = html_escape(&v.client_id),
        user = html_escape(&v.user),
        scope = html_escape(&v.scope),
        left = v.expires_in,
    )
}

/// Replaces `{{NAME}}` markers in one pass; substituted values are never re-scanned.
fn render_template(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("{{");
                        out.push_str(name);
                        out.push_str("}}");
                    }
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Forms and errors

/// A decoded `application/x-www-form-urlencoded` body (each name at most once).
#[derive(Debug, Default)]
struct Form(HashMap<String, String>);

impl Form {
    /// The value, with empty values treated as absent (RFC 6749 §3.1).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

async fn read_form(headers: &HeaderMap, body: Incoming) -> Result<Form, OAuthError> {
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

fn parse_form(bytes: &[u8]) -> Result<Form, OAuthError> {
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
fn parse_basic_credentials(b64: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    basic_challenge: bool,
}

impl OAuthError {
    fn bad(code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn client(description: &str, basic_challenge: bool) -> OAuthError {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: description.into(),
            basic_challenge,
        }
    }

    fn response(&self) -> Resp {
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

fn json_response(status: StatusCode, v: &Value) -> Resp {
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

fn api_error(status: StatusCode, code: &str, description: &str) -> Resp {
    json_response(
        status,
        &json!({"error": code, "error_description": description}),
    )
}

fn not_found() -> Resp {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn misdirected() -> Resp {
    api_error(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected_request",
        "unexpected Host header (DNS rebinding protection)",
    )
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// `binding_message` rule of this OP: 1 to 64 characters, each a letter, digit, space or
/// one of `-._+/!?#,:`.
pub fn binding_message_ok(m: &str) -> bool {
    let n = m.chars().count();
    (1..=MAX_BINDING_MESSAGE_CHARS).contains(&n)
        && m.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "-._+/!?#,:".contains(c))
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
