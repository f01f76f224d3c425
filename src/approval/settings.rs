//! The approval subsystem's resolved settings: how a call waits, for how long, and the
//! rate limits on new requests (from `approvals.*` in the config).

use std::time::Duration;

use serde::Serialize;

/// How a held call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Keep the request open until the decision or the deadline.
    Hold,
    /// Answer at once with "pending"; the identical retry picks up the decision.
    Park,
}

/// A rate limit: at most `limit` new approval requests per `window`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub limit: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// Resolved approval settings (from config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// Longest a call is held, whatever the OP's expiry says.
    pub max_wait: Duration,
    /// Longest a hold runs without a stream that can carry keep-alives; longer waits park.
    pub max_plain_wait: Duration,
    pub keepalive: Duration,
    pub progress_interval: Duration,
    pub park_retry_after: Duration,
    pub ping_fallback_poll: Duration,
    /// How long a final non-granted answer (denied, expired, failed) is kept for retries.
    pub result_ttl: Duration,
    pub per_agent: Option<Limit>,
    pub per_user: Option<Limit>,
    pub per_action: Option<Limit>,
    pub denial_cooldown: Duration,
    pub send_authorization_details: bool,
    /// `approvals.accept_identity`: the agent may name the end user with an ID token.
    pub accept_identity: bool,
    /// Some upstream takes approvers' access tokens: grants keep theirs, sealed.
    pub keep_access_tokens: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Hold,
            max_wait: Duration::from_secs(300),
            max_plain_wait: Duration::from_secs(50),
            keepalive: Duration::from_secs(15),
            progress_interval: Duration::from_secs(10),
            park_retry_after: Duration::from_secs(5),
            ping_fallback_poll: Duration::from_secs(30),
            result_ttl: Duration::from_secs(60),
            per_agent: None,
            per_user: None,
            per_action: None,
            denial_cooldown: Duration::from_secs(0),
            send_authorization_details: false,
            accept_identity: false,
            keep_access_tokens: false,
        }
    }
}
