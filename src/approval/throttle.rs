//! Throttles on prompting people: a denial cool-down per person, and rate limits per
//! agent, per person asked and per action, counted in the shared store. A call that
//! joins an existing request prompts nobody and is never throttled.

use super::{Approvals, Approver};
use crate::outcome::Reason;

/// Whether `join_or_start` still checks the throttles before it prompts anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Throttle {
    Check,
    /// Checked already for this person (a quorum checks everyone before asking anyone).
    Checked,
}

impl Approvals {
    /// Refuses a new prompt to `approver` when a throttle says no.
    pub(super) async fn throttle(
        &self,
        approver: &Approver,
        action: &str,
        agent: &str,
    ) -> Result<(), Reason> {
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
}
