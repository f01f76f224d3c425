//! Approval orchestration: turns a policy's `approve` into a CIBA request, binds it to
//! the exact call (fingerprint), lets identical calls join one pending request, waits
//! (hold) or answers "pending" (park), and hands out a granted approval exactly once.
//! It never forwards anything itself: the proxy re-checks policy with the approver's
//! evidence and forwards only on `allow`.

mod approvers;
pub mod binding;
pub mod callback;
pub mod config;
pub mod driver;
mod evidence;
pub mod identity;
mod params;
mod quorum;
pub mod request_state;
mod settings;
mod throttle;
pub mod token_seal;

pub use approvers::{Approver, Approvers, MAX_APPROVERS};
pub use evidence::ApprovalEvidence;
pub use params::ApprovalParams;
pub use quorum::{MemberEvidence, QuorumEvidence, approvals_used};
pub use settings::{Limit, Mode, Settings};
use throttle::Throttle;

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::ciba::{AuthRequest, CibaClient, DeliveryMode, UserHint};
use crate::outcome::Reason;
use crate::store::{ApprovalRecord, ApprovalStore, Failure, Joined, Status, now_ms};
use binding::Profile;

/// A call that policy says needs approval.
pub struct CallForApproval<'a> {
    pub agent: &'a str,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub arguments: &'a Value,
    /// The policy's `approval` object.
    pub params: &'a Value,
    /// This call's W3C traceparent (when traces are exported), stored with a request
    /// it starts.
    pub trace_parent: Option<String>,
    /// The end user the agent proved the call is for (`x-ciba-gate-identity`).
    pub identity: Option<&'a identity::Identity>,
    /// The tool server's audience (`approval_token.audience`): asked for as the
    /// access token's `resource` (RFC 8707).
    pub resource: Option<&'a str>,
    /// The digest a tool server recomputes from the call it receives
    /// (`verify::call_digest`), carried in `authorization_details`.
    pub call_digest: String,
}

/// A call's place in the approval flow.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The call's fingerprint: the store key of its approval (of its quorum record when
    /// several people are asked) and what a sealed `requestState` names.
    pub fingerprint: String,
    pub params: ApprovalParams,
    /// True when this call started a CIBA request (false: it joined existing ones).
    pub started: bool,
    pub deadline_ms: u64,
    /// With a quorum: one approval per person asked, in the policy's order (else empty).
    pub members: Vec<Member>,
    /// The traceparent of the call that started the request this call joined.
    pub joined_trace: Option<String>,
}

/// One person's approval within a quorum: its own store record and CIBA request.
#[derive(Debug, Clone)]
pub struct Member {
    /// The store key of this person's approval.
    pub key: String,
    pub approver: Approver,
    /// True when this call sent this person's CIBA request.
    pub started: bool,
}

/// The result of waiting. Each variant carries the records read (one, or one per person
/// asked), for evidence.
#[derive(Debug, Clone)]
pub enum Settled {
    /// Granted (by every person required), and this call took it (single use): re-check
    /// policy with the approvers' evidence, then forward.
    Approved(Vec<ApprovalRecord>),
    /// Not decided yet (park mode, or the hold's time is up for this request).
    Pending(Vec<ApprovalRecord>),
    /// Ended without a grant this call may use: why, and the records (for evidence).
    Blocked(Reason, Vec<ApprovalRecord>),
}

/// What the approval subsystem is built from.
pub struct ApprovalsParts {
    pub ciba: Arc<CibaClient>,
    pub store: Arc<dyn ApprovalStore>,
    pub settings: Settings,
    pub profile: Profile,
    /// The user asked (whose phone).
    pub hint: UserHint,
    pub user_code: Option<String>,
    /// HMAC key for requestState and keyed hashes (shared by replicas).
    pub key: Vec<u8>,
}

pub struct Approvals {
    pub ciba: Arc<CibaClient>,
    pub store: Arc<dyn ApprovalStore>,
    pub settings: Settings,
    pub profile: Profile,
    /// The configured user (asked unless the policy names someone else).
    user: Approver,
    user_code: Option<String>,
    /// HMAC key for requestState and keyed hashes.
    key: Vec<u8>,
    /// Seals the access tokens grants keep (key derived from `key`).
    pub(crate) seal: token_seal::TokenSeal,
    /// This process's name as a poll-lease holder (random per start).
    pub(crate) instance: String,
    /// Fingerprints with a driver (creator or resume) running in this process.
    pub(crate) local_drivers: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What `join_or_start` found: whether this call started the request, its deadline,
/// and (when it joined) the traceparent of the call that started it.
struct Joining {
    started: bool,
    deadline_ms: u64,
    trace_parent: Option<String>,
}

impl Joining {
    fn joined(existing: &ApprovalRecord) -> Self {
        Joining {
            started: false,
            deadline_ms: existing.deadline_ms,
            trace_parent: existing.trace_parent.clone(),
        }
    }
}

/// A record still pending without an `auth_req_id` this long after it was created has
/// lost its creator (it died before the OP acknowledged): it becomes `request_lost`.
fn ack_lost_after(http_timeout: Duration) -> Duration {
    http_timeout * 2 + Duration::from_secs(10)
}

impl Approvals {
    pub fn new(parts: ApprovalsParts) -> Arc<Self> {
        let ApprovalsParts {
            ciba,
            store,
            settings,
            profile,
            hint,
            user_code,
            key,
        } = parts;
        let user = Approver {
            key: keyed_hash(&key, "user", hint.value()),
            hint,
            configured: true,
            subject_hash: None,
        };
        Arc::new(Approvals {
            ciba,
            store,
            settings,
            profile,
            user,
            user_code,
            seal: token_seal::TokenSeal::new(&key),
            key,
            instance: format!("{:032x}", rand::random::<u128>()),
            local_drivers: Default::default(),
        })
    }

    /// Marks `fingerprint` as driven by this process; false if a driver already runs here.
    pub(crate) fn claim_driver(&self, fingerprint: &str) -> bool {
        self.local_drivers
            .lock()
            .map(|mut s| s.insert(fingerprint.to_string()))
            .unwrap_or(false)
    }

    pub(crate) fn release_driver(&self, fingerprint: &str) {
        if let Ok(mut s) = self.local_drivers.lock() {
            s.remove(fingerprint);
        }
    }

    /// Another replica (or a previous run of this one) started this request and may be
    /// gone: a resume driver polls the OP from the stored auth_req_id whenever the poll
    /// lease is free, so the request is never stranded. Nothing to poll in push mode
    /// (the OP pushes to whichever replica its load balancer picks).
    fn ensure_driver(self: &Arc<Self>, rec: &ApprovalRecord) {
        if rec.status != Status::Pending
            || rec.auth_req_id.is_none()
            || self.ciba.config().delivery == DeliveryMode::Push
            || !self.claim_driver(&rec.fingerprint)
        {
            return;
        }
        let this = self.clone();
        let fp = rec.fingerprint.clone();
        tokio::spawn(async move { driver::resume(this, fp).await });
    }

    pub fn state_key(&self) -> &[u8] {
        &self.key
    }

    /// The approver's access token kept with a grant, for an upstream that asks for it;
    /// `None` when none was kept or it does not open for this record.
    pub fn access_token(&self, record: &ApprovalRecord) -> Option<secrecy::SecretString> {
        let sealed = record.approver.as_ref()?.sealed_access_token.as_deref()?;
        self.seal.open(record.auth_req_id.as_deref()?, sealed)
    }

    /// The keyed hash that names the person behind an ID token (issuer and subject).
    pub fn subject_hash(&self, issuer: &str, subject: &str) -> String {
        self.pseudonym("sub", &format!("{issuer}|{subject}"))
    }

    /// A keyed hash: pseudonymous identifiers for evidence and throttling.
    pub fn pseudonym(&self, purpose: &str, value: &str) -> String {
        keyed_hash(&self.key, purpose, value)
    }

    /// When a request made at `created_at` gives up: the policy's `requested_expiry`,
    /// never later than `max_wait` (saturating: a policy's huge number is not a wrap).
    pub(crate) fn deadline_from(&self, created_at_ms: u64, params: &ApprovalParams) -> u64 {
        let max_wait_ms = u64::try_from(self.settings.max_wait.as_millis()).unwrap_or(u64::MAX);
        let requested_ms = params
            .requested_expiry
            .map_or(max_wait_ms, |secs| secs.saturating_mul(1000));
        created_at_ms.saturating_add(requested_ms.min(max_wait_ms))
    }

    /// The fingerprint of the exact call, and of who is asked when the policy names
    /// someone other than the configured user: the same call for two approvers is two
    /// approvals, and a quorum (who is asked, how many must say yes) is one of its own.
    pub fn fingerprint(&self, call: &CallForApproval<'_>) -> String {
        let mut doc = json!({
            "agent": call.agent,
            "upstream": call.upstream,
            "tool": call.tool,
            "arguments": call.arguments,
        });
        match self.approvers(call.params, call.identity) {
            Ok(a) if a.is_quorum() => {
                let mut keys: Vec<&str> = a.asked.iter().map(|x| x.key.as_str()).collect();
                keys.sort_unstable();
                doc["approvers"] = json!(keys);
                doc["required"] = json!(a.required);
            }
            Ok(a) if a.primary().configured => {}
            Ok(a) => doc["approver"] = Value::String(a.primary().key.clone()),
            // Refused by `prepare`; never the configured user's fingerprint.
            Err(_) => doc["approver"] = Value::String("invalid".into()),
        }
        crate::fingerprint::of_json(&doc)
    }

    /// Finds or starts the approval for this call. Fails closed: any store problem blocks.
    pub async fn prepare(self: &Arc<Self>, call: &CallForApproval<'_>) -> Result<Ticket, Reason> {
        let params = self.parse_params(call.params, call.identity)?;
        let fingerprint = self.fingerprint(call);
        if params.approvers.is_quorum() {
            return quorum::prepare(self, call, params, fingerprint).await;
        }
        let approver = params.approvers.primary().clone();
        let j = self
            .join_or_start(call, &params, &approver, &fingerprint, Throttle::Check)
            .await?;
        Ok(Ticket {
            fingerprint,
            params,
            started: j.started,
            deadline_ms: j.deadline_ms,
            members: Vec::new(),
            joined_trace: j.trace_parent,
        })
    }

    /// Joins the approval stored under `key` or starts it: one CIBA request asking
    /// `approver`. Returns whether this call started it, and its deadline.
    async fn join_or_start(
        self: &Arc<Self>,
        call: &CallForApproval<'_>,
        params: &ApprovalParams,
        approver: &Approver,
        key: &str,
        throttle: Throttle,
    ) -> Result<Joining, Reason> {
        let fingerprint = key.to_string();
        let unavailable = |e: crate::store::StoreError| Reason::StoreUnavailable(e.to_string());
        // A call that joins an existing request is never throttled: it prompts nobody.
        let mut existing = self.store.get(&fingerprint).await.map_err(unavailable)?;
        // A lost request (its creator died before the OP acknowledged) is forgotten,
        // only if it still is that record, so this call starts a fresh one.
        if existing.as_ref().is_some_and(|r| {
            r.status == Status::Failed && r.failure.as_deref() == Some(Failure::RequestLost.code())
        }) && self
            .store
            .remove_failed(&fingerprint, Failure::RequestLost.code())
            .await
            .map_err(unavailable)?
        {
            existing = None;
        }
        if let Some(existing) = existing {
            self.ensure_driver(&existing);
            return Ok(Joining::joined(&existing));
        }
        if throttle == Throttle::Check {
            self.throttle(approver, &params.action, call.agent).await?;
        }

        let created_at = now_ms();
        let provisional_deadline = self.deadline_from(created_at, params);
        let delivery = self.ciba.config().delivery;
        let notification_token = matches!(delivery, DeliveryMode::Ping | DeliveryMode::Push)
            .then(crate::ciba::new_notification_token);
        let record = ApprovalRecord {
            fingerprint: fingerprint.clone(),
            status: Status::Pending,
            auth_req_id: None,
            // Recorded before the request is sent: a ping can beat the acknowledgement.
            notification_token_hash: notification_token.as_deref().map(crate::ciba::token_hash),
            binding_message: params.binding_message.clone(),
            action: params.action.clone(),
            user_key: approver.key.clone(),
            created_at_ms: created_at,
            deadline_ms: provisional_deadline,
            expires_in: None,
            interval: None,
            approver: None,
            failure: None,
            trace_parent: call.trace_parent.clone(),
            delivered_via: None,
        };
        match self
            .store
            .create_or_join(record, self.settings.result_ttl)
            .await
            .map_err(unavailable)?
        {
            Joined::Existing(existing) => {
                self.ensure_driver(&existing);
                Ok(Joining::joined(&existing))
            }
            Joined::Created => {
                let request = AuthRequest {
                    scope: params.scope.clone(),
                    hint: approver.hint.clone(),
                    binding_message: Some(params.binding_message.clone()),
                    // The configured user's code is theirs alone.
                    user_code: self.user_code.clone().filter(|_| approver.configured),
                    acr_values: params.acr_values.clone(),
                    // Never ask the user for longer than the call will wait: the phone's
                    // countdown must not outlive the request it approves.
                    requested_expiry: Some(
                        params
                            .requested_expiry
                            .unwrap_or(u64::MAX)
                            .min(self.settings.max_wait.as_secs().max(1)),
                    ),
                    authorization_details: self.settings.send_authorization_details.then(|| {
                        crate::verify::ToolCallDetail {
                            action: &params.action,
                            tool: call.tool,
                            upstream: call.upstream,
                            call_digest: &call.call_digest,
                            binding_message: &params.binding_message,
                        }
                        .to_value()
                    }),
                    resource: call.resource.map(str::to_string),
                    client_notification_token: notification_token,
                };
                let this = self.clone();
                let fp = fingerprint.clone();
                self.claim_driver(&fp);
                // Traced as part of the call that started it, without holding its span open.
                let span = crate::telemetry::traces::detached_child(
                    crate::traced_span!(parent: None, "approval.ciba"),
                );
                let fut = tracing::Instrument::instrument(
                    async move { driver::drive(this, fp, request, created_at).await },
                    span,
                );
                tokio::spawn(fut);
                Ok(Joining {
                    started: true,
                    deadline_ms: provisional_deadline,
                    trace_parent: None,
                })
            }
        }
    }

    /// Waits for the decision (hold: until `until_ms` at the latest; park: not at all)
    /// and takes a granted approval for this call, exactly once.
    pub async fn settle(self: &Arc<Self>, ticket: &Ticket, until_ms: u64) -> Settled {
        if !ticket.members.is_empty() {
            return quorum::settle(self, ticket, until_ms).await;
        }
        loop {
            let rec = match self.store.get(&ticket.fingerprint).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    // Gone: taken by an identical call, or lost by the store (e.g. Redis
                    // restarted empty). Either way nothing is forwarded on a guess.
                    if let Ok(false) = self.store.recently_consumed(&ticket.fingerprint).await {
                        return Settled::Blocked(Reason::ApprovalLost, Vec::new());
                    }
                    return Settled::Blocked(Reason::ApprovalAlreadyUsed, Vec::new());
                }
                Err(e) => {
                    return Settled::Blocked(Reason::StoreUnavailable(e.to_string()), Vec::new());
                }
            };
            match rec.status {
                Status::Granted => {
                    let expected = ticket.params.approvers.primary().subject_hash.as_deref();
                    return match self.store.consume(&ticket.fingerprint).await {
                        // Someone other than the person the identity named approved.
                        Ok(Some(r)) if !identity::approved_by(expected, &r) => {
                            Settled::Blocked(Reason::ApproverMismatch, vec![r])
                        }
                        Ok(Some(r)) => Settled::Approved(vec![r]),
                        Ok(None) => Settled::Blocked(Reason::ApprovalAlreadyUsed, vec![rec]),
                        Err(e) => {
                            Settled::Blocked(Reason::StoreUnavailable(e.to_string()), vec![rec])
                        }
                    };
                }
                Status::Consumed => {
                    return Settled::Blocked(Reason::ApprovalAlreadyUsed, vec![rec]);
                }
                Status::Denied => {
                    return Settled::Blocked(Reason::ApprovalDenied, vec![rec]);
                }
                Status::Expired => {
                    return Settled::Blocked(Reason::ApprovalExpired, vec![rec]);
                }
                Status::Failed => {
                    let reason = Reason::from_failure(rec.failure.as_deref());
                    return Settled::Blocked(reason, vec![rec]);
                }
                Status::Pending => {
                    let now = now_ms();
                    if rec.auth_req_id.is_none() {
                        let lost_after =
                            ack_lost_after(self.ciba.config().http_timeout).as_millis() as u64;
                        if now.saturating_sub(rec.created_at_ms) > lost_after {
                            // Its creator died before the OP acknowledged: fail it (once,
                            // atomically) so the retry can start a fresh request.
                            let _ = self
                                .store
                                .fail_unacknowledged(&ticket.fingerprint, now - lost_after)
                                .await;
                            continue;
                        }
                    } else {
                        self.ensure_driver(&rec);
                    }
                    let limit = until_ms.min(rec.deadline_ms);
                    if now >= limit {
                        if now >= rec.deadline_ms {
                            // The driver resolves expiry; until it does, nothing is granted.
                            // This call's evidence says what its answer says: expired.
                            let mut rec = rec;
                            rec.status = Status::Expired;
                            return Settled::Blocked(Reason::ApprovalExpired, vec![rec]);
                        }
                        return Settled::Pending(vec![rec]);
                    }
                    // Re-read on every wake-up and at least once a second: a missed
                    // notice only delays, it never strands a call.
                    let wait = Duration::from_millis((limit - now).min(1000));
                    self.store.wait_change(&ticket.fingerprint, wait).await;
                }
            }
        }
    }
}

pub fn delivery_name(d: DeliveryMode) -> &'static str {
    match d {
        DeliveryMode::Poll => "poll",
        DeliveryMode::Ping => "ping",
        DeliveryMode::Push => "push",
    }
}

fn keyed_hash(key: &[u8], purpose: &str, value: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}
