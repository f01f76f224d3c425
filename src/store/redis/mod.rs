//! The Redis store: pending approvals shared by every replica, surviving a restart of
//! any of them. One auto-reconnecting connection (`ConnectionManager`, or a cluster
//! connection) per process, RESP3.
//! Record fields are named in `codec.rs`; the Lua scripts are files under `lua/`, loaded
//! in `scripts.rs`; the connection and the change subscription are `connection.rs`.
//!
//! Keys (`P` is the configured prefix; `{fp}` is a hash tag, so one approval's keys share
//! a cluster slot and its Lua scripts may touch them together):
//! - `P ap:{fp}`        hash: the record (fields in `codec::field`).
//!   Expires at deadline + grace; a final "no" only lives for the grace period.
//! - `P ap:{fp}:lease`  string: the replica that polls the OP for it (`SET NX PX`).
//! - `P ap:{fp}:redeem` string: the one party that may ask the token endpoint now
//!   (taken only while the record is pending; dropped with every final state).
//! - `P ap:{fp}:used`   string: consumed within the grace period.
//! - `P nt:<token hash>`, `P ar:<sha256(auth_req_id)>`  string → fp (lookup indexes;
//!   never a secret in a key name, and the record is always re-checked).
//! - `P rl:<key>` counter (fixed window), `P dn:<user key>` denial cool-down.
//! - channel `P changes`: a changed record's fp is published (from the scripts), and
//!   every replica's subscription wakes its local waiters. A lost message only costs
//!   the waiter's next periodic re-read.
//!
//! Every state change that matters is one Lua script on one key's slot; there is no
//! read-modify-write from the client. Any Redis failure is `Unavailable` (the caller
//! fails closed); undecodable data is `Corrupt`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Cmd;
use sha2::{Digest, Sha256};

mod codec;
mod connection;
mod scripts;

use codec::{decode, status_name};
use connection::{Backend, Waiters};
use scripts::{Scripts, scripts};

use super::{ApprovalRecord, ApprovalStore, Claim, Joined, Resolution, Status, StoreError};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS, rustls). May carry a password; never logged.
    pub url: String,
    pub cluster: bool,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// PEM CA certificate(s) to trust for `rediss://` instead of the system store
    /// (a managed Redis with a private CA).
    pub tls_ca_pem: Option<Vec<u8>>,
}

pub struct RedisStore {
    backend: Backend,
    prefix: String,
    channel: String,
    op_timeout: Duration,
    waiters: Arc<Waiters>,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    crate::telemetry::metrics::store_error();
    StoreError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    crate::telemetry::metrics::store_error();
    StoreError::Corrupt(what.to_string())
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl RedisStore {
    fn rec_key(&self, fp: &str) -> String {
        format!("{}ap:{{{fp}}}", self.prefix)
    }
    fn lease_key(&self, fp: &str) -> String {
        format!("{}ap:{{{fp}}}:lease", self.prefix)
    }
    fn claim_key(&self, fp: &str) -> String {
        format!("{}ap:{{{fp}}}:redeem", self.prefix)
    }
    fn used_key(&self, fp: &str) -> String {
        format!("{}ap:{{{fp}}}:used", self.prefix)
    }
    fn nt_key(&self, token_hash: &str) -> String {
        format!("{}nt:{token_hash}", self.prefix)
    }
    fn ar_key(&self, auth_req_id: &str) -> String {
        format!("{}ar:{}", self.prefix, sha_hex(auth_req_id))
    }

    /// The index keys pointing at a record, for clean-up once it is gone.
    fn index_dels(&self, rec: &ApprovalRecord) -> Vec<Cmd> {
        let mut out = Vec::new();
        if let Some(h) = &rec.notification_token_hash {
            out.push(redis::cmd("DEL").arg(self.nt_key(h)).to_owned());
        }
        if let Some(a) = &rec.auth_req_id {
            out.push(redis::cmd("DEL").arg(self.ar_key(a)).to_owned());
        }
        out
    }

    async fn get_string(&self, key: String) -> Result<Option<String>, StoreError> {
        let mut c = self.conn().await?;
        let v: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(key).query_async(&mut c))
            .await?;
        v.map(|b| String::from_utf8(b).map_err(|_| corrupt("index value is not UTF-8")))
            .transpose()
    }
}

#[async_trait]
impl ApprovalStore for RedisStore {
    async fn create_or_join(
        &self,
        record: ApprovalRecord,
        grace: Duration,
    ) -> Result<Joined, StoreError> {
        let grace_ms = grace.as_millis() as u64;
        let expire_at = record.deadline_ms + grace_ms;
        let token_hash = record.notification_token_hash.clone().unwrap_or_default();
        let mut c = self.conn().await?;
        let existing: redis::Value = self
            .run(
                self.scripts
                    .create
                    .key(self.rec_key(&record.fingerprint))
                    .arg(&record.binding_message)
                    .arg(record.created_at_ms)
                    .arg(record.deadline_ms)
                    .arg(grace_ms)
                    .arg(expire_at)
                    .arg(&token_hash)
                    .arg(&record.action)
                    .arg(&record.user_key)
                    .arg(record.trace_parent.as_deref().unwrap_or(""))
                    .invoke_async(&mut c),
            )
            .await?;
        if let Some(rec) = decode(&record.fingerprint, existing)? {
            return Ok(Joined::Existing(Box::new(rec)));
        }
        // Indexed before the CIBA request is sent: a ping can beat the acknowledgement.
        if !token_hash.is_empty() {
            self.secondary(vec![
                redis::cmd("SET")
                    .arg(self.nt_key(&token_hash))
                    .arg(&record.fingerprint)
                    .arg("PXAT")
                    .arg(expire_at)
                    .to_owned(),
            ])
            .await?;
        }
        Ok(Joined::Created)
    }

    async fn get(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut c = self.conn().await?;
        let v: redis::Value = self
            .run(
                redis::cmd("HGETALL")
                    .arg(self.rec_key(fingerprint))
                    .query_async(&mut c),
            )
            .await?;
        decode(fingerprint, v)
    }

    async fn set_acknowledged(
        &self,
        fingerprint: &str,
        auth_req_id: &str,
        expires_in: u64,
        interval: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let out: Option<(u64, String)> = self
            .run(
                self.scripts
                    .set_ack
                    .key(self.rec_key(fingerprint))
                    .arg(auth_req_id)
                    .arg(expires_in)
                    .arg(interval.map(|i| i.to_string()).unwrap_or_default())
                    .arg(deadline_ms)
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .invoke_async(&mut c),
            )
            .await?;
        let Some((expire_at, token_hash)) = out else {
            return Ok(());
        };
        let mut cmds = vec![
            redis::cmd("SET")
                .arg(self.ar_key(auth_req_id))
                .arg(fingerprint)
                .arg("PXAT")
                .arg(expire_at)
                .to_owned(),
        ];
        if !token_hash.is_empty() {
            cmds.push(
                redis::cmd("PEXPIREAT")
                    .arg(self.nt_key(&token_hash))
                    .arg(expire_at)
                    .to_owned(),
            );
        }
        self.secondary(cmds).await
    }

    async fn resolve_via(
        &self,
        fingerprint: &str,
        resolution: Resolution,
        via: Option<&'static str>,
    ) -> Result<bool, StoreError> {
        let (status, failure, approver) = match resolution {
            Resolution::Granted(a) => (
                Status::Granted,
                String::new(),
                serde_json::to_string(&a).map_err(corrupt)?,
            ),
            Resolution::Denied(code) => (Status::Denied, code, String::new()),
            Resolution::Expired => (Status::Expired, "expired".to_string(), String::new()),
            Resolution::Failed(code) => (Status::Failed, code, String::new()),
        };
        let mut c = self.conn().await?;
        let done: i64 = self
            .run(
                self.scripts
                    .resolve
                    .key(self.rec_key(fingerprint))
                    .key(self.lease_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .arg(status_name(status))
                    .arg(failure)
                    .arg(approver)
                    .arg(via.unwrap_or(""))
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(done == 1)
    }

    async fn consume(&self, fingerprint: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut c = self.conn().await?;
        let taken: redis::Value = self
            .run(
                self.scripts
                    .consume
                    .key(self.rec_key(fingerprint))
                    .key(self.lease_key(fingerprint))
                    .key(self.used_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .arg(super::memory::CONSUMED_MARK_MS)
                    .invoke_async(&mut c),
            )
            .await?;
        let Some(mut rec) = decode(fingerprint, taken)? else {
            return Ok(None);
        };
        rec.status = Status::Consumed;
        // The indexes only point at the record; a failed clean-up leaves harmless
        // dangling entries that expire with it.
        if let Err(e) = self.secondary(self.index_dels(&rec)).await {
            tracing::debug!(error = %e, "index clean-up after consume failed");
        }
        Ok(Some(rec))
    }

    async fn remove(&self, fingerprint: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let flat: redis::Value = self
            .run(
                self.scripts
                    .remove
                    .key(self.rec_key(fingerprint))
                    .key(self.lease_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .invoke_async(&mut c),
            )
            .await?;
        if let Ok(Some(rec)) = decode(fingerprint, flat) {
            self.secondary(self.index_dels(&rec)).await?;
        }
        Ok(())
    }

    async fn find_by_auth_req_id(&self, auth_req_id: &str) -> Result<Option<String>, StoreError> {
        self.get_string(self.ar_key(auth_req_id)).await
    }

    async fn find_by_notification_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        self.get_string(self.nt_key(token_hash)).await
    }

    async fn wait_change(&self, fingerprint: &str, timeout: Duration) {
        let notify = match self.waiters.map.lock() {
            Ok(mut g) => g.entry(fingerprint.to_string()).or_default().clone(),
            Err(_) => return,
        };
        let notified = notify.notified();
        let _ = tokio::time::timeout(timeout, notified).await;
        if let Ok(mut g) = self.waiters.map.lock()
            && Arc::strong_count(&notify) <= 2
        {
            g.remove(fingerprint);
        }
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = self
            .run(
                self.scripts
                    .rate
                    .key(format!("{}rl:{key}", self.prefix))
                    .arg(window.as_millis().max(1) as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(n <= u64::from(limit))
    }

    async fn note_denial(&self, user_key: &str, cooldown: Duration) -> Result<(), StoreError> {
        let ms = cooldown.as_millis() as u64;
        if ms == 0 {
            return Ok(());
        }
        let mut c = self.conn().await?;
        self.run(
            redis::cmd("SET")
                .arg(format!("{}dn:{user_key}", self.prefix))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c),
        )
        .await
    }

    async fn recently_denied(&self, user_key: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        self.run(
            redis::cmd("EXISTS")
                .arg(format!("{}dn:{user_key}", self.prefix))
                .query_async::<bool>(&mut c),
        )
        .await
    }

    async fn acquire_lease(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let got: i64 = self
            .run(
                self.scripts
                    .lease
                    .key(self.lease_key(fingerprint))
                    .arg(owner)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(got == 1)
    }

    async fn release_lease(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .run(
                self.scripts
                    .release
                    .key(self.lease_key(fingerprint))
                    .arg(owner)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }

    async fn claim_redemption(
        &self,
        fingerprint: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut c = self.conn().await?;
        let got: i64 = self
            .run(
                self.scripts
                    .claim
                    .key(self.rec_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(owner)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        match got {
            0 => Ok(Claim::Taken),
            1 => Ok(Claim::Busy),
            2 => Ok(Claim::Finished),
            other => Err(corrupt(format!("unexpected claim answer {other}"))),
        }
    }

    async fn release_redemption(&self, fingerprint: &str, owner: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .run(
                self.scripts
                    .unclaim
                    .key(self.claim_key(fingerprint))
                    .arg(owner)
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }

    async fn fail_unacknowledged(
        &self,
        fingerprint: &str,
        created_before_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let done: i64 = self
            .run(
                self.scripts
                    .fail_unack
                    .key(self.rec_key(fingerprint))
                    .key(self.lease_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .arg(created_before_ms)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(done == 1)
    }

    async fn remove_failed(&self, fingerprint: &str, code: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let flat: redis::Value = self
            .run(
                self.scripts
                    .remove_failed
                    .key(self.rec_key(fingerprint))
                    .key(self.lease_key(fingerprint))
                    .key(self.claim_key(fingerprint))
                    .arg(&self.channel)
                    .arg(fingerprint)
                    .arg(code)
                    .invoke_async(&mut c),
            )
            .await?;
        match decode(fingerprint, flat) {
            Ok(None) => Ok(false),
            Ok(Some(rec)) => {
                let _ = self.secondary(self.index_dels(&rec)).await;
                Ok(true)
            }
            // Removed, but its indexes could not be read: they expire by themselves.
            Err(_) => Ok(true),
        }
    }

    async fn recently_consumed(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        self.run(
            redis::cmd("EXISTS")
                .arg(self.used_key(fingerprint))
                .query_async::<bool>(&mut c),
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        self.run(redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .map(|_| ())
    }
}
