//! Approval orchestration: turns a policy's `approve` into a CIBA request, binds it to
//! the exact call (fingerprint), lets identical calls join one pending request, waits
//! (hold) or answers "pending" (park), and hands out a granted approval exactly once.
//! It never forwards anything itself: the proxy re-checks policy with the approver's
//! evidence and forwards only on `allow`.

pub mod binding;
pub mod callback;
pub mod config;
pub mod driver;
pub mod identity;
mod quorum;
pub mod request_state;
pub mod token_seal;

pub use quorum::{MemberEvidence, QuorumEvidence, approvals_used};

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::ciba::{AuthRequest, CibaClient, DeliveryMode, UserHint};
use crate::outcome::Reason;
use crate::store::{ApprovalRecord, ApprovalStore, Joined, Status, now_ms};
use binding::Profile;

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

/// What the policy asked for, checked.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalParams {
    /// Whose phones are asked (never serialized: they hold the raw hints).
    #[serde(skip)]
    pub approvers: Approvers,
    pub action: String,
    pub binding_message: String,
    pub scope: String,
    pub acr_values: Option<String>,
    pub requested_expiry: Option<u64>,
    pub mode: Option<Mode>,
}

/// Who is asked to approve: the configured user, or the one the policy names for this
/// call (`approval.user`). The raw hint goes only to the OP; everything else (store,
/// throttles, evidence) sees its keyed hash.
#[derive(Debug, Clone)]
pub struct Approver {
    pub hint: UserHint,
    /// Keyed hash of the hint.
    pub key: String,
    /// False when the policy (or the agent's verified identity) named this approver.
    pub configured: bool,
    /// The keyed hash of the person's ID-token issuer and subject, when it is known
    /// before asking (a verified identity): the approving ID token must name them.
    pub subject_hash: Option<String>,
}

/// Who must approve a call: one person, or (two-person rule) `required` distinct
/// people out of those `asked`, each with a CIBA request of their own.
#[derive(Debug, Clone)]
pub struct Approvers {
    pub asked: Vec<Approver>,
    pub required: usize,
}

impl Approvers {
    fn one(approver: Approver) -> Self {
        Approvers {
            asked: vec![approver],
            required: 1,
        }
    }

    /// More than one person is asked: the call waits for a quorum.
    pub fn is_quorum(&self) -> bool {
        self.asked.len() > 1
    }

    /// The first person asked (named in the evidence's top-level fields).
    pub fn primary(&self) -> &Approver {
        &self.asked[0]
    }
}

/// Longest approver hint a policy may give (a `login_hint_token` is a JWT).
const MAX_POLICY_HINT: usize = 8192;
/// Most people one call may ask (each gets a CIBA request of their own).
pub const MAX_APPROVERS: usize = 10;

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

/// What the evidence record says about the approval (no tokens, hints or user codes).
#[derive(Debug, Clone, Serialize, Default)]
pub struct ApprovalEvidence {
    pub op_issuer: String,
    pub client_id: String,
    pub backchannel_endpoint: String,
    pub delivery_mode: String,
    pub scope: String,
    pub hint_type: String,
    /// Keyed hash of the hint of the person asked (the raw hint never appears).
    pub approver_hint_hash: String,
    pub binding_message: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// Joined an existing request instead of starting one.
    pub joined: bool,
    /// approved | denied | expired | failed | pending
    pub user_decision: String,
    /// What the token endpoint (or the push) said: `granted`, `access_denied`,
    /// `expired_token`, or the failure's code (`invalid_grant`, `invalid_id_token`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_outcome: Option<String>,
    /// Which party brought the answer: `poll`, `ping` (the callback, then one token
    /// request; in ping mode `poll` means the fallback poll did) or `push`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver_subject_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Two-person rule: how many had to approve and what each person asked decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<quorum::QuorumEvidence>,
    /// The approver's access token went to the tool server with the call (never the
    /// token itself).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub token_forwarded: bool,
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

/// Whether `join_or_start` still checks the throttles before it prompts anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Throttle {
    Check,
    /// Checked already for this person (a quorum checks everyone before asking anyone).
    Checked,
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

    /// The person a verified identity names, asked with their ID token as
    /// `id_token_hint`: keyed on their subject, so every token they hold is one person
    /// to throttles, fingerprints and evidence.
    fn identified(&self, person: &identity::Identity) -> Approver {
        Approver {
            hint: UserHint::IdTokenHint(person.token().to_string()),
            key: keyed_hash(&self.key, "user", &person.stable_name()),
            configured: false,
            subject_hash: Some(self.subject_hash(&person.issuer, &person.subject)),
        }
    }

    /// The hint type of the configured user.
    pub fn hint_type(&self) -> &'static str {
        self.user.hint.param()
    }

    /// Who this approval object asks: `approval.user` (one person), `approval.approvers`
    /// (a list: all of them; or `{"from": [...], "count": N}`: N distinct people of
    /// those), or, with neither, the person the agent's verified identity names, else the
    /// configured user. Each person is
    /// `{"hint_type": "login_hint" | "login_hint_token", "value": "…"}` or a plain
    /// string (a `login_hint`). Anything malformed is a misconfiguration (blocked),
    /// never a fallback to the configured user.
    pub fn approvers(
        &self,
        params: &Value,
        identity: Option<&identity::Identity>,
    ) -> Result<Approvers, Reason> {
        let bad = |why: String| Reason::ApprovalMisconfigured(why);
        match (params.get("user"), params.get("approvers")) {
            (Some(_), Some(_)) => Err(bad(
                "approval: name the approver with user or approvers, not both".into(),
            )),
            (None, None) => Ok(Approvers::one(match identity {
                Some(person) => self.identified(person),
                None => self.user.clone(),
            })),
            (Some(user), None) => Ok(Approvers::one(self.parse_user(user, "approval.user")?)),
            (None, Some(group)) => {
                let field = "approval.approvers";
                let (list, count) = match group {
                    Value::Array(list) => (list, None),
                    Value::Object(o) => {
                        if let Some(k) = o.keys().find(|k| !["from", "count"].contains(&k.as_str()))
                        {
                            return Err(bad(format!("{field}: unknown field {k:?}")));
                        }
                        let Some(Value::Array(list)) = o.get("from") else {
                            return Err(bad(format!("{field}.from must be a list of approvers")));
                        };
                        let count = o.get("count").map(|c| {
                            c.as_u64()
                                .ok_or_else(|| bad(format!("{field}.count must be a whole number")))
                        });
                        (list, count.transpose()?)
                    }
                    _ => {
                        return Err(bad(format!(
                            "{field} must be a list, or an object with from and count"
                        )));
                    }
                };
                if list.is_empty() || list.len() > MAX_APPROVERS {
                    return Err(bad(format!(
                        "{field} must name 1 to {MAX_APPROVERS} approvers (it names {})",
                        list.len()
                    )));
                }
                let mut asked: Vec<Approver> = Vec::with_capacity(list.len());
                for (i, user) in list.iter().enumerate() {
                    let a = self.parse_user(user, &format!("{field}[{i}]"))?;
                    if asked.iter().any(|b| b.key == a.key) {
                        return Err(bad(format!("{field}[{i}] names an approver twice")));
                    }
                    asked.push(a);
                }
                let required = count.map_or(asked.len() as u64, |c| c);
                if required == 0 || required > asked.len() as u64 {
                    return Err(bad(format!(
                        "{field}.count must be between 1 and the {} approvers listed",
                        asked.len()
                    )));
                }
                Ok(Approvers {
                    asked,
                    required: required as usize,
                })
            }
        }
    }

    /// One approver named by policy. An ID token cannot come from policy (it expires and
    /// must be the user's own).
    fn parse_user(&self, user: &Value, field: &str) -> Result<Approver, Reason> {
        let bad = |why: &str| Reason::ApprovalMisconfigured(format!("{field}: {why}"));
        let (hint_type, value) = match user {
            Value::String(v) => (None, v),
            Value::Object(user) => {
                if let Some(k) = user
                    .keys()
                    .find(|k| !["hint_type", "value"].contains(&k.as_str()))
                {
                    return Err(bad(&format!("unknown field {k:?}")));
                }
                let Some(Value::String(value)) = user.get("value") else {
                    return Err(bad("value must be a non-empty string"));
                };
                let hint_type = match user.get("hint_type") {
                    None => None,
                    Some(Value::String(t)) => Some(t.as_str()),
                    Some(_) => return Err(bad("hint_type must be a string")),
                };
                (hint_type, value)
            }
            _ => return Err(bad("not an object with hint_type and value")),
        };
        if value.is_empty() {
            return Err(bad("value must be a non-empty string"));
        }
        if value.len() > MAX_POLICY_HINT || value.chars().any(char::is_control) {
            return Err(bad("value is too long or holds control characters"));
        }
        let hint = match hint_type {
            Some("login_hint") | None => UserHint::LoginHint(value.clone()),
            Some("login_hint_token") => UserHint::LoginHintToken(value.clone()),
            Some("id_token_hint") => {
                return Err(bad("id_token_hint cannot come from policy"));
            }
            Some(_) => return Err(bad("hint_type must be login_hint or login_hint_token")),
        };
        let key = keyed_hash(&self.key, "user", hint.value());
        Ok(Approver {
            configured: key == self.user.key && hint.param() == self.user.hint.param(),
            hint,
            key,
            subject_hash: None,
        })
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

    /// Checks the policy's approval object against the OP's limits.
    pub fn parse_params(
        &self,
        params: &Value,
        identity: Option<&identity::Identity>,
    ) -> Result<ApprovalParams, Reason> {
        let s = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_string);
        let approvers = self.approvers(params, identity)?;
        let binding_message = s("binding_message").ok_or_else(|| {
            Reason::ApprovalMisconfigured("the approval has no binding_message".into())
        })?;
        self.profile
            .check(&binding_message)
            .map_err(|e| Reason::InvalidBindingMessage(e.to_string()))?;
        let mut scope = s("scope").unwrap_or_else(|| "openid".into());
        if !scope.split(' ').any(|x| x == "openid") {
            scope = format!("openid {scope}");
        }
        let acr_values = match params.get("acr_values") {
            Some(Value::String(a)) if !a.is_empty() => Some(a.clone()),
            Some(Value::Array(items)) => {
                let v: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (!v.is_empty()).then(|| v.join(" "))
            }
            _ => None,
        };
        let mode = match params.get("mode").and_then(Value::as_str) {
            Some("hold") => Some(Mode::Hold),
            Some("park") => Some(Mode::Park),
            Some(other) => {
                return Err(Reason::ApprovalMisconfigured(format!(
                    "mode {other:?} is not hold or park"
                )));
            }
            None => None,
        };
        Ok(ApprovalParams {
            approvers,
            action: s("action").unwrap_or_else(|| "approve".into()),
            binding_message,
            scope,
            acr_values,
            requested_expiry: params.get("requested_expiry").and_then(Value::as_u64),
            mode,
        })
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
            r.status == Status::Failed && r.failure.as_deref() == Some("request_lost")
        }) && self
            .store
            .remove_failed(&fingerprint, "request_lost")
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
                    authorization_details: self
                        .settings
                        .send_authorization_details
                        .then(|| crate::verify::authorization_details(call, params)),
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

    async fn throttle(&self, approver: &Approver, action: &str, agent: &str) -> Result<(), Reason> {
        let unavailable = |e: crate::store::StoreError| Reason::StoreUnavailable(e.to_string());
        if !self.settings.denial_cooldown.is_zero()
            && self
                .store
                .recently_denied(&approver.key)
                .await
                .map_err(unavailable)?
        {
            return Err(Reason::DenialCooldown);
        }
        let checks = [
            (
                self.settings.per_agent,
                format!("agent:{agent}"),
                "per agent",
            ),
            (
                self.settings.per_user,
                format!("user:{}", approver.key),
                "per user",
            ),
            (
                self.settings.per_action,
                format!("action:{action}"),
                "per action",
            ),
        ];
        for (limit, key, what) in checks {
            if let Some(l) = limit
                && !self
                    .store
                    .rate_limit(&key, l.limit, l.window)
                    .await
                    .map_err(unavailable)?
            {
                return Err(Reason::ApprovalRateLimited {
                    what,
                    retry_after_secs: l.window.as_secs().max(1),
                });
            }
        }
        Ok(())
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
                    let code = rec
                        .failure
                        .clone()
                        .unwrap_or_else(|| "approval_failed".into());
                    return Settled::Blocked(Reason::from_failure(&code), vec![rec]);
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

    /// The evidence for the records a wait read (and this call's part in them). With a
    /// quorum, the top-level fields describe the record that decided the outcome and
    /// `quorum` lists every person asked.
    pub fn evidence(&self, ticket: &Ticket, records: &[ApprovalRecord]) -> ApprovalEvidence {
        let cfg = self.ciba.config();
        let quorum = (!ticket.members.is_empty()).then(|| quorum::evidence(ticket, records));
        let rec = if ticket.members.is_empty() {
            records.first()
        } else {
            quorum::deciding(records)
        };
        let primary = ticket.params.approvers.primary();
        let (hint_type, hint_hash) = ticket
            .members
            .iter()
            .find(|m| rec.is_some_and(|r| r.fingerprint == m.key))
            .map(|m| (m.approver.hint.param(), m.approver.key.clone()))
            .unwrap_or((primary.hint.param(), primary.key.clone()));
        let user_decision = match &quorum {
            Some(q) => q.decision.to_string(),
            None => decision(rec).into(),
        };
        ApprovalEvidence {
            op_issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            backchannel_endpoint: self
                .ciba
                .metadata()
                .backchannel_authentication_endpoint
                .clone(),
            delivery_mode: delivery_name(cfg.delivery).into(),
            scope: ticket.params.scope.clone(),
            hint_type: hint_type.into(),
            approver_hint_hash: hint_hash,
            binding_message: ticket.params.binding_message.clone(),
            action: ticket.params.action.clone(),
            expires_in: rec.and_then(|r| r.expires_in),
            interval: rec.and_then(|r| r.interval),
            joined: !ticket.started,
            user_decision,
            token_outcome: rec.and_then(token_outcome),
            delivered_via: rec.and_then(|r| r.delivered_via.clone()),
            failure: rec.and_then(|r| r.failure.clone()),
            approver_subject_hash: rec
                .and_then(|r| r.approver.as_ref())
                .map(|a| a.subject_hash.clone()),
            acr: rec
                .and_then(|r| r.approver.as_ref())
                .and_then(|a| a.acr.clone()),
            quorum,
            token_forwarded: false,
        }
    }
}

/// What a record says the person decided.
fn decision(rec: Option<&ApprovalRecord>) -> &'static str {
    match rec.map(|r| r.status) {
        Some(Status::Granted) | Some(Status::Consumed) => "approved",
        Some(Status::Denied) => "denied",
        Some(Status::Expired) => "expired",
        Some(Status::Failed) => "failed",
        Some(Status::Pending) => "pending",
        None => "unknown",
    }
}

/// What the token endpoint (or the push) said for a record with a result.
fn token_outcome(r: &ApprovalRecord) -> Option<String> {
    match r.status {
        Status::Granted | Status::Consumed => Some("granted".to_string()),
        Status::Denied => Some(r.failure.clone().unwrap_or_else(|| "access_denied".into())),
        Status::Expired => Some(r.failure.clone().unwrap_or_else(|| "expired_token".into())),
        Status::Failed => r.failure.clone(),
        Status::Pending => None,
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
