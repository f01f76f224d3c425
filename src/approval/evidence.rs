//! What the evidence record says about an approval: the OP, the request, the person's
//! keyed hash and decision, the token outcome; never a token, hint or user code.

use serde::Serialize;

use super::{Approvals, Ticket, delivery_name, quorum};
use crate::ciba::ErrorCode;
use crate::store::{ApprovalRecord, Status};

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

impl Approvals {
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
pub(super) fn decision(rec: Option<&ApprovalRecord>) -> &'static str {
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
pub(super) fn token_outcome(r: &ApprovalRecord) -> Option<String> {
    match r.status {
        Status::Granted | Status::Consumed => Some("granted".to_string()),
        Status::Denied => Some(
            r.failure
                .clone()
                .unwrap_or_else(|| ErrorCode::AccessDenied.as_str().into()),
        ),
        Status::Expired => Some(
            r.failure
                .clone()
                .unwrap_or_else(|| ErrorCode::ExpiredToken.as_str().into()),
        ),
        Status::Failed => r.failure.clone(),
        Status::Pending => None,
    }
}
