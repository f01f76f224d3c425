//! ID token validation (OIDC Core §3.1.3.7, CIBA §10.3.1 / §12).

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::error::CibaError;
use super::jwks::JwksCache;
use super::{ClientConfig, ProviderMetadata, alg_name, now_secs};

const AUTH_REQ_ID_CLAIM: &str = "urn:openid:params:jwt:claim:auth_req_id";
const RT_HASH_CLAIM: &str = "urn:openid:params:jwt:claim:rt_hash";

/// Algorithms accepted for ID tokens and approval tokens (asymmetric only; never
/// `none` or HMAC).
pub(crate) const ID_TOKEN_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What to check beyond signature, issuer, audience and time.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdTokenCheck<'a> {
    /// The request's `auth_req_id`; compared with the `auth_req_id` claim (required in push).
    pub auth_req_id: Option<&'a str>,
    /// The access token delivered with the ID token; checked against `at_hash`.
    pub access_token: Option<&'a str>,
    /// The refresh token delivered with the ID token; checked against `rt_hash`.
    pub refresh_token: Option<&'a str>,
    /// Push mode: the `auth_req_id` claim, `at_hash` and (with a refresh token) `rt_hash`
    /// are required. Otherwise they are checked only when present.
    pub push: bool,
    /// The `acr_values` that were requested (space-separated); the token's `acr` must be
    /// one of them.
    pub expected_acr: Option<&'a str>,
}

/// Who approved, and how, from a validated ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverEvidence {
    pub subject: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: Option<i64>,
    pub issuer: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default)]
    auth_time: Option<serde_json::Number>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
    #[serde(default)]
    at_hash: Option<String>,
    #[serde(default, rename = "urn:openid:params:jwt:claim:rt_hash")]
    rt_hash: Option<String>,
    #[serde(default, rename = "urn:openid:params:jwt:claim:auth_req_id")]
    auth_req_id: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CibaError {
    CibaError::InvalidIdToken(msg.into())
}

/// The `at_hash` / `rt_hash` value of `token` for an ID token signed with `alg`: the
/// base64url left half of the hash selected by the algorithm (EdDSA: SHA-512).
pub fn at_hash(token: &str, alg: Algorithm) -> Option<String> {
    let digest: Vec<u8> = match alg {
        Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::HS256 => {
            sha2::Sha256::digest(token.as_bytes()).to_vec()
        }
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 | Algorithm::HS384 => {
            sha2::Sha384::digest(token.as_bytes()).to_vec()
        }
        Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::EdDSA => {
            sha2::Sha512::digest(token.as_bytes()).to_vec()
        }
        _ => return None,
    };
    let half = digest.get(..digest.len() / 2)?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(half))
}

fn hash_matches(claim: &str, token: &str, alg: Algorithm) -> bool {
    at_hash(token, alg).is_some_and(|h| bool::from(h.as_bytes().ct_eq(claim.as_bytes())))
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> CibaError {
    let msg = match e.kind() {
        ErrorKind::InvalidSignature => "the signature does not verify",
        ErrorKind::ExpiredSignature => "it has expired",
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the issuer is not the OP",
        ErrorKind::InvalidAudience => "the audience does not include this client",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (iss, sub, aud, exp) is missing",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the algorithm is not acceptable"
        }
        ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => {
            "it is malformed or has malformed claims"
        }
        ErrorKind::InvalidToken => "it is not a JWS compact serialization",
        _ => "it could not be verified",
    };
    invalid(msg)
}

pub(crate) async fn validate(
    jwks: &JwksCache,
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    id_token: &str,
    check: &IdTokenCheck<'_>,
) -> Result<ApproverEvidence, CibaError> {
    let header = jsonwebtoken::decode_header(id_token).map_err(map_jwt_error)?;
    let alg = header.alg;
    if !ID_TOKEN_ALGS.contains(&alg) {
        return Err(invalid(format!(
            "algorithm {} is not accepted for ID tokens",
            alg_name(alg)
        )));
    }
    if !meta.id_token_signing_alg_values_supported.is_empty()
        && !meta
            .id_token_signing_alg_values_supported
            .iter()
            .any(|a| a == alg_name(alg))
    {
        return Err(invalid(format!(
            "algorithm {} is not one the OP advertises for ID tokens",
            alg_name(alg)
        )));
    }
    let key = jwks.key_for(header.kid.as_deref(), alg).await?;
    verify(id_token, alg, &key, cfg, meta, check)
}

/// Everything after the key lookup: signature, standard claims, then the CIBA checks.
/// `alg` is the header's algorithm, already accepted by `validate`.
pub(crate) fn verify(
    id_token: &str,
    alg: Algorithm,
    key: &jsonwebtoken::DecodingKey,
    cfg: &ClientConfig,
    meta: &ProviderMetadata,
    check: &IdTokenCheck<'_>,
) -> Result<ApproverEvidence, CibaError> {
    let skew = cfg.clock_skew.as_secs();
    let mut v = Validation::new(alg);
    v.leeway = skew;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[meta.issuer.as_str()]);
    v.set_audience(&[cfg.client_id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(id_token, key, &v).map_err(map_jwt_error)?;
    let c = data.claims;

    // Belt and braces: the library checked these already.
    if c.iss != meta.issuer {
        return Err(invalid("the issuer is not the OP"));
    }
    let audiences = match &c.aud {
        Audience::One(a) => vec![a.as_str()],
        Audience::Many(v) => v.iter().map(String::as_str).collect(),
    };
    if !audiences.contains(&cfg.client_id.as_str()) {
        return Err(invalid("the audience does not include this client"));
    }
    match &c.azp {
        Some(azp) if *azp != cfg.client_id => {
            return Err(invalid("azp is not this client"));
        }
        None if audiences.len() > 1 => {
            return Err(invalid("several audiences but no azp"));
        }
        _ => {}
    }
    if c.sub.is_empty() {
        return Err(invalid("sub is empty"));
    }

    let now = now_secs() as f64;
    let iat = c
        .iat
        .as_ref()
        .and_then(serde_json::Number::as_f64)
        .ok_or_else(|| invalid("iat is missing"))?;
    if iat > now + skew as f64 {
        return Err(invalid("iat is in the future"));
    }

    if let Some(expected) = check.expected_acr {
        let wanted: Vec<&str> = expected.split_whitespace().collect();
        match &c.acr {
            Some(acr) if wanted.contains(&acr.as_str()) => {}
            Some(_) => return Err(invalid("acr is not one of the requested acr_values")),
            None => return Err(invalid("acr is missing but acr_values were requested")),
        }
    }

    // auth_req_id binding.
    match (&c.auth_req_id, check.auth_req_id) {
        (Some(claim), Some(expected))
            if !bool::from(claim.as_bytes().ct_eq(expected.as_bytes())) =>
        {
            return Err(invalid(format!(
                "the {AUTH_REQ_ID_CLAIM} claim does not match the request"
            )));
        }
        (None, _) if check.push => {
            return Err(invalid(format!(
                "the {AUTH_REQ_ID_CLAIM} claim is required in push mode"
            )));
        }
        (Some(_), None) if check.push => {
            return Err(CibaError::Config(
                "push validation needs the expected auth_req_id".into(),
            ));
        }
        _ => {}
    }

    // at_hash.
    match (&c.at_hash, check.access_token) {
        (Some(h), Some(at)) if !hash_matches(h, at, alg) => {
            return Err(invalid("at_hash does not match the access token"));
        }
        (None, _) if check.push => {
            return Err(invalid("at_hash is required in push mode"));
        }
        (Some(_), None) if check.push => {
            return Err(CibaError::Config(
                "push validation needs the access token".into(),
            ));
        }
        _ => {}
    }

    // rt_hash.
    match (&c.rt_hash, check.refresh_token) {
        (Some(h), Some(rt)) if !hash_matches(h, rt, alg) => {
            return Err(invalid(format!(
                "the {RT_HASH_CLAIM} claim does not match the refresh token"
            )));
        }
        (None, Some(_)) if check.push => {
            return Err(invalid(format!(
                "the {RT_HASH_CLAIM} claim is required in push mode with a refresh token"
            )));
        }
        _ => {}
    }

    Ok(ApproverEvidence {
        subject: c.sub,
        acr: c.acr,
        amr: c.amr.unwrap_or_default(),
        auth_time: c
            .auth_time
            .as_ref()
            .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))),
        issuer: c.iss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_reference_value() {
        // Reference computed independently: base64url(sha256(token)[..16]).
        assert_eq!(
            at_hash("jHkWEdUXMU1BwAsC4vtUsZwnoWg", Algorithm::RS256).as_deref(),
            Some("UbXrfSBWDL3Mjo9UFhShbA")
        );
    }

    #[test]
    fn at_hash_lengths_by_alg() {
        let len = |a| at_hash("token", a).map(|s| s.len()).unwrap_or(0);
        assert_eq!(len(Algorithm::ES256), 22); // 16 bytes
        assert_eq!(len(Algorithm::PS384), 32); // 24 bytes
        assert_eq!(len(Algorithm::EdDSA), 43); // 32 bytes
        assert!(hash_matches(
            &at_hash("abc", Algorithm::ES256).unwrap_or_default(),
            "abc",
            Algorithm::ES256
        ));
        assert!(!hash_matches("x", "abc", Algorithm::ES256));
    }
}
