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
mod state;
mod token;

use oauth::*;
use page::*;
use server::*;

/// The CIBA grant type.
pub use crate::ciba::CIBA_GRANT_TYPE;
use state::*;
pub use state::{DevOpStats, RequestStats};
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
mod tests;
