//! The person a call is for, as the agent proves it: an ID token the OP issued to this
//! gateway's client, sent in `x-ciba-gate-identity`. It is verified (signature against
//! the OP's JWKS, issuer, audience, expiry) before the policy sees it; a verified
//! identity becomes the default approver, asked with the token as `id_token_hint`. An
//! identity that cannot be verified refuses the request: it is never used as a hint.

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::Approvals;
use crate::ciba::IdTokenCheck;
use crate::outcome::Reason;
use crate::store::ApprovalRecord;

/// The request header that carries the end user's ID token (under the gateway's prefix:
/// never forwarded to a tool server).
pub const IDENTITY_HEADER: &str = "x-ciba-gate-identity";

/// Longest ID token accepted in the header.
const MAX_TOKEN_BYTES: usize = 8192;

/// A verified end-user identity. The token is only ever sent to the OP.
#[derive(Clone)]
pub struct Identity {
    /// The ID token's `sub`.
    pub subject: String,
    /// The ID token's `iss` (the configured OP).
    pub issuer: String,
    token: SecretString,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// The token, for the authentication request's `id_token_hint`.
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    /// What throttles, fingerprints and evidence key this person on: stable across
    /// the tokens one person is issued.
    pub fn stable_name(&self) -> String {
        format!("sub {} {}", self.issuer, self.subject)
    }
}

pub fn refused(why: impl Into<String>) -> Reason {
    Reason::IdentityRefused(why.into())
}

/// Verifies the identity header's value. Every failure is a refusal that says why.
pub async fn verify(approvals: &Approvals, value: &HeaderValue) -> Result<Identity, Reason> {
    if !approvals.settings.accept_identity {
        return Err(refused(format!(
            "{IDENTITY_HEADER} is not accepted by this gateway (approvals.accept_identity is off)"
        )));
    }
    let token = value
        .to_str()
        .map_err(|_| refused(format!("{IDENTITY_HEADER} is not visible ASCII")))?
        .trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(refused(format!(
            "{IDENTITY_HEADER} must hold one ID token of at most {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let claims = approvals
        .ciba
        .validate_id_token(token, &IdTokenCheck::default())
        .await
        .map_err(|e| refused(format!("the identity token is not valid: {e}")))?;
    Ok(Identity {
        subject: claims.subject,
        issuer: claims.issuer,
        token: SecretString::from(token.to_string()),
    })
}

/// Whether the grant in `record` came from the person expected (by subject hash), when
/// one was: a grant without approver evidence never counts for a named person.
pub fn approved_by(expected_subject_hash: Option<&str>, record: &ApprovalRecord) -> bool {
    match expected_subject_hash {
        None => true,
        Some(expected) => record
            .approver
            .as_ref()
            .is_some_and(|a| a.subject_hash == expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Approver, Status};

    fn granted_by(subject_hash: Option<&str>) -> ApprovalRecord {
        ApprovalRecord {
            fingerprint: "fp".into(),
            status: Status::Granted,
            auth_req_id: None,
            notification_token_hash: None,
            binding_message: "Deploy".into(),
            action: "deploy".into(),
            user_key: "k".into(),
            created_at_ms: 0,
            deadline_ms: 1,
            expires_in: None,
            interval: None,
            approver: subject_hash.map(|s| Approver {
                subject_hash: s.into(),
                acr: None,
                amr: Vec::new(),
                auth_time: None,
                sealed_access_token: None,
            }),
            failure: None,
            trace_parent: None,
            delivered_via: None,
        }
    }

    #[test]
    fn a_grant_counts_for_the_named_person_only_if_they_gave_it() {
        assert!(approved_by(Some("bob"), &granted_by(Some("bob"))));
        assert!(!approved_by(Some("bob"), &granted_by(Some("mallory"))));
        assert!(!approved_by(Some("bob"), &granted_by(None)));
        // Nobody named in advance (a login hint): the OP's choice stands.
        assert!(approved_by(None, &granted_by(Some("mallory"))));
    }
}
