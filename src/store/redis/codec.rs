//! The approval record as a Redis hash: one short field name per record field (short
//! names keep the hash in Redis's compact listpack encoding), named here once. The Lua
//! scripts under `lua/` write the same letters; this is the table they follow.

use std::collections::HashMap;

use super::corrupt;
use crate::store::{ApprovalRecord, Approver, Status, StoreError};

/// The hash fields of `P ap:{fp}`.
pub mod field {
    /// `pending`, `granted`, `denied`, `expired`, `failed`.
    pub const STATUS: &str = "s";
    pub const BINDING_MESSAGE: &str = "m";
    pub const ACTION: &str = "ac";
    /// The approver's keyed pseudonym (never the raw hint).
    pub const USER_KEY: &str = "u";
    pub const CREATED_MS: &str = "c";
    pub const DEADLINE_MS: &str = "d";
    /// How long a final answer is kept for retries (ms); read by the scripts only.
    #[allow(dead_code)]
    pub const GRACE_MS: &str = "g";
    pub const NOTIFICATION_TOKEN_HASH: &str = "n";
    pub const AUTH_REQ_ID: &str = "a";
    pub const EXPIRES_IN: &str = "e";
    pub const INTERVAL: &str = "i";
    /// The approver's evidence (JSON), once granted.
    pub const APPROVER: &str = "ap";
    /// The failure code of a failed record.
    pub const FAILURE: &str = "f";
    /// The starting call's W3C traceparent (empty: none).
    pub const TRACE_PARENT: &str = "t";
    /// The party that brought the answer: poll, ping, push.
    pub const DELIVERED_VIA: &str = "v";
}

pub(super) fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Granted => "granted",
        Status::Denied => "denied",
        Status::Expired => "expired",
        Status::Failed => "failed",
        Status::Consumed => "consumed",
    }
}

pub(super) fn parse_status(s: &str) -> Result<Status, StoreError> {
    Ok(match s {
        "pending" => Status::Pending,
        "granted" => Status::Granted,
        "denied" => Status::Denied,
        "expired" => Status::Expired,
        "failed" => Status::Failed,
        "consumed" => Status::Consumed,
        other => return Err(corrupt(format!("unknown status {other:?}"))),
    })
}

/// The fields of a record hash: a flat `[k, v, k, v…]` array (from a script) or a map
/// (HGETALL over RESP3). `None` when there is no record.
pub(super) fn fields(v: redis::Value) -> Result<Option<HashMap<String, String>>, StoreError> {
    let text = |v: redis::Value| -> Result<String, StoreError> {
        match v {
            redis::Value::BulkString(b) => {
                String::from_utf8(b).map_err(|_| corrupt("record field is not UTF-8"))
            }
            redis::Value::SimpleString(s) => Ok(s),
            redis::Value::Int(i) => Ok(i.to_string()),
            other => Err(corrupt(format!("unexpected record field {other:?}"))),
        }
    };
    let pairs: Vec<(redis::Value, redis::Value)> = match v {
        redis::Value::Nil => return Ok(None),
        redis::Value::Map(m) => m,
        redis::Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return Err(corrupt("odd number of record fields"));
            }
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        other => return Err(corrupt(format!("unexpected record shape {other:?}"))),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut m = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        m.insert(text(k)?, text(v)?);
    }
    Ok(Some(m))
}

pub(super) fn decode(fp: &str, v: redis::Value) -> Result<Option<ApprovalRecord>, StoreError> {
    fields(v)?.map(|m| decode_map(fp, m)).transpose()
}

pub(super) fn decode_map(
    fp: &str,
    mut m: HashMap<String, String>,
) -> Result<ApprovalRecord, StoreError> {
    let num = |m: &HashMap<String, String>, k: &str| -> Result<Option<u64>, StoreError> {
        m.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| corrupt(format!("field {k} is not a number")))
            })
            .transpose()
    };
    let status = parse_status(
        m.get(field::STATUS)
            .ok_or_else(|| corrupt("record without status"))?,
    )?;
    let mut text = |k: &str| {
        m.remove(k)
            .ok_or_else(|| corrupt(format!("record without field {k}")))
    };
    let (binding_message, action, user_key) = (
        text(field::BINDING_MESSAGE)?,
        text(field::ACTION)?,
        text(field::USER_KEY)?,
    );
    let approver: Option<Approver> = m
        .get(field::APPROVER)
        .map(|v| serde_json::from_str(v).map_err(|e| corrupt(format!("approver: {e}"))))
        .transpose()?;
    Ok(ApprovalRecord {
        fingerprint: fp.to_string(),
        status,
        auth_req_id: m.remove(field::AUTH_REQ_ID),
        notification_token_hash: m
            .remove(field::NOTIFICATION_TOKEN_HASH)
            .filter(|s| !s.is_empty()),
        binding_message,
        action,
        user_key,
        created_at_ms: num(&m, field::CREATED_MS)?
            .ok_or_else(|| corrupt("record without created time"))?,
        deadline_ms: num(&m, field::DEADLINE_MS)?
            .ok_or_else(|| corrupt("record without deadline"))?,
        expires_in: num(&m, field::EXPIRES_IN)?,
        interval: num(&m, field::INTERVAL)?,
        approver,
        failure: m.remove(field::FAILURE),
        trace_parent: m.remove(field::TRACE_PARENT).filter(|s| !s.is_empty()),
        delivered_via: m.remove(field::DELIVERED_VIA).filter(|s| !s.is_empty()),
    })
}
