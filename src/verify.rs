//! What a tool server checks to run only calls a person approved. With
//! `approvals.authorization_details` on, every authentication request carries one
//! RFC 9396 entry of type [`DETAIL_TYPE`] naming the tool, the upstream and the call's
//! digest; an OP that copies it into a JWT access token (and issues the token for the
//! tool server's audience, `upstreams[].approval_token.audience`) gives the tool server
//! a proof it can check without trusting the gateway. [`Verifier`] is that check, for
//! Rust tool servers; README "Verifying approvals in a tool server" gives the same
//! contract for other languages.
//!
//! The call digest is the lower-case hex SHA-256 of the RFC 8785 (JCS) form of
//! `{"name": <tool name>, "arguments": <arguments object>}`: for MCP, `params.name` and
//! `params.arguments` exactly as received (absent arguments: `{}`).

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

/// The `authorization_details` type the gateway sends.
pub const DETAIL_TYPE: &str = "ciba_gate_tool_call";

/// Signature algorithms accepted: the ID token's (asymmetric only).
const ALGS: &[Algorithm] = crate::ciba::id_token::ID_TOKEN_ALGS;

/// Most token ids remembered at once (a replay cache that cannot grow without bound).
const MAX_REMEMBERED: usize = 100_000;

/// The digest of one tool call, as the gateway and the tool server both compute it.
pub fn call_digest(tool: &str, arguments: &Value) -> String {
    crate::fingerprint::of_json(&json!({"name": tool, "arguments": arguments}))
}

/// The one call an authentication request asks about, as its `authorization_details`
/// entry names it.
pub struct ToolCallDetail<'a> {
    pub action: &'a str,
    pub tool: &'a str,
    pub upstream: &'a str,
    pub call_digest: &'a str,
    pub binding_message: &'a str,
}

impl ToolCallDetail<'_> {
    /// The request's `authorization_details` (RFC 9396): this one entry.
    pub fn to_value(&self) -> Value {
        json!([{
            "type": DETAIL_TYPE,
            "actions": [self.action],
            "tool": self.tool,
            "upstream": self.upstream,
            "call_digest": self.call_digest,
            "binding_message": self.binding_message,
        }])
    }
}

/// Why a tool server must not run the call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not acceptable: {0}")]
    Invalid(String),
    #[error("the token approves a different call")]
    OtherCall,
    #[error("the token was used before")]
    Replayed,
}

/// What a verified approval says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedApproval {
    /// Who approved (the OP's subject).
    pub subject: String,
    pub token_id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    exp: u64,
    #[serde(default)]
    authorization_details: Vec<Value>,
}

/// Checks approval tokens for one tool server: signature against the OP's keys,
/// issuer, audience, expiry, the call digest, and single use.
pub struct Verifier {
    issuer: String,
    audience: String,
    keys: JwkSet,
    leeway_secs: u64,
    /// Token ids seen, with their expiry: a replay is refused while the token lives.
    seen: Mutex<HashMap<String, u64>>,
}

impl Verifier {
    /// `keys`: the OP's JWKS (its `jwks_uri` document).
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: JwkSet) -> Self {
        Verifier {
            issuer: issuer.into(),
            audience: audience.into(),
            keys,
            leeway_secs: 30,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies the `Authorization` header of a call to `tool` with `arguments`, and
    /// remembers the token so it never verifies again.
    pub fn verify(
        &self,
        authorization: Option<&str>,
        tool: &str,
        arguments: &Value,
    ) -> Result<VerifiedApproval, VerifyError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(VerifyError::Missing)?;
        let invalid = |why: &str| VerifyError::Invalid(why.into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
        if !ALGS.contains(&header.alg) {
            return Err(invalid("the algorithm is not accepted"));
        }
        let key = crate::ciba::jwks::select(&self.keys, header.kid.as_deref(), header.alg)
            .map_err(|_| invalid("the signing key is not usable"))?
            .ok_or_else(|| invalid("no key of the OP signed it"))?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway_secs;
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[self.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| VerifyError::Invalid(e.to_string()))?
            .claims;
        let digest = call_digest(tool, arguments);
        let approves_this_call = claims.authorization_details.iter().any(|d| {
            d["type"] == DETAIL_TYPE && d["tool"] == tool && d["call_digest"] == digest.as_str()
        });
        if !approves_this_call {
            return Err(VerifyError::OtherCall);
        }
        self.remember(&claims.jti, claims.exp)?;
        Ok(VerifiedApproval {
            subject: claims.sub,
            token_id: claims.jti,
            expires_at: claims.exp,
        })
    }

    fn remember(&self, jti: &str, exp: u64) -> Result<(), VerifyError> {
        let now = crate::ciba::now_secs();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, e| *e + self.leeway_secs >= now);
        }
        if seen.len() >= MAX_REMEMBERED {
            // Full of live tokens: refusing is safer than forgetting one.
            return Err(VerifyError::Invalid(
                "too many live approvals to track".into(),
            ));
        }
        if seen.insert(jti.to_string(), exp).is_some() {
            return Err(VerifyError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ciba::SigningKey;

    const PEM: &[u8] = include_bytes!("../tests/oidc/keys/client-es256.pem");

    fn op_key() -> (SigningKey, JwkSet) {
        let key = SigningKey::from_pem(Algorithm::ES256, Some("k1".into()), PEM).unwrap();
        let jwks = JwkSet {
            keys: vec![key.public_jwk().unwrap()],
        };
        (key, jwks)
    }

    fn token(key: &SigningKey, jti: &str, tool: &str, args: &Value, aud: &str) -> String {
        key.sign(&json!({
            "iss": "https://op.example", "aud": aud, "sub": "bob", "jti": jti,
            "exp": crate::ciba::now_secs() + 300,
            "authorization_details": [{"type": DETAIL_TYPE, "tool": tool,
                "call_digest": call_digest(tool, args)}],
        }))
        .unwrap()
    }

    #[test]
    fn the_digest_is_jcs_sha256_of_name_and_arguments() {
        // Key order and whitespace do not matter; values do.
        let a = call_digest("deploy", &json!({"env": "prod", "service": "payments"}));
        let b = call_digest(
            "deploy",
            &serde_json::from_str(r#"{ "service":"payments","env":"prod" }"#).unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            call_digest("deploy", &json!({"env": "dev", "service": "payments"}))
        );
        // The published form: sha256 of {"arguments":{...},"name":"..."} in JCS.
        use sha2::Digest;
        let jcs = br#"{"arguments":{"env":"prod","service":"payments"},"name":"deploy"}"#;
        assert_eq!(a, hex::encode(sha2::Sha256::digest(jcs)));
    }

    #[test]
    fn a_token_runs_its_own_call_once_and_nothing_else() {
        let (key, jwks) = op_key();
        let v = Verifier::new("https://op.example", "https://tools.example/mcp", jwks);
        let args = json!({"service": "payments", "env": "prod"});
        let t = token(&key, "t1", "deploy", &args, "https://tools.example/mcp");
        let bearer = format!("Bearer {t}");
        let ok = v.verify(Some(&bearer), "deploy", &args).unwrap();
        assert_eq!(ok.subject, "bob");
        assert_eq!(
            v.verify(Some(&bearer), "deploy", &args),
            Err(VerifyError::Replayed)
        );

        let t2 = format!(
            "Bearer {}",
            token(&key, "t2", "deploy", &args, "https://tools.example/mcp")
        );
        let dev = json!({"service": "payments", "env": "dev"});
        assert_eq!(
            v.verify(Some(&t2), "deploy", &dev),
            Err(VerifyError::OtherCall)
        );
        assert_eq!(
            v.verify(Some(&t2), "delete", &args),
            Err(VerifyError::OtherCall)
        );
        assert_eq!(v.verify(None, "deploy", &args), Err(VerifyError::Missing));

        let elsewhere = format!(
            "Bearer {}",
            token(&key, "t3", "deploy", &args, "https://other")
        );
        assert!(matches!(
            v.verify(Some(&elsewhere), "deploy", &args),
            Err(VerifyError::Invalid(_))
        ));
        let (head, sig) = t2.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let forged = format!("{head}.{flipped}{}", &sig[1..]);
        assert!(matches!(
            v.verify(Some(&forged), "deploy", &args),
            Err(VerifyError::Invalid(_))
        ));
    }
}
