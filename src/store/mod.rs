//! Where pending approvals live. The store knows records, states and expiry — not CIBA
//! wire formats, not HTTP. Every state change that matters is atomic: create-or-join,
//! claim-the-redemption (one token request at a time per approval), record-a-result-once,
//! consume-once. `memory` is the embedded default (one process,
//! `dev`); `redis` is shared by replicas (pending approvals survive a restart of the
//! gateway). Both pass the same contract tests (`tests/store_contract.rs`).

pub mod config;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Record made; the CIBA request is being sent or the user has not answered yet.
    Pending,
    /// The user approved and the ID token checked out; waiting to be consumed once.
    Granted,
    /// The user said no.
    Denied,
    /// Nobody answered in time.
    Expired,
    /// The OP or the validation failed; `failure` says how.
    Failed,
    /// A granted approval that has been used by its call.
    Consumed,
}

impl Status {
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending)
    }
}

/// What the approver's ID token proved (no raw identifiers: the subject is a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Approver {
    pub subject_hash: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: Option<i64>,
    /// The OP's access token from the grant, sealed (`approval::token_seal`): kept only
    /// when an upstream asks for approvers' tokens, opened only for this approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_access_token: Option<String>,
}

/// One approval, keyed by the fingerprint of the exact call it approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub fingerprint: String,
    pub status: Status,
    /// Set once the OP acknowledged the request. Never logged.
    pub auth_req_id: Option<String>,
    /// SHA-256 of the ping/push notification token (the token itself is never stored).
    pub notification_token_hash: Option<String>,
    pub binding_message: String,
    pub action: String,
    /// Keyed hash of the user hint (throttling and audit without the raw identifier).
    pub user_key: String,
    pub created_at_ms: u64,
    /// When the wait ends whatever happens (min of the OP's expiry and the configured max).
    pub deadline_ms: u64,
    pub expires_in: Option<u64>,
    pub interval: Option<u64>,
    pub approver: Option<Approver>,
    /// Reason code when Failed (or the OP's error when Denied/Expired).
    pub failure: Option<String>,
    /// W3C `traceparent` of the call that started the request: a later call that joins
    /// it (a parked call's retry) links its trace to that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Which party brought the answer: `poll` (the token endpoint, polled), `ping` (a
    /// ping callback, then one token request), `push` (the tokens pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_via: Option<String>,
}

impl ApprovalRecord {
    pub fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(now_ms))
    }
}

/// The final word on an approval, recorded exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Granted(Approver),
    Denied(String),
    Expired,
    /// With a `Failure` code, or the OP's own error code as the OP sent it.
    Failed(String),
}

/// The failure codes the gateway itself stores on a Failed record (an OP's error code
/// is stored as the OP sent it). `outcome::Reason::from_failure` reads them back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum Failure {
    /// The record's creator died before the OP acknowledged it (also written by
    /// `redis/lua/fail_unack.lua`).
    RequestLost,
    /// A quorum member's record vanished from the store.
    ApprovalLost,
    /// A quorum's approvals came from fewer distinct people than it needs.
    ApproversNotDistinct,
    /// The store failed while the request was being recorded.
    StoreUnavailable,
    /// The ID token from the OP's token endpoint failed validation.
    InvalidIdToken,
    /// Failed without a code.
    ApprovalFailed,
}

impl Failure {
    pub fn code(self) -> &'static str {
        self.into()
    }
}

impl From<Failure> for Resolution {
    fn from(f: Failure) -> Resolution {
        Resolution::Failed(f.code().to_owned())
    }
}

/// What `create_or_join` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// This caller made the record and must start the CIBA request.
    Created,
    /// A record already exists for the fingerprint.
    Existing(Box<ApprovalRecord>),
}

/// What `claim_redemption` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This caller holds the claim: it alone may ask the OP's token endpoint now.
    Taken,
    /// Another party (a ping handler, a poll loop, another replica) holds it: its result
    /// or its release will be announced as a change of the record.
    Busy,
    /// The record is no longer pending, or gone: there is nothing left to redeem.
    Finished,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("approval store unavailable: {0}")]
    Unavailable(String),
    #[error("approval store data is corrupt: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Creates the record if no record exists for its fingerprint, else returns the existing one.
    /// The record lives until `deadline + grace`.
    async fn create_or_join(
        &self,
        record: ApprovalRecord,
        grace: Duration,
    ) -> Result<Joined, StoreError>;

    async fn get(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError>;

    /// Records the OP's acknowledgement on a pending record (and indexes the auth_req_id).
    async fn set_acknowledged(
        &self,
        fingerprint: &str,
        auth_req_id: &str,
        expires_in: u64,
        interval: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), StoreError>;

    /// Moves a pending record to its final state. Returns false if it was not pending
    /// (someone else resolved it first, or it is gone): the first answer wins. A final
    /// "no" (denied, expired, failed) is then kept only for the grace period.
    async fn resolve(&self, fingerprint: &str, resolution: Resolution) -> Result<bool, StoreError> {
        self.resolve_via(fingerprint, resolution, None).await
    }

    /// `resolve`, recording which party brought the answer (`poll`, `ping`, `push`).
    async fn resolve_via(
        &self,
        fingerprint: &str,
        resolution: Resolution,
        via: Option<&'static str>,
    ) -> Result<bool, StoreError>;

    /// Takes a granted approval for use, exactly once: returns the record (status
    /// Consumed) only to the one caller that took it, and forgets it, so that a later
    /// identical call needs a new approval.
    async fn consume(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError>;

    /// Forgets a record (a later identical call then needs a new approval).
    async fn remove(&self, fingerprint: &str) -> Result<(), StoreError>;

    async fn find_by_auth_req_id(&self, auth_req_id: &str) -> Result<Option<String>, StoreError>;

    async fn find_by_notification_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Waits until the record changes (or `timeout` passes). Waiters must re-read after
    /// waking: a change notice carries no state, and a missed one only costs a timeout.
    async fn wait_change(&self, fingerprint: &str, timeout: Duration);

    /// Counts one event under `key` in a fixed window; false once `limit` is exceeded.
    async fn rate_limit(&self, key: &str, limit: u32, window: Duration)
    -> Result<bool, StoreError>;

    /// Remembers a denial for `user_key` for `cooldown`.
    async fn note_denial(&self, user_key: &str, cooldown: Duration) -> Result<(), StoreError>;

    /// True while a recent denial for `user_key` is remembered.
    async fn recently_denied(&self, user_key: &str) -> Result<bool, StoreError>;

    /// Takes or renews the poll lease of a record: true if `owner` now holds it for
    /// `ttl` (it was free, expired, or already `owner`'s). At most one replica polls the
    /// OP for a given request; when the holder dies the lease runs out and another
    /// replica takes over.
    async fn acquire_lease(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up if `owner` holds it.
    async fn release_lease(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError>;

    /// Takes the redemption claim of a pending record, atomically with checking that it
    /// is pending: `Taken` if `owner` now holds it for `ttl` (it was free, had run out, or
    /// was already `owner`'s). Only the holder asks the token endpoint, so across the
    /// callback listener, the poll loop and every replica there is at most one token
    /// request in flight per approval, and none once a result is recorded: `resolve`
    /// (and every other end of the record) drops the claim in the same step. A claim
    /// runs out only when its holder died or stalled past `ttl`.
    async fn claim_redemption(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError>;

    /// Gives the redemption claim up if `owner` holds it (its token request did not end
    /// the approval: not decided yet, slow down, OP unreachable), and announces the change
    /// so that a party waiting for the claim tries again.
    async fn release_redemption(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError>;

    /// A record still pending without an `auth_req_id` that was created before
    /// `created_before_ms` (its creator died before the OP acknowledged) becomes
    /// Failed(`Failure::RequestLost`). True if this call did it.
    async fn fail_unacknowledged(
        &self,
        fingerprint: &str,
        created_before_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Forgets a record only if it is Failed with reason `code` (a lost request, so the
    /// retry can start a fresh one). True if it was removed.
    async fn remove_failed(&self, fingerprint: &str, code: &str) -> Result<bool, StoreError>;

    /// True if `consume` took this fingerprint's approval within the last grace period
    /// (tells "used by an identical call" apart from "the store lost it").
    async fn recently_consumed(&self, fingerprint: &str) -> Result<bool, StoreError>;

    /// A cheap reachability check (readiness probe). An embedded store is always there.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}
