//! One background task per CIBA request: sends the authentication request, then
//! waits for the answer the configured delivery mode brings (poll; ping with a slow
//! fallback poll; push) and records the result in the store exactly once. It runs
//! apart from any agent connection, so a dropped connection loses nothing: the
//! identical retry joins the same record.
//!
//! Every token request — the poll loop's and the ping handler's, on any replica — is
//! made under the record's redemption claim (`ApprovalStore::claim_redemption`): one
//! request at a time per approval, none after the result is recorded. So a grant is
//! redeemed once, and the OP's `invalid_grant` for a second redemption never happens.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::Approvals;
use crate::ciba::{
    AuthRequest, CibaError, DeliveryMode, ErrorCode, IdTokenCheck, Poller, TokenPoll, TokenSet,
};
use crate::store::{Approver, Claim, Failure, Resolution, Status, now_ms};

/// Extra life of a poll lease beyond the next planned poll: covers a slow token
/// request. A dead holder is replaced at most this long after its poll was due.
const LEASE_SLACK: Duration = Duration::from_secs(3);

/// Forgets this process's driver for a fingerprint when the driver ends, however it ends.
struct DriverGuard<'a>(&'a Approvals, &'a str);

impl Drop for DriverGuard<'_> {
    fn drop(&mut self) {
        self.0.release_driver(self.1);
    }
}

/// A span below the current one, only when there is one (a token request made for a
/// ping callback does not start a trace of its own).
macro_rules! child_span {
    ($name:literal) => {
        if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            crate::traced_span!($name)
        }
    };
}

/// Records a result in the store and counts it, once: only the caller whose `resolve`
/// won counts (`ciba_gate_approvals_total`).
async fn resolve_counted(
    approvals: &Approvals,
    fingerprint: &str,
    resolution: Resolution,
    via: Option<&'static str>,
) -> Result<bool, crate::store::StoreError> {
    let outcome = match &resolution {
        Resolution::Granted(_) => "granted",
        Resolution::Denied(_) => "denied",
        Resolution::Expired => "expired",
        Resolution::Failed(_) => "failed",
    };
    let r = approvals
        .store
        .resolve_via(fingerprint, resolution, via)
        .await;
    if let Ok(true) = r {
        crate::telemetry::metrics::approval_resolved(
            outcome,
            approvals.ciba.config().delivery.as_str(),
        );
    }
    r
}

/// Drives one approval from request to result.
pub async fn drive(
    approvals: Arc<Approvals>,
    fingerprint: String,
    request: AuthRequest,
    created_at_ms: u64,
) {
    let _guard = DriverGuard(&approvals, &fingerprint);
    let _pending = crate::telemetry::metrics::PendingApproval::start(created_at_ms);
    // The OP exchanges are boxed so that a waiting driver task stays small (10,000
    // held calls each keep one).
    let ack = match Box::pin(
        approvals
            .ciba
            .authenticate(&request)
            .instrument(child_span!("ciba.backchannel_authentication")),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "CIBA authentication request failed");
            crate::telemetry::metrics::op_error(e.code());
            let _ = resolve_counted(
                &approvals,
                &fingerprint,
                Resolution::Failed(e.code().to_string()),
                None,
            )
            .await;
            return;
        }
    };
    // The deadline counts from our own receive time, capped by the configured maximum.
    let now = now_ms();
    let op_deadline = now + ack.expires_in.saturating_mul(1000);
    let max_deadline = created_at_ms + approvals.settings.max_wait.as_millis() as u64;
    let deadline = op_deadline.min(max_deadline);
    if let Err(e) = approvals
        .store
        .set_acknowledged(
            &fingerprint,
            &ack.auth_req_id,
            ack.expires_in,
            ack.interval,
            deadline,
        )
        .await
    {
        tracing::warn!(error = %e, "could not record the CIBA acknowledgement; the call fails closed");
        let _ = resolve_counted(
            &approvals,
            &fingerprint,
            Failure::StoreUnavailable.into(),
            None,
        )
        .await;
        return;
    }
    // The creator polls first: it takes the poll lease before anyone can watch.
    let first = match approvals.ciba.config().delivery {
        DeliveryMode::Ping => approvals.settings.ping_fallback_poll,
        _ => Poller::new(ack.interval).interval(),
    };
    let _ = approvals
        .store
        .acquire_lease(&fingerprint, &approvals.instance, first + LEASE_SLACK)
        .await;
    wait_for_answer(
        &approvals,
        &fingerprint,
        &ack.auth_req_id,
        ack.interval,
        deadline,
    )
    .await;
}

/// Takes over a request some other replica (or an earlier run of this one) started:
/// polls from the stored auth_req_id and interval whenever the poll lease is free
/// (while its holder is alive, this only renews nothing and watches).
pub async fn resume(approvals: Arc<Approvals>, fingerprint: String) {
    let _guard = DriverGuard(&approvals, &fingerprint);
    let rec = match approvals.store.get(&fingerprint).await {
        Ok(Some(r)) if r.status == Status::Pending => r,
        _ => return,
    };
    let Some(auth_req_id) = rec.auth_req_id.clone() else {
        return;
    };
    tracing::debug!("watching an approval request started elsewhere");
    wait_for_answer(
        &approvals,
        &fingerprint,
        &auth_req_id,
        rec.interval,
        rec.deadline_ms,
    )
    .await;
}

/// Waits for the answer until the deadline. In poll (and ping-fallback) mode only the
/// holder of the record's poll lease asks the OP, so replicas never poll one request
/// twice; whoever finds the lease free (its holder died) takes it over.
async fn wait_for_answer(
    approvals: &Approvals,
    fingerprint: &str,
    auth_req_id: &str,
    interval: Option<u64>,
    deadline: u64,
) {
    let fingerprint = fingerprint.to_string();
    let delivery = approvals.ciba.config().delivery;
    let mut poller = Poller::new(interval);
    let mut last_transport_error: Option<String> = None;
    loop {
        let now = now_ms();
        if now >= deadline {
            let resolution = match last_transport_error.take() {
                Some(code) => Resolution::Failed(code),
                None => Resolution::Expired,
            };
            let _ = resolve_counted(approvals, &fingerprint, resolution, None).await;
            return;
        }
        let remaining = Duration::from_millis(deadline - now);
        let wait = match delivery {
            DeliveryMode::Poll => poller.next_wait(),
            // A lost ping is never retried by some OPs: poll now and then anyway.
            DeliveryMode::Ping => approvals
                .settings
                .ping_fallback_poll
                .max(poller.next_wait()),
            // Push brings the tokens; nothing to ask the OP.
            DeliveryMode::Push => remaining,
        }
        .min(remaining);
        // Wake early when a callback (on any replica) resolved the record.
        approvals.store.wait_change(&fingerprint, wait).await;
        match approvals.store.get(&fingerprint).await {
            Ok(Some(r)) if r.status == Status::Pending => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "approval store unavailable while waiting");
                continue;
            }
        }
        if delivery == DeliveryMode::Push || now_ms() >= deadline {
            continue;
        }
        // The lease lasts until the next planned poll plus some slack.
        let ttl = match delivery {
            DeliveryMode::Ping => approvals.settings.ping_fallback_poll.max(poller.interval()),
            _ => poller.interval(),
        } + LEASE_SLACK;
        match approvals
            .store
            .acquire_lease(&fingerprint, &approvals.instance, ttl)
            .await
        {
            Ok(true) => {}
            // Another replica polls this one; watch, and take over if it goes away.
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "approval store unavailable while waiting");
                continue;
            }
        }
        match Box::pin(redeem(
            approvals,
            &fingerprint,
            auth_req_id,
            &mut poller,
            "poll",
        ))
        .await
        {
            Attempt::Resolved | Attempt::Finished => return,
            // The ping handler (here or on another replica) is asking right now; its
            // result, or its release, wakes this loop.
            Attempt::Busy => {}
            Attempt::KeepWaiting => last_transport_error = None,
            Attempt::Transport(code) => last_transport_error = Some(code),
        }
    }
}

/// How long a redemption claim lasts: one token request and one ID token check (which
/// may fetch the OP's keys), each bounded by the OP HTTP timeout, plus slack. A live
/// holder always finishes within it; only a dead (or stalled) holder is taken over.
fn claim_ttl(approvals: &Approvals) -> Duration {
    approvals.ciba.config().http_timeout * 2 + LEASE_SLACK
}

/// What one attempt to redeem came to.
pub(crate) enum Attempt {
    /// This party asked the OP and recorded the result.
    Resolved,
    /// This party asked the OP: not decided yet (or slow down).
    KeepWaiting,
    /// The OP (or the store) could not be reached this time.
    Transport(String),
    /// Another party holds the claim: no token request was made.
    Busy,
    /// The approval already has its result (or is gone): no token request was made.
    Finished,
}

/// One token request under the approval's redemption claim; without the claim, none.
/// A result is recorded (once; the claim ends with it), anything else gives the claim up.
pub(crate) async fn redeem(
    approvals: &Approvals,
    fingerprint: &str,
    auth_req_id: &str,
    poller: &mut Poller,
    party: &'static str,
) -> Attempt {
    let owner = format!("{}:{:032x}", approvals.instance, rand::random::<u128>());
    match approvals
        .store
        .claim_redemption(fingerprint, &owner, claim_ttl(approvals))
        .await
    {
        Ok(Claim::Taken) => {}
        Ok(Claim::Busy) => {
            crate::telemetry::metrics::token_request_deferred(party);
            return Attempt::Busy;
        }
        Ok(Claim::Finished) => return Attempt::Finished,
        Err(e) => {
            // No claim, no token request: fail closed (the next attempt tries again).
            tracing::warn!(error = %e, "approval store unavailable; no token request made");
            return Attempt::Transport(Failure::StoreUnavailable.code().into());
        }
    }
    let out = match token_request(approvals, auth_req_id, poller).await {
        Ok(Some(resolution)) => {
            finish(approvals, fingerprint, resolution, party).await;
            Attempt::Resolved
        }
        Ok(None) => Attempt::KeepWaiting,
        Err(code) => Attempt::Transport(code),
    };
    // Normally already gone with the result; else (still pending) the next party's turn.
    if let Err(e) = approvals
        .store
        .release_redemption(fingerprint, &owner)
        .await
    {
        tracing::debug!(error = %e, "could not give up the redemption claim; it runs out");
    }
    out
}

/// A ping said the result is ready: redeem it, once. If another party holds the claim
/// (the fallback poll, here or on another replica) this waits for its result or its
/// release (its request may have reached the OP just before the user answered) and tries
/// again, until the approval has a result or its deadline passes.
pub(crate) async fn redeem_for_ping(
    approvals: Arc<Approvals>,
    fingerprint: String,
    auth_req_id: String,
) {
    let mut poller = Poller::new(None);
    loop {
        let deadline = match approvals.store.get(&fingerprint).await {
            Ok(Some(r)) if r.status == Status::Pending => r.deadline_ms,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "approval store unavailable; the fallback poll continues");
                return;
            }
        };
        if now_ms() >= deadline {
            return;
        }
        match redeem(&approvals, &fingerprint, &auth_req_id, &mut poller, "ping").await {
            Attempt::Resolved | Attempt::Finished => return,
            Attempt::Busy => {
                let wait = Duration::from_millis(deadline.saturating_sub(now_ms()).min(250));
                approvals.store.wait_change(&fingerprint, wait).await;
            }
            Attempt::KeepWaiting | Attempt::Transport(_) => {
                tracing::info!(
                    "ping arrived before the result was ready; the fallback poll continues"
                );
                return;
            }
        }
    }
}

/// One token request: `Ok(Some(_))` when it ended the approval, `Ok(None)` when the
/// person has not answered yet (or the OP asked to slow down), `Err(code)` when the OP
/// could not be reached this time (keep trying until the deadline).
async fn token_request(
    approvals: &Approvals,
    auth_req_id: &str,
    poller: &mut Poller,
) -> Result<Option<Resolution>, String> {
    match approvals
        .ciba
        .poll_token(auth_req_id)
        .instrument(child_span!("ciba.token"))
        .await
    {
        Ok(TokenPoll::Granted(tokens)) => {
            Ok(Some(validate(approvals, auth_req_id, &tokens, false).await))
        }
        Ok(TokenPoll::Pending) => Ok(None),
        Ok(TokenPoll::SlowDown) => {
            poller.on_slow_down();
            Ok(None)
        }
        Ok(TokenPoll::RetryAfter(d)) => {
            poller.on_retry_after(d);
            Ok(None)
        }
        Err(e) if e.is_retryable() => {
            crate::telemetry::metrics::op_error(e.code());
            tracing::debug!(code = e.code(), error = %e, "token request failed; will retry");
            Err(e.code().to_string())
        }
        Err(e) => {
            let resolution = op_ended(e.error_code(), e.code());
            if !matches!(resolution, Resolution::Denied(_) | Resolution::Expired) {
                crate::telemetry::metrics::op_error(e.code());
            }
            tracing::info!(code = e.code(), "CIBA request ended at the token endpoint");
            Ok(Some(resolution))
        }
    }
}

/// What an OP's error code (token endpoint or push) means for the approval: the
/// person's denial, an expiry, or a failure named `failure`.
pub(crate) fn op_ended(code: Option<&ErrorCode>, failure: &str) -> Resolution {
    match code {
        Some(ErrorCode::AccessDenied) => Resolution::Denied(ErrorCode::AccessDenied.to_string()),
        Some(ErrorCode::ExpiredToken) => Resolution::Expired,
        _ => Resolution::Failed(failure.to_string()),
    }
}

/// Validates the ID token of a token response; the approver's subject becomes a pseudonym.
pub(crate) async fn check_id_token(
    approvals: &Approvals,
    auth_req_id: &str,
    tokens: &TokenSet,
    push: bool,
) -> Result<Approver, CibaError> {
    let check = IdTokenCheck {
        auth_req_id: Some(auth_req_id),
        access_token: Some(tokens.access_token.as_str()),
        refresh_token: tokens.refresh_token.as_deref(),
        push,
        expected_acr: None,
    };
    let ev = approvals
        .ciba
        .validate_id_token(&tokens.id_token, &check)
        .instrument(child_span!("ciba.id_token_validation"))
        .await?;
    Ok(Approver {
        subject_hash: approvals.subject_hash(&ev.issuer, &ev.subject),
        acr: ev.acr,
        amr: ev.amr,
        auth_time: ev.auth_time,
        // Bound to this request: it opens only for the record that names it.
        sealed_access_token: approvals
            .settings
            .keep_access_tokens
            .then(|| approvals.seal.seal(auth_req_id, &tokens.access_token))
            .flatten(),
    })
}

/// A token response's ID token as the result: a grant, or `invalid_id_token` (the OP's
/// own token endpoint answered, so a bad token there fails the approval closed).
async fn validate(
    approvals: &Approvals,
    auth_req_id: &str,
    tokens: &TokenSet,
    push: bool,
) -> Resolution {
    match check_id_token(approvals, auth_req_id, tokens, push).await {
        Ok(approver) => Resolution::Granted(approver),
        Err(e) => {
            crate::telemetry::metrics::op_error(Failure::InvalidIdToken.code());
            tracing::warn!(code = e.code(), error = %e, "ID token rejected; the call fails closed");
            Failure::InvalidIdToken.into()
        }
    }
}

/// Records the result (brought by `via`) and remembers a denial for the cool-down.
pub(crate) async fn finish(
    approvals: &Approvals,
    fingerprint: &str,
    resolution: Resolution,
    via: &'static str,
) {
    let denied = matches!(resolution, Resolution::Denied(_));
    match resolve_counted(approvals, fingerprint, resolution, Some(via)).await {
        Ok(true) if denied && !approvals.settings.denial_cooldown.is_zero() => {
            if let Ok(Some(r)) = approvals.store.get(fingerprint).await {
                let _ = approvals
                    .store
                    .note_denial(&r.user_key, approvals.settings.denial_cooldown)
                    .await;
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not record the approval result"),
    }
}
