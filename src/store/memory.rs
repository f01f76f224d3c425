//! The in-memory store: one process, no persistence. One mutex guards all maps so every
//! operation is atomic; waiters are woken through a per-fingerprint `Notify`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    ApprovalRecord, ApprovalStore, Claim, Failure, Joined, Resolution, Status, StoreError, now_ms,
};

/// Shortest time a consumed approval is remembered (`recently_consumed`).
pub(crate) const CONSUMED_MARK_MS: u64 = 10_000;

#[derive(Default)]
struct Inner {
    records: HashMap<String, (ApprovalRecord, u64)>,
    by_auth_req_id: HashMap<String, String>,
    by_token_hash: HashMap<String, String>,
    /// key → (window start ms, count)
    counters: HashMap<String, (u64, u32)>,
    /// user key → until ms
    denials: HashMap<String, u64>,
    notifies: HashMap<String, Arc<Notify>>,
    /// fingerprint → (owner, until ms)
    leases: HashMap<String, (String, u64)>,
    /// fingerprint → (owner, until ms): the redemption claim
    claims: HashMap<String, (String, u64)>,
    /// fingerprint → until ms: consumed recently
    consumed: HashMap<String, u64>,
    ops_since_sweep: u32,
}

impl Inner {
    fn notify(&self, fingerprint: &str) {
        if let Some(n) = self.notifies.get(fingerprint) {
            n.notify_waiters();
        }
    }

    /// Drops expired entries now and then, so memory never grows without bound.
    fn maybe_sweep(&mut self) {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep < 256 {
            return;
        }
        self.ops_since_sweep = 0;
        let now = now_ms();
        self.records.retain(|_, (_, expires)| *expires > now);
        let live: std::collections::HashSet<String> = self.records.keys().cloned().collect();
        self.by_auth_req_id.retain(|_, fp| live.contains(fp));
        self.by_token_hash.retain(|_, fp| live.contains(fp));
        self.denials.retain(|_, until| *until > now);
        self.leases.retain(|_, (_, until)| *until > now);
        self.claims.retain(|_, (_, until)| *until > now);
        self.consumed.retain(|_, until| *until > now);
        self.counters
            .retain(|_, (start, _)| now.saturating_sub(*start) < 3_600_000);
        self.notifies
            .retain(|fp, n| live.contains(fp) || Arc::strong_count(n) > 1);
    }

    fn live(&self, fingerprint: &str) -> Option<&ApprovalRecord> {
        self.records
            .get(fingerprint)
            .filter(|(_, expires)| *expires > now_ms())
            .map(|(r, _)| r)
    }
}

#[derive(Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("in-memory store lock poisoned".into()))
    }
}

#[async_trait]
impl ApprovalStore for MemoryStore {
    async fn create_or_join(
        &self,
        record: ApprovalRecord,
        grace: Duration,
    ) -> Result<Joined, StoreError> {
        let mut g = self.lock()?;
        g.maybe_sweep();
        if let Some(existing) = g.live(&record.fingerprint) {
            return Ok(Joined::Existing(Box::new(existing.clone())));
        }
        let expires = record.deadline_ms + grace.as_millis() as u64;
        if let Some(h) = &record.notification_token_hash {
            g.by_token_hash
                .insert(h.clone(), record.fingerprint.clone());
        }
        g.records
            .insert(record.fingerprint.clone(), (record, expires));
        Ok(Joined::Created)
    }

    async fn get(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(self.lock()?.live(fingerprint).cloned())
    }

    async fn set_acknowledged(
        &self,
        fingerprint: &str,
        auth_req_id: &str,
        expires_in: u64,
        interval: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let Some((rec, expires)) = g.records.get_mut(fingerprint) else {
            return Ok(());
        };
        // Only a pending record takes an acknowledgement (a lost one stays lost).
        if *expires <= now_ms() || rec.status != Status::Pending {
            return Ok(());
        }
        rec.auth_req_id = Some(auth_req_id.to_string());
        rec.expires_in = Some(expires_in);
        rec.interval = interval;
        let grace = expires.saturating_sub(rec.deadline_ms);
        rec.deadline_ms = deadline_ms;
        *expires = deadline_ms + grace;
        g.by_auth_req_id
            .insert(auth_req_id.to_string(), fingerprint.to_string());
        g.notify(fingerprint);
        Ok(())
    }

    async fn resolve_via(
        &self,
        fingerprint: &str,
        resolution: Resolution,
        via: Option<&'static str>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let now = now_ms();
        let Some((rec, expires)) = g.records.get_mut(fingerprint) else {
            return Ok(false);
        };
        if *expires <= now || rec.status != Status::Pending {
            return Ok(false);
        }
        resolve_in_place(rec, expires, now, resolution);
        rec.delivered_via = via.map(str::to_string);
        g.leases.remove(fingerprint);
        g.claims.remove(fingerprint);
        g.notify(fingerprint);
        Ok(true)
    }

    async fn consume(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut g = self.lock()?;
        let now = now_ms();
        let Some((rec, expires)) = g.records.get_mut(fingerprint) else {
            return Ok(None);
        };
        if *expires <= now || rec.status != Status::Granted {
            return Ok(None);
        }
        // Taken and forgotten in one step: a later identical call needs a new approval.
        let mut out = rec.clone();
        out.status = Status::Consumed;
        let grace = expires.saturating_sub(rec.deadline_ms);
        g.records.remove(fingerprint);
        g.leases.remove(fingerprint);
        g.claims.remove(fingerprint);
        // Remembered a little while, so a joined waiter can tell "used" from "lost".
        g.consumed
            .insert(fingerprint.to_string(), now + grace.max(CONSUMED_MARK_MS));
        if let Some(id) = &out.auth_req_id {
            g.by_auth_req_id.remove(id);
        }
        if let Some(h) = &out.notification_token_hash {
            g.by_token_hash.remove(h);
        }
        g.notify(fingerprint);
        Ok(Some(out))
    }

    async fn remove(&self, fingerprint: &str) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        g.claims.remove(fingerprint);
        if let Some((rec, _)) = g.records.remove(fingerprint) {
            if let Some(id) = rec.auth_req_id {
                g.by_auth_req_id.remove(&id);
            }
            if let Some(h) = rec.notification_token_hash {
                g.by_token_hash.remove(&h);
            }
        }
        g.notify(fingerprint);
        Ok(())
    }

    async fn find_by_auth_req_id(&self, auth_req_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.by_auth_req_id.get(auth_req_id).cloned())
    }

    async fn find_by_notification_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.by_token_hash.get(token_hash).cloned())
    }

    async fn wait_change(&self, fingerprint: &str, timeout: Duration) {
        let notify = match self.inner.lock() {
            Ok(mut g) => g
                .notifies
                .entry(fingerprint.to_string())
                .or_default()
                .clone(),
            Err(_) => return,
        };
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let now = now_ms();
        let w = window.as_millis() as u64;
        let entry = g.counters.entry(key.to_string()).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= w {
            *entry = (now, 0);
        }
        entry.1 += 1;
        Ok(entry.1 <= limit)
    }

    async fn note_denial(&self, user_key: &str, cooldown: Duration) -> Result<(), StoreError> {
        let until = now_ms() + cooldown.as_millis() as u64;
        self.lock()?.denials.insert(user_key.to_string(), until);
        Ok(())
    }

    async fn recently_denied(&self, user_key: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .denials
            .get(user_key)
            .is_some_and(|until| *until > now_ms()))
    }

    async fn acquire_lease(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let now = now_ms();
        let until = now + ttl.as_millis() as u64;
        match g.leases.get_mut(fingerprint) {
            Some((holder, exp)) if *exp > now && holder != owner => Ok(false),
            Some((holder, exp)) => {
                *holder = owner.to_string();
                *exp = until;
                Ok(true)
            }
            None => {
                g.leases
                    .insert(fingerprint.to_string(), (owner.to_string(), until));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.leases.get(fingerprint).is_some_and(|(h, _)| h == owner) {
            g.leases.remove(fingerprint);
        }
        Ok(())
    }

    async fn claim_redemption(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut g = self.lock()?;
        if g.live(fingerprint)
            .is_none_or(|r| r.status != Status::Pending)
        {
            return Ok(Claim::Finished);
        }
        let now = now_ms();
        if g.claims
            .get(fingerprint)
            .is_some_and(|(holder, until)| *until > now && holder != owner)
        {
            return Ok(Claim::Busy);
        }
        g.claims.insert(
            fingerprint.to_string(),
            (owner.to_string(), now + ttl.as_millis() as u64),
        );
        Ok(Claim::Taken)
    }

    async fn release_redemption(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.claims.get(fingerprint).is_some_and(|(h, _)| h == owner) {
            g.claims.remove(fingerprint);
            g.notify(fingerprint);
        }
        Ok(())
    }

    async fn fail_unacknowledged(
        &self,
        fingerprint: &str,
        created_before_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let now = now_ms();
        let Some((rec, expires)) = g.records.get_mut(fingerprint) else {
            return Ok(false);
        };
        if *expires <= now
            || rec.status != Status::Pending
            || rec.auth_req_id.is_some()
            || rec.created_at_ms >= created_before_ms
        {
            return Ok(false);
        }
        resolve_in_place(rec, expires, now, Failure::RequestLost.into());
        g.leases.remove(fingerprint);
        g.claims.remove(fingerprint);
        g.notify(fingerprint);
        Ok(true)
    }

    async fn remove_failed(&self, fingerprint: &str, code: &str) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let matches = g
            .live(fingerprint)
            .is_some_and(|r| r.status == Status::Failed && r.failure.as_deref() == Some(code));
        if !matches {
            return Ok(false);
        }
        g.claims.remove(fingerprint);
        if let Some((rec, _)) = g.records.remove(fingerprint) {
            if let Some(h) = rec.notification_token_hash {
                g.by_token_hash.remove(&h);
            }
            if let Some(id) = rec.auth_req_id {
                g.by_auth_req_id.remove(&id);
            }
        }
        g.notify(fingerprint);
        Ok(true)
    }

    async fn recently_consumed(&self, fingerprint: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .consumed
            .get(fingerprint)
            .is_some_and(|until| *until > now_ms()))
    }
}

/// Records a final answer on a pending record. A final "no" is kept only for the
/// grace period, for retries to read.
fn resolve_in_place(rec: &mut ApprovalRecord, expires: &mut u64, now: u64, resolution: Resolution) {
    if !matches!(resolution, Resolution::Granted(_)) {
        let grace = expires.saturating_sub(rec.deadline_ms);
        *expires = (*expires).min(now + grace);
    }
    match resolution {
        Resolution::Granted(a) => {
            rec.status = Status::Granted;
            rec.approver = Some(a);
        }
        Resolution::Denied(code) => {
            rec.status = Status::Denied;
            rec.failure = Some(code);
        }
        Resolution::Expired => {
            rec.status = Status::Expired;
            rec.failure = Some("expired".into());
        }
        Resolution::Failed(code) => {
            rec.status = Status::Failed;
            rec.failure = Some(code);
        }
    }
}
