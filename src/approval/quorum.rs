//! The two-person rule: a call that needs `required` distinct people out of those
//! asked. Each person gets a CIBA request of their own (a member record, driven like any
//! single approval); a quorum record under the call's fingerprint is the call's single
//! use. The call goes on once enough *distinct* people (by the ID tokens' subjects, not
//! by the hints policy gave) approved, and whoever consumes the quorum record first is
//! the one call that does; one denial ends it for everyone.
//!
//! Member keys include the quorum record's creation time, so the grants of a quorum
//! that was used can never complete a later one for the identical call.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::{ApprovalParams, Approvals, CallForApproval, Member, Settled, Throttle, Ticket};
use crate::outcome::Reason;
use crate::store::{ApprovalRecord, Failure, Joined, Resolution, Status, StoreError, now_ms};

fn unavailable(e: StoreError) -> Reason {
    Reason::StoreUnavailable(e.to_string())
}

/// The store key of one person's approval within a quorum.
fn member_key(quorum: &str, created_at_ms: u64, approver_key: &str) -> String {
    crate::fingerprint::of_json(&json!({
        "quorum": quorum,
        "created_at_ms": created_at_ms,
        "approver": approver_key,
    }))
}

/// Finds or starts the quorum for this call: its record, then one approval per person
/// asked (joined where it exists, so a retry prompts nobody twice).
pub(super) async fn prepare(
    approvals: &Arc<Approvals>,
    call: &CallForApproval<'_>,
    params: ApprovalParams,
    fingerprint: String,
) -> Result<Ticket, Reason> {
    let created_at = now_ms();
    let deadline_ms = approvals.deadline_from(created_at, &params);
    let record = ApprovalRecord {
        fingerprint: fingerprint.clone(),
        status: Status::Pending,
        auth_req_id: None,
        notification_token_hash: None,
        binding_message: params.binding_message.clone(),
        action: params.action.clone(),
        user_key: params.approvers.primary().key.clone(),
        created_at_ms: created_at,
        deadline_ms,
        expires_in: None,
        interval: None,
        approver: None,
        failure: None,
        trace_parent: call.trace_parent.clone(),
        delivered_via: None,
    };
    let (quorum, mut started) = match approvals
        .store
        .create_or_join(record.clone(), approvals.settings.result_ttl)
        .await
        .map_err(unavailable)?
    {
        Joined::Created => (record, true),
        Joined::Existing(r) => (*r, false),
    };
    let keys: Vec<String> = params
        .approvers
        .asked
        .iter()
        .map(|a| member_key(&fingerprint, quorum.created_at_ms, &a.key))
        .collect();
    // A quorum with its result asks nobody again; `settle` reports it.
    let asking = !quorum.status.is_final();
    if asking {
        // Everyone not asked yet passes the throttles before anyone is asked: a
        // throttled second person must not leave the first with a prompt for a call
        // that was refused.
        for (approver, key) in params.approvers.asked.iter().zip(&keys) {
            if approvals
                .store
                .get(key)
                .await
                .map_err(unavailable)?
                .is_none()
            {
                approvals
                    .throttle(approver, &params.action, call.agent)
                    .await?;
            }
        }
    }
    let mut members = Vec::with_capacity(params.approvers.asked.len());
    let mut deadline_ms = quorum.deadline_ms;
    for (approver, key) in params.approvers.asked.iter().zip(keys) {
        let mut member_started = false;
        if asking {
            let j = approvals
                .join_or_start(call, &params, approver, &key, Throttle::Checked)
                .await?;
            member_started = j.started;
            deadline_ms = deadline_ms.max(j.deadline_ms);
        }
        started |= member_started;
        members.push(Member {
            key,
            approver: approver.clone(),
            started: member_started,
        });
    }
    Ok(Ticket {
        fingerprint,
        params,
        started,
        deadline_ms,
        members,
        joined_trace: (!started).then(|| quorum.trace_parent.clone()).flatten(),
    })
}

/// Where the people asked stand, at one reading.
struct Tally<'a> {
    /// Distinct subjects among the grants (two hints for one person count once).
    granted: usize,
    /// Still pending, before their deadline.
    live: Vec<&'a ApprovalRecord>,
    denied: bool,
}

fn tally(records: &[ApprovalRecord], now: u64) -> Tally<'_> {
    let mut subjects = HashSet::new();
    let mut live = Vec::new();
    let mut denied = false;
    for r in records {
        match r.status {
            Status::Granted => {
                if let Some(a) = &r.approver {
                    subjects.insert(a.subject_hash.as_str());
                }
            }
            Status::Pending if now < r.deadline_ms => live.push(r),
            Status::Denied => denied = true,
            _ => {}
        }
    }
    Tally {
        granted: subjects.len(),
        live,
        denied,
    }
}

/// Waits until enough distinct people approved (and takes the quorum, once), someone
/// denied, the quorum can no longer be met, or `until_ms`.
pub(super) async fn settle(approvals: &Arc<Approvals>, ticket: &Ticket, until_ms: u64) -> Settled {
    let store = &approvals.store;
    let required = ticket.params.approvers.required;
    loop {
        let quorum = match store.get(&ticket.fingerprint).await {
            Ok(Some(q)) => q,
            Ok(None) => {
                let reason = match store.recently_consumed(&ticket.fingerprint).await {
                    Ok(false) => Reason::ApprovalLost,
                    _ => Reason::ApprovalAlreadyUsed,
                };
                return Settled::Blocked(reason, Vec::new());
            }
            Err(e) => return Settled::Blocked(unavailable(e), Vec::new()),
        };
        let mut records = Vec::with_capacity(ticket.members.len());
        let mut missing = false;
        for m in &ticket.members {
            match store.get(&m.key).await {
                Ok(Some(r)) => records.push(r),
                Ok(None) => missing = true,
                Err(e) => return Settled::Blocked(unavailable(e), records),
            }
        }
        match quorum.status {
            Status::Pending => {}
            // Met: whoever consumes it first is the one call that goes on.
            Status::Granted => return take(approvals, ticket, records).await,
            Status::Consumed => return Settled::Blocked(Reason::ApprovalAlreadyUsed, records),
            Status::Denied => return Settled::Blocked(Reason::ApprovalDenied, records),
            Status::Expired => return Settled::Blocked(Reason::ApprovalExpired, records),
            Status::Failed => {
                return Settled::Blocked(Reason::from_failure(quorum.failure.as_deref()), records);
            }
        }
        if missing {
            // A person's pending approval is gone from the store: never met on a guess.
            let _ = store
                .resolve(&ticket.fingerprint, Failure::ApprovalLost.into())
                .await;
            return Settled::Blocked(Reason::ApprovalLost, records);
        }
        let now = now_ms();
        let t = tally(&records, now);
        if t.denied {
            let _ = store
                .resolve(
                    &ticket.fingerprint,
                    Resolution::Denied(crate::ciba::ErrorCode::AccessDenied.to_string()),
                )
                .await;
            return Settled::Blocked(Reason::ApprovalDenied, records);
        }
        if t.granted >= required {
            let first = records
                .iter()
                .find_map(|r| r.approver.clone())
                .unwrap_or_default();
            // The first to resolve or not: the record is Granted now, and `take` decides.
            let _ = store
                .resolve(&ticket.fingerprint, Resolution::Granted(first))
                .await;
            return take(approvals, ticket, records).await;
        }
        if t.granted + t.live.len() < required {
            let (reason, resolution) = unreachable_reason(&records, now);
            let _ = store.resolve(&ticket.fingerprint, resolution).await;
            return Settled::Blocked(reason, records);
        }
        // A person's request whose creator died before the OP acknowledged it is failed
        // (once), as for a single approval; the others keep their drivers running.
        let lost_after =
            super::ack_lost_after(approvals.ciba.config().http_timeout).as_millis() as u64;
        let mut changed = false;
        for r in &t.live {
            if r.auth_req_id.is_none() {
                if now.saturating_sub(r.created_at_ms) > lost_after {
                    let _ = store
                        .fail_unacknowledged(&r.fingerprint, now - lost_after)
                        .await;
                    changed = true;
                }
            } else {
                approvals.ensure_driver(r);
            }
        }
        if changed {
            continue;
        }
        let last_deadline = t.live.iter().map(|r| r.deadline_ms).max().unwrap_or(now);
        let limit = until_ms.min(last_deadline);
        if now >= limit {
            return Settled::Pending(records);
        }
        // Wake on any person's answer (or the quorum's), at least once a second.
        let wait = Duration::from_millis((limit - now).min(1000));
        let mut keys: Vec<&str> = t.live.iter().map(|r| r.fingerprint.as_str()).collect();
        keys.push(&ticket.fingerprint);
        let waits = keys
            .into_iter()
            .map(|k| Box::pin(store.wait_change(k, wait)));
        futures_util::future::select_all(waits).await;
    }
}

/// Why a quorum can no longer be met: the first person's failure, else an expiry, else
/// too few distinct people (two hints that named one person).
fn unreachable_reason(records: &[ApprovalRecord], now: u64) -> (Reason, Resolution) {
    if let Some(code) = records
        .iter()
        .find(|r| r.status == Status::Failed)
        .map(|r| {
            r.failure
                .clone()
                .unwrap_or_else(|| Failure::ApprovalFailed.code().into())
        })
    {
        return (Reason::from_failure(Some(&code)), Resolution::Failed(code));
    }
    if records.iter().any(|r| {
        r.status == Status::Expired || (r.status == Status::Pending && now >= r.deadline_ms)
    }) {
        return (Reason::ApprovalExpired, Resolution::Expired);
    }
    (
        Reason::ApproversNotDistinct,
        Failure::ApproversNotDistinct.into(),
    )
}

/// Takes the met quorum for this call (single use), then retires every person's
/// approval within it: grants are consumed, requests still open are forgotten.
async fn take(approvals: &Approvals, ticket: &Ticket, mut records: Vec<ApprovalRecord>) -> Settled {
    let store = &approvals.store;
    match store.consume(&ticket.fingerprint).await {
        Ok(Some(_)) => {}
        Ok(None) => return Settled::Blocked(Reason::ApprovalAlreadyUsed, records),
        Err(e) => return Settled::Blocked(unavailable(e), records),
    }
    for r in &mut records {
        match r.status {
            Status::Granted => match store.consume(&r.fingerprint).await {
                Ok(Some(used)) => *r = used,
                // The quorum is this call's already; a member that cannot be retired
                // only keeps its record until it expires (its key names this quorum).
                _ => tracing::warn!("could not retire one approval of a met quorum"),
            },
            Status::Pending => {
                let _ = store.remove(&r.fingerprint).await;
            }
            _ => {}
        }
    }
    Settled::Approved(records)
}

/// The record that explains a quorum's outcome: a denial, a failure, an expiry, a
/// pending request, else the first grant.
pub(super) fn deciding(records: &[ApprovalRecord]) -> Option<&ApprovalRecord> {
    [
        Status::Denied,
        Status::Failed,
        Status::Expired,
        Status::Pending,
        Status::Consumed,
        Status::Granted,
    ]
    .iter()
    .find_map(|s| records.iter().find(|r| r.status == *s))
}

/// The evidence of a quorum: how many had to approve, and each person asked (as keyed
/// hashes: never a raw hint or subject).
#[derive(Debug, Clone, Serialize)]
pub struct QuorumEvidence {
    pub required: usize,
    pub asked: usize,
    /// Distinct people who approved.
    pub granted: usize,
    /// approved | denied | expired | failed | pending
    #[serde(skip)]
    pub decision: &'static str,
    pub approvers: Vec<MemberEvidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberEvidence {
    pub hint_type: &'static str,
    pub approver_hint_hash: String,
    /// This call sent this person's request (false: it joined it).
    pub joined: bool,
    pub user_decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver_subject_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
}

pub(super) fn evidence(ticket: &Ticket, records: &[ApprovalRecord]) -> QuorumEvidence {
    let approvers: Vec<MemberEvidence> = ticket
        .members
        .iter()
        .map(|m| {
            let rec = records.iter().find(|r| r.fingerprint == m.key);
            let who = rec.and_then(|r| r.approver.as_ref());
            MemberEvidence {
                hint_type: m.approver.hint.param(),
                approver_hint_hash: m.approver.key.clone(),
                joined: !m.started,
                user_decision: super::evidence::decision(rec),
                token_outcome: rec.and_then(super::evidence::token_outcome),
                delivered_via: rec.and_then(|r| r.delivered_via.clone()),
                approver_subject_hash: who.map(|a| a.subject_hash.clone()),
                acr: who.and_then(|a| a.acr.clone()),
            }
        })
        .collect();
    let granted: HashSet<&str> = records
        .iter()
        .filter(|r| matches!(r.status, Status::Granted | Status::Consumed))
        .filter_map(|r| r.approver.as_ref().map(|a| a.subject_hash.as_str()))
        .collect();
    let required = ticket.params.approvers.required;
    let has = |d: &str| approvers.iter().any(|a| a.user_decision == d);
    let decision = if granted.len() >= required {
        "approved"
    } else if has("denied") {
        "denied"
    } else if has("pending") {
        "pending"
    } else if has("expired") {
        "expired"
    } else {
        "failed"
    };
    QuorumEvidence {
        required,
        asked: ticket.members.len(),
        granted: granted.len(),
        decision,
        approvers,
    }
}

/// The approvals a met quorum's re-check sees: one per distinct person, in order asked.
pub fn approvals_used(records: &[ApprovalRecord]) -> Vec<&ApprovalRecord> {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter(|r| matches!(r.status, Status::Granted | Status::Consumed))
        .filter(|r| {
            r.approver
                .as_ref()
                .is_some_and(|a| seen.insert(a.subject_hash.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Approver;

    fn person(
        key: &str,
        status: Status,
        subject: Option<&str>,
        deadline_ms: u64,
    ) -> ApprovalRecord {
        ApprovalRecord {
            fingerprint: key.into(),
            status,
            auth_req_id: Some("id".into()),
            notification_token_hash: None,
            binding_message: "Deploy payments to prod".into(),
            action: "deploy_service".into(),
            user_key: key.into(),
            created_at_ms: 0,
            deadline_ms,
            expires_in: None,
            interval: None,
            approver: subject.map(|s| Approver {
                subject_hash: s.into(),
                ..Approver::default()
            }),
            failure: None,
            trace_parent: None,
            delivered_via: None,
        }
    }

    #[test]
    fn grants_count_distinct_people_not_hints() {
        let records = [
            person("a", Status::Granted, Some("alice"), 10),
            person("b", Status::Granted, Some("alice"), 10),
        ];
        let t = tally(&records, 5);
        assert_eq!(t.granted, 1, "two hints that named one person count once");
        assert!(t.live.is_empty());
        let (reason, _) = unreachable_reason(&records, 5);
        assert_eq!(reason, Reason::ApproversNotDistinct);
        assert_eq!(approvals_used(&records).len(), 1);
    }

    #[test]
    fn a_request_past_its_deadline_is_not_live_and_makes_the_quorum_expire() {
        let records = [
            person("a", Status::Granted, Some("alice"), 10),
            person("b", Status::Pending, None, 10),
        ];
        let t = tally(&records, 20);
        assert_eq!((t.granted, t.live.len(), t.denied), (1, 0, false));
        assert_eq!(unreachable_reason(&records, 20).0, Reason::ApprovalExpired);
    }

    #[test]
    fn a_failed_request_says_why_the_quorum_cannot_be_met() {
        let mut failed = person("b", Status::Failed, None, 10);
        failed.failure = Some(Failure::InvalidIdToken.code().into());
        let records = [person("a", Status::Expired, None, 10), failed];
        assert_eq!(
            unreachable_reason(&records, 20).1,
            Failure::InvalidIdToken.into()
        );
    }

    #[test]
    fn a_denial_is_seen_whatever_the_others_said() {
        let records = [
            person("a", Status::Granted, Some("alice"), 10),
            person("b", Status::Denied, None, 10),
        ];
        assert!(tally(&records, 5).denied);
        assert_eq!(deciding(&records).unwrap().fingerprint, "b");
    }

    #[test]
    fn member_keys_name_the_quorum_instance() {
        assert_ne!(member_key("q", 1, "alice"), member_key("q", 2, "alice"));
        assert_ne!(member_key("q", 1, "alice"), member_key("q", 1, "bob"));
    }
}
