//! `requestState` for MCP 2026-07-28 `input_required` answers (park mode). The client
//! echoes it on its retry; it is untrusted input, so it is MAC-protected (HMAC-SHA256)
//! and names the principal (agent), the call's digest and an expiry.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestState {
    /// Agent id the state was issued to.
    pub sub: String,
    /// Fingerprint of the exact call.
    pub dig: String,
    /// Expiry, Unix milliseconds.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("requestState is malformed")]
    Malformed,
    #[error("requestState failed its integrity check")]
    BadMac,
    #[error("requestState has expired")]
    Expired,
    #[error("requestState was issued for another agent")]
    WrongPrincipal,
    #[error("requestState was issued for a different call")]
    WrongCall,
}

pub fn seal(key: &[u8], state: &RequestState) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(state).unwrap_or_default());
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(b"\0").expect("hmac takes any key"));
    mac.update(payload.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{tag}")
}

/// Verifies integrity, principal, call digest and expiry.
pub fn open(
    key: &[u8],
    sealed: &str,
    agent: &str,
    digest: &str,
    now_ms: u64,
) -> Result<RequestState, StateError> {
    let (payload, tag) = sealed.split_once('.').ok_or(StateError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| StateError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| StateError::BadMac)?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&tag).map_err(|_| StateError::BadMac)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Malformed)?;
    let state: RequestState = serde_json::from_slice(&bytes).map_err(|_| StateError::Malformed)?;
    if state.sub != agent {
        return Err(StateError::WrongPrincipal);
    }
    if state.dig != digest {
        return Err(StateError::WrongCall);
    }
    if state.exp <= now_ms {
        return Err(StateError::Expired);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_opens_only_for_the_same_agent_call_and_time() {
        let key = b"k".repeat(32);
        let s = RequestState {
            sub: "agent".into(),
            dig: "abc".into(),
            exp: 2_000,
        };
        let sealed = seal(&key, &s);
        assert_eq!(open(&key, &sealed, "agent", "abc", 1_000), Ok(s));
        assert_eq!(
            open(&key, &sealed, "other", "abc", 1_000),
            Err(StateError::WrongPrincipal)
        );
        assert_eq!(
            open(&key, &sealed, "agent", "xyz", 1_000),
            Err(StateError::WrongCall)
        );
        assert_eq!(
            open(&key, &sealed, "agent", "abc", 3_000),
            Err(StateError::Expired)
        );
        assert_eq!(
            open(b"other-key", &sealed, "agent", "abc", 1_000),
            Err(StateError::BadMac)
        );
        let tampered = sealed.replacen('e', "f", 1);
        assert!(open(&key, &tampered, "agent", "abc", 1_000).is_err());
        assert_eq!(
            open(&key, "garbage", "agent", "abc", 1_000),
            Err(StateError::Malformed)
        );
    }
}
